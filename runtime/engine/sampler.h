// Token selection. Greedy runs distributed (each rank's local argmax, then an all-gather of
// (value, index) pairs); sampling gathers the logits shards to rank 0, which draws the token
// with the request's seeded RNG and broadcasts it.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "common/status.h"

namespace tpserve {

struct SamplingParams {
  float temperature = 0.0f;         // 0 = greedy
  int top_k = 0;                    // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // drop tokens below min_p * p(top token); 0 = off
  float repetition_penalty = 1.0f;  // > 1 discourages tokens already in the sequence; 1 = off
  uint64_t seed = 0;
  bool greedy() const { return temperature <= 0.0f; }
  // Rejects NaN or negative temperature, top_p outside (0, 1], top_k < 0, min_p outside [0, 1),
  // repetition_penalty <= 0.
  Status Validate() const;
};

// HF-style repetition penalty on the logits of `seen` tokens inside [begin, begin + n):
// positive logits are divided by the penalty, negative ones multiplied. Works on a vocab shard.
void ApplyRepetitionPenalty(float* logits, int64_t begin, int n, const std::vector<int32_t>& seen,
                            float penalty);

// Draws a token from full-vocabulary logits: temperature, then top-k, top-p (nucleus), min-p.
int SampleToken(const float* logits, int n, const SamplingParams& p, std::mt19937_64& rng);

}  // namespace tpserve
