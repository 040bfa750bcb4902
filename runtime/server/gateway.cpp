#include "server/gateway.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "common/log.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "model/tokenizer/chat_template.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "tpserve.grpc.pb.h"

namespace tpserve {

namespace pb = ::tpserve::v1;
namespace health = ::grpc::health::v1;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kVersion = "0.1.0";

// The status code's name, as grpc.h spells it (the label of tpserve_request_failure_total).
const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    default:
      return "UNKNOWN";
  }
}

// A message for the client: without the " [file.cpp:line]" that TPS_ERROR appends (those stay in
// the server's log; a client has no use for the server's source paths).
std::string ForClient(const std::string& msg) {
  static const std::regex location(R"( \[[^\[\]]*\.(cpp|cc|h|hpp):[0-9]+\])");
  return std::regex_replace(msg, location, "");
}

grpc::Status Invalid(const std::string& msg) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, ForClient(msg));
}

// Shared by every service: the API key check and the static facts.
struct Shared {
  GatewayOptions opts;
  GatewayInfo info;
  RequestQueue* queue;
  const ServerCounters* counters;
  Gateway::Validator validate;
  std::unique_ptr<ServingMetrics> metrics;
  Clock::time_point started = Clock::now();
  std::atomic<bool> shutting_down{false};

  grpc::Status Authorize(const grpc::ServerContext* ctx) const {
    if (opts.api_key.empty()) return grpc::Status::OK;
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    if (it == md.end()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "missing 'authorization: Bearer <key>' metadata");
    }
    const std::string got(it->second.data(), it->second.size());
    if (got != "Bearer " + opts.api_key) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid API key");
    }
    return grpc::Status::OK;
  }
};

std::vector<ChatMessage> ToMessages(const pb::Chat& chat) {
  std::vector<ChatMessage> out;
  for (const pb::ChatMessage& m : chat.messages()) {
    out.push_back(
        {m.role(), m.content(),
         m.has_reasoning_content() ? std::optional<std::string>(m.reasoning_content()) : std::nullopt});
  }
  return out;
}

// Text (with BOS etc. unless add_special_tokens is false) or a chat rendered with the model's
// template (which writes BOS itself) -> prompt ids. *rendered gets the chat text.
grpc::Status EncodeInput(const Shared& sh, const std::string* text, const pb::Chat* chat,
                         bool add_special_tokens, std::vector<int32_t>* ids,
                         std::string* rendered = nullptr) {
  const Tokenizer* tok = sh.info.tokenizer;
  if (tok == nullptr) {
    return Invalid(
        "text and chat prompts need the model's tokenizer, and this server has none (no tokenizer.json "
        "or tokenizer.model in the model directory; start it with --tokenizer FILE); send token_ids");
  }
  Result<std::vector<int32_t>> r = std::vector<int32_t>();
  if (chat != nullptr) {
    ChatOptions opt;
    opt.add_generation_prompt = chat->has_add_generation_prompt() ? chat->add_generation_prompt() : true;
    if (chat->has_enable_thinking()) opt.enable_thinking = chat->enable_thinking();
    auto prompt = RenderChat(tok->config(), ToMessages(*chat), opt);
    if (!prompt.ok()) return Invalid(prompt.status().message());
    r = tok->Encode(*prompt, false);
    if (rendered != nullptr) *rendered = std::move(prompt).value();
  } else {
    r = tok->Encode(*text, add_special_tokens);
  }
  if (!r.ok()) return Invalid(r.status().message());
  *ids = std::move(r).value();
  return grpc::Status::OK;
}

