// tokenizer.json (Hugging Face `tokenizers` format) with a BPE model: normalizers, pre-tokenizers,
// the BPE merge loop, post-processor and decoders, implemented for the pipelines that Llama 2/3,
// Mistral and Qwen2/3 checkpoints ship. Anything else is refused at load with the key named.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "model/tokenizer/internal.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/utf8.h"

namespace tpserve {
namespace {

using json = nlohmann::json;

// A compiled PCRE2 pattern (UTF + Unicode properties, JIT when available).
class Regex {
 public:
  static Result<std::shared_ptr<Regex>> Compile(const std::string& pattern) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &err, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof(buf));
      return TPS_ERROR("regex /{}/ does not compile at offset {}: {}", pattern, offset,
                       reinterpret_cast<const char*>(buf));
    }
    auto re = std::shared_ptr<Regex>(new Regex(code));
    re->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    return re;
  }
  ~Regex() { pcre2_code_free(code_); }

  // Calls fn(begin, end) for every non-overlapping match in s (input already valid UTF-8).
  template <typename Fn>
  void ForEachMatch(std::string_view s, Fn&& fn) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t pos = 0;
    while (pos <= s.size()) {
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
      const int rc = jit_ ? pcre2_jit_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr)
                          : pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (ov[1] > ov[0]) {
        fn(static_cast<size_t>(ov[0]), static_cast<size_t>(ov[1]));
        pos = ov[1];
      } else {  // empty match: step over one character
        if (ov[0] >= s.size()) break;
        pos = ov[0] + utf8::LeadLength(static_cast<unsigned char>(s[ov[0]]));
      }
    }
    pcre2_match_data_free(md);
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
  bool jit_ = false;
};

constexpr std::string_view kMetaspaceMark = "\xE2\x96\x81";  // U+2581

// GPT-2's split pattern, used by a ByteLevel pre-tokenizer with use_regex = true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct Normalizer {
  enum class Kind { kNfc, kPrepend, kReplace, kLowercase };
  Kind kind;
  std::string a, b;  // prepend text; replace pattern and content
};

struct PreTokenizer {
  enum class Kind { kSplit, kByteLevel, kMetaspace };
  enum class Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext };
  Kind kind;
  std::shared_ptr<Regex> regex;  // Split; ByteLevel with use_regex
  Behavior behavior = Behavior::kIsolated;
  bool add_prefix_space = false;  // ByteLevel
  std::string replacement;        // Metaspace
  std::string prepend_scheme;     // Metaspace: always | first | never
  bool split = true;              // Metaspace
};

struct Decoder {
  enum class Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace };
  Kind kind;
  std::string a, b;  // Replace: pattern, content; Strip: content; Metaspace: replacement
  int start = 0, stop = 0;
  bool prepend = true;  // Metaspace: strip the first token's leading space
};

struct AddedToken {
  int32_t id;
  std::string content;
  bool special, lstrip, rstrip, single_word;
};

std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size()) {
    out.append(s.substr(pos, hit - pos));
    out.append(to);
  }
  out.append(s.substr(pos));
  return out;
}

// NFC through utf8proc, applied only to the stretches that hold non-ASCII text (each with the
// ASCII character before it, which may be the starter a combining mark composes with). ASCII
// never composes with what precedes it, so the rest stays as it is.
std::string Nfc(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    while (j < s.size() && static_cast<unsigned char>(s[j]) < 0x80) ++j;
    if (j == s.size()) {
      out.append(s, i, j - i);
      break;
    }
    const size_t begin = j > i ? j - 1 : j;  // keep the ASCII starter with the run
    out.append(s, i, begin - i);
    size_t end = j;
    while (end < s.size() && static_cast<unsigned char>(s[end]) >= 0x80) ++end;
    utf8proc_uint8_t* dst = nullptr;
    const utf8proc_ssize_t len =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + begin),
                     static_cast<utf8proc_ssize_t>(end - begin), &dst,
                     static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (len >= 0) {
      out.append(reinterpret_cast<const char*>(dst), static_cast<size_t>(len));
    } else {
      out.append(s, begin, end - begin);
    }
    free(dst);
    i = end;
  }
  return out;
}

bool IsSpaceByte(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// Python/transformers clean_up_tokenization.
std::string CleanUpSpaces(std::string s) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) s = ReplaceAll(s, from, to);
  return s;
}

