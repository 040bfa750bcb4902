#include "model/weights.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>

namespace tpserve {

using kernels::DType;

HostTensor::HostTensor(DType dtype, int64_t rows, int64_t cols)
    : dtype_(dtype), rows_(rows), cols_(cols), data_(bytes()) {}  // 64-byte aligned (LargeBuffer)

HostTensor HostTensor::QuantizedInt8(const HostTensor& src) {
  HostTensor q(DType::kI8, src.rows(), src.cols());
  q.scales_.resize(src.rows());
  std::vector<float> row(src.cols());
  for (int64_t r = 0; r < src.rows(); ++r) {
    kernels::ConvertDType(src.row(r), src.dtype(), row.data(), DType::kF32, row.size());
    q.scales_[r] = kernels::QuantizeRowInt8(row.data(), static_cast<int>(row.size()),
                                            static_cast<int8_t*>(q.data()) + r * src.cols());
  }
  return q;
}

void HostTensor::RowToF32(int64_t r, float* out) const {
  if (!packed_) return kernels::ConvertDType(row(r), dtype_, out, DType::kF32, static_cast<size_t>(cols_));
  std::vector<uint16_t> plain(static_cast<size_t>(cols_));
  packed_->UnpackRow(static_cast<int>(r), plain.data());
  kernels::ConvertDType(plain.data(), DType::kBF16, out, DType::kF32, plain.size());
}

bool HostTensor::Pack() {
  if (packed_ || dtype_ != DType::kBF16 || data_.data() == nullptr) return false;
  packed_ = kernels::PackedBf16::Pack(static_cast<const uint16_t*>(data()), static_cast<int>(rows_),
                                      static_cast<int>(cols_));
  if (packed_) data_ = kernels::LargeBuffer();
  return packed_ != nullptr;
}

void HostTensor::Unpack() {
  if (!packed_) return;
  HostTensor plain(dtype_, rows_, cols_);
  packed_->Unpack(static_cast<uint16_t*>(plain.data()));
  data_ = std::move(plain.data_);
  packed_.reset();
}

void PackWeightsForGemm(ModelWeights* w, bool pack) {
  auto apply = [pack](HostTensor& t) { pack ? static_cast<void>(t.Pack()) : t.Unpack(); };
  for (LayerWeights& L : w->layers) {
    for (HostTensor* t : {&L.qkv, &L.o, &L.gate_up, &L.down}) apply(*t);
  }
  apply(w->lm_head.empty() ? w->embed : w->lm_head);
}

void QuantizeWeightsInt8(ModelWeights* w) {
  // resident_bytes follows each replacement: the old tensor's bytes out, the int8 copy's in.
  auto resident = [](const HostTensor& t) {
    return t.bytes() + (t.row_scales() ? t.rows() * sizeof(float) : 0);
  };
  auto replace = [&](HostTensor& dst, const HostTensor& src) {
    if (src.empty() || src.dtype() == DType::kI8) return;
    HostTensor q = HostTensor::QuantizedInt8(src);
    w->stats.resident_bytes -= dst.empty() ? 0 : resident(dst);
    w->stats.resident_bytes += resident(q);
    dst = std::move(q);
  };
  for (LayerWeights& L : w->layers) {
    for (HostTensor* t : {&L.qkv, &L.o, &L.gate_up, &L.down}) replace(*t, *t);
  }
  replace(w->lm_head, w->lm_head.empty() ? w->embed : w->lm_head);  // tied: an int8 copy of embed
}

namespace {

// Collects the slices one rank needs, then reads them (so the progress line knows the total).
// Slices given the same output tensor are stacked along its rows, in the order given.
class Loader {
 public:
  Loader(const Checkpoint& ckpt, DType dtype) : ckpt_(ckpt), dtype_(dtype) {}

  // Rows x cols of `name` viewed as (rows, cols); an end of -1 means the whole dimension.
  void Slice(const std::string& name, Range rows, Range cols, bool f32, bool replicated, HostTensor* out) {
    jobs_.push_back({name, rows, cols, f32, replicated, out});
  }
  void Whole(const std::string& name, HostTensor* out) { Slice(name, {0, -1}, {0, -1}, true, true, out); }
  void Rows(const std::string& name, Range rows, HostTensor* out, bool f32 = false) {
    Slice(name, rows, {0, -1}, f32, false, out);
  }
  void Cols(const std::string& name, Range cols, HostTensor* out) {
    Slice(name, {0, -1}, cols, false, false, out);
  }