// GenerateRequest -> RequestSpec, or INVALID_ARGUMENT naming the field.
grpc::Status ToSpec(const Shared& sh, const pb::GenerateRequest& req, RequestSpec* spec) {
  const bool add_special = req.has_add_special_tokens() ? req.add_special_tokens() : true;
  switch (req.prompt_case()) {
    case pb::GenerateRequest::kText:
      if (req.text().empty()) return Invalid("the prompt is empty: set text, chat or token_ids");
      if (auto st = EncodeInput(sh, &req.text(), nullptr, add_special, &spec->prompt); !st.ok()) return st;
      break;
    case pb::GenerateRequest::kChat:
      if (auto st = EncodeInput(sh, nullptr, &req.chat(), false, &spec->prompt); !st.ok()) return st;
      break;
    case pb::GenerateRequest::kTokenIds:
      spec->prompt.assign(req.token_ids().ids().begin(), req.token_ids().ids().end());
      break;
    default:
      return Invalid("the prompt is empty: set text, chat or token_ids");
  }
  if (req.stop_size() > 0 && sh.info.tokenizer == nullptr) {
    return Invalid("stop strings need the model's tokenizer, and this server has none; use stop_token_ids");
  }
  for (int i = 0; i < req.stop_size(); ++i) {
    if (req.stop(i).empty()) return Invalid(fmt::format("stop[{}] is empty", i));
  }
  const int max_prompt =
      sh.opts.max_prompt_tokens > 0 ? sh.opts.max_prompt_tokens : sh.info.context_length - 1;
  if (static_cast<int>(spec->prompt.size()) > max_prompt) {
    return Invalid(
        fmt::format("the prompt has {} tokens; the limit is {} (--max-prompt-tokens / context length)",
                    spec->prompt.size(), max_prompt));
  }
  const pb::SamplingParams& s = req.sampling();
  spec->sampling.temperature = s.temperature();
  spec->sampling.top_k = s.top_k();
  spec->sampling.top_p = s.has_top_p() ? s.top_p() : 1.0f;
  spec->sampling.min_p = s.min_p();
  spec->sampling.repetition_penalty = s.has_repetition_penalty() ? s.repetition_penalty() : 1.0f;
  spec->sampling.seed = s.has_seed() ? s.seed() : std::random_device{}();
  spec->max_new_tokens = req.max_new_tokens();
  spec->ignore_eos = req.ignore_eos();
  spec->logprobs = req.logprobs();
  spec->stop_token_ids.assign(req.stop_token_ids().begin(), req.stop_token_ids().end());
  for (int32_t id : spec->stop_token_ids) {
    if (id < 0 || id >= sh.info.config.vocab_size) {
      return Invalid(
          fmt::format("stop token id {} is outside the vocabulary [0, {})", id, sh.info.config.vocab_size));
    }
  }
  if (Status st = sh.validate(*spec); !st.ok()) return Invalid(st.message());
  return grpc::Status::OK;
}

class TpServeService final : public pb::TpServe::Service {
 public:
  explicit TpServeService(Shared& sh) : sh_(sh) {}

  grpc::Status Generate(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                        grpc::ServerWriter<pb::GenerateResponse>* writer) override {
    const Clock::time_point arrived = Clock::now();
    grpc::Status st = GenerateStream(ctx, req, writer, arrived);
    if (!st.ok()) sh_.metrics->Failed(CodeName(st.error_code()));
    return st;
  }