class HfTokenizer final : public Tokenizer {
 public:
  Status Load(const std::string& path, const std::string& config_path);
  Result<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens) const override;
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens, bool cleanup) const override;
  int vocab_size() const override { return static_cast<int>(id_to_token_.size()); }
  bool IsSpecial(int32_t id) const override { return id >= 0 && id < vocab_size() && special_[id]; }

 private:
  Status ParseModel(const json& model);
  Status ParseNormalizer(const json& j, const std::string& key);
  Status ParsePreTokenizer(const json& j, const std::string& key);
  Status ParseDecoder(const json& j, const std::string& key);
  Status ParsePostProcessor(const json& j, const std::string& key);
  Status ParseAddedTokens(const json& j);

  // Splits text around added tokens: (begin, end, added id or -1).
  struct Segment {
    size_t begin, end;
    int32_t added;
  };
  std::vector<Segment> SplitAdded(std::string_view text) const;
  std::string Normalize(std::string_view s, bool at_start) const;
  void PreTokenize(std::string s, bool at_start, std::vector<std::string>* pieces) const;
  void Bpe(const std::string& word, std::vector<int32_t>* out) const;
  void BpeUncached(const std::string& word, std::vector<int32_t>* out) const;

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  std::string path_;
  std::unordered_map<std::string, int32_t, utf8::StringHash, std::equal_to<>> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<uint8_t> special_, added_;                              // per id
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (a,b) -> (rank, merged id)
  std::array<int32_t, 256> byte_ids_{};  // <0xNN> tokens for byte_fallback, -1 if absent
  std::vector<int32_t> char_ids_;        // one-character tokens by code point (< U+0800), -1 if absent
  int32_t unk_id_ = -1;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  bool word_split_ = false;  // no pre-tokenizer, and no token has "▁" after another character

  std::vector<Normalizer> normalizers_;
  std::vector<PreTokenizer> pre_tokenizers_;
  std::vector<Decoder> decoders_;
  std::vector<int32_t> prefix_ids_, suffix_ids_;  // post-processor, single sequence

  std::vector<AddedToken> added_tokens_;
  std::array<std::vector<int>, 256> added_by_first_byte_;  // indices, longest first

  tokenizer_internal::WordCache cache_;
};

Status HfTokenizer::Load(const std::string& path, const std::string& config_path) {
  path_ = path;
  config_.source = path;
  TPS_ASSIGN_OR_RETURN(json j,
                       tokenizer_internal::ReadJsonFile(path, "re-download the tokenizer.json of the model"));
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) {
    return TPS_ERROR("{}: missing object 'model' (is this a Hugging Face tokenizer.json?)", path);
  }
  try {
    TPS_RETURN_IF_ERROR(ParseModel(j["model"]));
    TPS_RETURN_IF_ERROR(ParseAddedTokens(j.value("added_tokens", json::array())));
    TPS_RETURN_IF_ERROR(ParseNormalizer(j.value("normalizer", json()), "normalizer"));
    TPS_RETURN_IF_ERROR(ParsePreTokenizer(j.value("pre_tokenizer", json()), "pre_tokenizer"));
    TPS_RETURN_IF_ERROR(ParseDecoder(j.value("decoder", json()), "decoder"));
    TPS_RETURN_IF_ERROR(ParsePostProcessor(j.value("post_processor", json()), "post_processor"));
    word_split_ = pre_tokenizers_.empty() && std::all_of(vocab_.begin(), vocab_.end(), [](const auto& kv) {
                    return utf8::MarkOnlyLeads(kv.first, kMetaspaceMark);
                  });
  } catch (const json::exception& e) {
    return TPS_ERROR("{}: unexpected value type ({}); the file does not follow the tokenizer.json schema",
                     path, e.what());
  }
  if (!config_path.empty()) {
    TPS_RETURN_IF_ERROR(ReadTokenizerConfig(
        config_path,
        [this](const std::string& t) -> std::optional<int32_t> {
          for (const AddedToken& a : added_tokens_) {
            if (a.content == t) return a.id;
          }
          auto it = vocab_.find(t);
          if (it != vocab_.end()) return it->second;
          return std::nullopt;
        },
        &config_));
    // tokenizer_config.json's add_bos_token / add_eos_token win over the post-processor, as
    // transformers' Llama tokenizers rebuild their template from them.
    if (config_.add_bos_token) {
      std::erase_if(prefix_ids_, [this](int32_t id) { return config_.bos_id && id == *config_.bos_id; });
      if (*config_.add_bos_token && config_.bos_id) prefix_ids_.insert(prefix_ids_.begin(), *config_.bos_id);
    }
    if (config_.add_eos_token) {
      std::erase_if(suffix_ids_, [this](int32_t id) { return config_.eos_id && id == *config_.eos_id; });
      if (*config_.add_eos_token && config_.eos_id) suffix_ids_.push_back(*config_.eos_id);
    }
  }
  return Status();
}

