#include "model/tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/tokenizer/internal.h"
#include "model/tokenizer/utf8.h"

namespace tpserve {

namespace fs = std::filesystem;
using json = nlohmann::json;

Status ValidateUtf8(std::string_view text) {
  const size_t bad = utf8::FirstInvalid(text);
  if (bad == std::string_view::npos) return Status();
  return TPS_ERROR("text is not valid UTF-8 (bad byte 0x{:02X} at offset {})",
                   static_cast<unsigned char>(text[bad]), bad);
}

bool HasTokenizerFiles(const std::string& dir) {
  return fs::exists(fs::path(dir) / "tokenizer.json") || fs::exists(fs::path(dir) / "tokenizer.model");
}

Result<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path) {
  fs::path p(path);
  fs::path dir = fs::is_directory(p) ? p : p.parent_path();
  const fs::path config = dir / "tokenizer_config.json";
  const std::string config_path = fs::exists(config) ? config.string() : "";
  if (fs::is_directory(p)) {
    if (fs::exists(p / "tokenizer.json"))
      return LoadHfTokenizer((p / "tokenizer.json").string(), config_path);
    if (fs::exists(p / "tokenizer.model"))
      return LoadSentencePieceTokenizer((p / "tokenizer.model").string(), config_path);
    return TPS_ERROR(
        "{} has no tokenizer.json or tokenizer.model; copy the model's tokenizer files there or pass "
        "--tokenizer FILE",
        path);
  }
  if (!fs::exists(p)) return TPS_ERROR("tokenizer file {} does not exist", path);
  if (p.extension() == ".json") return LoadHfTokenizer(path, config_path);
  if (p.extension() == ".model") return LoadSentencePieceTokenizer(path, config_path);
  return TPS_ERROR("{}: unknown tokenizer format; expected tokenizer.json or a SentencePiece .model", path);
}

namespace {
// bos_token / eos_token are a string, an AddedToken object {"content": ...}, or null.
Result<std::string> TokenText(const json& j, const std::string& key, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return std::string();
  if (j[key].is_string()) return j[key].get<std::string>();
  if (j[key].is_object() && j[key].contains("content") && j[key]["content"].is_string()) {
    return j[key]["content"].get<std::string>();
  }
  return TPS_ERROR("{}: key '{}' must be a string or {{\"content\": ...}}", path, key);
}
}  // namespace

namespace tokenizer_internal {

Result<nlohmann::json> ReadJsonFile(const std::string& path, const std::string& fix) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return TPS_ERROR("cannot open {}", path);
  std::stringstream buf;
  buf << in.rdbuf();
  try {
    return nlohmann::json::parse(buf.str());
  } catch (const nlohmann::json::exception& e) {
    return TPS_ERROR("{} is not valid JSON ({}); {}", path, e.what(), fix);
  }
}

bool WordCache::Lookup(std::string_view word, std::vector<int32_t>* out) const {
  if (word.size() > kMaxWord) return false;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = map_.find(word);
  if (it == map_.end()) return false;
  out->insert(out->end(), it->second.begin(), it->second.end());
  return true;
}

void WordCache::Store(std::string_view word, const int32_t* ids, size_t n) const {
  if (word.size() > kMaxWord) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (map_.size() >= kMaxEntries) map_.clear();
  map_.emplace(std::string(word), std::vector<int32_t>(ids, ids + n));
}

}  // namespace tokenizer_internal

