// tpserve-cli: a gRPC client for tpserve.
//   tpserve-cli --addr 127.0.0.1:30000 generate --prompt-ids 1,2,3 --max-new-tokens 32 [--json]
//   tpserve-cli info | health
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

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

// Closed-loop load: `concurrency` client threads, each sending its next request as soon as the
// previous one ends, until `total` requests are done. TTFT and inter-token latency are measured
// here, at the client, from message arrival times.
int RunLoad(const Common& common, std::shared_ptr<grpc::Channel> channel, int concurrency, int total,
            int prompt_len, int max_new_tokens, uint64_t seed) {
  using Clock = std::chrono::steady_clock;
  auto stub = pb::TpServe::NewStub(channel);
  pb::ModelInfo mi;
  {
    grpc::ClientContext ctx;
    Prepare(common, &ctx);
    if (auto st = stub->GetModelInfo(&ctx, pb::GetModelInfoRequest(), &mi); !st.ok()) return Fail(st);
  }
  std::mutex mu;
  std::vector<double> ttft, itl;
  int64_t tokens = 0;
  int next = 0, errors = 0;
  std::string first_error;
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < concurrency; ++w) {
    threads.emplace_back([&, w] {
      for (;;) {
        int id;
        {
          std::lock_guard<std::mutex> lock(mu);
          if (next >= total) return;
          id = next++;
        }
        std::mt19937_64 rng(seed * 1000003 + id);
        pb::GenerateRequest req;
        for (int i = 0; i < prompt_len; ++i)
          req.mutable_token_ids()->add_ids(static_cast<int32_t>(rng() % mi.vocab_size()));
        req.set_max_new_tokens(max_new_tokens);
        req.set_ignore_eos(true);
        grpc::ClientContext ctx;
        Prepare(common, &ctx);
        const auto sent = Clock::now();
        auto reader = stub->Generate(&ctx, req);
        pb::GenerateResponse msg;
        std::vector<double> my_itl;
        double my_ttft = -1;
        auto last = sent;
        int64_t my_tokens = 0;
        while (reader->Read(&msg)) {
          const auto now = Clock::now();
          if (msg.token_ids_size() == 0) continue;
          if (my_ttft < 0) {
            my_ttft = std::chrono::duration<double>(now - sent).count();
          } else {
            my_itl.push_back(std::chrono::duration<double>(now - last).count() / msg.token_ids_size());
          }
          last = now;
          my_tokens += msg.token_ids_size();
        }
        grpc::Status st = reader->Finish();
        std::lock_guard<std::mutex> lock(mu);
        if (!st.ok()) {
          ++errors;
          if (first_error.empty()) first_error = st.error_message();
          continue;
        }
        tokens += my_tokens;
        ttft.push_back(my_ttft);
        itl.insert(itl.end(), my_itl.begin(), my_itl.end());
        (void)w;
      }
    });
  }
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  nlohmann::json out = {{"concurrency", concurrency},
                        {"requests", total},
                        {"errors", errors},
                        {"prompt_len", prompt_len},
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
  bool ignore_eos = false, logprobs = false, json = false;
  CLI::App* gen = app.add_subcommand("generate", "Stream a generation");
  auto ids_opt = gen->add_option("--prompt-ids", ids, "Prompt token ids, e.g. 1,2,3")->delimiter(',');
  gen->add_option("--prompt", text, "Prompt text (needs a server with a tokenizer)")->excludes(ids_opt);
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
  int concurrency = 1, requests = 0, prompt_len = 32;
  uint64_t load_seed = 0;
  CLI::App* load =
      app.add_subcommand("load", "Load test: concurrent streams; prints throughput and latency (JSON)");
  load->add_option("--concurrency", concurrency, "Streams in flight")->capture_default_str();
  load->add_option("--requests", requests, "Requests in all (default: 4 x concurrency)");
  load->add_option("--prompt-len", prompt_len, "Prompt tokens (random ids)")->capture_default_str();
  load->add_option("--max-new-tokens", max_new_tokens, "Tokens per request (EOS ignored)")
      ->capture_default_str();
  load->add_option("--seed", load_seed, "Seed of the random prompts")->capture_default_str();
  CLI::App* info = app.add_subcommand("info", "Model and server information (JSON)");
  CLI::App* health = app.add_subcommand("health", "grpc.health.v1 Check; exit 0 when SERVING");
  CLI11_PARSE(app, argc, argv);

  auto channel = Connect(common);
  if (load->parsed())
    return RunLoad(common, channel, concurrency, requests > 0 ? requests : 4 * concurrency, prompt_len,
                   max_new_tokens, load_seed);
  if (gen->parsed()) {
    if (!text.empty()) {
      req.set_text(text);
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
    req.set_ignore_eos(ignore_eos);
    req.set_logprobs(logprobs);
    auto stub = pb::TpServe::NewStub(channel);
    grpc::ClientContext ctx;
    Prepare(common, &ctx);
    auto reader = stub->Generate(&ctx, req);
    pb::GenerateResponse msg;
    std::vector<int32_t> out_ids;
    std::vector<float> out_lp;
    nlohmann::json final_json;
    while (reader->Read(&msg)) {
      for (int i = 0; i < msg.token_ids_size(); ++i) {
        out_ids.push_back(msg.token_ids(i));
        if (!json) std::cout << (out_ids.size() > 1 ? " " : "") << msg.token_ids(i) << std::flush;
      }
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
      if (logprobs) final_json["logprobs"] = out_lp;
      std::cout << final_json.dump() << std::endl;
    } else {
      std::cout << "\n[finish_reason: " << final_json["finish_reason"].get<std::string>() << "]" << std::endl;
    }
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
