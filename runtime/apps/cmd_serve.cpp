// `tpserve serve`: the server. Every rank runs the engine loop; rank 0 also runs the gRPC
// gateway. SIGTERM/SIGINT on rank 0 drains in-flight requests (--shutdown-timeout), then
// broadcasts SHUTDOWN and every rank exits 0.
#include <algorithm>
#include <csignal>
#include <map>
#include <memory>

#include "apps/commands.h"
#include "apps/launch_check.h"
#include "apps/run_common.h"
#include "comm/mpi_comm.h"
#include "comm/parallel_config.h"
#include "common/log.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "engine/batch_engine.h"
#include "engine/loader.h"
#include "server/engine_loop.h"
#include "server/gateway.h"

namespace tpserve {
namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) {
  g_stop = true;
}

struct ServeFlags {
  JobFlags job;
  GatewayOptions gateway;
  EngineOptions engine;
  int max_queued_requests = 1024;
  std::string kv_cache_size;  // "" | tokens ("65536") | bytes per rank ("2GiB", "512MB")
  double mem_fraction_static = 0.4;
  bool enable_metrics = false;
  int metrics_port = -1;  // -1: --port + 1 (with --enable-metrics)
  LoopOptions loop;
};

// The metrics endpoint's port for GatewayOptions: -1 (off) unless --enable-metrics or
// --metrics-port; by default the gRPC port + 1 (any free port when --port is 0).
int MetricsPort(const ServeFlags& f) {
  if (f.metrics_port >= 0) return f.metrics_port;
  if (!f.enable_metrics) return -1;
  // (--port 65535 gives 65536, which the metrics server rejects naming --metrics-port.)
  return f.gateway.port > 0 ? f.gateway.port + 1 : 0;
}

// Rank 0 only: the gateway, with the facts GetModelInfo / GetServerInfo report.
Status StartGateway(const ServeFlags& f, const Job& job, BatchEngine& engine, RequestQueue& queue,
                    ServerCounters& counters, std::unique_ptr<Tokenizer>* tokenizer,
                    std::unique_ptr<Gateway>* out) {
  const ParallelConfig& pc = job.parallel;
  const LlamaModel& model = *job.model;
  TPS_ASSIGN_OR_RETURN(*tokenizer, LoadJobTokenizer(f.job, model.config().vocab_size, false));
  if (*tokenizer) {
    log::Info("tokenizer: {} ({} tokens, chat template: {})", (*tokenizer)->config().source,
              (*tokenizer)->vocab_size(), (*tokenizer)->config().chat_template.empty() ? "none" : "present");
  } else {
    log::Info("no tokenizer in {}: requests must send token ids (or start with --tokenizer FILE)",
              f.job.load.model_path);
  }
  {
    std::lock_guard<std::mutex> lock(counters.mu);
    counters.engine = engine.stats();
  }
  GatewayInfo info;
  info.model_path = f.job.load.model_path;
  info.config = model.config();
  info.weight_dtype = kernels::DTypeName(
      model.weights().layers.empty() ? kernels::DType::kF32 : model.weights().layers[0].qkv.dtype());
  info.context_length = engine.context_length();
  info.parallel = pc;
  info.cpu_isa = kernels::ActiveKernels().isa;
  info.tokenizer = tokenizer->get();
  info.flags = {{"model_path", f.job.load.model_path},
                {"tp", std::to_string(pc.tp_size)},
                {"partition", f.job.load.partition_path},
                {"tokenizer", *tokenizer ? (*tokenizer)->config().source : ""},
                {"dtype", f.job.load.dtype},
                {"host", f.gateway.host},
                {"port", std::to_string(f.gateway.port)},
                {"max_running_requests", std::to_string(f.engine.max_running_requests)},
                {"context_length", std::to_string(engine.context_length())},
                {"chunked_prefill_size", std::to_string(f.engine.chunked_prefill_size)},
                {"kv_cache_dtype", kernels::DTypeName(engine.kv_pool().dtype())},
                {"enable_deterministic_inference", f.job.deterministic ? "true" : "false"},
                {"prefix_cache", f.engine.prefix_cache ? "on" : "off"},
                {"api_key", f.gateway.api_key.empty() ? "" : "(set)"},
                {"tls", f.gateway.tls_cert.empty() ? "off" : "on"},
                {"metrics_port", std::to_string(MetricsPort(f))}};
  GatewayOptions opts = f.gateway;
  opts.engine_cpus = job.kernel_cpus;
  opts.metrics_port = MetricsPort(f);
  TPS_ASSIGN_OR_RETURN(*out, Gateway::Start(opts, info, queue, counters,
                                            [&engine](const RequestSpec& s) { return engine.Validate(s); }));
  return Status();
}

