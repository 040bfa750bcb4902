// `tpserve tokenize` and `tpserve detokenize`: the model's tokenizer on its own (no MPI, no
// weights), the same code the gateway uses for text prompts.
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "apps/commands.h"
#include "model/tokenizer/tokenizer.h"

namespace tpserve {
namespace {

struct TokenizerFlags {
  std::string model_path, tokenizer;
  bool json = false;
  // tokenize
  std::string text, file;
  bool add_special_tokens = false;
  // detokenize
  std::vector<int32_t> ids;
  bool skip_special_tokens = false;
};

void AddSourceFlags(CLI::App* cmd, TokenizerFlags* f) {
  auto model =
      cmd->add_option("--model-path", f->model_path, "Model directory (tokenizer.json or tokenizer.model)");
  auto file = cmd->add_option("--tokenizer", f->tokenizer, "A tokenizer.json or tokenizer.model file")
                  ->excludes(model);
  model->excludes(file);
  cmd->add_flag("--json", f->json, "Print one JSON object");
}

Result<std::unique_ptr<Tokenizer>> Open(const TokenizerFlags& f) {
  if (f.model_path.empty() && f.tokenizer.empty())
    return TPS_ERROR("give --model-path DIR or --tokenizer FILE");
  return LoadTokenizer(f.tokenizer.empty() ? f.model_path : f.tokenizer);
}

int Tokenize(const TokenizerFlags& f) {
  std::string text = f.text;
  if (!f.file.empty()) {
    std::ifstream in(f.file, std::ios::binary);
    if (!in) {
      std::cerr << "error: cannot open --file " << f.file << "\n";
      return 1;
    }
    std::stringstream buf;
    buf << in.rdbuf();
    text = buf.str();
  }
  auto tok = Open(f);
  if (!tok.ok()) {
    std::cerr << "error: " << tok.status().message() << "\n";
    return 1;
  }
  auto ids = (*tok)->Encode(text, f.add_special_tokens);
  if (!ids.ok()) {
    std::cerr << "error: " << ids.status().message() << "\n";
    return 1;
  }
  if (f.json) {
    std::cout << nlohmann::json{{"ids", *ids}}.dump() << "\n";
  } else {
    for (size_t i = 0; i < ids->size(); ++i) std::cout << (i ? "," : "") << (*ids)[i];
    std::cout << "\n";
  }
  return 0;
}

int Detokenize(const TokenizerFlags& f) {
  auto tok = Open(f);
  if (!tok.ok()) {
    std::cerr << "error: " << tok.status().message() << "\n";
    return 1;
  }
  for (int32_t id : f.ids) {
    if (id < 0 || id >= (*tok)->vocab_size()) {
      std::cerr << "error: id " << id << " is outside the vocabulary [0, " << (*tok)->vocab_size() << ")\n";
      return 1;
    }
  }
  const std::string text = (*tok)->Decode(f.ids, f.skip_special_tokens);
  if (f.json) {
    std::cout << nlohmann::json{{"text", text}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
  } else {
    std::cout << text << "\n";
  }
  return 0;
}

}  // namespace

CommandMain AddTokenizeCommand(CLI::App& app) {
  auto f = std::make_shared<TokenizerFlags>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Print the token ids of a text (no MPI needed)");
  AddSourceFlags(cmd, f.get());
  auto text = cmd->add_option("--text", f->text, "The text");
  cmd->add_option("--file", f->file, "Read the text from a file")->excludes(text);
  cmd->add_flag("--add-special-tokens", f->add_special_tokens,
                "Add BOS/EOS as the model's post-processor does");
  return [f](int, char**) { return Tokenize(*f); };
}

CommandMain AddDetokenizeCommand(CLI::App& app) {
  auto f = std::make_shared<TokenizerFlags>();
  CLI::App* cmd = app.add_subcommand("detokenize", "Print the text of token ids (no MPI needed)");
  AddSourceFlags(cmd, f.get());
  cmd->add_option("--ids", f->ids, "Token ids, e.g. 1,2,3")->delimiter(',')->required();
  cmd->add_flag("--skip-special-tokens", f->skip_special_tokens,
                "Leave out BOS/EOS and other special tokens");
  return [f](int, char**) { return Detokenize(*f); };
}

}  // namespace tpserve
