// tpserve-partition: writes the default partition plan of a model for a TP size and prints
// each rank's weight bytes and KV cache bytes per token.
//   tpserve-partition --model-path DIR --tp 4 -o plan.yaml
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>

#include "cpu/dtype.h"
#include "model/config.h"
#include "model/partition_plan.h"
#include "model/safetensors.h"

namespace {
std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return fmt::format("{:.2f} {}", b, units[u]);
}
}  // namespace

int main(int argc, char** argv) {
  using namespace tpserve;
  std::string model_path, out_path, dtype_name = "auto";
  int tp = 1;
  CLI::App app{"Write a tensor-parallel partition plan (YAML) for a Hugging Face model"};
  app.add_option("--model-path", model_path, "Hugging Face model directory")->required();
  app.add_option("--tp", tp, "Tensor-parallel size")->required();
  app.add_option("-o,--output", out_path, "Output YAML (default: stdout)");
  app.add_option("--dtype", dtype_name, "Weight dtype for the byte counts: auto, f32, bf16, f16");
  CLI11_PARSE(app, argc, argv);

  auto fail = [](const Status& s) {
    std::cerr << "tpserve-partition: error: " << s.message() << "\n";
    return 1;
  };
  auto config = LoadModelConfig(model_path);
  if (!config.ok()) return fail(config.status());
  auto ckpt = Checkpoint::Open(model_path);
  if (!ckpt.ok()) return fail(ckpt.status());
  auto plan = MakeDefaultPlan(*config, *ckpt, tp);
  if (!plan.ok()) return fail(plan.status());
  auto shards = ValidatePlan(*plan, *config, *ckpt, tp, "default plan");
  if (!shards.ok()) return fail(shards.status());

  size_t esize = 2;
  kernels::DType dt = kernels::DType::kBF16;
  if (dtype_name != "auto" && kernels::ParseDType(dtype_name, &dt)) {
    esize = kernels::DTypeSize(dt);
  } else if (const TensorInfo* t = ckpt->Find("model.embed_tokens.weight");
             t && SafetensorsDType(t->dtype, &dt)) {
    esize = kernels::DTypeSize(dt);
  }
  const std::string yaml = PlanToYaml(*plan, *config);
  if (out_path.empty()) {
    std::cout << yaml;
  } else {
    std::ofstream(out_path) << yaml;
    std::cerr << "wrote " << out_path << "\n";
  }
  const auto bytes = PlanRankBytes(*plan, esize);
  // The cache `serve --kv-cache-dtype auto` allocates for these weights unquantized (int8-quantized
  // weights get f32).
  const kernels::DType kv_dtype = AutoKvCacheDtype(dt);
  for (int r = 0; r < tp; ++r) {
    const int64_t kv_per_token = KvBytesPerToken(*config, (*shards)[r], kv_dtype);
    std::cerr << fmt::format("rank {}: weights {} ({} sharded + {} replicated), KV cache {} per token ({})\n",
                             r, HumanBytes(bytes[r].sharded + bytes[r].replicated),
                             HumanBytes(bytes[r].sharded), HumanBytes(bytes[r].replicated),
                             HumanBytes(kv_per_token), kernels::DTypeName(kv_dtype));
  }
  return 0;
}