  // Generate, less the failure count.
  grpc::Status GenerateStream(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                              grpc::ServerWriter<pb::GenerateResponse>* writer, Clock::time_point arrived) {
    if (auto st = sh_.Authorize(ctx); !st.ok()) return st;
    RequestSpec spec;
    if (auto st = ToSpec(sh_, *req, &spec); !st.ok()) return st;
    const int prompt_tokens = static_cast<int>(spec.prompt.size());
    // The channel times the first token from its submission; the metrics count from the RPC's
    // arrival (validation and tokenization included), as the end-to-end latency does.
    const double before_submit_s = std::chrono::duration<double>(Clock::now() - arrived).count();
    auto ch_or = sh_.queue->Submit(std::move(spec));
    if (!ch_or.ok()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, ForClient(ch_or.status().message()));
    std::shared_ptr<RequestChannel> ch = std::move(ch_or).value();
    ch->WatchClient([ctx] { return ctx->IsCancelled(); });
    struct Unwatch {  // the engine must not ask ctx once this handler has returned
      RequestChannel& ch;
      ~Unwatch() { ch.WatchClient(nullptr); }
    } unwatch{*ch};
    int completion = 0;
    // Output text and stop strings (rank 0 only: the engine works in ids).
    std::optional<TextStreamer> text;
    if (sh_.info.tokenizer != nullptr) {
      text.emplace(*sh_.info.tokenizer, std::vector<std::string>(req->stop().begin(), req->stop().end()),
                   req->has_skip_special_tokens() ? req->skip_special_tokens() : true);
    }
    for (;;) {
      // The engine wakes this thread when the client cancels or disconnects (client_gone); the
      // timeout is only a safety net. A 5 ms poll instead woke every stream 200 times a second.
      StreamUpdate up = ch->Wait(std::chrono::milliseconds(100));
      if (up.client_gone || ctx->IsCancelled()) {
        sh_.queue->Cancel(ch->id());
        return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
      }
      if (up.aborted) return grpc::Status(grpc::StatusCode::UNAVAILABLE, ForClient(up.abort_message));
      if (up.tokens.empty() && !up.done()) continue;
      if (completion == 0 && !up.tokens.empty())
        sh_.metrics->FirstToken(prompt_tokens, before_submit_s + up.time_to_first_token_s);
      sh_.metrics->InterTokenGaps(up.token_gaps_s);
      pb::GenerateResponse msg;
      FinishReason finish = up.finish;
      for (size_t i = 0; i < up.tokens.size(); ++i) {
        msg.add_token_ids(up.tokens[i]);
        if (req->logprobs()) msg.add_logprobs(up.logprobs[i]);
        ++completion;
        if (!text) continue;
        TextStreamer::Delta d = text->Add(up.tokens[i]);
        msg.mutable_text()->append(d.text);
        if (d.stopped) {  // a stop string: this request ends here, whatever the engine does next
          finish = FinishReason::kStop;
          sh_.queue->Cancel(ch->id(), /*finished=*/true);
          break;
        }
      }
      if (text && up.finish != FinishReason::kNone && finish == up.finish)
        msg.mutable_text()->append(text->Finish());
      if (finish != FinishReason::kNone) {
        auto* fin = msg.mutable_final();
        fin->set_finish_reason(finish == FinishReason::kStop ? pb::FINISH_REASON_STOP
                                                             : pb::FINISH_REASON_LENGTH);
        auto* u = fin->mutable_usage();
        u->set_prompt_tokens(prompt_tokens);
        u->set_completion_tokens(completion);
        u->set_time_to_first_token_s(up.time_to_first_token_s);
        u->set_decode_time_s(up.decode_time_s);
      }
      if (!writer->Write(msg)) {  // the client went away
        sh_.queue->Cancel(ch->id());
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client disconnected");
      }
      if (finish != FinishReason::kNone) {
        sh_.metrics->Finished(finish == FinishReason::kStop ? "stop" : "length",
                              std::chrono::duration<double>(Clock::now() - arrived).count());
        return grpc::Status::OK;
      }
    }
  }

  grpc::Status Tokenize(grpc::ServerContext* ctx, const pb::TokenizeRequest* req,
                        pb::TokenizeResponse* out) override {
    if (auto st = sh_.Authorize(ctx); !st.ok()) return st;
    std::vector<int32_t> ids;
    grpc::Status st;
    if (req->input_case() == pb::TokenizeRequest::kChat) {
      st = EncodeInput(sh_, nullptr, &req->chat(), false, &ids, out->mutable_rendered_chat());
    } else {
      st = EncodeInput(sh_, &req->text(), nullptr,
                       req->has_add_special_tokens() ? req->add_special_tokens() : true, &ids);
    }
    if (!st.ok()) return st;
    out->mutable_ids()->Add(ids.begin(), ids.end());
    return grpc::Status::OK;
  }

