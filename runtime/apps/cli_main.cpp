// tpserve-cli: a gRPC client for tpserve.
//   tpserve-cli --addr 127.0.0.1:30000 generate --prompt-ids 1,2,3 --max-new-tokens 32 [--json]
//   tpserve-cli generate --message system:Be brief --message user:Hi --stop '\n\n'
//   tpserve-cli info | health
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>

#include <google/protobuf/util/json_util.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "apps/prompt_ids_option.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tpserve.grpc.pb.h"

namespace {

namespace pb = ::tpserve::v1;

struct Common {
  std::string addr = "127.0.0.1:30000";
  std::string api_key;
  std::string tls_ca;  // PEM of the CA (or self-signed cert) to trust; enables TLS
  double timeout_s = 0;
};

std::shared_ptr<grpc::Channel> Connect(const Common& c) {
  if (c.tls_ca.empty()) return grpc::CreateChannel(c.addr, grpc::InsecureChannelCredentials());
  std::ifstream in(c.tls_ca);
  std::stringstream ss;
  ss << in.rdbuf();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ss.str();
  return grpc::CreateChannel(c.addr, grpc::SslCredentials(ssl));
}

void Prepare(const Common& c, grpc::ClientContext* ctx) {
  if (!c.api_key.empty()) ctx->AddMetadata("authorization", "Bearer " + c.api_key);
  if (c.timeout_s > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(c.timeout_s * 1000)));
  }
}

int Fail(const grpc::Status& st) {
  std::cerr << "tpserve-cli: error: " << st.error_code() << " " << st.error_message() << "\n";
  return 1;
}

const char* FinishName(pb::FinishReason r) {
  return r == pb::FINISH_REASON_STOP ? "stop" : r == pb::FINISH_REASON_LENGTH ? "length" : "unspecified";
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double idx = p * (v.size() - 1);
  const size_t lo = static_cast<size_t>(idx);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (idx - lo);
}

