// ModelConfig: the parts of a HF config.json that the Llama-family forward needs.
// Supported model_type: llama, mistral, qwen2 (q/k/v bias), qwen3 (per-head q/k RMSNorm).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace tpserve {

struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;                 // llama3
  double high_freq_factor = 4.0;                // llama3
  int original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  std::string model_type = "llama";
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;  // explicit in Qwen3 configs; hidden_size / num_attention_heads otherwise
  int vocab_size = 0;
  int max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2)
  bool qk_norm = false;         // RMSNorm over each q/k head before RoPE (Qwen3)
  bool tie_word_embeddings = false;
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  std::string torch_dtype = "float32";

  int q_size() const { return num_attention_heads * head_dim; }
  int kv_size() const { return num_key_value_heads * head_dim; }
  int group_size() const { return num_attention_heads / num_key_value_heads; }
};

// Parses DIR/config.json (or a file path). Errors name the file, the key and the fix.
Result<ModelConfig> LoadModelConfig(const std::string& path);
Result<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source_name);

// RoPE inverse frequencies (head_dim/2), with rope_scaling applied.
std::vector<double> RopeInvFreq(const ModelConfig& config);

}  // namespace tpserve