Status HfTokenizer::ParseModel(const json& m) {
  const std::string type = m.value("type", "BPE");
  if (type != "BPE") {
    return TPS_ERROR(
        "{}: model.type '{}' is not supported (tpserve reads BPE tokenizers: Llama, Mistral, Qwen)", path_,
        type);
  }
  if (!m.contains("vocab") || !m["vocab"].is_object()) {
    return TPS_ERROR("{}: missing object 'model.vocab'", path_);
  }
  if (!m.contains("merges") || !m["merges"].is_array()) {
    return TPS_ERROR("{}: missing array 'model.merges'", path_);
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && m[key].is_string() && !m[key].get<std::string>().empty()) {
      return TPS_ERROR("{}: model.{} is not supported (only byte-level and SentencePiece-style BPE)", path_,
                       key);
    }
  }
  int32_t max_id = -1;
  for (const auto& [tok, id] : m["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 30)) {
      return TPS_ERROR("{}: model.vocab['{}'] must be a non-negative integer id", path_, tok);
    }
    vocab_.emplace(tok, id.get<int32_t>());
    max_id = std::max(max_id, id.get<int32_t>());
  }
  id_to_token_.assign(max_id + 1, std::string());
  for (const auto& [tok, id] : vocab_) id_to_token_[id] = tok;

  const json& merges = m["merges"];
  merges_.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    std::string a, b;
    if (merges[r].is_string()) {  // "a b" (older files)
      const std::string s = merges[r].get<std::string>();
      const size_t sp = s.find(' ', 1);
      if (sp == std::string::npos)
        return TPS_ERROR("{}: model.merges[{}] '{}' is not 'left right'", path_, r, s);
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (merges[r].is_array() && merges[r].size() == 2) {  // ["a", "b"]
      a = merges[r][0].get<std::string>();
      b = merges[r][1].get<std::string>();
    } else {
      return TPS_ERROR("{}: model.merges[{}] must be \"left right\" or [left, right]", path_, r);
    }
    auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
    if (ia == vocab_.end() || ib == vocab_.end() || iab == vocab_.end()) {
      const std::string& missing = ia == vocab_.end() ? a : ib == vocab_.end() ? b : a + b;
      return TPS_ERROR("{}: model.merges[{}] ('{}' + '{}') needs '{}', which is not in model.vocab", path_, r,
                       a, b, missing);
    }
    merges_.emplace(PairKey(ia->second, ib->second), std::make_pair(static_cast<int32_t>(r), iab->second));
  }

  byte_fallback_ = m.value("byte_fallback", false);
  fuse_unk_ = m.value("fuse_unk", false);
  ignore_merges_ = m.value("ignore_merges", false);
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    auto it = vocab_.find(m["unk_token"].get<std::string>());
    if (it == vocab_.end()) {
      return TPS_ERROR("{}: model.unk_token '{}' is not in model.vocab", path_,
                       m["unk_token"].get<std::string>());
    }
    unk_id_ = it->second;
  }
  char_ids_.assign(0x800, -1);
  for (const auto& [tok, id] : vocab_) {
    int len = 0;
    if (tok.size() <= 2 && utf8::ValidSequenceLength(tok, 0) == static_cast<int>(tok.size()))
      len = tok.size();
    if (len == 1) char_ids_[static_cast<unsigned char>(tok[0])] = id;
    if (len == 2) char_ids_[((tok[0] & 0x1F) << 6) | (tok[1] & 0x3F)] = id;
  }
  byte_ids_.fill(-1);
  if (byte_fallback_) {
    for (int b = 0; b < 256; ++b) {
      auto it = vocab_.find(fmt::format("<0x{:02X}>", b));
      if (it != vocab_.end()) byte_ids_[b] = it->second;
    }
  }
  return Status();
}