// --kv-cache-size: a token count, or bytes per rank with a unit (B, KB, MB, GB, KiB, MiB, GiB).
Result<int64_t> ParseKvCacheSize(const std::string& text, int64_t bytes_per_token) {
  if (text.empty()) return int64_t{0};
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (...) {
    used = 0;
  }
  const std::string unit = text.substr(used);
  const std::map<std::string, double> units = {{"B", 1.0},           {"KB", 1e3},     {"MB", 1e6},
                                               {"GB", 1e9},          {"KiB", 1024.0}, {"MiB", 1048576.0},
                                               {"GiB", 1073741824.0}};
  if (used == 0 || value <= 0 || (!unit.empty() && !units.count(unit))) {
    return TPS_ERROR(
        "--kv-cache-size '{}' is neither a token count (65536) nor bytes with a unit (2GiB, 512MB)", text);
  }
  if (unit.empty()) return static_cast<int64_t>(value);
  return static_cast<int64_t>(value * units.at(unit) / static_cast<double>(bytes_per_token));
}

// Blocks of the paged KV cache, the same on every rank of the TP group (the smallest rank's).
Result<int64_t> AgreeKvCacheBlocks(const ServeFlags& f, Job& job, int context) {
  const ModelConfig& cfg = job.model->config();
  TPS_ASSIGN_OR_RETURN(const kernels::DType kv_dtype, KvCacheDtype(f.job.kv_cache_dtype, *job.model));
  const int64_t per_token = KvBytesPerToken(cfg, job.model->weights().shard, kv_dtype);
  KvCacheSizing sizing;
  TPS_ASSIGN_OR_RETURN(sizing.kv_cache_tokens, ParseKvCacheSize(f.kv_cache_size, per_token));
  sizing.mem_fraction_static = f.mem_fraction_static;
  sizing.ranks_on_host = job.env->local_size();
  sizing.max_useful_tokens = static_cast<int64_t>(f.engine.max_running_requests) * context;
  Result<int64_t> mine = KvCacheBlocks(sizing, per_token, f.engine.kv_block_size);
  int64_t blocks = mine.ok() ? *mine : -1;
  std::vector<int64_t> all(job.tp->size());
  TPS_RETURN_IF_ERROR(job.tp->AllGather(&blocks, sizeof(blocks), all.data()));
  if (!mine.ok()) return mine.status();
  blocks = *std::min_element(all.begin(), all.end());
  if (blocks < 0) return TPS_ERROR("another rank could not size its KV cache (see its message)");
  const int64_t need = KvCachePool::BlocksFor(context, f.engine.kv_block_size);
  if (blocks < need) {
    return TPS_ERROR(
        "the KV cache holds {} tokens ({} blocks of {}) on the smallest rank, fewer than one full context of "
        "{} "
        "tokens; lower --context-length, raise --mem-fraction-static or --kv-cache-size, or add ranks (--tp)",
        blocks * f.engine.kv_block_size, blocks, f.engine.kv_block_size, context);
  }
  return blocks;
}

// Every rank confirms the shutdown, so rank 0 never logs "cleanly" for a job whose other rank died
// (mpirun then ends rank 0 while it waits here, and exits non-zero naming the dead rank).
void ConfirmShutdown(Communicator& tp) {
  if (Status done = tp.Barrier().WithContext("the shutdown"); !done.ok()) {
    log::Error("shutdown: {}", done.message());
    MpiEnv::Abort(1);
  }
}

