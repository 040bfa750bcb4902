// `tpserve run`: one offline generation under mpirun (no server). Rank 0 prints the result.
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "apps/commands.h"
#include "apps/prompt_ids_option.h"
#include "apps/run_common.h"
#include "common/log.h"
#include "engine/generator.h"

namespace tpserve {
namespace {

struct RunFlags {
  JobFlags job;
  std::vector<int32_t> prompt_ids;
  std::string prompt;
  GenerateOptions gen;
  bool json = false;
};

// Rank 0 encodes a text prompt and broadcasts the ids; every rank agrees on errors first.
Result<std::vector<int32_t>> SharePrompt(Job& job, const std::string& text, const Tokenizer* tok) {
  Status st;
  std::vector<int32_t> ids;
  if (job.leader() && tok != nullptr) {
    auto r = tok->Encode(text, true);
    if (r.ok()) {
      ids = std::move(r).value();
    } else {
      st = r.status().WithContext("--prompt");
    }
  }
  if (!AllOk(*job.world, st)) return TPS_ERROR("--prompt could not be encoded");
  TPS_RETURN_IF_ERROR(BroadcastVector(*job.world, ids, 0));
  return ids;
}

int Run(const RunFlags& f, int argc, char** argv) {
  Status prompt_check;
  if (f.prompt.empty() && f.prompt_ids.empty()) {
    prompt_check = TPS_ERROR("give the prompt as --prompt-ids 1,2,3 or --prompt TEXT");
  }
  Job job;
  if (int rc = StartJob(f.job, argc, argv, &job, prompt_check); rc != 0) return rc;
  // The tokenizer lives on rank 0 only: it encodes --prompt and decodes the output text.
  std::unique_ptr<Tokenizer> tok;
  Status tok_status;
  if (job.leader()) {
    auto r = LoadJobTokenizer(f.job, job.model->config().vocab_size, !f.prompt.empty());
    if (r.ok()) {
      tok = std::move(r).value();
    } else {
      tok_status = r.status();
    }
  }
  if (!AllOk(*job.world, tok_status)) return 1;
  std::vector<int32_t> prompt = f.prompt_ids;
  if (!f.prompt.empty()) {
    auto ids = SharePrompt(job, f.prompt, tok.get());
    if (!ids.ok()) return 1;
    prompt = std::move(ids).value();
  }
  GenerateOptions gen = f.gen;
  gen.kv_cache_dtype = f.job.kv_cache_dtype;
  if (!AllOk(*job.world, ValidateGenerateRequest(*job.model, prompt, gen))) return 1;

  const double allreduce_before = job.tp->allreduce_seconds();
  auto result = Generate(*job.model, prompt, gen);
  const double allreduce_s = job.tp->allreduce_seconds() - allreduce_before;
  if (!result.ok()) {  // mid-generation: peers may sit in a collective, so end the whole job
    log::Error("generation failed: {}", result.status().message());
    MpiEnv::Abort(1);
  }
  if (job.leader()) {
    const GenerateResult& r = result.value();
    const double tps = r.decode_seconds > 0 ? (r.token_ids.size() - 1) / r.decode_seconds : 0.0;
    log::Info("{} prompt + {} generated tokens, tp={}, prefill {:.1f} ms, decode {:.1f} tok/s", prompt.size(),
              r.token_ids.size(), job.tp->size(), r.prefill_seconds * 1e3, tps);
    const std::string text = tok ? tok->Decode(r.token_ids, /*skip_special_tokens=*/true) : "";
    if (f.json) {
      nlohmann::json out = {{"token_ids", r.token_ids},
                            {"finish_reason", r.finish_reason},
                            {"usage",
                             {{"prompt_tokens", prompt.size()},
                              {"completion_tokens", r.token_ids.size()},
                              {"time_to_first_token_s", r.prefill_seconds},
                              {"decode_time_s", r.decode_seconds},
                              {"allreduce_s", allreduce_s}}}};
      if (tok) out["text"] = text;
      std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
    } else if (tok) {
      std::cout << text << "\n[finish_reason: " << r.finish_reason << "]" << std::endl;
    } else {
      for (size_t i = 0; i < r.token_ids.size(); ++i) std::cout << (i ? " " : "") << r.token_ids[i];
      std::cout << "\n[finish_reason: " << r.finish_reason << "]" << std::endl;
    }
  }
  return 0;
}

}  // namespace

CommandMain AddRunCommand(CLI::App& app) {
  auto f = std::make_shared<RunFlags>();
  CLI::App* cmd =
      app.add_subcommand("run", "Generate once for a prompt (under mpirun; rank 0 prints the result)");
  AddJobFlags(cmd, &f->job);
  auto ids = AddPromptIdsOption(cmd, &f->prompt_ids);
  cmd->add_option("--prompt", f->prompt,
                  "Prompt text, encoded with the model's tokenizer (BOS added as it says)")
      ->excludes(ids);
  cmd->add_option("--max-new-tokens", f->gen.max_new_tokens, "Tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", f->gen.sampling.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", f->gen.sampling.top_k, "Keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", f->gen.sampling.top_p, "Nucleus sampling mass in (0, 1]");
  cmd->add_option("--seed", f->gen.sampling.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--stop-token-ids", f->gen.stop_token_ids, "Extra stop token ids")->delimiter(',');
  cmd->add_flag("--ignore-eos", f->gen.ignore_eos, "Keep generating past EOS");
  cmd->add_flag("--json", f->json, "Print one JSON object on stdout (rank 0)");
  return [f](int argc, char** argv) { return Run(*f, argc, argv); };
}

}  // namespace tpserve