Status HfTokenizer::ParseAddedTokens(const json& j) {
  if (!j.is_array()) return TPS_ERROR("{}: 'added_tokens' must be an array", path_);
  for (size_t i = 0; i < j.size(); ++i) {
    const json& t = j[i];
    if (!t.contains("id") || !t.contains("content")) {
      return TPS_ERROR("{}: added_tokens[{}] needs 'id' and 'content'", path_, i);
    }
    AddedToken a{t["id"].get<int32_t>(),   t["content"].get<std::string>(), t.value("special", false),
                 t.value("lstrip", false), t.value("rstrip", false),        t.value("single_word", false)};
    if (a.id < 0 || a.content.empty())
      return TPS_ERROR("{}: added_tokens[{}] has a bad id or empty content", path_, i);
    if (a.id >= static_cast<int32_t>(id_to_token_.size())) id_to_token_.resize(a.id + 1);
    id_to_token_[a.id] = a.content;
    added_tokens_.push_back(std::move(a));
  }
  special_.assign(id_to_token_.size(), 0);
  added_.assign(id_to_token_.size(), 0);
  for (size_t i = 0; i < added_tokens_.size(); ++i) {
    const AddedToken& a = added_tokens_[i];
    special_[a.id] = a.special;
    added_[a.id] = 1;
    added_by_first_byte_[static_cast<unsigned char>(a.content[0])].push_back(static_cast<int>(i));
  }
  for (auto& v : added_by_first_byte_) {
    std::stable_sort(v.begin(), v.end(), [this](int x, int y) {
      return added_tokens_[x].content.size() > added_tokens_[y].content.size();
    });
  }
  return Status();
}

Status HfTokenizer::ParseNormalizer(const json& j, const std::string& key) {
  if (j.is_null()) return Status();
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    const json& list = j.value("normalizers", json::array());
    for (size_t i = 0; i < list.size(); ++i) {
      TPS_RETURN_IF_ERROR(ParseNormalizer(list[i], fmt::format("{}.normalizers[{}]", key, i)));
    }
  } else if (type == "NFC") {
    normalizers_.push_back({Normalizer::Kind::kNfc, "", ""});
  } else if (type == "Lowercase") {
    normalizers_.push_back({Normalizer::Kind::kLowercase, "", ""});
  } else if (type == "Prepend") {
    normalizers_.push_back({Normalizer::Kind::kPrepend, j.at("prepend").get<std::string>(), ""});
  } else if (type == "Replace") {
    if (!j.contains("pattern") || !j["pattern"].contains("String")) {
      return TPS_ERROR("{}: {} Replace with a regex pattern is not supported (only {{\"String\": ...}})",
                       path_, key);
    }
    normalizers_.push_back({Normalizer::Kind::kReplace, j["pattern"]["String"].get<std::string>(),
                            j.at("content").get<std::string>()});
  } else {
    return TPS_ERROR(
        "{}: {}.type '{}' is not supported (supported: NFC, Lowercase, Prepend, Replace, Sequence)", path_,
        key, type);
  }
  return Status();
}

Status HfTokenizer::ParsePreTokenizer(const json& j, const std::string& key) {
  if (j.is_null()) return Status();
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    const json& list = j.value("pretokenizers", json::array());
    for (size_t i = 0; i < list.size(); ++i) {
      TPS_RETURN_IF_ERROR(ParsePreTokenizer(list[i], fmt::format("{}.pretokenizers[{}]", key, i)));
    }
    return Status();
  }
  PreTokenizer p{};
  if (type == "Split") {
    p.kind = PreTokenizer::Kind::kSplit;
    const json& pat = j.at("pattern");
    std::string pattern;
    if (pat.contains("Regex")) {
      pattern = pat["Regex"].get<std::string>();
    } else if (pat.contains("String")) {  // a literal: quote it for PCRE2
      pattern = "\\Q" + pat["String"].get<std::string>() + "\\E";
    } else {
      return TPS_ERROR("{}: {}.pattern needs 'Regex' or 'String'", path_, key);
    }
    auto re = Regex::Compile(pattern);
    if (!re.ok()) return re.status().WithContext(fmt::format("{}: {}.pattern", path_, key));
    p.regex = *re;
    const std::string behavior = j.value("behavior", "Isolated");
    if (behavior == "Isolated") {
      p.behavior = PreTokenizer::Behavior::kIsolated;
    } else if (behavior == "Removed") {
      p.behavior = PreTokenizer::Behavior::kRemoved;
    } else if (behavior == "MergedWithPrevious") {
      p.behavior = PreTokenizer::Behavior::kMergedWithPrevious;
    } else if (behavior == "MergedWithNext") {
      p.behavior = PreTokenizer::Behavior::kMergedWithNext;
    } else {
      return TPS_ERROR("{}: {}.behavior '{}' is not supported", path_, key, behavior);
    }
    if (j.value("invert", false)) return TPS_ERROR("{}: {}.invert = true is not supported", path_, key);
  } else if (type == "ByteLevel") {
    p.kind = PreTokenizer::Kind::kByteLevel;
    p.add_prefix_space = j.value("add_prefix_space", false);
    if (j.value("use_regex", true)) p.regex = *Regex::Compile(kGpt2Pattern);
  } else if (type == "Metaspace") {
    p.kind = PreTokenizer::Kind::kMetaspace;
    p.replacement = j.value("replacement", "\xE2\x96\x81");
    p.prepend_scheme = j.value("prepend_scheme", j.value("add_prefix_space", true) ? "always" : "never");
    p.split = j.value("split", true);
  } else {
    return TPS_ERROR("{}: {}.type '{}' is not supported (supported: Split, ByteLevel, Metaspace, Sequence)",
                     path_, key, type);
  }
  pre_tokenizers_.push_back(std::move(p));
  return Status();
}

