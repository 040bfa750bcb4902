#include "model/tokenizer/chat_template.h"

#include <utf8proc.h>

#include <cstdint>

namespace tpserve {
namespace {

uint64_t Fnv1a64(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

struct KnownTemplate {
  const char* name;
  uint64_t fingerprint;
  const char* origin;
};
// Fingerprints (FNV-1a 64 of the exact chat_template text).
constexpr KnownTemplate kKnown[] = {
    {"llama3", 0x74891e390e614ae2ull, "Meta-Llama-3-8B-Instruct tokenizer_config.json"},
    {"qwen3", 0x2bfdb7aa9754484eull, "Qwen3 tokenizer_config.json (without tools)"},
};

bool IsJsSpace(uint32_t cp) {
  return cp == 0x09 || cp == 0x0A || cp == 0x0B || cp == 0x0C || cp == 0x0D || cp == 0x20 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000 || cp == 0xFEFF;
}

// The code point at s[i] (s is valid UTF-8: RenderChat checks), through utf8proc; sets len.
uint32_t CodePointAt(const std::string& s, size_t i, int* len) {
  utf8proc_int32_t cp = 0;
  *len = static_cast<int>(utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                           static_cast<utf8proc_ssize_t>(s.size() - i), &cp));
  return static_cast<uint32_t>(cp);
}

// String trimming as @huggingface/jinja (the renderer transformers.js uses) implements it:
// JavaScript's whitespace set, and strip/lstrip/rstrip ignore a chars argument ('\n' in
// Qwen3's template), so they trim all whitespace.
std::string JsTrim(const std::string& s, bool start, bool end) {
  size_t b = 0, e = s.size();
  while (start && b < e) {
    int len;
    if (!IsJsSpace(CodePointAt(s, b, &len))) break;
    b += len;
  }
  while (end && e > b) {
    size_t k = e - 1;
    while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    int len;
    if (!IsJsSpace(CodePointAt(s, k, &len))) break;
    e = k;
  }
  return s.substr(b, e - b);
}
std::string Trim(const std::string& s) {
  return JsTrim(s, true, true);
}
std::string LStrip(const std::string& s) {
  return JsTrim(s, true, false);
}
std::string RStrip(const std::string& s) {
  return JsTrim(s, false, true);
}

// Python's str.split(sep)[0] and [-1].
std::string SplitFirst(const std::string& s, const std::string& sep) {
  const size_t p = s.find(sep);
  return p == std::string::npos ? s : s.substr(0, p);
}
std::string SplitLast(const std::string& s, const std::string& sep) {
  const size_t p = s.rfind(sep);
  return p == std::string::npos ? s : s.substr(p + sep.size());
}
bool StartsWith(const std::string& s, const std::string& p) {
  return s.compare(0, p.size(), p) == 0;
}
bool EndsWith(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// Meta-Llama-3-8B-Instruct: every turn is header + trimmed content + <|eot_id|>, BOS before the
// first, and the assistant header always closes the prompt (this template has no
// add_generation_prompt switch).
std::string RenderLlama3(const TokenizerConfig& config, const std::vector<ChatMessage>& messages) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0) out += config.bos_token;
    out += "<|start_header_id|>" + messages[i].role + "<|end_header_id|>\n\n" + Trim(messages[i].content) +
           "<|eot_id|>";
  }
  out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// Qwen3: ChatML turns; assistant turns after the last real user query carry their reasoning in
// <think> blocks, earlier ones lose it; consecutive tool results share one user turn.
std::string RenderQwen3(const std::vector<ChatMessage>& m, const ChatOptions& options) {
  std::string out;
  if (m[0].role == "system") out += "<|im_start|>system\n" + m[0].content + "<|im_end|>\n";
  size_t last_query = m.size() - 1;
  for (size_t k = m.size(); k-- > 0;) {
    const std::string& c = m[k].content;
    if (m[k].role == "user" && !(StartsWith(c, "<tool_response>") && EndsWith(c, "</tool_response>"))) {
      last_query = k;
      break;
    }
  }
  for (size_t i = 0; i < m.size(); ++i) {
    const ChatMessage& msg = m[i];
    if (msg.role == "user" || (msg.role == "system" && i != 0)) {
      out += "<|im_start|>" + msg.role + "\n" + msg.content + "<|im_end|>\n";
    } else if (msg.role == "assistant") {
      std::string content = msg.content, reasoning;
      if (msg.reasoning_content) {
        reasoning = *msg.reasoning_content;
      } else if (msg.content.find("</think>") != std::string::npos) {
        content = LStrip(SplitLast(msg.content, "</think>"));
        reasoning = LStrip(SplitLast(RStrip(SplitFirst(msg.content, "</think>")), "<think>"));
      }
      const bool last = i + 1 == m.size();
      if (i > last_query && (last || !reasoning.empty())) {
        out +=
            "<|im_start|>" + msg.role + "\n<think>\n" + Trim(reasoning) + "\n</think>\n\n" + LStrip(content);
      } else {
        out += "<|im_start|>" + msg.role + "\n" + content;
      }
      out += "<|im_end|>\n";
    } else if (msg.role == "tool") {
      if (i == 0 || m[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n" + msg.content + "\n</tool_response>";
      if (i + 1 == m.size() || m[i + 1].role != "tool") out += "<|im_end|>\n";
    }
  }
  if (options.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (options.enable_thinking.has_value() && !*options.enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

}  // namespace

std::string SupportedChatTemplates() {
  std::string s;
  for (const KnownTemplate& k : kKnown) {
    if (!s.empty()) s += "; ";
    s += fmt::format("{} (fingerprint {:016x}, {})", k.name, k.fingerprint, k.origin);
  }
  return s;
}

std::string ChatTemplateName(const std::string& template_text) {
  const uint64_t h = Fnv1a64(template_text);
  for (const KnownTemplate& k : kKnown) {
    if (k.fingerprint == h) return k.name;
  }
  return "";
}

Result<std::string> RenderChat(const TokenizerConfig& config, const std::vector<ChatMessage>& messages,
                               const ChatOptions& options) {
  const std::string where = config.config_source.empty() ? config.source : config.config_source;
  if (config.chat_template.empty()) {
    return TPS_ERROR("the model has no chat_template ({}); send the prompt as text or token ids", where);
  }
  if (messages.empty()) return TPS_ERROR("messages is empty: send at least one message");
  for (size_t i = 0; i < messages.size(); ++i) {
    TPS_RETURN_IF_ERROR(
        ValidateUtf8(messages[i].content).WithContext(fmt::format("messages[{}].content", i)));
    if (messages[i].role.empty())
      return TPS_ERROR("messages[{}].role is empty (system, user, assistant or tool)", i);
  }
  const std::string name = ChatTemplateName(config.chat_template);
  if (name == "llama3") return RenderLlama3(config, messages);
  if (name == "qwen3") return RenderQwen3(messages, options);
  return TPS_ERROR(
      "the chat_template in {} (fingerprint {:016x}) is not one tpserve can render: Debian 12 ships no C++ "
      "Jinja "
      "engine, so tpserve renders these verified templates only: {}. Render the conversation yourself and "
      "send "
      "it as text",
      where, Fnv1a64(config.chat_template), SupportedChatTemplates());
}

}  // namespace tpserve