Status ReadTokenizerConfig(const std::string& path,
                           const std::function<std::optional<int32_t>(const std::string&)>& token_to_id,
                           TokenizerConfig* config) {
  config->config_source = path;
  TPS_ASSIGN_OR_RETURN(json j, tokenizer_internal::ReadJsonFile(path, "fix or remove the file"));
  if (!j.is_object()) return TPS_ERROR("{}: expected a JSON object", path);
  for (const char* key : {"bos_token", "eos_token"}) {
    TPS_ASSIGN_OR_RETURN(std::string text, TokenText(j, key, path));
    if (text.empty()) continue;
    const std::optional<int32_t> id = token_to_id(text);
    if (!id) return TPS_ERROR("{}: {} '{}' is not a token of {}", path, key, text, config->source);
    (std::string(key) == "bos_token" ? config->bos_token : config->eos_token) = text;
    (std::string(key) == "bos_token" ? config->bos_id : config->eos_id) = *id;
  }
  if (j.contains("chat_template") && !j["chat_template"].is_null()) {
    const json& t = j["chat_template"];
    if (t.is_string()) {
      config->chat_template = t.get<std::string>();
    } else if (t.is_array()) {  // [{"name": "default", "template": ...}, ...]
      for (const json& named : t) {
        if (named.value("name", "") == "default") config->chat_template = named.value("template", "");
      }
    } else {
      return TPS_ERROR("{}: key 'chat_template' must be a string or a list of named templates", path);
    }
  }
  for (const char* key : {"add_bos_token", "add_eos_token"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    if (!j[key].is_boolean()) return TPS_ERROR("{}: key '{}' must be true or false", path, key);
    (std::string(key) == "add_bos_token" ? config->add_bos_token : config->add_eos_token) =
        j[key].get<bool>();
  }
  if (j.contains("clean_up_tokenization_spaces")) {
    if (!j["clean_up_tokenization_spaces"].is_boolean()) {
      return TPS_ERROR("{}: key 'clean_up_tokenization_spaces' must be true or false", path);
    }
    config->clean_up_tokenization_spaces = j["clean_up_tokenization_spaces"].get<bool>();
  }
  return Status();
}

// --- streaming ------------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}

std::string StreamDecoder::DecodeRange(size_t begin, size_t end) const {
  return tokenizer_.Decode(std::span<const int32_t>(ids_.data() + begin, end - begin), skip_special_, false);
}

// Decodes a short window that starts a token or two before the new ones and emits what the new
// ones add, so leading-space rules and multi-token characters come out as in a full decode.
std::string StreamDecoder::Add(int32_t id) {
  ids_.push_back(id);
  const std::string before = DecodeRange(prefix_, read_);
  const std::string now = DecodeRange(prefix_, ids_.size());
  if (now.size() <= before.size() || now.compare(0, before.size(), before) != 0) return "";
  if (now.size() >= 3 && now.compare(now.size() - 3, 3, utf8::kReplacementChar) == 0) {
    return "";  // an incomplete character: wait for the bytes that finish it
  }
  prefix_ = read_;
  read_ = ids_.size();
  return now.substr(before.size());
}

std::string StreamDecoder::Finish() {
  const std::string before = DecodeRange(prefix_, read_);
  const std::string now = DecodeRange(prefix_, ids_.size());
  prefix_ = read_ = ids_.size();
  if (now.size() <= before.size() || now.compare(0, before.size(), before) != 0) return "";
  return now.substr(before.size());
}

TextStreamer::TextStreamer(const Tokenizer& tokenizer, std::vector<std::string> stop_strings,
                           bool skip_special_tokens)
    : decoder_(tokenizer, skip_special_tokens), stops_(std::move(stop_strings)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

TextStreamer::Delta TextStreamer::Scan(bool final) {
  Delta d;
  if (stopped_) return d;
  // The earliest stop string in the pending text ends the output just before it.
  size_t best = std::string::npos;
  for (const std::string& s : stops_) best = std::min(best, pending_.find(s));
  if (best != std::string::npos) {
    d.text = pending_.substr(0, best);
    d.stopped = stopped_ = true;
    pending_.clear();
    return d;
  }
  size_t keep = 0;  // the longest tail that is a proper prefix of a stop string
  if (!final) {
    for (const std::string& s : stops_) {
      for (size_t n = std::min(s.size() - 1, pending_.size()); n > keep; --n) {
        if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
          keep = n;
          break;
        }
      }
    }
  }
  d.text = pending_.substr(0, pending_.size() - keep);
  pending_.erase(0, pending_.size() - keep);
  return d;
}

TextStreamer::Delta TextStreamer::Add(int32_t id) {
  if (stopped_) return {};
  pending_ += decoder_.Add(id);
  return Scan(false);
}

std::string TextStreamer::Finish() {
  if (stopped_) return "";
  pending_ += decoder_.Finish();
  return Scan(true).text;
}

}  // namespace tpserve