Status HfTokenizer::ParseDecoder(const json& j, const std::string& key) {
  if (j.is_null()) return Status();
  const std::string type = j.value("type", "");
  Decoder d{};
  if (type == "Sequence") {
    const json& list = j.value("decoders", json::array());
    for (size_t i = 0; i < list.size(); ++i) {
      TPS_RETURN_IF_ERROR(ParseDecoder(list[i], fmt::format("{}.decoders[{}]", key, i)));
    }
    return Status();
  } else if (type == "ByteLevel") {
    d.kind = Decoder::Kind::kByteLevel;
  } else if (type == "Replace") {
    if (!j.contains("pattern") || !j["pattern"].contains("String")) {
      return TPS_ERROR("{}: {} Replace with a regex pattern is not supported", path_, key);
    }
    d.kind = Decoder::Kind::kReplace;
    d.a = j["pattern"]["String"].get<std::string>();
    d.b = j.at("content").get<std::string>();
  } else if (type == "ByteFallback") {
    d.kind = Decoder::Kind::kByteFallback;
  } else if (type == "Fuse") {
    d.kind = Decoder::Kind::kFuse;
  } else if (type == "Strip") {
    d.kind = Decoder::Kind::kStrip;
    d.a = j.value("content", " ");
    d.start = j.value("start", 0);
    d.stop = j.value("stop", 0);
  } else if (type == "Metaspace") {
    d.kind = Decoder::Kind::kMetaspace;
    d.a = j.value("replacement", "\xE2\x96\x81");
    d.prepend = j.value("prepend_scheme", j.value("add_prefix_space", true) ? "always" : "never") != "never";
  } else {
    return TPS_ERROR(
        "{}: {}.type '{}' is not supported (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, "
        "Metaspace, Sequence)",
        path_, key, type);
  }
  decoders_.push_back(std::move(d));
  return Status();
}

Status HfTokenizer::ParsePostProcessor(const json& j, const std::string& key) {
  if (j.is_null()) return Status();
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    const json& list = j.value("processors", json::array());
    for (size_t i = 0; i < list.size(); ++i) {
      TPS_RETURN_IF_ERROR(ParsePostProcessor(list[i], fmt::format("{}.processors[{}]", key, i)));
    }
  } else if (type == "ByteLevel") {
    // Only adjusts offsets; adds no tokens.
  } else if (type == "TemplateProcessing") {
    const json& specials = j.value("special_tokens", json::object());
    bool seen_sequence = false;
    const json& single = j.value("single", json::array());
    for (size_t i = 0; i < single.size(); ++i) {
      const json& item = single[i];
      if (item.contains("Sequence")) {
        seen_sequence = true;
      } else if (item.contains("SpecialToken")) {
        const std::string name = item["SpecialToken"].at("id").get<std::string>();
        if (!specials.contains(name)) {
          return TPS_ERROR("{}: {}.single[{}] names special token '{}', missing from {}.special_tokens",
                           path_, key, i, name, key);
        }
        for (const json& id : specials[name].at("ids"))
          (seen_sequence ? suffix_ids_ : prefix_ids_).push_back(id);
      }
    }
  } else {
    return TPS_ERROR("{}: {}.type '{}' is not supported (supported: TemplateProcessing, ByteLevel, Sequence)",
                     path_, key, type);
  }
  return Status();
}

