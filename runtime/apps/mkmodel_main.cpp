// tpserve-mkmodel: writes a seeded synthetic HF-layout Llama for demos, tests and benchmarks.
//   tpserve-mkmodel --preset tiny --dtype bf16 --seed 0 --out models/tiny
#include <iostream>

#include <fmt/ranges.h>
#include <CLI/CLI.hpp>

#include "cpu/dtype.h"
#include "model/synthetic.h"

int main(int argc, char** argv) {
  using namespace tpserve;
  SyntheticSpec spec;
  std::string out, dtype = "bf16";
  CLI::App app{"Write a synthetic Hugging Face Llama-family model with seeded random weights"};
  app.add_option("--preset", spec.preset, fmt::format("One of: {}", fmt::join(SyntheticPresets(), ", ")))
      ->capture_default_str();
  app.add_option("--dtype", dtype, "f32, bf16 or f16")->capture_default_str();
  app.add_option("--seed", spec.seed, "Random seed")->capture_default_str();
  app.add_option("--arch", spec.arch, "llama, qwen2 (q/k/v bias) or qwen3 (qk-norm)")->capture_default_str();
  app.add_flag("--tie-embeddings", spec.tie_word_embeddings, "Tie lm_head to embed_tokens");
  app.add_flag("--llama3-rope-scaling", spec.llama3_rope_scaling, "Add a llama3-type rope_scaling block");
  app.add_option("--out", out, "Output directory")->required();
  CLI11_PARSE(app, argc, argv);
  if (!kernels::ParseDType(dtype, &spec.dtype)) {
    std::cerr << "tpserve-mkmodel: error: --dtype '" << dtype << "' is not one of f32, bf16, f16\n";
    return 1;
  }
  if (Status s = WriteSyntheticModel(spec, out); !s.ok()) {
    std::cerr << "tpserve-mkmodel: error: " << s.message() << "\n";
    return 1;
  }
  std::cerr << "wrote " << spec.preset << " (" << dtype << ", seed " << spec.seed << ") to " << out << "\n";
  return 0;
}
