#include "apps/run_common.h"

#include "cpu/thread_pool.h"

#include "common/log.h"

namespace tpserve {

bool AllOk(Communicator& world, const Status& st) {
  if (!st.ok()) log::Error("{}", st.message());
  float failed = st.ok() ? 0.0f : 1.0f;
  if (Status s = world.AllReduceSum(&failed, 1); !s.ok()) {
    log::Error("{}", s.message());
    MpiEnv::Abort(1);
  }
  return failed == 0.0f;
}

void AddJobFlags(CLI::App* cmd, JobFlags* f) {
  cmd->add_option("--model-path", f->load.model_path, "Hugging Face model directory")->required();
  cmd->add_option("--tp", f->tp, "Tensor-parallel size (default: every rank of the world)");
  cmd->add_option("--partition", f->load.partition_path, "Partition plan YAML (default: computed in memory)");
  cmd->add_option("--dtype", f->load.dtype, "Weight dtype: auto (as stored), f32, bf16, f16")
      ->capture_default_str();
  cmd->add_option("--quantization", f->load.quantization,
                  "int8: weight-only int8 with a scale per output row (projections and lm_head)");
  cmd->add_flag("--enable-deterministic-inference", f->deterministic,
                "Batch-invariant results: all-reduces sum in rank order (kernels already are per-row)");
  cmd->add_option("--tokenizer", f->tokenizer,
                  "tokenizer.json / tokenizer.model (default: the one in --model-path, if any)");
  cmd->add_option("--threads", f->threads,
                  "Kernel threads per rank, pinned (default: the cores mpirun bound the rank to, or the "
                  "host's cores divided among its ranks)");
  cmd->add_option("--kv-cache-dtype", f->kv_cache_dtype,
                  "KV cache element type: auto (bf16 for bf16 weights, else f32), float32, bfloat16")
      ->check(CLI::IsMember({"auto", "float32", "f32", "bfloat16", "bf16"}))
      ->capture_default_str();
  cmd->add_option("--nnodes", f->launch.nnodes, "Checked against the MPI world (SGLang compatibility)");
  cmd->add_option("--node-rank", f->launch.node_rank, "Checked against the MPI world (SGLang compatibility)");
  cmd->add_option("--dist-init-addr", f->launch.dist_init_addr,
                  "Accepted for SGLang compatibility; MPI needs none");
}

Result<std::unique_ptr<Tokenizer>> LoadJobTokenizer(const JobFlags& f, int model_vocab_size, bool required) {
  const std::string& path = f.tokenizer.empty() ? f.load.model_path : f.tokenizer;
  if (f.tokenizer.empty() && !HasTokenizerFiles(path)) {
    if (!required) return std::unique_ptr<Tokenizer>();
    return TPS_ERROR(
        "{} has no tokenizer.json or tokenizer.model, which text prompts need; pass --tokenizer FILE "
        "or give --prompt-ids",
        path);
  }
  TPS_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, LoadTokenizer(path));
  if (tok->vocab_size() > model_vocab_size) {
    return TPS_ERROR(
        "tokenizer {} has {} tokens but the model's vocab_size is {}: it belongs to another model",
        tok->config().source, tok->vocab_size(), model_vocab_size);
  }
  return tok;
}

int StartJob(const JobFlags& f, int argc, char** argv, Job* job, const Status& extra_check) {
  auto env_or = MpiEnv::Init(&argc, &argv);
  if (!env_or.ok()) {
    log::Error("{}", env_or.status().message());
    return 1;
  }
  job->env = std::move(env_or).value();
  job->world = MpiComm::World();
  // The layout check gives the same answer on every rank: each prints it and exits 1.
  auto pc = ParallelConfig::Make(job->env->world_size(), job->env->world_rank(), f.tp, f.dp, f.pp);
  if (!pc.ok()) {
    log::Error("{}", pc.status().message());
    return 1;
  }
  job->parallel = *pc;
  if (pc->dp_size > 1 || pc->pp_size > 1) {
    log::Error("--dp-size and --pp-size > 1 are not supported by this build yet; run one TP group (--tp {})",
               pc->world_size);
    return 1;
  }
  auto places = GatherRankPlaces(*job->env, *job->world);
  if (!AllOk(*job->world, places.status())) return 1;
  if (!AllOk(*job->world, CheckLaunchFlags(f.launch, *places, pc->world_rank))) return 1;
  if (!AllOk(*job->world, extra_check)) return 1;
  auto threads = PlanThreads(f.threads, *places, pc->world_rank);
  if (!AllOk(*job->world, threads.status())) return 1;
  kernels::SetThreads(threads->threads, threads->cpus);
  job->kernel_cpus = threads->cpus;
  log::Debug("rank {}: {}", pc->world_rank, threads->describe);
  if (pc->world_rank == 0) log::Info("rank 0: {}", threads->describe);
  auto tp_or = job->world->Split(pc->tp_group_color(), pc->world_rank, "tp");
  if (!AllOk(*job->world, tp_or.status())) return 1;
  job->tp = std::move(tp_or).value();
  if (pc->world_rank == 0 && job->tp->size() > 1) {
    log::Info("TP all-reduce: {}",
              job->tp->host_shared_allreduce()
                  ? "shared memory (every rank of the group on this host)"
                  : "MPI (the group spans hosts, /dev/shm is unusable, or TPSERVE_SHM_ALLREDUCE=0)");
  }
  LoadOptions load = f.load;
  load.show_progress = true;
  auto model_or = LoadModel(load, *job->tp);
  if (!AllOk(*job->world, model_or.status())) return 1;
  job->model = std::move(model_or).value();
  job->model->SetDeterministic(f.deterministic);
  return 0;
}

}  // namespace tpserve
