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
#include "model/config.h"
#include "model/weights.h"

namespace tpserve {

// KV cache of one sequence for this rank's KV heads. Layout per layer: k and v each
// (local_kv_heads, max_tokens, head_dim), so one head's keys are contiguous for attention.
class KvCache {
 public:
  KvCache(const ModelConfig& config, const RankShard& shard, int max_tokens);
  int max_tokens() const { return max_tokens_; }
  int length() const { return length_; }  // tokens stored so far
  void set_length(int n) { length_ = n; }
  float* k(int layer, int local_head, int pos) { return Ptr(k_, layer, local_head, pos); }
  float* v(int layer, int local_head, int pos) { return Ptr(v_, layer, local_head, pos); }
  size_t bytes() const;

 private:
  float* Ptr(std::vector<std::vector<float>>& buf, int layer, int head, int pos) {
    return buf[layer].data() + (static_cast<size_t>(head) * max_tokens_ + pos) * head_dim_;
  }
  int max_tokens_, head_dim_, length_ = 0;
  std::vector<std::vector<float>> k_, v_;  // [layer] -> (local_kv_heads, max_tokens, head_dim)
};

class LlamaModel {
 public:
  // Takes this rank's weights; `tp` is the TP group (size 1 works without MPI peers).
  LlamaModel(ModelConfig config, ModelWeights weights, Communicator& tp);

  // Runs n tokens of one sequence at positions [cache.length(), cache.length() + n), appends
  // their K/V to the cache, and writes this rank's logits of the last token (local_vocab()).
  Status Forward(const int32_t* ids, int n, KvCache& cache, float* logits_local);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  Range vocab_range() const { return weights_.shard.lm_head_vocab; }
  int local_vocab() const { return static_cast<int>(vocab_range().size()); }
  Communicator& tp() { return tp_; }

 private:
  Status Embed(const int32_t* ids, int n, float* x);
  Status Attention(int layer, int n, int pos0, KvCache& cache, const float* h, float* out);
  Status Mlp(int layer, int n, const float* h, float* out);
  void RopeTable(int pos, float* cos_sin) const;

  ModelConfig config_;
  ModelWeights weights_;
  Communicator& tp_;
  std::vector<double> inv_freq_;  // (head_dim / 2)
};

}  // namespace tpserve