  Status Run(bool progress, LoadStats* stats) {
    uint64_t total = 0;
    std::map<HostTensor*, int64_t> stacked_rows;  // per output: its rows so far, then its total
    std::set<HostTensor*> allocated;
    for (Job& j : jobs_) {
      j.info = ckpt_.Find(j.name);
      if (j.info == nullptr) return TPS_ERROR("checkpoint is missing tensor '{}'", j.name);
      if (j.rows.end < 0) j.rows = {0, j.info->rows()};
      if (j.cols.end < 0) j.cols = {0, j.info->cols()};
      total += static_cast<uint64_t>(j.rows.size() * j.cols.size()) *
               (j.info->nbytes / std::max<int64_t>(1, j.info->numel()));
      j.first_row = stacked_rows[j.out];
      stacked_rows[j.out] += j.rows.size();
    }
    uint64_t done = 0;
    int last_decile = -1;
    for (Job& j : jobs_) {
      if (allocated.insert(j.out).second) {
        *j.out = HostTensor(j.f32 ? DType::kF32 : dtype_, stacked_rows[j.out], j.cols.size());
        stats->resident_bytes += j.out->bytes();
      } else if (j.out->cols() != j.cols.size()) {
        return TPS_ERROR("tensor '{}' has {} columns, but the tensors stacked before it have {}", j.name,
                         j.cols.size(), j.out->cols());
      }
      uint64_t read = 0;
      TPS_RETURN_IF_ERROR(ckpt_.ReadSlice(*j.info, j.rows.begin, j.rows.end, j.cols.begin, j.cols.end,
                                          j.out->dtype(), j.out->row(j.first_row), &read));
      (j.replicated ? stats->replicated_bytes : stats->sharded_bytes) += read;
      done += read;
      const int decile = static_cast<int>(10 * done / std::max<uint64_t>(1, total));
      if (progress && total >= (64u << 20) && decile != last_decile) {  // small loads stay quiet
        last_decile = decile;
        std::fprintf(stderr, "\r[tpserve rank 0] loading weights: %3d%% (%llu / %llu MB)%s", decile * 10,
                     static_cast<unsigned long long>(done >> 20),
                     static_cast<unsigned long long>(total >> 20), decile >= 10 ? "\n" : "");
        std::fflush(stderr);
      }
    }
    return Status();
  }

 private:
  struct Job {
    std::string name;
    Range rows, cols;
    bool f32, replicated;
    HostTensor* out;
    const TensorInfo* info = nullptr;
    int64_t first_row = 0;  // where this slice starts in *out
  };
  const Checkpoint& ckpt_;
  DType dtype_;
  std::vector<Job> jobs_;
};

}  // namespace

Result<ModelWeights> LoadShard(const Checkpoint& ckpt, const ModelConfig& c, const RankShard& shard,
                               DType dtype, bool show_progress) {
  const auto start = std::chrono::steady_clock::now();
  Loader ld(ckpt, dtype);
  ModelWeights w;
  w.shard = shard;
  const int hd = c.head_dim;
  ld.Rows("model.embed_tokens.weight", shard.embed_vocab, &w.embed);
  if (!c.tie_word_embeddings) ld.Rows("lm_head.weight", shard.lm_head_vocab, &w.lm_head);
  ld.Whole("model.norm.weight", &w.final_norm);
  w.layers.resize(c.num_hidden_layers);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    const LayerShard& s = shard.layers[l];
    LayerWeights& L = w.layers[l];
    const Range q_rows{s.q_heads.begin * hd, s.q_heads.end * hd};
    const Range kv_rows{s.kv_heads.begin * hd, s.kv_heads.end * hd};
    ld.Whole(p + "input_layernorm.weight", &L.attn_norm);
    ld.Whole(p + "post_attention_layernorm.weight", &L.mlp_norm);
    ld.Rows(p + "self_attn.q_proj.weight", q_rows, &L.qkv);
    ld.Rows(p + "self_attn.k_proj.weight", kv_rows, &L.qkv);
    ld.Rows(p + "self_attn.v_proj.weight", kv_rows, &L.qkv);
    ld.Cols(p + "self_attn.o_proj.weight", q_rows, &L.o);
    if (c.attention_bias) {
      ld.Rows(p + "self_attn.q_proj.bias", q_rows, &L.q_bias, true);
      ld.Rows(p + "self_attn.k_proj.bias", kv_rows, &L.k_bias, true);
      ld.Rows(p + "self_attn.v_proj.bias", kv_rows, &L.v_bias, true);
    }
    if (c.qk_norm) {
      ld.Whole(p + "self_attn.q_norm.weight", &L.q_norm);
      ld.Whole(p + "self_attn.k_norm.weight", &L.k_norm);
    }
    ld.Rows(p + "mlp.gate_proj.weight", s.ffn, &L.gate_up);
    ld.Rows(p + "mlp.up_proj.weight", s.ffn, &L.gate_up);
    ld.Cols(p + "mlp.down_proj.weight", s.ffn, &L.down);
  }
  TPS_RETURN_IF_ERROR(ld.Run(show_progress, &w.stats));
  w.stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return w;
}

}  // namespace tpserve
