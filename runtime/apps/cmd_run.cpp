// `tpserve run`: one offline generation under mpirun (no server). Rank 0 prints the result.
#include <filesystem>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "apps/commands.h"
#include "apps/launch_check.h"
#include "apps/run_common.h"
#include "comm/mpi_comm.h"
#include "comm/parallel_config.h"
#include "common/log.h"
#include "engine/generator.h"
#include "engine/loader.h"

namespace tpserve {
namespace {

struct RunFlags {
  LoadOptions load;
  LaunchFlags launch;
  int tp = 0;  // 0: the whole world
  std::vector<int32_t> prompt_ids;
  std::string prompt;
  GenerateOptions gen;
  bool json = false;
};

int Run(const RunFlags& f, int argc, char** argv) {
  auto env_or = MpiEnv::Init(&argc, &argv);
  if (!env_or.ok()) {
    log::Error("{}", env_or.status().message());
    return 1;
  }
  std::unique_ptr<MpiEnv> env = std::move(env_or).value();
  std::unique_ptr<MpiComm> world = MpiComm::World();

  // The same checks on every rank: each prints the error and the job exits 1 without hanging.
  auto pc = ParallelConfig::Make(env->world_size(), env->world_rank(), f.tp);
  if (!pc.ok()) {
    log::Error("{}", pc.status().message());
    return 1;
  }
  if (!AllOk(*world, CheckLaunchFlags(f.launch, *env, *world))) return 1;
  auto tp_or = world->Split(pc->tp_group_color(), pc->world_rank, "tp");
  if (!AllOk(*world, tp_or.status())) return 1;
  std::unique_ptr<MpiComm> tp = std::move(tp_or).value();

  Status setup;
  std::vector<int32_t> prompt = f.prompt_ids;
  if (!f.prompt.empty()) {
    setup = TPS_ERROR("--prompt needs a tokenizer, which this build does not load yet; pass --prompt-ids");
  } else if (prompt.empty()) {
    setup = TPS_ERROR("give the prompt as --prompt-ids 1,2,3 (or --prompt TEXT)");
  }
  std::unique_ptr<LlamaModel> model;
  if (setup.ok()) {
    LoadOptions load = f.load;
    load.show_progress = true;
    auto model_or = LoadModel(load, *tp);
    if (model_or.ok()) {
      model = std::move(model_or).value();
    } else {
      setup = model_or.status();
    }
  }
  if (setup.ok()) setup = ValidateGenerateRequest(*model, prompt, f.gen);
  if (!AllOk(*world, setup)) return 1;

  auto result = Generate(*model, prompt, f.gen);
  if (!result.ok()) {  // mid-generation: peers may sit in a collective, so end the whole job
    log::Error("generation failed: {}", result.status().message());
    MpiEnv::Abort(1);
  }
  if (env->world_rank() == 0) {
    const GenerateResult& r = result.value();
    const double tps = r.decode_seconds > 0 ? (r.token_ids.size() - 1) / r.decode_seconds : 0.0;
    log::Info("{} prompt + {} generated tokens, tp={}, prefill {:.1f} ms, decode {:.1f} tok/s", prompt.size(),
              r.token_ids.size(), tp->size(), r.prefill_seconds * 1e3, tps);
    if (f.json) {
      nlohmann::json out = {{"token_ids", r.token_ids},
                            {"finish_reason", r.finish_reason},
                            {"usage",
                             {{"prompt_tokens", prompt.size()},
                              {"completion_tokens", r.token_ids.size()},
                              {"time_to_first_token_s", r.prefill_seconds},
                              {"decode_time_s", r.decode_seconds}}}};
      std::cout << out.dump() << std::endl;
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
  cmd->add_option("--model-path", f->load.model_path, "Hugging Face model directory")->required();
  cmd->add_option("--tp", f->tp, "Tensor-parallel size (default: every rank of the world)");
  cmd->add_option("--partition", f->load.partition_path, "Partition plan YAML (default: computed in memory)");
  cmd->add_option("--dtype", f->load.dtype, "Weight dtype: auto (as stored), f32, bf16, f16")
      ->capture_default_str();
  auto ids = cmd->add_option("--prompt-ids", f->prompt_ids, "Prompt token ids, e.g. 1,2,3")->delimiter(',');
  cmd->add_option("--prompt", f->prompt, "Prompt text (needs the model's tokenizer)")->excludes(ids);
  cmd->add_option("--max-new-tokens", f->gen.max_new_tokens, "Tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", f->gen.sampling.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", f->gen.sampling.top_k, "Keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", f->gen.sampling.top_p, "Nucleus sampling mass in (0, 1]");
  cmd->add_option("--seed", f->gen.sampling.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--stop-token-ids", f->gen.stop_token_ids, "Extra stop token ids")->delimiter(',');
  cmd->add_flag("--ignore-eos", f->gen.ignore_eos, "Keep generating past EOS");
  cmd->add_flag("--json", f->json, "Print one JSON object on stdout (rank 0)");
  cmd->add_option("--nnodes", f->launch.nnodes, "Checked against the MPI world (SGLang compatibility)");
  cmd->add_option("--node-rank", f->launch.node_rank, "Checked against the MPI world (SGLang compatibility)");
  cmd->add_option("--dist-init-addr", f->launch.dist_init_addr,
                  "Accepted for SGLang compatibility; MPI needs none");
  return [f](int argc, char** argv) { return Run(*f, argc, argv); };
}

}  // namespace tpserve
