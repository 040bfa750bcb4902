// One request, generated to the end on every rank of a TP group in lockstep: prefill the
// prompt, then decode token by token. Rank 0 decides (sampling, stop), and every rank learns
// the token (distributed argmax for greedy, a broadcast for sampling).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/llama.h"
#include "engine/sampler.h"

namespace tpserve {

struct GenerateOptions {
  SamplingParams sampling;
  int max_new_tokens = 16;
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;  // in addition to the model's EOS ids
};

struct GenerateResult {
  std::vector<int32_t> token_ids;  // generated tokens only
  std::string finish_reason;       // "stop" (EOS / stop id) or "length"
  double prefill_seconds = 0, decode_seconds = 0;
};

// Called on every rank after each new token (e.g. to stream it).
using TokenCallback = std::function<void(int32_t token)>;

// Picks the next token from this rank's logits shard; identical result on every rank.
Result<int32_t> SelectToken(LlamaModel& model, const float* logits_local, const SamplingParams& params,
                            std::mt19937_64& rng);

// Checks a request before any collective runs (the same answer on every rank): non-empty
// prompt, ids inside the vocabulary, room in the context, sane sampling values.
Status ValidateGenerateRequest(const ModelConfig& config, const std::vector<int32_t>& prompt,
                               const GenerateOptions& opts);

// Runs a validated request to the end. An error here may leave peers inside a collective.
Result<GenerateResult> Generate(LlamaModel& model, const std::vector<int32_t>& prompt,
                                const GenerateOptions& opts, const TokenCallback& on_token = nullptr);

}  // namespace tpserve