std::vector<HfTokenizer::Segment> HfTokenizer::SplitAdded(std::string_view text) const {
  std::vector<Segment> out;
  size_t plain_begin = 0, i = 0;
  while (i < text.size()) {
    const auto& candidates = added_by_first_byte_[static_cast<unsigned char>(text[i])];
    const AddedToken* hit = nullptr;
    for (int idx : candidates) {
      const AddedToken& a = added_tokens_[idx];
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word) {
        auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
        const size_t e = i + a.content.size();
        if ((i > 0 && word(text[i - 1])) || (e < text.size() && word(text[e]))) continue;
      }
      hit = &a;
      break;
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t begin = i, end = i + hit->content.size();
    if (hit->lstrip) {
      while (begin > plain_begin && IsSpaceByte(text[begin - 1])) --begin;
    }
    if (hit->rstrip) {
      while (end < text.size() && IsSpaceByte(text[end])) ++end;
    }
    if (begin > plain_begin) out.push_back({plain_begin, begin, -1});
    out.push_back({begin, end, hit->id});
    plain_begin = i = end;
  }
  if (plain_begin < text.size()) out.push_back({plain_begin, text.size(), -1});
  return out;
}

std::string HfTokenizer::Normalize(std::string_view s, bool /*at_start*/) const {
  std::string out(s);
  for (const Normalizer& n : normalizers_) {
    switch (n.kind) {
      case Normalizer::Kind::kNfc:
        out = Nfc(out);
        break;
      case Normalizer::Kind::kLowercase: {
        std::string low;
        for (size_t i = 0; i < out.size();) {
          utf8proc_int32_t cp;
          const utf8proc_ssize_t n =
              utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(out.data() + i),
                               static_cast<utf8proc_ssize_t>(out.size() - i), &cp);
          if (n <= 0) break;
          utf8::Append(&low, static_cast<uint32_t>(utf8proc_tolower(cp)));
          i += n;
        }
        out = std::move(low);
        break;
      }
      case Normalizer::Kind::kPrepend:
        if (!out.empty()) out = n.a + out;
        break;
      case Normalizer::Kind::kReplace:
        out = ReplaceAll(out, n.a, n.b);
        break;
    }
  }
  return out;
}

void HfTokenizer::PreTokenize(std::string s, bool at_start, std::vector<std::string>* pieces) const {
  std::vector<std::string> cur;
  cur.push_back(std::move(s));
  for (const PreTokenizer& p : pre_tokenizers_) {
    std::vector<std::string> next;
    for (size_t pi = 0; pi < cur.size(); ++pi) {
      std::string& piece = cur[pi];
      if (p.kind == PreTokenizer::Kind::kMetaspace) {
        std::string m = ReplaceAll(piece, " ", p.replacement);
        const bool prepend =
            p.prepend_scheme == "always" || (p.prepend_scheme == "first" && at_start && pi == 0);
        if (prepend && !m.empty() && m.compare(0, p.replacement.size(), p.replacement) != 0)
          m = p.replacement + m;
        if (!p.split) {
          next.push_back(std::move(m));
          continue;
        }
        size_t begin = 0;  // split before every replacement char (MergedWithNext)
        for (size_t hit = m.find(p.replacement, 1); hit != std::string::npos;
             hit = m.find(p.replacement, hit + 1)) {
          next.push_back(m.substr(begin, hit - begin));
          begin = hit;
        }
        if (begin < m.size()) next.push_back(m.substr(begin));
        continue;
      }
      // Regex split (Split, or ByteLevel with use_regex), then the byte map for ByteLevel.
      std::vector<std::string> parts;
      if (p.kind == PreTokenizer::Kind::kByteLevel && p.add_prefix_space && !piece.empty() &&
          piece[0] != ' ') {
        piece = " " + piece;
      }
      if (p.regex) {
        size_t last = 0;
        std::string carry;  // MergedWithNext: a match waiting for the text after it
        p.regex->ForEachMatch(piece, [&](size_t b, size_t e) {
          std::string gap = piece.substr(last, b - last), match = piece.substr(b, e - b);
          switch (p.behavior) {
            case PreTokenizer::Behavior::kIsolated:
              if (!gap.empty()) parts.push_back(std::move(gap));
              parts.push_back(std::move(match));
              break;
            case PreTokenizer::Behavior::kRemoved:
              if (!gap.empty()) parts.push_back(std::move(gap));
              break;
            case PreTokenizer::Behavior::kMergedWithPrevious:
              parts.push_back(gap + match);
              break;
            case PreTokenizer::Behavior::kMergedWithNext:
              if (!gap.empty() || !carry.empty()) parts.push_back(carry + gap);
              carry = std::move(match);
              break;
          }
          last = e;
        });
        std::string tail = carry + piece.substr(last);
        if (!tail.empty()) parts.push_back(std::move(tail));
      } else {
        parts.push_back(std::move(piece));
      }
      if (p.kind == PreTokenizer::Kind::kByteLevel) {
        const auto& map = utf8::GetByteLevelMap();
        for (std::string& part : parts) {
          std::string mapped;
          mapped.reserve(part.size() * 2);
          for (unsigned char c : part) mapped += map.byte_to_char[c];
          next.push_back(std::move(mapped));
        }
      } else {
        for (std::string& part : parts) next.push_back(std::move(part));
      }
    }
    cur = std::move(next);
  }
  for (std::string& piece : cur) {
    if (!piece.empty()) pieces->push_back(std::move(piece));
  }
}

