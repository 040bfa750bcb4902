#include "model/synthetic.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "model/partition_plan.h"
#include "model/safetensors.h"

namespace tpserve {
namespace {

using kernels::DType;
using nlohmann::json;

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t HashName(const std::string& s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

// How a tensor is initialised: uniform in [center - half_width, center + half_width].
struct Init {
  double center, half_width;
};

Init InitFor(const std::string& name, const std::vector<int64_t>& shape) {
  const bool is_norm = name.find("norm") != std::string::npos;
  if (is_norm) return {1.0, 0.1};
  if (name.find(".bias") != std::string::npos) return {0.0, 0.1};
  if (name == "model.embed_tokens.weight") return {0.0, std::sqrt(3.0)};  // unit variance
  // Variance 1/fan_in keeps activations at unit scale through each projection.
  const double fan_in = static_cast<double>(shape.back());
  return {0.0, std::sqrt(3.0 / fan_in)};
}

}  // namespace

std::vector<std::string> SyntheticPresets() {
  return {"tiny", "small", "bench-1b"};
}

Result<ModelConfig> SyntheticConfig(const SyntheticSpec& spec) {
  ModelConfig c;
  if (spec.preset == "tiny") {
    c.hidden_size = 128, c.num_hidden_layers = 4, c.num_attention_heads = 8, c.num_key_value_heads = 2;
    c.intermediate_size = 344, c.vocab_size = 1000, c.max_position_embeddings = 1024;
  } else if (spec.preset == "small") {
    c.hidden_size = 512, c.num_hidden_layers = 8, c.num_attention_heads = 8, c.num_key_value_heads = 4;
    c.intermediate_size = 1536, c.vocab_size = 32000, c.max_position_embeddings = 2048;
  } else if (spec.preset == "bench-1b") {  // TinyLlama-1.1B shape
    c.hidden_size = 2048, c.num_hidden_layers = 22, c.num_attention_heads = 32, c.num_key_value_heads = 4;
    c.intermediate_size = 5632, c.vocab_size = 32000, c.max_position_embeddings = 2048;
  } else {
    return TPS_ERROR("unknown preset '{}' (choose tiny, small or bench-1b)", spec.preset);
  }
  if (spec.arch != "llama" && spec.arch != "qwen2" && spec.arch != "qwen3") {
    return TPS_ERROR("unknown arch '{}' (choose llama, qwen2 or qwen3)", spec.arch);
  }
  c.model_type = spec.arch;
  c.head_dim = c.hidden_size / c.num_attention_heads;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = spec.arch == "llama" ? 10000.0 : 1000000.0;
  c.attention_bias = spec.arch == "qwen2";
  c.qk_norm = spec.arch == "qwen3";
  c.tie_word_embeddings = spec.tie_word_embeddings;
  c.bos_token_id = spec.bos_token_id >= 0 ? spec.bos_token_id : 1;
  c.eos_token_ids = {spec.eos_token_id >= 0 ? spec.eos_token_id : 2};
  if (spec.vocab_size > 0) c.vocab_size = spec.vocab_size;
  c.torch_dtype = spec.dtype == DType::kF32 ? "float32" : spec.dtype == DType::kF16 ? "float16" : "bfloat16";
  if (spec.llama3_rope_scaling) {
    c.rope_scaling.type = RopeScaling::Type::kLlama3;
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 64;  // small, so the tiny context spans all three bands
  }
  return c;
}

Status WriteSyntheticModel(const SyntheticSpec& spec, const std::string& out_dir) {
  TPS_ASSIGN_OR_RETURN(ModelConfig c, SyntheticConfig(spec));
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return TPS_ERROR("cannot create '{}': {}", out_dir, ec.message());

  json cfg = {{"architectures",
               {c.model_type == "llama"   ? "LlamaForCausalLM"
                : c.model_type == "qwen2" ? "Qwen2ForCausalLM"
                                          : "Qwen3ForCausalLM"}},
              {"model_type", c.model_type},
              {"hidden_size", c.hidden_size},
              {"intermediate_size", c.intermediate_size},
              {"num_hidden_layers", c.num_hidden_layers},
              {"num_attention_heads", c.num_attention_heads},
              {"num_key_value_heads", c.num_key_value_heads},
              {"head_dim", c.head_dim},
              {"vocab_size", c.vocab_size},
              {"max_position_embeddings", c.max_position_embeddings},
              {"rms_norm_eps", c.rms_norm_eps},
              {"rope_theta", c.rope_theta},
              {"hidden_act", "silu"},
              {"attention_bias", c.attention_bias},
              {"tie_word_embeddings", c.tie_word_embeddings},
              {"torch_dtype", c.torch_dtype},
              {"bos_token_id", c.bos_token_id},
              {"eos_token_id", c.eos_token_ids[0]},
              {"tpserve_synthetic", {{"preset", spec.preset}, {"seed", spec.seed}}}};
  if (c.rope_scaling.type == RopeScaling::Type::kLlama3) {
    cfg["rope_scaling"] = {
        {"rope_type", "llama3"},
        {"factor", c.rope_scaling.factor},
        {"low_freq_factor", c.rope_scaling.low_freq_factor},
        {"high_freq_factor", c.rope_scaling.high_freq_factor},
        {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  }
  std::ofstream(fs::path(out_dir) / "config.json") << cfg.dump(2) << "\n";
  std::ofstream(fs::path(out_dir) / "generation_config.json")
      << json{{"bos_token_id", c.bos_token_id}, {"eos_token_id", c.eos_token_ids[0]}}.dump(2) << "\n";

  std::vector<SafetensorsWriter::Entry> entries;
  for (const TensorSpec& t : ModelTensors(c)) entries.push_back({t.name, spec.dtype, t.shape});
  TPS_ASSIGN_OR_RETURN(
      SafetensorsWriter writer,
      SafetensorsWriter::Create((fs::path(out_dir) / "model.safetensors").string(), entries));
  std::vector<float> values;
  std::vector<uint16_t> half;
  for (const auto& e : entries) {
    int64_t n = 1;
    for (int64_t d : e.shape) n *= d;
    values.resize(n);
    const Init init = InitFor(e.name, e.shape);
    uint64_t state = spec.seed ^ HashName(e.name);
    for (int64_t i = 0; i < n; ++i) {
      const double u = static_cast<double>(SplitMix64(state) >> 11) * 0x1.0p-53;  // [0, 1)
      values[i] = static_cast<float>(init.center + (2.0 * u - 1.0) * init.half_width);
    }
    if (spec.dtype == DType::kF32) {
      TPS_RETURN_IF_ERROR(writer.Append(values.data(), values.size() * 4));
    } else {
      half.resize(n);
      kernels::ConvertDType(values.data(), DType::kF32, half.data(), spec.dtype, n);
      TPS_RETURN_IF_ERROR(writer.Append(half.data(), half.size() * 2));
    }
  }
  return writer.Close();
}

}  // namespace tpserve
