// Tensor-parallel Llama-family forward pass on CPU (Llama 2/3, Mistral, Qwen2, Qwen3 dense).
//
// Per layer, with this rank's shard (see model/partition_plan.h):
//   h = rmsnorm(x)                          x: (n, hidden), replicated on every rank
//   q, k, v = h Wq^T, h Wk^T, h Wv^T        column-parallel: local heads only  (+bias, qk-norm, RoPE)
//   a = attention(q, cache(k, v))           local heads, causal over the sequence's cache
//   x += all_reduce(a Wo^T)                 row-parallel: partial sums over local heads
//   h = rmsnorm(x)
//   x += all_reduce((silu(h Wg^T) * h Wu^T) Wd^T)   column- then row-parallel over local FFN rows
// Embedding and lm_head are vocab-parallel: each rank embeds the ids in its vocab range (zero
// elsewhere, then all-reduce) and produces the logits of its vocab range.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "common/status.h"
#include "cpu/aligned.h"
#include "engine/kv_cache.h"
#include "model/config.h"
#include "model/weights.h"

namespace tpserve {

// One sequence's share of a batched forward pass: n tokens appended at seq->length.
struct ForwardItem {
  const int32_t* ids;
  int n;
  SequenceKv* seq;
};

class LlamaModel {
 public:
  // Takes this rank's weights; `tp` is the TP group (size 1 works without MPI peers).
  LlamaModel(ModelConfig config, ModelWeights weights, Communicator& tp);

  // Runs n tokens of one sequence at positions [seq.length, seq.length + n), writes their K/V
  // into the sequence's blocks of `pool` (which must already hold room for them), and writes
  // this rank's logits of the last token (local_vocab()).
  Status Forward(const int32_t* ids, int n, SequenceKv& seq, KvCachePool& pool, float* logits_local);
  // Several sequences in one pass: every matmul reads each weight row once for all their tokens
  // (decode steps and prefill chunks mixed); attention stays within each sequence. Writes the
  // last-token logits of item i at logits_local[i * local_vocab()].
  Status ForwardBatch(const std::vector<ForwardItem>& items, KvCachePool& pool, float* logits_local);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  Range vocab_range() const { return weights_.shard.lm_head_vocab; }
  // Every TP rank's logits range, in rank order (known from the plan, so no collective needed).
  const std::vector<Range>& all_vocab_ranges() const { return weights_.all_lm_head_vocab; }
  // Rank 0 receives the full-vocabulary logits (vocab_size) from every rank's shard (local_vocab());
  // the other ranks get an empty vector. Collective over the TP group.
  Result<std::vector<float>> GatherLogits(const float* logits_local);
  int local_vocab() const { return static_cast<int>(vocab_range().size()); }
  Communicator& tp() { return tp_; }
  // --enable-deterministic-inference: batch-invariant kernels (per-row dot products and per-query
  // attention instead of GEMMs) and rank-ordered all-reduces, so a token's logits are bitwise the
  // same whatever batch it shares. Off (the default), bf16 weights are held packed for the GEMM
  // kernels (kernels::PackedBf16), which every batch size then reads; on, they are unpacked for
  // the per-row kernels.
  void SetDeterministic(bool on);
  bool deterministic() const { return deterministic_; }

 private:
  Status Embed(const int32_t* ids, int n, float* x);
  // Row bookkeeping of a batch: row t belongs to items[item[t]] at position pos[t].
  struct Batch {
    std::vector<ForwardItem> items;
    std::vector<int> first_row, item, pos;
    std::vector<float> rope;  // (rows, head_dim): each row's RopeTable, the same in every layer
    int rows() const { return static_cast<int>(item.size()); }
  };
  Status Attention(int layer, const Batch& batch, KvCachePool& pool, const float* h, float* out);
  Status Mlp(int layer, int n, const float* h, float* out);
  void RopeTable(int pos, float* cos_sin) const;
  // y(n, w.rows) = x(n, w.cols) * w^T in w's storage dtype (int8 with its row scales).
  void Linear(const HostTensor& w, const float* x, int n, float* y) const;

  ModelConfig config_;
  ModelWeights weights_;
  Communicator& tp_;
  std::vector<double> inv_freq_;  // (head_dim / 2)
  bool deterministic_ = false;
  // Per-layer activations, kept between layers and calls: a prefill chunk's gate/up rows run to
  // tens of MB, and a fresh buffer per layer cost its page faults and zeroing every time (~5 % of
  // a 1024-token prefill). They grow to the largest batch seen; every use writes them in full.
  // They start on cache lines: the pool's threads write the outputs of neighbouring weight blocks
  // (64 floats of a row each), which then share no line where the row length is a multiple of 16
  // floats. (With std::vector's 16-byte alignment each such segment shared its first and last
  // line with the neighbouring blocks' threads: a 16-sequence decode step of `small` at TP 1 x 2
  // threads took 4.7-5.0 ms, and 4.1-4.2 aligned.)
  struct Scratch {
    kernels::AlignedVector<float> x, h, delta, qkv, attn, gate_up, act;
  };
  Scratch scratch_;
};

}  // namespace tpserve
