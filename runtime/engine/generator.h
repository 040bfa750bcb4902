// One request generated to the end on every rank of a TP group (`tpserve run`): a BatchEngine
// holding a single sequence, stepped until it finishes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/batch_engine.h"

namespace tpserve {

struct GenerateOptions {
  SamplingParams sampling;
  int max_new_tokens = 16;
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;  // in addition to the model's EOS ids
  std::string kv_cache_dtype = "auto";  // EngineOptions::kv_cache_dtype
};

struct GenerateResult {
  std::vector<int32_t> token_ids;  // generated tokens only
  std::string finish_reason;       // "stop" (EOS / stop id) or "length"
  double prefill_seconds = 0, decode_seconds = 0;
};

RequestSpec MakeRequestSpec(const std::vector<int32_t>& prompt, const GenerateOptions& opts);

// Checks a request before any collective runs (the same answer on every rank).
Status ValidateGenerateRequest(LlamaModel& model, const std::vector<int32_t>& prompt,
                               const GenerateOptions& opts);

// Runs a request to the end. An error here may leave peers inside a collective.
Result<GenerateResult> Generate(LlamaModel& model, const std::vector<int32_t>& prompt,
                                const GenerateOptions& opts);

}  // namespace tpserve