int Serve(const ServeFlags& f, int argc, char** argv) {
  Job job;
  if (int rc = StartJob(f.job, argc, argv, &job); rc != 0) return rc;
  // Every rank catches the signals (mpirun may forward them); only rank 0 acts on them.
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  LlamaModel& model = *job.model;
  const int max_context = model.config().max_position_embeddings;
  const int context =
      f.engine.context_length > 0 ? std::min(f.engine.context_length, max_context) : max_context;
  auto blocks = AgreeKvCacheBlocks(f, job, context);
  if (!AllOk(*job.world, blocks.status())) return 1;
  EngineOptions engine_opts = f.engine;
  engine_opts.kv_cache_blocks = *blocks;
  engine_opts.kv_cache_dtype = f.job.kv_cache_dtype;
  BatchEngine engine(model, engine_opts);
  const KvCachePool& pool = engine.kv_pool();
  if (job.leader()) {
    log::Info("KV cache: {} blocks x {} tokens = {} tokens, {:.1f} MiB per rank ({})", pool.num_blocks(),
              pool.block_size(), pool.capacity_tokens(), pool.bytes() / 1048576.0,
              kernels::DTypeName(pool.dtype()));
  }

  // Rank 0 starts the gateway; every rank then agrees on the outcome (a taken port fails all).
  RequestQueue queue(f.max_queued_requests);
  ServerCounters counters;
  std::unique_ptr<Tokenizer> tokenizer;  // declared before the gateway, which uses it
  std::unique_ptr<Gateway> gateway;
  Status gateway_status =
      job.leader() ? StartGateway(f, job, engine, queue, counters, &tokenizer, &gateway) : Status();
  if (!AllOk(*job.world, gateway_status)) return 1;
  if (!job.leader()) {
    Status st = RunEngineLoopFollower(engine, *job.tp);
    if (!st.ok()) {
      log::Error("engine loop failed: {}", st.message());
      MpiEnv::Abort(1);
    }
    ConfirmShutdown(*job.tp);  // rank 0 waits for this
    return 0;
  }
  log::Info("serving {} on {}:{} (tp={}, context {}, isa {}, bf16 batches {})", f.job.load.model_path,
            f.gateway.host, gateway->port(), job.parallel.tp_size, engine.context_length(),
            kernels::ActiveKernels().isa, kernels::PackedBatchKernels());
  if (gateway->metrics_port() >= 0) {
    const bool v6 = f.gateway.host.find(':') != std::string::npos;
    log::Info("Prometheus metrics on http://{}{}{}:{}/metrics", v6 ? "[" : "", f.gateway.host, v6 ? "]" : "",
              gateway->metrics_port());
  }
  Status st = RunEngineLoopLeader(engine, *job.tp, queue, counters, g_stop, f.loop);
  if (!st.ok()) {
    log::Error("engine loop failed: {}", st.message());
    MpiEnv::Abort(1);
  }
  gateway->Shutdown();
  ConfirmShutdown(*job.tp);
  log::Info("shut down cleanly");
  return 0;
}

}  // namespace

CommandMain AddServeCommand(CLI::App& app) {
  auto f = std::make_shared<ServeFlags>();
  CLI::App* cmd =
      app.add_subcommand("serve", "Serve gRPC generation requests (under mpirun; rank 0 listens)");
  AddJobFlags(cmd, &f->job);
  cmd->add_option("--dp-size", f->job.dp, "Data-parallel replicas")->capture_default_str();
  cmd->add_option("--pp-size", f->job.pp, "Pipeline stages")->capture_default_str();
  cmd->add_option("--host", f->gateway.host, "Listen address")->capture_default_str();
  cmd->add_option("--port", f->gateway.port, "Listen port")->capture_default_str();
  cmd->add_option("--api-key", f->gateway.api_key, "Require 'authorization: Bearer KEY' on every RPC");
  cmd->add_option("--tls-cert", f->gateway.tls_cert, "TLS certificate chain (PEM)");
  cmd->add_option("--tls-key", f->gateway.tls_key, "TLS private key (PEM)");
  cmd->add_flag("--enable-metrics", f->enable_metrics,
                "Serve Prometheus metrics over HTTP at /metrics (on --host, port --metrics-port)");
  cmd->add_option(
         "--metrics-port", f->metrics_port,
         "Port of the metrics endpoint (default: --port + 1; 0: any free port); implies --enable-metrics")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--max-message-bytes", f->gateway.max_message_bytes, "Largest request accepted")
      ->capture_default_str();
  cmd->add_option("--max-prompt-tokens", f->gateway.max_prompt_tokens,
                  "Longest prompt accepted (0: context - 1)");
  cmd->add_option("--max-running-requests", f->engine.max_running_requests, "Sequences decoded together")
      ->capture_default_str();
  cmd->add_option("--max-queued-requests", f->max_queued_requests,
                  "Requests held at once (running + waiting)")
      ->capture_default_str();
  cmd->add_option("--context-length", f->engine.context_length, "Context length (0: the model's)");
  cmd->add_option("--chunked-prefill-size", f->engine.chunked_prefill_size,
                  "Most prompt tokens prefilled per step, next to the decodes (0: whole prompts)")
      ->capture_default_str();
  cmd->add_option("--kv-cache-size", f->kv_cache_size,
                  "KV cache per rank: tokens (65536) or bytes (2GiB); overrides --mem-fraction-static");
  cmd->add_option(
         "--mem-fraction-static", f->mem_fraction_static,
         "KV cache = this fraction of the host's available memory (after weights), split over its ranks")
      ->capture_default_str();
  cmd->add_flag(
      "--disable-prefix-cache,--disable-radix-cache", [f](std::int64_t) { f->engine.prefix_cache = false; },
      "Prefill every prompt in full instead of sharing the cached KV blocks of an equal prefix");
  cmd->add_option("--shutdown-timeout", f->loop.shutdown_timeout_s,
                  "Seconds to finish requests after SIGTERM")
      ->capture_default_str();
  return [f](int argc, char** argv) { return Serve(*f, argc, argv); };
}

}  // namespace tpserve
