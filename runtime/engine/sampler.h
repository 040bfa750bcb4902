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
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off
  uint64_t seed = 0;
  bool greedy() const { return temperature <= 0.0f; }
  Status Validate() const;  // rejects negative/NaN temperature, top_p outside (0, 1], top_k < 0
};

// First index of the maximum (ties -> lowest index, the same rule the distributed argmax uses).
int ArgMax(const float* logits, int n);

// Draws a token from full-vocabulary logits: temperature, then top-k, then top-p (nucleus).
int SampleToken(const float* logits, int n, const SamplingParams& p, std::mt19937_64& rng);

}  // namespace tpserve
