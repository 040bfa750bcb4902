// tokenizer.model (SentencePiece ModelProto) for model directories without a tokenizer.json
// (Llama 2 era checkpoints): SentencePiece's BPE model — identity normalizer with a dummy-prefix
// "▁", merges by piece score, byte fallback — read with libprotobuf. libsentencepiece itself
// cannot be linked here: Debian's build bundles a protobuf 3.14 runtime whose exported symbols
// clash with the libprotobuf 3.21 that gRPC uses (it aborts at load). Tests compare this encoder
// with libsentencepiece's spm_encode in a separate process.
#include <algorithm>
#include <fstream>
#include <mutex>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "model/tokenizer/internal.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/utf8.h"
#include "sentencepiece_model.pb.h"

namespace tpserve {
namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's whitespace mark

class SentencePieceTokenizer final : public Tokenizer {
 public:
  Status Load(const std::string& path, const std::string& config_path);
  Result<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens) const override;
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens, bool cleanup) const override;
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  bool IsSpecial(int32_t id) const override {
    return id >= 0 && id < vocab_size() && types_[id] == Type::CONTROL;
  }

 private:
  using Type = spm::ModelProto::SentencePiece;
  std::string Normalize(std::string_view text) const;
  // BPE over one stretch of normalized text (a whole text, or one word when word_split_).
  void EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;
  void EncodeWordCached(std::string_view word, std::vector<int32_t>* ids) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int> types_;
  using PieceMap = std::unordered_map<std::string, int32_t, utf8::StringHash, std::equal_to<>>;
  PieceMap normal_;                        // NORMAL, USER_DEFINED, UNUSED: mergeable
  PieceMap reserved_;                      // CONTROL, UNKNOWN, BYTE
  std::vector<std::string> user_defined_;  // matched whole, longest first
  std::array<int32_t, 256> byte_ids_{};
  int32_t unk_id_ = 0;
  std::string unk_surface_;
  bool byte_fallback_ = false, add_dummy_prefix_ = true, remove_extra_ws_ = true, escape_ws_ = true;
  bool add_bos_ = true, add_eos_ = false;
  bool word_split_ = false;  // no piece has "▁" after another character: BPE word by word

  tokenizer_internal::WordCache cache_;
};