  grpc::Status Detokenize(grpc::ServerContext* ctx, const pb::DetokenizeRequest* req,
                          pb::DetokenizeResponse* out) override {
    if (auto st = sh_.Authorize(ctx); !st.ok()) return st;
    const Tokenizer* tok = sh_.info.tokenizer;
    if (tok == nullptr) return Invalid("this server has no tokenizer (start it with --tokenizer FILE)");
    for (int i = 0; i < req->ids_size(); ++i) {
      if (req->ids(i) < 0 || req->ids(i) >= tok->vocab_size()) {
        return Invalid(
            fmt::format("ids[{}] = {} is outside the vocabulary [0, {})", i, req->ids(i), tok->vocab_size()));
      }
    }
    const std::vector<int32_t> ids(req->ids().begin(), req->ids().end());
    out->set_text(tok->Decode(ids, req->skip_special_tokens()));
    return grpc::Status::OK;
  }

  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const pb::GetModelInfoRequest*,
                            pb::ModelInfo* out) override {
    if (auto st = sh_.Authorize(ctx); !st.ok()) return st;
    const ModelConfig& c = sh_.info.config;
    out->set_model_path(sh_.info.model_path);
    out->set_model_type(c.model_type);
    out->set_vocab_size(c.vocab_size);
    out->set_hidden_size(c.hidden_size);
    out->set_num_hidden_layers(c.num_hidden_layers);
    out->set_num_attention_heads(c.num_attention_heads);
    out->set_num_key_value_heads(c.num_key_value_heads);
    out->set_context_length(sh_.info.context_length);
    out->set_weight_dtype(sh_.info.weight_dtype);
    out->set_bos_token_id(c.bos_token_id);
    for (int id : c.eos_token_ids) out->add_eos_token_ids(id);
    if (const Tokenizer* tok = sh_.info.tokenizer) {
      out->set_has_tokenizer(true);
      out->set_tokenizer_source(tok->config().source);
      out->set_chat_template_name(ChatTemplateName(tok->config().chat_template));
    }
    return grpc::Status::OK;
  }

  grpc::Status GetServerInfo(grpc::ServerContext* ctx, const pb::GetServerInfoRequest*,
                             pb::ServerInfo* out) override {
    if (auto st = sh_.Authorize(ctx); !st.ok()) return st;
    out->set_version(kVersion);
    const ParallelConfig& p = sh_.info.parallel;
    out->set_world_size(p.world_size);
    out->set_tp_size(p.tp_size);
    out->set_dp_size(p.dp_size);
    out->set_pp_size(p.pp_size);
    for (const auto& [k, v] : sh_.info.flags) (*out->mutable_flags())[k] = v;
    out->set_cpu_isa(sh_.info.cpu_isa);
    out->set_gateway_pid(static_cast<int32_t>(getpid()));
    out->set_uptime_s(std::chrono::duration<double>(Clock::now() - sh_.started).count());
    std::lock_guard<std::mutex> lock(sh_.counters->mu);
    const ServerCounters& c = *sh_.counters;
    out->set_kv_cache_capacity_tokens(c.engine.kv_capacity_tokens);
    out->set_kv_cache_used_tokens(c.engine.kv_used_tokens);
    out->set_kv_cache_used_bytes(c.engine.kv_used_bytes);
    out->set_kv_cache_total_blocks(c.engine.kv_total_blocks);
    out->set_kv_cache_free_blocks(c.engine.kv_free_blocks);
    out->set_kv_cache_block_size(c.engine.kv_block_size);
    out->set_prefix_cache_blocks(c.engine.prefix_cached_blocks);
    out->set_prefix_cache_query_tokens(c.engine.prefix_query_tokens);
    out->set_prefix_cache_hit_tokens(c.engine.prefix_hit_tokens);
    out->set_generation_tokens_per_s(c.tokens_per_s);
    out->set_allreduce_share(c.allreduce_share);
    out->set_running_requests(c.engine.running);
    out->set_waiting_requests(c.engine.waiting);
    out->set_finished_requests(c.finished);
    out->set_cancelled_requests(c.cancelled);
    out->set_generated_tokens(c.generated_tokens);
    return grpc::Status::OK;
  }

 private:
  Shared& sh_;
};

class HealthService final : public health::Health::Service {
 public:
  explicit HealthService(Shared& sh) : sh_(sh) {}

