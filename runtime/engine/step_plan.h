// StepPlan: what rank 0 decided for the next engine iteration, broadcast to every rank of the
// TP group (size first, then bytes). Every rank applies the same plan to its BatchEngine, so
// all ranks hold the same sequences in the same order and run the same collectives.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "engine/sampler.h"

namespace tpserve {

struct RequestSpec {
  uint64_t id = 0;
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int32_t max_new_tokens = 16;
  bool ignore_eos = false;
  bool logprobs = false;
  std::vector<int32_t> stop_token_ids;
};

struct StepPlan {
  std::vector<RequestSpec> add;  // new requests, in arrival order
  std::vector<uint64_t> cancel;  // requests to drop now (client gone, stop string, shutdown)
  bool shutdown = false;         // leave the engine loop after applying this plan
  bool empty() const { return add.empty() && cancel.empty() && !shutdown; }
};

std::vector<uint8_t> SerializeStepPlan(const StepPlan& plan);
Result<StepPlan> DeserializeStepPlan(const std::vector<uint8_t>& bytes);

}  // namespace tpserve
