// Synthetic HF-layout Llama-family checkpoints with seeded random weights, for demos, tests and
// benchmarks (`tpserve-mkmodel`). The same spec and seed always give the same bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "cpu/dtype.h"
#include "model/config.h"

namespace tpserve {

struct SyntheticSpec {
  std::string preset = "tiny";  // tiny | small | bench-1b
  kernels::DType dtype = kernels::DType::kBF16;
  uint64_t seed = 0;
  std::string arch = "llama";  // llama | qwen2 (q/k/v bias) | qwen3 (qk-norm)
  bool tie_word_embeddings = false;
  bool llama3_rope_scaling = false;
  // Overrides for a model that ships a real tokenizer (tpserve-mkmodel --tokenizer); -1: preset.
  int vocab_size = -1, bos_token_id = -1, eos_token_id = -1;
};

std::vector<std::string> SyntheticPresets();
Result<ModelConfig> SyntheticConfig(const SyntheticSpec& spec);
// Writes config.json, generation_config.json and model.safetensors into out_dir (created).
Status WriteSyntheticModel(const SyntheticSpec& spec, const std::string& out_dir);

}  // namespace tpserve
