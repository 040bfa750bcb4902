// Tokenizer: text <-> token ids, exactly as Hugging Face does for the models tpserve serves.
// Two implementations behind one interface: tokenizer.json BPE (byte-level as in Llama 3 / Qwen,
// or SentencePiece-style with byte fallback as in Llama 2 / Mistral) and tokenizer.model through
// our SentencePiece BPE reader. Every method is const and safe to call from many threads at once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace tpserve {

// The parts of tokenizer_config.json (or the SentencePiece model) that serving needs.
struct TokenizerConfig {
  std::string source;         // the file the vocabulary came from (named in errors)
  std::string config_source;  // tokenizer_config.json, when there is one
  std::optional<int32_t> bos_id, eos_id;
  std::string bos_token, eos_token;  // their text ("" when unset)
  std::string chat_template;         // "" when the model has none
  bool clean_up_tokenization_spaces = false;
  // add_bos_token / add_eos_token, when tokenizer_config.json sets them: they decide whether
  // Encode(..., add_special_tokens = true) adds BOS / EOS (over the post-processor's template).
  std::optional<bool> add_bos_token, add_eos_token;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Fails on text that is not valid UTF-8 (naming the byte offset) or on a character the
  // vocabulary cannot express. add_special_tokens adds BOS/EOS as the model's post-processor does.
  virtual Result<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens) const = 0;
  // Ids outside the vocabulary are skipped. cleanup = clean_up_tokenization_spaces (" ." -> ".").
  virtual std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens, bool cleanup) const = 0;
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const {
    return Decode(ids, skip_special_tokens, config().clean_up_tokenization_spaces);
  }
  // One past the largest id (added tokens included).
  virtual int vocab_size() const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;
  const TokenizerConfig& config() const { return config_; }

 protected:
  TokenizerConfig config_;
};

// PATH is a model directory (tokenizer.json preferred, else tokenizer.model; tokenizer_config.json
// beside it is read when present) or one of those files. Errors name the file, the key and the fix.
Result<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path);
// True when DIR holds a tokenizer that LoadTokenizer can try.
bool HasTokenizerFiles(const std::string& dir);

// Loaders behind LoadTokenizer (config_json may be "" when there is no tokenizer_config.json).
Result<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& tokenizer_json_path,
                                                   const std::string& config_json_path);
Result<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& model_path,
                                                              const std::string& config_json_path);

// Fills config fields from tokenizer_config.json (bos/eos tokens, chat_template, clean-up flag);
// token_to_id resolves special-token text to ids.
Status ReadTokenizerConfig(const std::string& path,
                           const std::function<std::optional<int32_t>(const std::string&)>& token_to_id,
                           TokenizerConfig* config);

// Streaming detokenizer for one sequence: Add() returns the text that is final once `id` is
// known (never half a UTF-8 character), Finish() the rest. The concatenation of everything
// returned equals tokenizer.Decode(all ids, skip_special_tokens, cleanup=false).
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);
  std::string Add(int32_t id);
  std::string Finish();

 private:
  std::string DecodeRange(size_t begin, size_t end) const;
  const Tokenizer& tokenizer_;
  const bool skip_special_;
  std::vector<int32_t> ids_;
  size_t prefix_ = 0;  // decoding restarts here (a token boundary before read_)
  size_t read_ = 0;    // text of ids_[prefix_, read_) has been emitted
};

// Per-request text output with stop strings matched across token boundaries: text that could
// still become the start of a stop string is held back until it cannot.
class TextStreamer {
 public:
  TextStreamer(const Tokenizer& tokenizer, std::vector<std::string> stop_strings, bool skip_special_tokens);
  struct Delta {
    std::string text;
    bool stopped = false;  // a stop string matched; text ends just before it
  };
  Delta Add(int32_t id);
  std::string Finish();  // the held-back rest (no stop string matched)

 private:
  Delta Scan(bool final);
  StreamDecoder decoder_;
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

// Checks that `text` is valid UTF-8; the error names the first bad byte offset.
Status ValidateUtf8(std::string_view text);

}  // namespace tpserve
