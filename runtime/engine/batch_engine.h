// BatchEngine: the set of sequences a TP group is generating, advanced one iteration at a time.
// Every rank of the group holds an identical BatchEngine and applies the same StepPlans, so the
// sequences, their order and every collective match across ranks. Rank 0 reads the events.
//
// Per Step(): admit waiting requests (FCFS) while fewer than max_running_requests run and the
// paged KV cache has free blocks for the request's whole reservation (so a running sequence never
// runs out of cache, and nothing needs preempting); a request that does not fit waits. A request
// whose prompt starts with blocks that the prefix cache holds shares them and starts its prefill
// after them (engine/prefix_cache.h). Then one
// batched forward pass: one decode token of every sequence past its prompt, plus prompt chunks of
// the others in admission order, at most chunked_prefill_size prompt tokens per step. A sequence
// whose prompt completes (or that decoded) gets its next token (distributed argmax for greedy,
// logits gather + rank-0 sampling otherwise).
// A sequence's result depends only on its own tokens, never on the batch it shares.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/status.h"
#include "cpu/aligned.h"
#include "engine/llama.h"
#include "engine/prefix_cache.h"
#include "engine/step_plan.h"

namespace tpserve {

enum class FinishReason { kNone = 0, kStop = 1, kLength = 2 };
const char* FinishReasonName(FinishReason r);  // "", "stop", "length"

struct TokenEvent {
  uint64_t id = 0;
  int32_t token = 0;
  float logprob = 0.0f;  // only when the request asked for logprobs
  FinishReason finish = FinishReason::kNone;
};

struct EngineOptions {
  int max_running_requests = 64;
  int context_length = 0;       // 0: the model's max_position_embeddings
  int64_t kv_cache_blocks = 0;  // 0: enough for max_running_requests full-context sequences
  int kv_block_size = KvCachePool::kDefaultBlockSize;
  int chunked_prefill_size = 2048;  // max prompt tokens prefilled per step over all sequences; 0: no limit
  std::string kv_cache_dtype = "auto";  // auto | float32 | bfloat16 (KvCacheDtype)
  bool prefix_cache = true;             // reuse cached KV blocks of equal prompt prefixes
};

// The KV cache's element type for --kv-cache-dtype: "auto" is bf16 where the model's weights are
// bf16 (as vLLM and SGLang cache in the model's dtype) and f32 otherwise (f32, f16 and int8
// weights); "float32"/"f32" and "bfloat16"/"bf16" ask for one. An unknown name is an error.
Result<kernels::DType> KvCacheDtype(const std::string& name, const LlamaModel& model);

struct EngineStats {
  int running = 0;
  int waiting = 0;
  int64_t kv_capacity_tokens = 0;                   // blocks x block size
  int64_t kv_used_tokens = 0;                       // tokens of the blocks held by running sequences
  int64_t kv_used_bytes = 0;                        // this rank's bytes of those blocks
  int64_t kv_total_blocks = 0, kv_free_blocks = 0;  // free: what a new request can get
  int kv_block_size = 0;
  // Prefix cache: blocks it holds (shared or unreferenced; the unreferenced ones count as free),
  // and since start, prompt tokens of admitted requests and those of them found in the cache.
  int64_t prefix_cached_blocks = 0, prefix_query_tokens = 0, prefix_hit_tokens = 0;
};

// Checks a request against the model and cache limits (the same answer on every rank).
Status ValidateRequest(const ModelConfig& config, int context_length, int64_t kv_capacity_tokens,
                       const RequestSpec& spec);
// KV tokens a request reserves at admission: its prompt plus max_new_tokens, capped by the context.
int64_t ReservedTokens(const RequestSpec& spec, int context_length);

// Token choice for one sequence from this rank's logits shard (identical result on every rank).
struct TokenChoice {
  int32_t token = 0;
  float logprob = 0.0f;
};
// Greedy choices of several sequences in one collective (all-gather of one candidate per
// sequence per rank); logits are final (repetition penalty already applied).
Result<std::vector<TokenChoice>> SelectGreedyTokens(LlamaModel& model,
                                                    const std::vector<float*>& logits_local,
                                                    const std::vector<bool>& want_logprob);
Result<TokenChoice> SelectToken(LlamaModel& model, float* logits_local, const SamplingParams& params,
                                const std::vector<int32_t>& seen, bool want_logprob, std::mt19937_64& rng);

class BatchEngine {
 public:
  BatchEngine(LlamaModel& model, EngineOptions opts);
  ~BatchEngine();

  int context_length() const { return context_; }
  const KvCachePool& kv_pool() const { return pool_; }
  // Checks a request before it enters a plan (the same answer on every rank).
  Status Validate(const RequestSpec& spec) const;
  // Queues plan.add (already validated) and drops plan.cancel at once, freeing their KV blocks.
  void Apply(const StepPlan& plan);
  bool HasWork() const { return !running_.empty() || !waiting_.empty(); }
  // One iteration over every running sequence. An error may leave peers inside a collective.
  Result<std::vector<TokenEvent>> Step();
  EngineStats stats() const;

 private:
  struct Sequence;
  LlamaModel& model_;
  EngineOptions opts_;
  int context_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  KvCachePool pool_;
  PrefixCache cache_;  // owns the pool's blocks from here on
  // Whether a running sequence is about to cache the block after the `shared` blocks that s
  // found, with s's tokens (requests with one system prompt arriving together: the first
  // prefills it, the others wait a step or a few and share it instead of computing it again).
  bool PrefixBeingPrefilled(const Sequence& s, int shared) const;
  int64_t prefix_query_tokens_ = 0, prefix_hit_tokens_ = 0;
  // (items, local vocab) scratch, on cache lines (see LlamaModel::Scratch)
  kernels::AlignedVector<float> logits_;
};

}  // namespace tpserve
