#include "model/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace tpserve {
namespace {

using nlohmann::json;

template <typename T>
Status Get(const json& j, const char* key, const std::string& src, T* out, bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return TPS_ERROR("{}: missing required key '{}'", src, key);
    return Status();
  }
  try {
    *out = it->get<T>();
  } catch (const json::exception& e) {
    return TPS_ERROR("{}: key '{}' has the wrong type ({})", src, key, e.what());
  }
  return Status();
}

}  // namespace

Result<ModelConfig> LoadModelConfig(const std::string& path) {
  std::string file = path;
  if (std::filesystem::is_directory(path)) file = (std::filesystem::path(path) / "config.json").string();
  std::ifstream in(file);
  if (!in) {
    if (!std::filesystem::exists(path)) {
      return TPS_ERROR(
          "model path '{}' does not exist; pass --model-path with a Hugging Face model directory", path);
    }
    return TPS_ERROR("cannot open '{}': a Hugging Face model directory needs a config.json", file);
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseModelConfig(ss.str(), file);
}

Result<ModelConfig> ParseModelConfig(const std::string& text, const std::string& src) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    return TPS_ERROR("{}: not valid JSON: {}", src, e.what());
  }
  if (!j.is_object()) return TPS_ERROR("{}: expected a JSON object", src);
  ModelConfig c;
  TPS_RETURN_IF_ERROR(Get(j, "model_type", src, &c.model_type, false));
  const std::string& mt = c.model_type;
  if (mt != "llama" && mt != "mistral" && mt != "qwen2" && mt != "qwen3") {
    return TPS_ERROR("{}: model_type '{}' is not supported (supported: llama, mistral, qwen2, qwen3)", src,
                     mt);
  }
  TPS_RETURN_IF_ERROR(Get(j, "hidden_size", src, &c.hidden_size, true));
  TPS_RETURN_IF_ERROR(Get(j, "intermediate_size", src, &c.intermediate_size, true));
  TPS_RETURN_IF_ERROR(Get(j, "num_hidden_layers", src, &c.num_hidden_layers, true));
  TPS_RETURN_IF_ERROR(Get(j, "num_attention_heads", src, &c.num_attention_heads, true));
  c.num_key_value_heads = c.num_attention_heads;
  TPS_RETURN_IF_ERROR(Get(j, "num_key_value_heads", src, &c.num_key_value_heads, false));
  TPS_RETURN_IF_ERROR(Get(j, "vocab_size", src, &c.vocab_size, true));
  TPS_RETURN_IF_ERROR(Get(j, "max_position_embeddings", src, &c.max_position_embeddings, false));
  TPS_RETURN_IF_ERROR(Get(j, "rms_norm_eps", src, &c.rms_norm_eps, false));
  TPS_RETURN_IF_ERROR(Get(j, "rope_theta", src, &c.rope_theta, false));
  TPS_RETURN_IF_ERROR(Get(j, "tie_word_embeddings", src, &c.tie_word_embeddings, false));
  TPS_RETURN_IF_ERROR(Get(j, "torch_dtype", src, &c.torch_dtype, false));
  TPS_RETURN_IF_ERROR(Get(j, "bos_token_id", src, &c.bos_token_id, false));
  c.attention_bias = (mt == "qwen2");
  TPS_RETURN_IF_ERROR(Get(j, "attention_bias", src, &c.attention_bias, false));
  c.qk_norm = (mt == "qwen3");

  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    if (it->is_number_integer()) {
      c.eos_token_ids.push_back(it->get<int>());
    } else if (it->is_array()) {
      for (const auto& e : *it) {
        if (!e.is_number_integer()) return TPS_ERROR("{}: eos_token_id must hold integers", src);
        c.eos_token_ids.push_back(e.get<int>());
      }
    } else {
      return TPS_ERROR("{}: eos_token_id must be an integer or a list of integers", src);
    }
  }

  for (auto [key, value] : {std::pair{"hidden_size", c.hidden_size},
                            {"intermediate_size", c.intermediate_size},
                            {"num_hidden_layers", c.num_hidden_layers},
                            {"num_attention_heads", c.num_attention_heads},
                            {"num_key_value_heads", c.num_key_value_heads},
                            {"vocab_size", c.vocab_size},
                            {"max_position_embeddings", c.max_position_embeddings}}) {
    if (value <= 0) return TPS_ERROR("{}: '{}' must be positive, got {}", src, key, value);
  }
  // A zero, negative or non-finite epsilon or RoPE base loads, and then every output is garbage.
  for (auto [key, value] : {std::pair{"rms_norm_eps", c.rms_norm_eps}, {"rope_theta", c.rope_theta}}) {
    if (!(value > 0.0) || !std::isfinite(value)) {
      return TPS_ERROR("{}: '{}' must be a positive number, got {}; fix it in the checkpoint's config.json",
                       src, key, value);
    }
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return TPS_ERROR("{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", src,
                     c.num_attention_heads, c.num_key_value_heads);
  }
  c.head_dim = 0;
  TPS_RETURN_IF_ERROR(Get(j, "head_dim", src, &c.head_dim, false));
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return TPS_ERROR("{}: hidden_size ({}) is not a multiple of num_attention_heads ({}); set 'head_dim'",
                       src, c.hidden_size, c.num_attention_heads);
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0)
    return TPS_ERROR("{}: head_dim ({}) must be even for rotary embeddings", src, c.head_dim);

  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    const json& rs = *it;
    std::string type;
    if (rs.contains("rope_type")) {
      type = rs["rope_type"].get<std::string>();
    } else if (rs.contains("type")) {
      type = rs["type"].get<std::string>();
    }
    auto num = [&](const char* key, double* out) -> Status {
      return Get(rs, key, src + " rope_scaling", out, true);
    };
    if (type == "llama3") {
      c.rope_scaling.type = RopeScaling::Type::kLlama3;
      TPS_RETURN_IF_ERROR(num("factor", &c.rope_scaling.factor));
      TPS_RETURN_IF_ERROR(num("low_freq_factor", &c.rope_scaling.low_freq_factor));
      TPS_RETURN_IF_ERROR(num("high_freq_factor", &c.rope_scaling.high_freq_factor));
      TPS_RETURN_IF_ERROR(Get(rs, "original_max_position_embeddings", src + " rope_scaling",
                              &c.rope_scaling.original_max_position_embeddings, true));
    } else if (type == "linear") {
      c.rope_scaling.type = RopeScaling::Type::kLinear;
      TPS_RETURN_IF_ERROR(num("factor", &c.rope_scaling.factor));
    } else if (type != "default" && !type.empty()) {
      return TPS_ERROR("{}: rope_scaling type '{}' is not supported (supported: llama3, linear, default)",
                       src, type);
    }
    const RopeScaling& r = c.rope_scaling;
    if (!(r.factor >= 1.0) || !std::isfinite(r.factor)) {  // as Hugging Face checks it
      return TPS_ERROR(
          "{}: rope_scaling 'factor' must be a number >= 1, got {}; fix it in the checkpoint's config.json",
          src, r.factor);
    }
    for (auto [key, value] :
         {std::pair{"low_freq_factor", r.low_freq_factor},
          {"high_freq_factor", r.high_freq_factor},
          {"original_max_position_embeddings", static_cast<double>(r.original_max_position_embeddings)}}) {
      if (!(value > 0.0) || !std::isfinite(value)) {
        return TPS_ERROR(
            "{}: rope_scaling '{}' must be a positive number, got {}; fix it in the checkpoint's config.json",
            src, key, value);
      }
    }
    if (r.type == RopeScaling::Type::kLlama3 && !(r.high_freq_factor > r.low_freq_factor)) {
      return TPS_ERROR(
          "{}: rope_scaling 'high_freq_factor' ({}) must be above 'low_freq_factor' ({}); fix it in the "
          "checkpoint's config.json",
          src, r.high_freq_factor, r.low_freq_factor);
    }
  }
  return c;
}

std::vector<double> RopeInvFreq(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<double> inv(half);
  for (int i = 0; i < half; ++i) inv[i] = 1.0 / std::pow(c.rope_theta, (2.0 * i) / c.head_dim);
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == RopeScaling::Type::kLinear) {
    for (double& f : inv) f /= rs.factor;
  } else if (rs.type == RopeScaling::Type::kLlama3) {
    // Long wavelengths are slowed by `factor`, short ones kept, and the band between is blended.
    const double old_ctx = rs.original_max_position_embeddings;
    const double low_freq_wavelen = old_ctx / rs.low_freq_factor;
    const double high_freq_wavelen = old_ctx / rs.high_freq_factor;
    for (double& f : inv) {
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen < high_freq_wavelen) continue;
      if (wavelen > low_freq_wavelen) {
        f /= rs.factor;
      } else {
        const double smooth =
            (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
    }
  }
  return inv;
}

}  // namespace tpserve