  grpc::Status Check(grpc::ServerContext* ctx, const health::HealthCheckRequest* req,
                     health::HealthCheckResponse* out) override {
    if (auto st = sh_.Authorize(ctx); !st.ok()) return st;
    if (!Known(req->service()))
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service " + req->service());
    out->set_status(Current());
    return grpc::Status::OK;
  }

  grpc::Status Watch(grpc::ServerContext* ctx, const health::HealthCheckRequest* req,
                     grpc::ServerWriter<health::HealthCheckResponse>* writer) override {
    if (auto st = sh_.Authorize(ctx); !st.ok()) return st;
    auto last = health::HealthCheckResponse::UNKNOWN;
    while (!ctx->IsCancelled() && !sh_.shutting_down) {
      const auto now = Known(req->service()) ? Current() : health::HealthCheckResponse::SERVICE_UNKNOWN;
      if (now != last) {
        health::HealthCheckResponse msg;
        msg.set_status(now);
        if (!writer->Write(msg)) break;
        last = now;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return grpc::Status::OK;
  }

 private:
  static bool Known(const std::string& s) { return s.empty() || s == "tpserve.v1.TpServe"; }
  health::HealthCheckResponse::ServingStatus Current() const {
    return sh_.counters->Serving() ? health::HealthCheckResponse::SERVING
                                   : health::HealthCheckResponse::NOT_SERVING;
  }
  Shared& sh_;
};

void DetachGatewayThread(const std::vector<int>& engine_cpus) {
  sched_param param{};
  param.sched_priority = 0;
  if (pthread_setschedparam(pthread_self(), SCHED_BATCH, &param) != 0) {
    log::Debug("gateway threads: SCHED_BATCH not available");
  }
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 5) != 0) {
    log::Debug("gateway threads: cannot raise nice");
  }
  // Unbind from rank 0's kernel cores (mpirun's binding, or the thread pool's pin of the main
  // thread): every CPU, which the kernel narrows to those present and allowed by the cpuset. (A
  // taskset of the whole job cannot be told from mpirun's binding, so it is not kept either.)
  cpu_set_t all;
  CPU_ZERO(&all);
  for (int c = 0; c < CPU_SETSIZE; ++c) CPU_SET(c, &all);
  if (pthread_setaffinity_np(pthread_self(), sizeof(all), &all) != 0) {
    log::Debug("gateway threads: keeping rank 0's CPU binding");
    return;
  }
  // Then off rank 0's own kernel CPUs, where the host has others: rank 0's step is the one every
  // rank waits for (it alone also takes the plan and hands out the tokens), while the other
  // ranks wait for it at each step's plan broadcast, yielding their cores after a short spin
  // (MpiComm::Wait), which is when the gRPC threads get to run there. On the 2-core test VM at
  // TP 2 and 16 streams, the gRPC threads' ~0.35 ms per step otherwise ran on rank 0's core.
  cpu_set_t others;
  if (engine_cpus.empty() || pthread_getaffinity_np(pthread_self(), sizeof(others), &others) != 0) return;
  for (int c : engine_cpus) {
    if (c >= 0 && c < CPU_SETSIZE) CPU_CLR(c, &others);
  }
  if (CPU_COUNT(&others) > 0 && pthread_setaffinity_np(pthread_self(), sizeof(others), &others) != 0) {
    log::Debug("gateway threads: may run on rank 0's kernel CPUs");
  }
}