// Closed-loop load: `concurrency` streams, each sending its next request as soon as the previous
// one ends, until `total` requests are done. TTFT and inter-token latency are measured here, at
// the client, from message arrival times. All streams run on one thread through gRPC's async API
// (one completion queue): the client usually shares the host with the server in benches, and a
// thread per stream cost ~2x the CPU per token (a wake-up for every message of every stream).
// Prompts are random ids; the first `shared_prefix_len` of them are the same in every request (a
// common system prompt: what a server's prefix cache is for).
int RunLoad(const Common& common, std::shared_ptr<grpc::Channel> channel, int concurrency, int total,
            int prompt_len, int shared_prefix_len, int max_new_tokens, uint64_t seed) {
  using Clock = std::chrono::steady_clock;
  auto stub = pb::TpServe::NewStub(channel);
  pb::ModelInfo mi;
  {
    grpc::ClientContext ctx;
    Prepare(common, &ctx);
    if (auto st = stub->GetModelInfo(&ctx, pb::GetModelInfoRequest(), &mi); !st.ok()) return Fail(st);
  }
  // One request in flight on a stream; its completion-queue tag is the Call itself, and `state`
  // says which operation just completed.
  struct Call {
    enum State { kStarting, kReading, kFinishing } state = kStarting;
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientAsyncReader<pb::GenerateResponse>> reader;
    pb::GenerateResponse msg;
    grpc::Status status;
    Clock::time_point sent, last;
    double ttft = -1;
    std::vector<double> itl;
    int64_t tokens = 0;
  };
  grpc::CompletionQueue cq;
  std::vector<double> ttft, itl;
  int64_t tokens = 0;
  int next = 0, errors = 0, in_flight = 0;
  std::string first_error;
  auto start_next = [&] {  // the next request, if any is left
    if (next >= total) return;
    const int id = next++;
    std::mt19937_64 shared(seed * 1000003 + 999999937), rng(seed * 1000003 + id);
    pb::GenerateRequest req;
    for (int i = 0; i < prompt_len; ++i)
      req.mutable_token_ids()->add_ids(
          static_cast<int32_t>((i < shared_prefix_len ? shared() : rng()) % mi.vocab_size()));
    req.set_max_new_tokens(max_new_tokens);
    req.set_ignore_eos(true);
    auto* call = new Call;
    Prepare(common, &call->ctx);
    call->sent = call->last = Clock::now();
    call->reader = stub->PrepareAsyncGenerate(&call->ctx, req, &cq);
    call->reader->StartCall(call);
    ++in_flight;
  };
  const auto start = Clock::now();
  for (int w = 0; w < concurrency; ++w) start_next();
  void* tag = nullptr;
  bool ok = false;
  while (in_flight > 0 && cq.Next(&tag, &ok)) {
    auto* call = static_cast<Call*>(tag);
    if (call->state == Call::kReading && ok) {  // a message
      const auto now = Clock::now();
      if (call->msg.token_ids_size() > 0) {
        if (call->ttft < 0) {
          call->ttft = std::chrono::duration<double>(now - call->sent).count();
        } else {
          call->itl.push_back(std::chrono::duration<double>(now - call->last).count() /
                              call->msg.token_ids_size());
        }
        call->last = now;
        call->tokens += call->msg.token_ids_size();
      }
    }
    if (call->state == Call::kFinishing) {  // the stream's status: record it, then the next request
      if (!call->status.ok()) {
        ++errors;
        if (first_error.empty()) first_error = call->status.error_message();
      } else {
        tokens += call->tokens;
        ttft.push_back(call->ttft);
        itl.insert(itl.end(), call->itl.begin(), call->itl.end());
      }
      delete call;
      --in_flight;
      start_next();
    } else if (ok) {  // started, or a message read: read the next one
      call->state = Call::kReading;
      call->reader->Read(&call->msg, call);
    } else {  // the stream ended (or never started): its status
      call->state = Call::kFinishing;
      call->reader->Finish(&call->status, call);
    }
  }
  cq.Shutdown();  // empty by now (every call finished); drained as gRPC requires
  while (cq.Next(&tag, &ok)) {
  }
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  nlohmann::json out = {{"concurrency", concurrency},
                        {"requests", total},
                        {"errors", errors},
                        {"prompt_len", prompt_len},
                        {"shared_prefix_len", shared_prefix_len},
                        {"max_new_tokens", max_new_tokens},
                        {"duration_s", secs},
                        {"requests_per_s", (total - errors) / secs},
                        {"output_tokens_per_s", tokens / secs},
                        {"ttft_p50_s", Percentile(ttft, 0.50)},
                        {"ttft_p99_s", Percentile(ttft, 0.99)},
                        {"itl_p50_s", Percentile(itl, 0.50)},
                        {"itl_p99_s", Percentile(itl, 0.99)}};
  if (!first_error.empty()) out["first_error"] = first_error;
  std::cout << out.dump() << std::endl;
  return errors == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Common common;
  CLI::App app{"tpserve-cli: talk to a tpserve server over gRPC"};
  app.require_subcommand(1);
  app.add_option("--addr", common.addr, "Server address HOST:PORT")->capture_default_str();
  app.add_option("--api-key", common.api_key, "Bearer token (the server's --api-key)");
  app.add_option("--tls-ca", common.tls_ca, "Trust this PEM CA/cert and connect with TLS");
  app.add_option("--timeout", common.timeout_s, "Deadline in seconds (0: none)");

  pb::GenerateRequest req;
  std::vector<int32_t> ids, stop_ids;
  std::string text;
  float temperature = 0, top_p = 1, min_p = 0, repetition_penalty = 1;
  int top_k = 0, max_new_tokens = 16;
  int64_t seed = -1;
  bool ignore_eos = false, logprobs = false, json = false, keep_special = false, no_gen_prompt = false;
  std::vector<std::string> stops, messages;
  std::string enable_thinking;
  CLI::App* gen = app.add_subcommand("generate", "Stream a generation");
  auto ids_opt = tpserve::AddPromptIdsOption(gen, &ids);
  auto text_opt =
      gen->add_option("--prompt", text, "Prompt text (needs a server with a tokenizer)")->excludes(ids_opt);
  gen->add_option("--message", messages,
                  "A chat turn ROLE:CONTENT, repeatable (rendered with the model's chat template)")
      ->excludes(ids_opt)
      ->excludes(text_opt);
  gen->add_flag("--no-generation-prompt", no_gen_prompt, "Chat: do not open an assistant turn");
  gen->add_option("--enable-thinking", enable_thinking, "Chat (Qwen3): true or false")
      ->check(CLI::IsMember({"true", "false"}));
  gen->add_option("--stop", stops, "Stop string, repeatable (matched on the output text)");
  gen->add_flag("--keep-special-tokens", keep_special, "Output text keeps special tokens");
  gen->add_option("--max-new-tokens", max_new_tokens)->capture_default_str();
  gen->add_option("--temperature", temperature, "0 = greedy")->capture_default_str();
  gen->add_option("--top-k", top_k);
  gen->add_option("--top-p", top_p);
  gen->add_option("--min-p", min_p);
  gen->add_option("--repetition-penalty", repetition_penalty);
  gen->add_option("--seed", seed, "Sampling seed (default: random)");
  gen->add_option("--stop-token-ids", stop_ids)->delimiter(',');
  gen->add_flag("--ignore-eos", ignore_eos);
  gen->add_flag("--logprobs", logprobs);
  gen->add_flag("--json", json, "Print one JSON object at the end instead of streaming ids");
  int concurrency = 1, requests = 0, prompt_len = 32, shared_prefix_len = 0;
  uint64_t load_seed = 0;
  CLI::App* load =
      app.add_subcommand("load", "Load test: concurrent streams; prints throughput and latency (JSON)");
  load->add_option("--concurrency", concurrency, "Streams in flight")->capture_default_str();
  load->add_option("--requests", requests, "Requests in all (default: 4 x concurrency)");
  load->add_option("--prompt-len", prompt_len, "Prompt tokens (random ids)")->capture_default_str();
  load->add_option("--shared-prefix-len", shared_prefix_len, "Of those, leading tokens every request shares")
      ->capture_default_str();
  load->add_option("--max-new-tokens", max_new_tokens, "Tokens per request (EOS ignored)")
      ->capture_default_str();
  load->add_option("--seed", load_seed, "Seed of the random prompts")->capture_default_str();
  std::string tok_text;
  bool no_special = false;
  CLI::App* tokenize = app.add_subcommand("tokenize", "The server's tokenizer: text -> ids (JSON)");
  tokenize->add_option("--text", tok_text, "Text to encode")->required();
  tokenize->add_flag("--no-special-tokens", no_special, "Do not add BOS/EOS");
  std::vector<int32_t> detok_ids;
  CLI::App* detokenize = app.add_subcommand("detokenize", "The server's tokenizer: ids -> text (JSON)");
  detokenize->add_option("--ids", detok_ids, "Token ids, e.g. 1,2,3")->delimiter(',')->required();
  detokenize->add_flag("--skip-special-tokens", no_special, "Leave out special tokens");
  CLI::App* info = app.add_subcommand("info", "Model and server information (JSON)");
  CLI::App* health = app.add_subcommand("health", "grpc.health.v1 Check; exit 0 when SERVING");
  CLI11_PARSE(app, argc, argv);

  auto channel = Connect(common);
  if (load->parsed()) {
    if (shared_prefix_len < 0 || shared_prefix_len > prompt_len) {
      std::cerr << "tpserve-cli: --shared-prefix-len " << shared_prefix_len << " must be in [0, --prompt-len "
                << prompt_len << "]\n";
      return 2;
    }
    return RunLoad(common, channel, concurrency, requests > 0 ? requests : 4 * concurrency, prompt_len,
                   shared_prefix_len, max_new_tokens, load_seed);
  }
  if (gen->parsed()) {
    if (!text.empty()) {
      req.set_text(text);
    } else if (!messages.empty()) {
      auto* chat = req.mutable_chat();
      for (const std::string& m : messages) {
        const size_t colon = m.find(':');
        if (colon == std::string::npos) {
          std::cerr << "tpserve-cli: --message '" << m << "' is not ROLE:CONTENT (e.g. user:Hello)\n";
          return 2;
        }
        auto* msg = chat->add_messages();
        msg->set_role(m.substr(0, colon));
        msg->set_content(m.substr(colon + 1));
      }
      if (no_gen_prompt) chat->set_add_generation_prompt(false);
      if (!enable_thinking.empty()) chat->set_enable_thinking(enable_thinking == "true");
    } else {
      for (int32_t id : ids) req.mutable_token_ids()->add_ids(id);
    }
    auto* s = req.mutable_sampling();
    s->set_temperature(temperature);
    s->set_top_k(top_k);
    s->set_top_p(top_p);
    s->set_min_p(min_p);
    s->set_repetition_penalty(repetition_penalty);
    if (seed >= 0) s->set_seed(static_cast<uint64_t>(seed));
    req.set_max_new_tokens(max_new_tokens);
    for (int32_t id : stop_ids) req.add_stop_token_ids(id);
    for (const std::string& stop : stops) req.add_stop(stop);
    if (keep_special) req.set_skip_special_tokens(false);
    req.set_ignore_eos(ignore_eos);
    req.set_logprobs(logprobs);
    auto stub = pb::TpServe::NewStub(channel);
    // Stream text when the server has a tokenizer, ids otherwise.
    bool print_text = false;
    if (!json) {
      grpc::ClientContext c0;
      Prepare(common, &c0);
      pb::ModelInfo mi;
      if (auto st = stub->GetModelInfo(&c0, pb::GetModelInfoRequest(), &mi); !st.ok()) return Fail(st);
      print_text = mi.has_tokenizer();
    }
    grpc::ClientContext ctx;
    Prepare(common, &ctx);
    auto reader = stub->Generate(&ctx, req);
    pb::GenerateResponse msg;
    std::string out_text;
    std::vector<int32_t> out_ids;
    std::vector<float> out_lp;
    nlohmann::json final_json;
    while (reader->Read(&msg)) {
      for (int i = 0; i < msg.token_ids_size(); ++i) {
        out_ids.push_back(msg.token_ids(i));
        if (!json && !print_text)
          std::cout << (out_ids.size() > 1 ? " " : "") << msg.token_ids(i) << std::flush;
      }
      out_text += msg.text();
      if (print_text) std::cout << msg.text() << std::flush;
      out_lp.insert(out_lp.end(), msg.logprobs().begin(), msg.logprobs().end());
      if (msg.has_final()) {
        const auto& u = msg.final().usage();
        final_json = {{"finish_reason", FinishName(msg.final().finish_reason())},
                      {"usage",
                       {{"prompt_tokens", u.prompt_tokens()},
                        {"completion_tokens", u.completion_tokens()},
                        {"time_to_first_token_s", u.time_to_first_token_s()},
                        {"decode_time_s", u.decode_time_s()}}}};
      }
    }
    grpc::Status st = reader->Finish();
    if (!st.ok()) {
      if (!json) std::cout << "\n";
      return Fail(st);
    }
    if (json) {
      final_json["token_ids"] = out_ids;
      final_json["text"] = out_text;
      if (logprobs) final_json["logprobs"] = out_lp;
      std::cout << final_json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
    } else {
      std::cout << "\n[finish_reason: " << final_json["finish_reason"].get<std::string>() << "]" << std::endl;
    }
    return 0;
  }
  if (tokenize->parsed() || detokenize->parsed()) {
    auto stub = pb::TpServe::NewStub(channel);
    grpc::ClientContext ctx;
    Prepare(common, &ctx);
    nlohmann::json out;
    if (tokenize->parsed()) {
      pb::TokenizeRequest r;
      r.set_text(tok_text);
      if (no_special) r.set_add_special_tokens(false);
      pb::TokenizeResponse resp;
      if (auto st = stub->Tokenize(&ctx, r, &resp); !st.ok()) return Fail(st);
      out["ids"] = std::vector<int32_t>(resp.ids().begin(), resp.ids().end());
    } else {
      pb::DetokenizeRequest r;
      for (int32_t id : detok_ids) r.add_ids(id);
      r.set_skip_special_tokens(no_special);
      pb::DetokenizeResponse resp;
      if (auto st = stub->Detokenize(&ctx, r, &resp); !st.ok()) return Fail(st);
      out["text"] = resp.text();
    }
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
    return 0;
  }
  if (info->parsed()) {
    auto stub = pb::TpServe::NewStub(channel);
    pb::ModelInfo mi;
    pb::ServerInfo si;
    grpc::ClientContext c1, c2;
    Prepare(common, &c1);
    Prepare(common, &c2);
    if (auto st = stub->GetModelInfo(&c1, pb::GetModelInfoRequest(), &mi); !st.ok()) return Fail(st);
    if (auto st = stub->GetServerInfo(&c2, pb::GetServerInfoRequest(), &si); !st.ok()) return Fail(st);
    std::string a, b;
    google::protobuf::util::JsonPrintOptions opts;
    opts.add_whitespace = true;
    opts.always_print_primitive_fields = true;
    (void)google::protobuf::util::MessageToJsonString(mi, &a, opts);
    (void)google::protobuf::util::MessageToJsonString(si, &b, opts);
    std::cout << "{\"model\": " << a << ", \"server\": " << b << "}" << std::endl;
    return 0;
  }
  if (health->parsed()) {
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext ctx;
    Prepare(common, &ctx);
    grpc::health::v1::HealthCheckResponse resp;
    if (auto st = stub->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp); !st.ok()) return Fail(st);
    std::cout << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()) << std::endl;
    return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
  }
  return 2;
}