void HfTokenizer::Bpe(const std::string& word, std::vector<int32_t>* out) const {
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  if (cache_.Lookup(word, out)) return;
  const size_t first = out->size();
  BpeUncached(word, out);
  cache_.Store(word, out->data() + first, out->size() - first);
}

// The BPE merge loop: start from characters (or byte tokens), repeatedly merge the adjacent pair
// of lowest merge rank (leftmost on ties), as tokenizers' BPE::merge_word does.
void HfTokenizer::BpeUncached(const std::string& word, std::vector<int32_t>* out) const {
  struct Sym {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  syms.reserve(word.size());
  bool last_unk = false;
  auto push = [&](int32_t id) {
    const int n = static_cast<int>(syms.size());
    syms.push_back({id, n - 1, n + 1, true});
  };
  for (size_t i = 0; i < word.size();) {
    const int len = std::max(1, utf8::ValidSequenceLength(word, i));
    int32_t id = -1;
    if (len <= 2) {  // the common case (ASCII, byte-level characters): a table
      id = char_ids_[len == 1 ? static_cast<unsigned char>(word[i])
                              : ((word[i] & 0x1F) << 6) | (word[i + 1] & 0x3F)];
    } else {
      auto it = vocab_.find(std::string_view(word).substr(i, len));
      if (it != vocab_.end()) id = it->second;
    }
    if (id >= 0) {
      push(id);
      last_unk = false;
    } else if (byte_fallback_ && std::all_of(word.begin() + i, word.begin() + i + len, [this](char c) {
                 return byte_ids_[static_cast<unsigned char>(c)] >= 0;
               })) {
      for (int k = 0; k < len; ++k) push(byte_ids_[static_cast<unsigned char>(word[i + k])]);
      last_unk = false;
    } else if (unk_id_ >= 0) {
      if (!(fuse_unk_ && last_unk)) push(unk_id_);
      last_unk = true;
    }  // no unk token: the character is dropped, as tokenizers does
    i += len;
  }
  if (syms.empty()) return;
  syms.back().next = -1;

  struct Cand {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }  // min-heap
  };
  std::priority_queue<Cand> heap;
  auto consider = [&](int pos) {
    if (pos < 0 || syms[pos].next < 0) return;
    auto it = merges_.find(PairKey(syms[pos].id, syms[syms[pos].next].id));
    if (it != merges_.end()) heap.push({it->second.first, pos, it->second.second});
  };
  for (int i = 0; i + 1 < static_cast<int>(syms.size()); ++i) consider(i);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& s = syms[c.pos];
    if (!s.alive || s.next < 0) continue;
    auto it = merges_.find(PairKey(s.id, syms[s.next].id));
    if (it == merges_.end() || it->second.second != c.new_id) continue;  // stale
    Sym& right = syms[s.next];
    right.alive = false;
    s.id = c.new_id;
    s.next = right.next;
    if (s.next >= 0) syms[s.next].prev = c.pos;
    consider(s.prev);
    consider(c.pos);
  }
  for (int i = 0; i >= 0; i = syms[i].next) out->push_back(syms[i].id);
}