Result<std::string> ReadFile(const std::string& path, const char* flag) {
  std::ifstream in(path);
  if (!in) return TPS_ERROR("{} '{}' cannot be read", flag, path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

struct Gateway::Impl {
  Shared shared;
  std::unique_ptr<TpServeService> api;
  std::unique_ptr<HealthService> health;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<MetricsHttpServer> metrics_http;
  int port = 0;
};

Gateway::Gateway(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Gateway::~Gateway() {
  Shutdown();
}
int Gateway::port() const {
  return impl_->port;
}
int Gateway::metrics_port() const {
  return impl_->metrics_http ? impl_->metrics_http->port() : -1;
}

// gRPC's threads (its executors, timers, pollers and handlers) are all born in a thread that runs
// SCHED_BATCH at nice +5 on the CPUs other than rank 0's kernel CPUs (any CPU when rank 0's
// threads are not pinned or hold every CPU), and inherit that: on a host where every core runs a
// rank, a streamed token then waits until a rank's thread yields instead of preempting rank 0
// mid-step (which would stall the all-reduce partner too), and a core that no rank uses serves
// them at once. Rank 0's own thread keeps its normal priority and binding.
Result<std::unique_ptr<Gateway>> Gateway::Start(const GatewayOptions& opts, const GatewayInfo& info,
                                                RequestQueue& queue, const ServerCounters& counters,
                                                Validator validate) {
  Result<std::unique_ptr<Gateway>> result = Status();
  std::thread([&] {
    DetachGatewayThread(opts.engine_cpus);
    result = StartHere(opts, info, queue, counters, std::move(validate));
  }).join();
  return result;
}

Result<std::unique_ptr<Gateway>> Gateway::StartHere(const GatewayOptions& opts, const GatewayInfo& info,
                                                    RequestQueue& queue, const ServerCounters& counters,
                                                    Validator validate) {
  auto impl = std::make_unique<Impl>();
  impl->shared.opts = opts;
  impl->shared.info = info;
  impl->shared.queue = &queue;
  impl->shared.counters = &counters;
  impl->shared.validate = std::move(validate);
  impl->shared.metrics = std::make_unique<ServingMetrics>(
      std::map<std::string, std::string>{{"version", kVersion},
                                         {"model_path", info.model_path},
                                         {"model_type", info.config.model_type},
                                         {"weight_dtype", info.weight_dtype},
                                         {"tp_size", std::to_string(info.parallel.tp_size)},
                                         {"cpu_isa", info.cpu_isa}});

  // The metrics endpoint first: a taken metrics port fails the start before gRPC serves at all.
  if (opts.metrics_port >= 0) {
    const Shared& sh = impl->shared;
    TPS_ASSIGN_OR_RETURN(impl->metrics_http,
                         MetricsHttpServer::Start(
                             opts.host, opts.metrics_port, [&sh] { return sh.metrics->Render(*sh.counters); },
                             [&sh] { return sh.counters->Serving(); }));
    impl->shared.info.flags["metrics_port"] = std::to_string(impl->metrics_http->port());  // the bound one
  }
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (opts.tls_cert.empty() != opts.tls_key.empty()) {
    return TPS_ERROR("--tls-cert and --tls-key go together: pass both PEM files, or neither");
  }
  if (!opts.tls_cert.empty()) {
    TPS_ASSIGN_OR_RETURN(std::string cert, ReadFile(opts.tls_cert, "--tls-cert"));
    TPS_ASSIGN_OR_RETURN(std::string key, ReadFile(opts.tls_key, "--tls-key"));
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({key, cert});
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string addr = (opts.host.find(':') != std::string::npos ? "[" + opts.host + "]" : opts.host) +
                           ":" + std::to_string(opts.port);
  builder.AddListeningPort(addr, creds, &impl->port);
  // gRPC sets SO_REUSEPORT by default on Linux: a second server on a taken port would start, and
  // the kernel would spread new connections over both. A taken port must be an error instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(opts.max_message_bytes);
  // One completion queue with few pollers: the ranks own the cores, and every extra gRPC thread
  // that wakes per streamed token takes time from rank 0's forward pass.
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::NUM_CQS, 1);
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 1);
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 2);
  impl->api = std::make_unique<TpServeService>(impl->shared);
  impl->health = std::make_unique<HealthService>(impl->shared);
  builder.RegisterService(impl->api.get());
  builder.RegisterService(impl->health.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->port == 0) {
    return TPS_ERROR(
        "cannot listen on {}: the port is taken or the address is not local (pick another --port or "
        "--host)",
        addr);
  }
  return std::unique_ptr<Gateway>(new Gateway(std::move(impl)));
}

void Gateway::Shutdown() {
  if (!impl_ || !impl_->server) return;
  impl_->shared.shutting_down = true;
  if (impl_->metrics_http) impl_->metrics_http->Stop();
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  impl_->server->Wait();
  impl_->server.reset();
}

}  // namespace tpserve