Status SentencePieceTokenizer::Load(const std::string& path, const std::string& config_path) {
  config_.source = path;
  std::ifstream in(path, std::ios::binary);
  if (!in) return TPS_ERROR("cannot open tokenizer model {}", path);
  std::stringstream buf;
  buf << in.rdbuf();
  spm::ModelProto model;
  if (!model.ParseFromString(buf.str()) || model.pieces_size() == 0) {
    return TPS_ERROR(
        "{} is not a SentencePiece model (no pieces parsed); re-download the model's tokenizer.model", path);
  }
  const spm::TrainerSpec& trainer = model.trainer_spec();
  if (trainer.model_type() != spm::TrainerSpec::BPE) {
    return TPS_ERROR(
        "{}: trainer_spec.model_type {} is not supported (tpserve reads SentencePiece BPE models, as "
        "Llama 2 and Mistral ship; use the model's tokenizer.json instead)",
        path, static_cast<int>(trainer.model_type()));
  }
  const spm::NormalizerSpec& norm = model.normalizer_spec();
  if (!norm.precompiled_charsmap().empty() || (norm.has_name() && norm.name() != "identity")) {
    return TPS_ERROR(
        "{}: normalizer_spec.name '{}' needs a precompiled character map, which tpserve does not apply; "
        "use the model's tokenizer.json instead",
        path, norm.name());
  }
  byte_fallback_ = trainer.byte_fallback();
  unk_id_ = trainer.unk_id();
  unk_surface_ = trainer.unk_surface();
  add_dummy_prefix_ = norm.add_dummy_prefix();
  remove_extra_ws_ = norm.remove_extra_whitespaces();
  escape_ws_ = norm.escape_whitespaces();
  byte_ids_.fill(-1);
  for (int i = 0; i < model.pieces_size(); ++i) {
    const auto& p = model.pieces(i);
    pieces_.push_back(p.piece());
    scores_.push_back(p.score());
    types_.push_back(p.type());
    const bool normal =
        p.type() == Type::NORMAL || p.type() == Type::USER_DEFINED || p.type() == Type::UNUSED;
    if (!(normal ? normal_ : reserved_).emplace(p.piece(), i).second) {
      return TPS_ERROR("{}: piece '{}' (id {}) appears twice", path, p.piece(), i);
    }
    if (p.type() == Type::USER_DEFINED) user_defined_.push_back(p.piece());
    if (p.type() == Type::BYTE) {
      if (p.piece().size() != 6) return TPS_ERROR("{}: byte piece {} is not <0xNN>", path, p.piece());
      byte_ids_[std::stoi(p.piece().substr(3, 2), nullptr, 16)] = i;
    }
  }
  word_split_ = escape_ws_ && std::all_of(normal_.begin(), normal_.end(), [](const auto& kv) {
                  return utf8::MarkOnlyLeads(kv.first, kSpace);
                });
  std::sort(user_defined_.begin(), user_defined_.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  if (unk_id_ < 0 || unk_id_ >= vocab_size())
    return TPS_ERROR("{}: trainer_spec.unk_id {} is out of range", path, unk_id_);
  if (trainer.bos_id() >= 0 && trainer.bos_id() < vocab_size()) {
    config_.bos_id = trainer.bos_id();
    config_.bos_token = pieces_[trainer.bos_id()];
  }
  if (trainer.eos_id() >= 0 && trainer.eos_id() < vocab_size()) {
    config_.eos_id = trainer.eos_id();
    config_.eos_token = pieces_[trainer.eos_id()];
  }
  if (!config_path.empty()) {
    TPS_RETURN_IF_ERROR(ReadTokenizerConfig(
        config_path,
        [this](const std::string& t) -> std::optional<int32_t> {
          for (const auto* m : {&normal_, &reserved_}) {
            auto it = m->find(t);
            if (it != m->end()) return it->second;
          }
          return std::nullopt;
        },
        &config_));
    if (config_.add_bos_token) add_bos_ = *config_.add_bos_token;
    if (config_.add_eos_token) add_eos_ = *config_.add_eos_token;
  }
  return Status();
}

std::string SentencePieceTokenizer::Normalize(std::string_view text) const {
  std::string s(text);
  if (remove_extra_ws_) {  // trim, and collapse runs of spaces into one
    std::string t;
    for (char c : s) {
      if (c == ' ' && (t.empty() || t.back() == ' ')) continue;
      t.push_back(c);
    }
    while (!t.empty() && t.back() == ' ') t.pop_back();
    s = std::move(t);
  }
  if (s.empty()) return s;
  std::string out;
  out.reserve(s.size() + 8);
  const std::string_view space = escape_ws_ ? kSpace : std::string_view(" ");
  if (add_dummy_prefix_) out.append(space);
  for (char c : s) {
    if (c == ' ') {
      out.append(space);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// SentencePiece BPE: start from characters (user-defined pieces whole), repeatedly merge the
// adjacent pair whose concatenation is a piece with the highest score (leftmost on ties).
Result<std::vector<int32_t>> SentencePieceTokenizer::Encode(std::string_view text,
                                                            bool add_special_tokens) const {
  TPS_RETURN_IF_ERROR(ValidateUtf8(text));
  const std::string norm = Normalize(text);
  std::vector<int32_t> ids;
  if (add_special_tokens && add_bos_ && config_.bos_id) ids.push_back(*config_.bos_id);
  if (word_split_) {
    utf8::ForEachMarkWord(norm, kSpace, [&](std::string_view word) { EncodeWordCached(word, &ids); });
  } else {
    EncodeWord(norm, &ids);
  }
  if (add_special_tokens && add_eos_ && config_.eos_id) ids.push_back(*config_.eos_id);
  return ids;
}

void SentencePieceTokenizer::EncodeWordCached(std::string_view word, std::vector<int32_t>* ids) const {
  if (cache_.Lookup(word, ids)) return;
  const size_t first = ids->size();
  EncodeWord(word, ids);
  cache_.Store(word, ids->data() + first, ids->size() - first);
}

void SentencePieceTokenizer::EncodeWord(std::string_view norm, std::vector<int32_t>* out) const {
  struct Sym {
    size_t begin, len;
    int prev, next;
  };
  std::vector<Sym> syms;
  for (size_t i = 0; i < norm.size();) {
    size_t len = 0;
    for (const std::string& u : user_defined_) {
      if (norm.substr(i).starts_with(u)) {
        len = u.size();
        break;
      }
    }
    if (len == 0) len = std::max(1, utf8::ValidSequenceLength(norm, i));
    const int n = static_cast<int>(syms.size());
    syms.push_back({i, len, n - 1, n + 1});
    i += len;
  }
  if (!syms.empty()) syms.back().next = -1;

  struct Cand {
    float score;
    int left, right;
    size_t len;
    bool operator<(const Cand& o) const { return score != o.score ? score < o.score : left > o.left; }
  };
  std::priority_queue<Cand> agenda;
  auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const size_t len = syms[left].len + syms[right].len;
    auto it = normal_.find(norm.substr(syms[left].begin, len));
    if (it == normal_.end() || types_[it->second] == Type::USER_DEFINED) return;
    agenda.push({scores_[it->second], left, right, len});
  };
  for (int i = 0; i + 1 < static_cast<int>(syms.size()); ++i) consider(i, i + 1);
  while (!agenda.empty()) {
    const Cand c = agenda.top();
    agenda.pop();
    Sym &l = syms[c.left], &r = syms[c.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != c.len || l.next != c.right) continue;  // stale
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (l.next >= 0) syms[l.next].prev = c.left;
    consider(l.prev, c.left);
    consider(c.left, l.next);
  }

  std::vector<int32_t>& ids = *out;
  bool prev_unk = false;
  for (int i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) {
    const std::string_view piece = norm.substr(syms[i].begin, syms[i].len);
    auto it = normal_.find(piece);
    if (it != normal_.end()) {
      ids.push_back(it->second);
      prev_unk = false;
    } else if (byte_fallback_) {
      for (unsigned char b : piece) ids.push_back(byte_ids_[b] >= 0 ? byte_ids_[b] : unk_id_);
      prev_unk = false;
    } else if (!prev_unk) {  // a run of unknown characters is one <unk>, as SentencePiece does
      ids.push_back(unk_id_);
      prev_unk = true;
    }
  }
}

// SentencePiece's decoder: "▁" becomes a space and the dummy prefix of the first piece goes;
// byte pieces are joined into characters (U+FFFD per byte when they do not form one); control
// pieces are dropped, or kept as their text with skip_special_tokens = false.
std::string SentencePieceTokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens,
                                           bool) const {
  std::string text, bytes;
  bool at_start = true;
  auto flush_bytes = [&] {
    if (bytes.empty()) return;
    if (utf8::FirstInvalid(bytes) == std::string::npos) {
      text += bytes;
    } else {
      for (size_t k = 0; k < bytes.size(); ++k) text += utf8::kReplacementChar;
    }
    bytes.clear();
    at_start = false;
  };
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    const int type = types_[id];
    if (type == Type::BYTE) {
      bytes.push_back(static_cast<char>(std::stoi(pieces_[id].substr(3, 2), nullptr, 16)));
      continue;
    }
    flush_bytes();
    if (type == Type::CONTROL) {
      if (!skip_special_tokens) text += pieces_[id];
      continue;
    }
    std::string surface = type == Type::UNKNOWN ? unk_surface_ : pieces_[id];
    std::string out;
    for (size_t i = 0; i < surface.size();) {
      if (surface.compare(i, kSpace.size(), kSpace) == 0) {
        out.push_back(' ');
        i += kSpace.size();
      } else {
        out.push_back(surface[i++]);
      }
    }
    // Only the first piece carries the dummy prefix (a second leading "▁" is the text's own).
    if (at_start && add_dummy_prefix_ && !out.empty() && out[0] == ' ' && type != Type::UNKNOWN)
      out.erase(0, 1);
    at_start = false;
    text += out;
  }
  flush_bytes();
  return text;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& model_path,
                                                              const std::string& config_json_path) {
  auto tok = std::make_unique<SentencePieceTokenizer>();
  TPS_RETURN_IF_ERROR(tok->Load(model_path, config_json_path));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace tpserve
