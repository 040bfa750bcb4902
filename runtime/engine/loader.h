// From a model directory (and optionally a partition plan file) to this rank's LlamaModel:
// config.json, checkpoint headers, plan (default or --partition), validation, shard load.
// Validation runs identically on every rank, so a bad input fails everywhere with the same message.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "common/status.h"
#include "engine/llama.h"

namespace tpserve {

struct LoadOptions {
  std::string model_path;
  std::string partition_path;  // empty: the default plan, computed in memory
  std::string dtype = "auto";  // auto (checkpoint dtype) | f32 | bf16 | f16
  std::string quantization;    // "" | int8 (weight-only, per-row scales)
  bool show_progress = false;
};

Result<std::unique_ptr<LlamaModel>> LoadModel(const LoadOptions& opts, Communicator& tp);

}  // namespace tpserve
