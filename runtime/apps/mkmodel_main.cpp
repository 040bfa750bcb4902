// tpserve-mkmodel: writes a seeded synthetic HF-layout Llama for demos, tests and benchmarks.
//   tpserve-mkmodel --preset tiny --dtype bf16 --seed 0 --out models/tiny [--tokenizer DIR|FILE]
// With --tokenizer, the model takes the tokenizer's vocabulary size and BOS/EOS ids, and the
// tokenizer files are copied beside the weights, so text prompts work end to end.
#include <filesystem>
#include <iostream>

#include <fmt/ranges.h>
#include <CLI/CLI.hpp>

#include "cpu/dtype.h"
#include "model/synthetic.h"
#include "model/tokenizer/tokenizer.h"

namespace fs = std::filesystem;

// Copies tokenizer.json / tokenizer.model and tokenizer_config.json from `from` (a directory or
// one of those files) into out_dir.
tpserve::Status CopyTokenizerFiles(const fs::path& from, const fs::path& out_dir) {
  const fs::path dir = fs::is_directory(from) ? from : from.parent_path();
  std::vector<fs::path> files;
  if (!fs::is_directory(from)) files.push_back(from);
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json"}) {
    if (fs::exists(dir / name) && (fs::is_directory(from) || std::string(name) == "tokenizer_config.json")) {
      files.push_back(dir / name);
    }
  }
  for (const fs::path& f : files) {
    std::error_code ec;
    fs::copy_file(f, out_dir / f.filename(), fs::copy_options::overwrite_existing, ec);
    if (ec) return TPS_ERROR("cannot copy {} to {}: {}", f.string(), out_dir.string(), ec.message());
  }
  return tpserve::Status();
}

int main(int argc, char** argv) {
  using namespace tpserve;
  SyntheticSpec spec;
  std::string out, dtype = "bf16", tokenizer;
  CLI::App app{"Write a synthetic Hugging Face Llama-family model with seeded random weights"};
  app.add_option("--preset", spec.preset, fmt::format("One of: {}", fmt::join(SyntheticPresets(), ", ")))
      ->capture_default_str();
  app.add_option("--dtype", dtype, "f32, bf16 or f16")->capture_default_str();
  app.add_option("--seed", spec.seed, "Random seed")->capture_default_str();
  app.add_option("--arch", spec.arch, "llama, qwen2 (q/k/v bias) or qwen3 (qk-norm)")->capture_default_str();
  app.add_flag("--tie-embeddings", spec.tie_word_embeddings, "Tie lm_head to embed_tokens");
  app.add_flag("--llama3-rope-scaling", spec.llama3_rope_scaling, "Add a llama3-type rope_scaling block");
  app.add_option(
      "--tokenizer", tokenizer,
      "Give the model this tokenizer (a directory with tokenizer.json or tokenizer.model, or the file)");
  app.add_option("--out", out, "Output directory")->required();
  CLI11_PARSE(app, argc, argv);
  std::unique_ptr<Tokenizer> tok;
  if (!tokenizer.empty()) {
    auto r = LoadTokenizer(tokenizer);
    if (!r.ok()) {
      std::cerr << "tpserve-mkmodel: error: --tokenizer: " << r.status().message() << "\n";
      return 1;
    }
    tok = std::move(r).value();
    spec.vocab_size = tok->vocab_size();
    if (tok->config().bos_id) spec.bos_token_id = *tok->config().bos_id;
    if (tok->config().eos_id) spec.eos_token_id = *tok->config().eos_id;
  }
  if (!kernels::ParseDType(dtype, &spec.dtype)) {
    std::cerr << "tpserve-mkmodel: error: --dtype '" << dtype << "' is not one of f32, bf16, f16\n";
    return 1;
  }
  if (Status s = WriteSyntheticModel(spec, out); !s.ok()) {
    std::cerr << "tpserve-mkmodel: error: " << s.message() << "\n";
    return 1;
  }
  if (tok) {
    if (Status s = CopyTokenizerFiles(tokenizer, out); !s.ok()) {
      std::cerr << "tpserve-mkmodel: error: " << s.message() << "\n";
      return 1;
    }
  }
  std::cerr << "wrote " << spec.preset << " (" << dtype << ", seed " << spec.seed << ") to " << out << "\n";
  return 0;
}