Result<std::vector<int32_t>> HfTokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  TPS_RETURN_IF_ERROR(ValidateUtf8(text));
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = prefix_ids_;
  std::vector<std::string> pieces;
  for (const Segment& seg : SplitAdded(text)) {
    if (seg.added >= 0) {
      ids.push_back(seg.added);
      continue;
    }
    pieces.clear();
    PreTokenize(Normalize(text.substr(seg.begin, seg.end - seg.begin), seg.begin == 0), seg.begin == 0,
                &pieces);
    for (const std::string& piece : pieces) {
      if (word_split_) {  // SentencePiece-style: BPE word by word (cached) gives the same ids
        utf8::ForEachMarkWord(piece, kMetaspaceMark, [&](std::string_view w) { Bpe(std::string(w), &ids); });
      } else {
        Bpe(piece, &ids);
      }
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

std::string HfTokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens, bool cleanup) const {
  struct Tok {
    std::string text;
    bool added;
  };
  std::vector<Tok> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || id_to_token_[id].empty()) continue;
    if (skip_special_tokens && special_[id]) continue;
    toks.push_back({id_to_token_[id], added_[id] != 0});
  }
  for (const Decoder& d : decoders_) {
    switch (d.kind) {
      case Decoder::Kind::kByteLevel: {
        // Ordinary tokens map back to bytes; added tokens are literal text (as transformers does).
        const auto& map = utf8::GetByteLevelMap();
        std::string text, bytes;
        for (const Tok& t : toks) {
          if (t.added) {
            text += utf8::Lossy(bytes);
            bytes.clear();
            text += t.text;
            continue;
          }
          std::string tb;
          bool mapped = true;
          for (size_t i = 0; i < t.text.size() && mapped;) {
            utf8proc_int32_t cp;
            const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(t.text.data() + i),
                                            static_cast<utf8proc_ssize_t>(t.text.size() - i), &cp);
            if (n <= 0 || cp >= 324 || map.char_to_byte[cp] < 0) {
              mapped = false;
              break;
            }
            tb.push_back(static_cast<char>(map.char_to_byte[cp]));
            i += n;
          }
          bytes += mapped ? tb : t.text;
        }
        text += utf8::Lossy(bytes);
        toks.assign(1, {std::move(text), false});
        break;
      }
      case Decoder::Kind::kReplace:
        for (Tok& t : toks) t.text = ReplaceAll(t.text, d.a, d.b);
        break;
      case Decoder::Kind::kByteFallback: {
        std::vector<Tok> next;
        std::string bytes;
        size_t nbytes = 0;
        auto flush = [&] {
          if (nbytes == 0) return;
          if (utf8::FirstInvalid(bytes) == std::string::npos) {
            next.push_back({bytes, false});
          } else {
            std::string repl;
            for (size_t k = 0; k < nbytes; ++k) repl += utf8::kReplacementChar;
            next.push_back({repl, false});
          }
          bytes.clear();
          nbytes = 0;
        };
        for (Tok& t : toks) {
          const std::string& s = t.text;
          if (s.size() == 6 && s.compare(0, 3, "<0x") == 0 && s[5] == '>' &&
              std::isxdigit(static_cast<unsigned char>(s[3])) &&
              std::isxdigit(static_cast<unsigned char>(s[4]))) {
            bytes.push_back(static_cast<char>(std::stoi(s.substr(3, 2), nullptr, 16)));
            ++nbytes;
          } else {
            flush();
            next.push_back(std::move(t));
          }
        }
        flush();
        toks = std::move(next);
        break;
      }
      case Decoder::Kind::kFuse: {
        std::string all;
        for (const Tok& t : toks) all += t.text;
        toks.assign(1, {std::move(all), false});
        break;
      }
      case Decoder::Kind::kStrip:
        for (Tok& t : toks) {
          for (int k = 0; k < d.start && t.text.compare(0, d.a.size(), d.a) == 0; ++k)
            t.text.erase(0, d.a.size());
          for (int k = 0; k < d.stop && t.text.size() >= d.a.size() &&
                          t.text.compare(t.text.size() - d.a.size(), d.a.size(), d.a) == 0;
               ++k) {
            t.text.erase(t.text.size() - d.a.size());
          }
        }
        break;
      case Decoder::Kind::kMetaspace:
        for (size_t i = 0; i < toks.size(); ++i) {
          toks[i].text = ReplaceAll(toks[i].text, d.a, " ");
          if (i == 0 && d.prepend && !toks[i].text.empty() && toks[i].text[0] == ' ')
            toks[i].text.erase(0, 1);
        }
        break;
    }
  }
  std::string text;
  for (const Tok& t : toks) text += t.text;
  return cleanup ? CleanUpSpaces(std::move(text)) : text;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& path, const std::string& config_path) {
  auto tok = std::make_unique<HfTokenizer>();
  TPS_RETURN_IF_ERROR(tok->Load(path, config_path));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace tpserve
