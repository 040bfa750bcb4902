// The weights one TP rank holds, and the loader that reads them from a checkpoint according to
// a validated partition plan. Matrices are row-major (out, in) in the storage dtype; norm
// weights and biases are always f32.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "common/status.h"
#include "cpu/dtype.h"
#include "cpu/gemm.h"
#include "cpu/large_buffer.h"
#include "model/config.h"
#include "model/partition_plan.h"
#include "model/safetensors.h"

namespace tpserve {

// A dense (rows, cols) tensor in host memory (a 1-D tensor has cols = 1), 64-byte aligned. A bf16
// matrix may instead be held packed for the GEMM kernels (kernels::PackedBf16); data() and row()
// are then null, and the matmul and RowToF32 read the packed form.
class HostTensor {
 public:
  HostTensor() = default;
  HostTensor(kernels::DType dtype, int64_t rows, int64_t cols);
  bool empty() const { return data_.data() == nullptr && packed_ == nullptr; }
  kernels::DType dtype() const { return dtype_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  size_t bytes() const { return static_cast<size_t>(rows_ * cols_) * kernels::DTypeSize(dtype_); }
  void* data() { return data_.data(); }
  const void* data() const { return data_.data(); }
  const float* f32() const { return static_cast<const float*>(data()); }
  const void* row(int64_t r) const {
    return static_cast<const char*>(data()) + static_cast<size_t>(r * cols_) * kernels::DTypeSize(dtype_);
  }
  void* row(int64_t r) { return const_cast<void*>(std::as_const(*this).row(r)); }
  // int8 weights: one scale per row (w = q * scale); nullptr for float dtypes.
  const float* row_scales() const { return scales_.empty() ? nullptr : scales_.data(); }
  // A per-row symmetric int8 copy of a float matrix.
  static HostTensor QuantizedInt8(const HostTensor& src);
  // Row r widened to f32 (cols values), from either form.
  void RowToF32(int64_t r, float* out) const;

  // Replaces a bf16 matrix by its packed form; false (and unchanged) for other dtypes or where
  // this CPU's kernels keep the plain layout. Unpack restores the plain form bit for bit.
  bool Pack();
  void Unpack();
  const kernels::PackedBf16* packed() const { return packed_.get(); }

 private:
  kernels::DType dtype_ = kernels::DType::kF32;
  int64_t rows_ = 0, cols_ = 0;
  kernels::LargeBuffer data_;  // on huge pages where the kernel offers them
  std::unique_ptr<kernels::PackedBf16> packed_;
  std::vector<float> scales_;
};

// q/k/v and gate/up are stored stacked along rows (as vLLM's QKVParallelLinear and
// MergedColumnParallelLinear do): one matmul per group reads them in one stream, and a batched
// step converts its activations once for the group instead of once per projection.
struct LayerWeights {
  HostTensor attn_norm, mlp_norm;     // (hidden) f32
  HostTensor qkv;                     // (local q rows + 2 * local kv rows, hidden): q, then k, then v
  HostTensor q_bias, k_bias, v_bias;  // (local heads * head_dim) f32, Qwen2 only
  HostTensor q_norm, k_norm;          // (head_dim) f32, Qwen3 only
  HostTensor o;                       // (hidden, local q heads * head_dim)
  HostTensor gate_up;                 // (2 * local ffn, hidden): gate rows, then up rows
  HostTensor down;                    // (hidden, local ffn)
};

// What the loader read, for the "each rank loads about total/T" guarantee.
struct LoadStats {
  uint64_t sharded_bytes = 0;     // bytes read from disk for split tensors
  uint64_t replicated_bytes = 0;  // bytes read from disk for tensors every rank holds
  uint64_t resident_bytes = 0;    // bytes held in memory after conversion
  double seconds = 0;
};

struct ModelWeights {
  RankShard shard;
  std::vector<Range> all_lm_head_vocab;  // every TP rank's logits range, in rank order
  HostTensor embed;                      // (local vocab rows, hidden), embed_vocab range
  HostTensor lm_head;                    // (local vocab rows, hidden); empty when tied (embed is used)
  HostTensor final_norm;                 // (hidden) f32
  std::vector<LayerWeights> layers;
  LoadStats stats;

  const HostTensor& logits_weight() const { return lm_head.empty() ? embed : lm_head; }
};

// --quantization int8: every projection matrix and the lm_head become per-row int8 (the
// embedding rows and norms stay as loaded; a tied lm_head gets its own int8 copy).
void QuantizeWeightsInt8(ModelWeights* w);

// Packs (pack = true) or unpacks every bf16 projection matrix and the logits matrix (for tied
// embeddings that is the embedding itself: Embed reads its rows through RowToF32). The GEMM
// kernels read packed weights as they are; --enable-deterministic-inference needs the plain ones.
void PackWeightsForGemm(ModelWeights* w, bool pack);

// Reads this rank's shard. weight_dtype is the storage dtype of matrices (conversion happens
// once at load). show_progress prints a progress line on stderr for large loads.
Result<ModelWeights> LoadShard(const Checkpoint& ckpt, const ModelConfig& config, const RankShard& shard,
                               kernels::DType weight_dtype, bool show_progress);

}  // namespace tpserve
