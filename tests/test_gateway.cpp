// The gRPC gateway end to end: each test starts `mpirun -np N tpserve serve` on a free loopback
// port (server_harness), talks to it with generated stubs, and stops it with SIGTERM.
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>

#include <dirent.h>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "grpc/health/v1/health.grpc.pb.h"
#include "model/synthetic.h"
#include "model/tokenizer/chat_template.h"
#include "model/tokenizer/tokenizer.h"
#include "reflection_client.grpc.pb.h"
#include "server_harness.h"
#include "test_util.h"

namespace tpserve {
namespace {

namespace pb = ::tpserve::v1;
using testing::Collected;
using testing::GenerateAll;
using testing::GreedyRequest;
using testing::ServerProcess;

class Gateway : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = testing::MakeTempDir("gateway");
    SyntheticSpec tiny;
    tiny.preset = "tiny";
    tiny.dtype = kernels::DType::kF32;
    tiny.seed = 5;
    ASSERT_TRUE(WriteSyntheticModel(tiny, dir_ + "/tiny").ok());
    SyntheticSpec small;  // slower steps (~1.5 ms alone, ~6 ms for 16 rows), for cancel and shutdown timing
    small.preset = "small";
    small.dtype = kernels::DType::kBF16;
    ASSERT_TRUE(WriteSyntheticModel(small, dir_ + "/small").ok());
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }
  static std::string tiny() { return dir_ + "/tiny"; }
  static std::string small() { return dir_ + "/small"; }
  static std::string dir_;
};
std::string Gateway::dir_;

TEST_F(Gateway, StreamedGreedyEqualsTpserveRunAtTp1AndTp2) {
  const std::vector<int32_t> prompt = {1, 5, 9, 200};
  for (int np : {1, 2}) {
    const std::vector<int32_t> want = testing::RunGreedy(tiny(), np, prompt, 40);
    ASSERT_EQ(want.size(), 40u) << "tpserve run failed at np " << np;
    ServerProcess server(tiny(), np);
    ASSERT_TRUE(server.ready()) << server.log();
    const auto sent = std::chrono::steady_clock::now();
    Collected got = GenerateAll(server, GreedyRequest(prompt, 40));
    const double client_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count();
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    EXPECT_EQ(got.ids, want) << "np " << np;
    EXPECT_EQ(got.final.finish_reason(), pb::FINISH_REASON_LENGTH);
    EXPECT_EQ(got.final.usage().completion_tokens(), 40);
    EXPECT_EQ(got.final.usage().prompt_tokens(), 4);
    if (np == 1) {
      const pb::ServerInfo info = server.Info();  // before the next idle heartbeat (1 s) reads 0
      EXPECT_EQ(info.allreduce_share(), 0.0) << "no all-reduce at TP 1";
      // The throughput window of a request that arrives after idling starts with the request, not
      // at the last idle heartbeat: the server's rate is at least the client's.
      EXPECT_GE(info.generation_tokens_per_s(), 40 / client_s)
          << "the server's tokens/s window included idle time (client: 40 tokens in " << client_s << " s)";
    }
    EXPECT_EQ(server.Terminate(30), 0) << server.log();
  }
}

TEST_F(Gateway, SixteenConcurrentClientsEachMatchTheirSoloResult) {
  ServerProcess server(tiny(), 2);
  ASSERT_TRUE(server.ready()) << server.log();
  constexpr int kClients = 16;
  std::vector<pb::GenerateRequest> reqs;
  for (int i = 0; i < kClients; ++i) {
    std::vector<int32_t> prompt = {1};
    for (int j = 0; j < 1 + (i * 7) % 13; ++j) prompt.push_back((i * 131 + j * 17) % 1000);
    reqs.push_back(GreedyRequest(prompt, 5 + (i * 11) % 60));
  }
  std::vector<Collected> solo(kClients), together(kClients);
  for (int i = 0; i < kClients; ++i) solo[i] = GenerateAll(server, reqs[i]);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      // Staggered arrivals, so requests join a running batch between steps.
      std::this_thread::sleep_for(std::chrono::milliseconds(3 * i));
      together[i] = GenerateAll(server, reqs[i]);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << i << ": " << together[i].status.error_message();
    EXPECT_EQ(static_cast<int>(together[i].ids.size()), reqs[i].max_new_tokens()) << "client " << i;
    EXPECT_EQ(together[i].ids, solo[i].ids) << "client " << i;
    EXPECT_EQ(together[i].final.usage().completion_tokens(), reqs[i].max_new_tokens());
  }
  const pb::ServerInfo info = server.Info();
  EXPECT_EQ(info.finished_requests(), 2 * kClients);
  EXPECT_EQ(info.running_requests(), 0);
}

TEST_F(Gateway, CancelStopsPromptlyFreesMemoryAndKeepsServing) {
  ServerProcess server(small(), 2);
  ASSERT_TRUE(server.ready()) << server.log();
  auto stub = pb::TpServe::NewStub(server.channel());
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, GreedyRequest({1, 2, 3}, 2000));
  pb::GenerateResponse msg;
  int received = 0, messages = 0;
  while (received < 200 && reader->Read(&msg)) {
    received += msg.token_ids_size();
    ++messages;
  }
  // Tokens arrive as they are produced, not at the end. (A message may carry a few when the
  // handler thread waits for a core, so the check reads 200 tokens, not 5.)
  EXPECT_GE(messages, 2) << "the first " << received << " tokens came in one message";
  // bf16 weights get a bf16 KV cache (--kv-cache-dtype auto): 2 bytes a cached element, for small's
  // 8 layers x 2 KV heads per rank x head dim 64 x (K, V).
  const pb::ServerInfo busy = server.Info();
  EXPECT_GT(busy.kv_cache_used_bytes(), 0);
  EXPECT_EQ(busy.flags().at("kv_cache_dtype"), "bf16");
  EXPECT_EQ(busy.kv_cache_used_bytes(), busy.kv_cache_used_tokens() * 8 * 2 * 64 * 2 * 2);
  // The server's count right before the cancel (tokens already in the stream but not yet read by
  // this client were produced before it, so the count of the client's reads would overstate).
  const int64_t before_cancel = server.Info().generated_tokens();
  ctx.TryCancel();
  while (reader->Read(&msg)) received += msg.token_ids_size();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  pb::ServerInfo info;
  for (int i = 0; i < 200; ++i) {  // up to 2 s for the engine to drop it
    info = server.Info();
    if (info.running_requests() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(info.running_requests(), 0);
  EXPECT_EQ(info.kv_cache_used_bytes(), 0);
  EXPECT_EQ(info.kv_cache_used_tokens(), 0);
  EXPECT_EQ(info.cancelled_requests(), 1);
  // Tokens produced after the cancel: the steps while the count above travels back, the client's
  // cancel reaches the server, and the handler (woken by the next token) or the engine's client
  // check (every 5 ms) passes it on: 1-3 here, with steps of ~1.5 ms. 16 tolerates ~20 ms of
  // scheduling delay on a loaded 2-core VM; a cancel seen only by the handler's 100 ms
  // safety-net poll would let ~45-70 tokens through, an ignored one ~1800.
  RecordProperty("tokens_after_cancel", static_cast<int>(info.generated_tokens() - before_cancel));
  EXPECT_LE(info.generated_tokens() - before_cancel, 16)
      << "generated " << info.generated_tokens() << ", " << before_cancel << " before the cancel, read "
      << received;
  Collected after = GenerateAll(server, GreedyRequest({1, 2, 3}, 8));
  EXPECT_TRUE(after.status.ok());
  EXPECT_EQ(after.ids.size(), 8u);
}

// Expects `req` to fail with `code` and a message containing `needle`.
void ExpectRejected(const ServerProcess& server, const pb::GenerateRequest& req, grpc::StatusCode code,
                    const std::string& needle) {
  Collected c = GenerateAll(server, req);
  EXPECT_EQ(c.status.error_code(), code) << needle << ": " << c.status.error_message();
  EXPECT_NE(c.status.error_message().find(needle), std::string::npos) << c.status.error_message();
  EXPECT_FALSE(std::regex_search(c.status.error_message(), std::regex(R"(\.(cpp|cc|h|hpp):[0-9]+\])")))
      << "no server source paths for clients: " << c.status.error_message();
  EXPECT_TRUE(c.ids.empty());
}

TEST_F(Gateway, BadRequestsGetStatusesAndTheServerKeepsServing) {
  // (Also SGLang's name for turning the prefix cache off.)
  ServerProcess server(tiny(), 2, {"--max-message-bytes", "65536", "--disable-radix-cache"});
  ASSERT_TRUE(server.ready()) << server.log();
  using grpc::StatusCode;
  pb::GenerateRequest empty;
  empty.set_max_new_tokens(4);
  ExpectRejected(server, empty, StatusCode::INVALID_ARGUMENT, "prompt is empty");
  ExpectRejected(server, GreedyRequest({}, 4), StatusCode::INVALID_ARGUMENT, "prompt is empty");
  ExpectRejected(server, GreedyRequest({1, 1000}, 4), StatusCode::INVALID_ARGUMENT, "outside the vocabulary");
  ExpectRejected(server, GreedyRequest({1, -3}, 4), StatusCode::INVALID_ARGUMENT, "outside the vocabulary");
  ExpectRejected(server, GreedyRequest({1}, 0), StatusCode::INVALID_ARGUMENT, "max_new_tokens");
  ExpectRejected(server, GreedyRequest({1}, -5), StatusCode::INVALID_ARGUMENT, "max_new_tokens");
  ExpectRejected(server, GreedyRequest({1}, 5000), StatusCode::INVALID_ARGUMENT, "max_new_tokens");
  auto with = [](auto set) {
    pb::GenerateRequest r = GreedyRequest({1, 2}, 4);
    set(r.mutable_sampling());
    return r;
  };
  ExpectRejected(server, with([](auto* s) { s->set_temperature(-0.5f); }), StatusCode::INVALID_ARGUMENT,
                 "temperature");
  ExpectRejected(server, with([](auto* s) { s->set_temperature(std::nanf("")); }),
                 StatusCode::INVALID_ARGUMENT, "temperature");
  ExpectRejected(server, with([](auto* s) { s->set_top_p(0.0f); }), StatusCode::INVALID_ARGUMENT, "top_p");
  ExpectRejected(server, with([](auto* s) { s->set_top_p(1.5f); }), StatusCode::INVALID_ARGUMENT, "top_p");
  ExpectRejected(server, with([](auto* s) { s->set_top_k(-1); }), StatusCode::INVALID_ARGUMENT, "top_k");
  ExpectRejected(server, with([](auto* s) { s->set_repetition_penalty(0.0f); }), StatusCode::INVALID_ARGUMENT,
                 "repetition_penalty");
  ExpectRejected(server, GreedyRequest(std::vector<int32_t>(1100, 7), 4), StatusCode::INVALID_ARGUMENT,
                 "the limit is 1023");
  ExpectRejected(server, GreedyRequest(std::vector<int32_t>(100000, 7), 4), StatusCode::RESOURCE_EXHAUSTED,
                 "");
  pb::GenerateRequest text;
  text.set_text("hello");
  text.set_max_new_tokens(4);
  ExpectRejected(server, text, StatusCode::INVALID_ARGUMENT, "tokenizer");
  Collected ok = GenerateAll(server, GreedyRequest(std::vector<int32_t>(20, 9), 4));  // fills a block
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.ids.size(), 4u);
  const pb::ServerInfo info = server.Info();
  EXPECT_EQ(info.flags().at("prefix_cache"), "off");
  EXPECT_EQ(info.prefix_cache_blocks(), 0);
}

// GET /metrics on the server's metrics port: each sample line's "name{labels}" and value.
std::map<std::string, double> Scrape(int port) {
  httplib::Client client("127.0.0.1", port);
  auto res = client.Get("/metrics");
  std::map<std::string, double> out;
  if (!res || res->status != 200) {
    ADD_FAILURE() << "GET /metrics on port " << port << " failed";
    return out;
  }
  std::istringstream in(res->body);
  std::string line;
  while (std::getline(in, line)) {
    const size_t space = line.rfind(' ');
    if (line.empty() || line[0] == '#' || space == std::string::npos) continue;
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

TEST_F(Gateway, MetricsEndpointCountsRequestsTokensAndLatencies) {
  const int metrics_port = testing::FreePort();
  ServerProcess server(small(), 2, {"--metrics-port", std::to_string(metrics_port)});
  ASSERT_TRUE(server.ready()) << server.log();
  EXPECT_EQ(server.Info().flags().at("metrics_port"), std::to_string(metrics_port));
  const std::string success = R"(tpserve_request_success_total{finished_reason="length"})";
  const std::string invalid = R"(tpserve_request_failure_total{code="INVALID_ARGUMENT"})";
  const std::string cancelled = R"(tpserve_request_failure_total{code="CANCELLED"})";
  std::map<std::string, double> m = Scrape(metrics_port);
  EXPECT_EQ(m[success], 0);
  EXPECT_EQ(m["tpserve_generation_tokens_total"], 0);
  EXPECT_EQ(m["tpserve_serving"], 1);
  {
    httplib::Client client("127.0.0.1", metrics_port);
    auto health = client.Get("/health");
    ASSERT_TRUE(health);
    EXPECT_EQ(health->status, 200);
  }

  // Three requests: 2 + 3 + 4 prompt tokens, 5 + 6 + 7 new ones (so 4 + 5 + 6 gaps between tokens).
  for (int i = 0; i < 3; ++i) {
    Collected c = GenerateAll(server, GreedyRequest(std::vector<int32_t>(2 + i, 7), 5 + i));
    ASSERT_TRUE(c.status.ok()) << c.status.error_message();
  }
  EXPECT_FALSE(GenerateAll(server, GreedyRequest({1}, 0)).status.ok());
  m = Scrape(metrics_port);
  EXPECT_EQ(m[success], 3);
  EXPECT_EQ(m[invalid], 1);
  EXPECT_EQ(m["tpserve_prompt_tokens_total"], 9);
  EXPECT_EQ(m["tpserve_generation_tokens_total"], 18);
  EXPECT_EQ(m["tpserve_time_to_first_token_seconds_count"], 3);
  EXPECT_EQ(m["tpserve_inter_token_latency_seconds_count"], 15);
  EXPECT_EQ(m["tpserve_e2e_request_latency_seconds_count"], 3);
  EXPECT_GT(m["tpserve_time_to_first_token_seconds_sum"], 0);
  // Each request's end-to-end time holds its first token and every gap after it.
  EXPECT_GE(m["tpserve_e2e_request_latency_seconds_sum"],
            m["tpserve_time_to_first_token_seconds_sum"] + m["tpserve_inter_token_latency_seconds_sum"]);

  // A cancelled stream: counted as CANCELLED, and its blocks are free again at once.
  {
    auto stub = pb::TpServe::NewStub(server.channel());
    grpc::ClientContext ctx;
    auto reader = stub->Generate(&ctx, GreedyRequest({1, 2, 3}, 1500));
    pb::GenerateResponse msg;
    ASSERT_TRUE(reader->Read(&msg));
    EXPECT_GT(Scrape(metrics_port)["tpserve_kv_cache_usage_ratio"], 0);
    ctx.TryCancel();
    while (reader->Read(&msg)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  for (int i = 0; i < 200; ++i) {  // up to 2 s for the handler and the engine to see it
    m = Scrape(metrics_port);
    if (m[cancelled] == 1 && m["tpserve_num_requests_running"] == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(m[cancelled], 1);
  EXPECT_EQ(m["tpserve_num_requests_running"], 0);
  EXPECT_EQ(m["tpserve_num_requests_waiting"], 0);
  EXPECT_EQ(m["tpserve_kv_cache_usage_ratio"], 0);
  EXPECT_EQ(m["tpserve_kv_cache_free_blocks"], m["tpserve_kv_cache_total_blocks"]);
  EXPECT_EQ(m["tpserve_generation_tokens_total"], static_cast<double>(server.Info().generated_tokens()));
  EXPECT_EQ(m[success], 3);
  EXPECT_EQ(m["tpserve_prefix_cache_hits_total"], 0);  // no prompt so far filled a block of 16

  // The same 40-token prompt twice: the second finds 2 blocks of the first (32 tokens; its last
  // token is always computed) and gets the same greedy tokens.
  std::vector<int32_t> prompt;
  for (int j = 0; j < 40; ++j) prompt.push_back((5 + 29 * j) % 1000);
  const Collected first = GenerateAll(server, GreedyRequest(prompt, 8));
  const Collected second = GenerateAll(server, GreedyRequest(prompt, 8));
  ASSERT_TRUE(first.status.ok() && second.status.ok());
  EXPECT_EQ(second.ids, first.ids);
  m = Scrape(metrics_port);
  EXPECT_EQ(m["tpserve_prefix_cache_hits_total"], 32);
  EXPECT_EQ(m["tpserve_prefix_cache_queries_total"], 2 + 3 + 4 + 3 + 40 + 40);
  EXPECT_GT(m["tpserve_prefix_cache_blocks"], 0);
  const pb::ServerInfo info = server.Info();
  EXPECT_EQ(info.prefix_cache_hit_tokens(), 32);
  EXPECT_EQ(info.flags().at("prefix_cache"), "on");
  EXPECT_EQ(info.kv_cache_free_blocks(), info.kv_cache_total_blocks());  // cached blocks are free to take
}

TEST_F(Gateway, ApiKeyIsRequiredOnEveryRpc) {
  ServerProcess server(tiny(), 1, {}, "s3cret");
  ASSERT_TRUE(server.ready()) << server.log();
  auto stub = pb::TpServe::NewStub(server.channel());
  auto health = grpc::health::v1::Health::NewStub(server.channel());
  for (const char* key : {"", "Bearer wrong", "s3cret"}) {
    grpc::ClientContext c1, c2, c3;
    for (auto* c : {&c1, &c2, &c3}) {
      if (*key) c->AddMetadata("authorization", key);
    }
    pb::ServerInfo info;
    grpc::health::v1::HealthCheckResponse hr;
    auto reader = stub->Generate(&c3, GreedyRequest({1}, 2));
    pb::GenerateResponse msg;
    while (reader->Read(&msg)) {
    }
    for (const grpc::Status& st :
         {stub->GetServerInfo(&c1, {}, &info), health->Check(&c2, {}, &hr), reader->Finish()}) {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << "key '" << key << "'";
    }
  }
  Collected ok = GenerateAll(server, GreedyRequest({1}, 2));  // the harness sends the right key
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
}

TEST_F(Gateway, HealthServingAndReflectionListsTheService) {
  ServerProcess server(tiny(), 2);
  ASSERT_TRUE(server.ready()) << server.log();
  auto health = grpc::health::v1::Health::NewStub(server.channel());
  grpc::ClientContext hc;
  grpc::health::v1::HealthCheckResponse hr;
  ASSERT_TRUE(health->Check(&hc, {}, &hr).ok());
  EXPECT_EQ(hr.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  auto refl = grpc::reflection::v1alpha::ServerReflection::NewStub(server.channel());
  grpc::ClientContext rc;
  auto stream = refl->ServerReflectionInfo(&rc);
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("*");
  ASSERT_TRUE(stream->Write(req));
  grpc::reflection::v1alpha::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  std::set<std::string> names;
  for (const auto& s : resp.list_services_response().service()) names.insert(s.name());
  EXPECT_TRUE(names.count("tpserve.v1.TpServe")) << "services listed: " << names.size();
  EXPECT_TRUE(names.count("grpc.health.v1.Health"));
  // The descriptor of the service can be fetched too (what grpcurl does next).
  req.set_file_containing_symbol("tpserve.v1.TpServe");
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_GT(resp.file_descriptor_response().file_descriptor_proto_size(), 0);
  stream->WritesDone();
  stream->Finish();
}

TEST_F(Gateway, SigtermDrainsFinishesOrCancelsAndEveryRankExitsZero) {
  ServerProcess server(small(), 2, {"--shutdown-timeout", "1"});
  ASSERT_TRUE(server.ready()) << server.log();
  // Fifteen long requests share every step with the short one. A batch of 16 rows makes a step
  // slower than a lone sequence's (without AMX several times): a long request (2040 tokens) is
  // ~200 tokens in when the 1 s grace period ends here, while the short one (20 tokens, ~0.12 s)
  // finishes in it.
  constexpr int kLong = 15;
  Collected short_run;
  std::vector<Collected> long_runs(kLong);
  std::vector<std::thread> clients;
  clients.emplace_back([&] { short_run = GenerateAll(server, GreedyRequest({1, 4}, 20)); });
  for (int i = 0; i < kLong; ++i) {
    clients.emplace_back([&, i] { long_runs[i] = GenerateAll(server, GreedyRequest({1, 5 + i}, 2040)); });
  }
  int admitted = 0;
  for (int i = 0; i < 500 && admitted < kLong + 1; ++i) {  // up to 5 s for all 16 to reach the engine
    const pb::ServerInfo info = server.Info();
    admitted = info.running_requests() + info.waiting_requests();
    if (admitted < kLong + 1) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(admitted, kLong + 1) << "the 16 requests did not all reach the engine in time";
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = server.Terminate(20);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (auto& c : clients) c.join();
  EXPECT_EQ(rc, 0) << server.log();
  EXPECT_LT(took, 1.0 + 5.0) << "grace period 1 s";
  // The short request finishes inside the grace period; the long ones get a clean UNAVAILABLE.
  EXPECT_TRUE(short_run.status.ok()) << short_run.status.error_message();
  EXPECT_EQ(short_run.ids.size(), 20u);
  for (const Collected& long_run : long_runs) {
    EXPECT_EQ(long_run.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << long_run.status.error_message() << " after " << long_run.ids.size() << " tokens";
    EXPECT_NE(long_run.status.error_message().find("shutting down"), std::string::npos);
  }
  EXPECT_NE(server.log().find("finishing 16 in-flight request(s)"), std::string::npos)
      << "the short request should still run at SIGTERM: " << server.log();
  EXPECT_NE(server.log().find("shut down cleanly"), std::string::npos) << server.log();
}

// CPU seconds (user + system) of a process, from /proc/PID/stat.
double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), {});
  std::istringstream rest(s.substr(s.rfind(')') + 2));
  std::string f;
  std::vector<std::string> fields;
  while (rest >> f) fields.push_back(f);
  return (std::stod(fields[11]) + std::stod(fields[12])) / sysconf(_SC_CLK_TCK);  // utime, stime
}

std::vector<pid_t> Children(pid_t parent) {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc");
  while (dirent* e = readdir(d)) {
    const pid_t pid = atoi(e->d_name);
    if (pid <= 0) continue;
    std::ifstream in(std::string("/proc/") + e->d_name + "/stat");
    std::string s((std::istreambuf_iterator<char>(in)), {});
    if (s.empty()) continue;
    std::istringstream rest(s.substr(s.rfind(')') + 2));
    std::string state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent) out.push_back(pid);
  }
  closedir(d);
  return out;
}

// A rank that hangs (stopped, not dead) while the server is idle: rank 0 misses its reply to the
// idle heartbeat, and health turns NOT_SERVING within seconds, not after the collective timeout
// (600 s by default); when the rank resumes, health is SERVING again and requests are served.
TEST_F(Gateway, AHungRankTurnsHealthNotServingUntilItResumes) {
  ServerProcess server(tiny(), 2);
  ASSERT_TRUE(server.ready()) << server.log();
  const std::vector<pid_t> ranks = Children(server.mpirun_pid());
  ASSERT_EQ(ranks.size(), 2u);
  const pid_t gateway = server.Info().gateway_pid();
  const pid_t other = ranks[0] == gateway ? ranks[1] : ranks[0];
  ASSERT_NE(other, gateway);
  auto health = grpc::health::v1::Health::NewStub(server.channel());
  auto status = [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::health::v1::HealthCheckResponse r;
    return health->Check(&ctx, {}, &r).ok() ? r.status() : grpc::health::v1::HealthCheckResponse::UNKNOWN;
  };
  // Waits up to `limit` for the status; returns the seconds it took, or -1.
  auto wait_for = [&](grpc::health::v1::HealthCheckResponse::ServingStatus want, double limit) {
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (status() == want) return s;
      if (s > limit) return -1.0;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  };
  ASSERT_EQ(status(), grpc::health::v1::HealthCheckResponse::SERVING);
  ASSERT_EQ(kill(other, SIGSTOP), 0);
  const double down = wait_for(grpc::health::v1::HealthCheckResponse::NOT_SERVING, 20);
  ASSERT_EQ(kill(other, SIGCONT), 0);
  EXPECT_GE(down, 0) << "health stayed SERVING for 20 s with rank pid " << other << " stopped";
  std::printf("hung rank: NOT_SERVING after %.1f s\n", down);
  EXPECT_GE(wait_for(grpc::health::v1::HealthCheckResponse::SERVING, 10), 0) << "not SERVING after SIGCONT";
  Collected ok = GenerateAll(server, GreedyRequest({1, 2}, 4));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.ids.size(), 4u);
}

TEST_F(Gateway, IdleRanksDoNotBurnACore) {
  ServerProcess server(tiny(), 2);
  ASSERT_TRUE(server.ready()) << server.log();
  const std::vector<pid_t> ranks = Children(server.mpirun_pid());
  ASSERT_EQ(ranks.size(), 2u);
  std::this_thread::sleep_for(std::chrono::seconds(1));  // past start-up
  std::vector<double> before;
  for (pid_t p : ranks) before.push_back(CpuSeconds(p));
  std::this_thread::sleep_for(std::chrono::seconds(10));
  double total = 0;
  for (size_t i = 0; i < ranks.size(); ++i) {
    const double used = CpuSeconds(ranks[i]) - before[i];
    total += used;
    std::printf("idle 10 s: rank pid %d used %.3f CPU s (%.2f%% of a core)\n", ranks[i], used, used * 10);
  }
  RecordProperty("idle_cpu_seconds_2_ranks_10s", fmt::format("{:.3f}", total));
  // ~0.2 CPU s here; a rank that spins or only yields while idle uses ~10 (a whole core).
  EXPECT_LT(total, 1.0) << "2 idle ranks used " << total << " CPU s in 10 s";
}

// gRPC's threads run off rank 0's kernel core(s) where the host has other CPUs: on them they would
// queue behind rank 0's forward pass (or preempt it), and rank 0's step is the one every rank
// waits for. Skipped where rank 0 is not bound.
TEST_F(Gateway, GrpcThreadsRunOffRankZerosKernelCores) {
  cpu_set_t mine;
  ASSERT_EQ(sched_getaffinity(0, sizeof(mine), &mine), 0);
  if (CPU_COUNT(&mine) < 2) GTEST_SKIP() << "this test needs 2 or more CPUs";
  ServerProcess server(tiny(), 2);
  ASSERT_TRUE(server.ready()) << server.log();
  const pid_t rank0 = server.Info().gateway_pid();
  auto affinity = [](pid_t tid, cpu_set_t* set) {  // false: the thread has ended meanwhile
    CPU_ZERO(set);
    return sched_getaffinity(tid, sizeof(*set), set) == 0;
  };
  cpu_set_t main_set;  // rank 0's kernel CPUs: one thread per rank here, its main thread's
  ASSERT_TRUE(affinity(rank0, &main_set));
  if (CPU_COUNT(&main_set) >= CPU_COUNT(&mine))
    GTEST_SKIP() << "rank 0 is not bound here, so nothing to compare";
  int grpc_threads = 0;
  for (const auto& task : std::filesystem::directory_iterator(fmt::format("/proc/{}/task", rank0))) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    // gRPC 1.51 names its threads (grpcpp_sync_ser, event_engine, default-executo, resolver-execut,
    // grpc_global_tim, timer_manager); the engine's and MPI's keep the process name.
    if (!std::getline(comm, name) || name == "tpserve") continue;
    const pid_t tid = std::stoi(task.path().filename().string());
    cpu_set_t set, both;
    if (!affinity(tid, &set)) continue;  // gRPC ends idle threads on its own
    ++grpc_threads;
    CPU_AND(&both, &set, &main_set);
    EXPECT_EQ(CPU_COUNT(&both), 0) << "thread " << name << " may run on rank 0's kernel core";
  }
  EXPECT_GT(grpc_threads, 0);
}

}  // namespace
}  // namespace tpserve

namespace tpserve {
namespace {

// A paged KV cache that holds three requests at once: twenty concurrent long requests all
// complete (the rest wait for blocks), each equals its solo result, and every block returns.
TEST_F(Gateway, MemoryPressureRequestsWaitForBlocksAndAllComplete) {
  // context 320 -> each request reserves min(320, prompt + 300) tokens = 20 blocks of 16;
  // 960 tokens = 60 blocks = three such requests.
  ServerProcess server(tiny(), 2, {"--context-length", "320", "--kv-cache-size", "960"});
  ASSERT_TRUE(server.ready()) << server.log();
  pb::ServerInfo idle = server.Info();
  ASSERT_EQ(idle.kv_cache_total_blocks(), 60);
  ASSERT_EQ(idle.kv_cache_block_size(), 16);
  EXPECT_EQ(idle.flags().at("kv_cache_dtype"), "f32");  // f32 weights
  constexpr int kClients = 20;
  std::vector<pb::GenerateRequest> reqs;
  for (int i = 0; i < kClients; ++i) reqs.push_back(GreedyRequest({1, 10 + i, 20 + 3 * i}, 300));
  std::vector<Collected> solo(3);
  for (int i = 0; i < 3; ++i) solo[i] = GenerateAll(server, reqs[i]);
  std::vector<Collected> together(kClients);
  std::atomic<int> max_running{0}, max_waiting{0};
  std::atomic<double> max_tokens_per_s{0}, max_allreduce_share{0};
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done) {
      const pb::ServerInfo info = server.Info();
      max_running = std::max(max_running.load(), info.running_requests());
      max_waiting = std::max(max_waiting.load(), info.waiting_requests());
      max_tokens_per_s = std::max(max_tokens_per_s.load(), info.generation_tokens_per_s());
      max_allreduce_share = std::max(max_allreduce_share.load(), info.allreduce_share());
      EXPECT_GE(info.kv_cache_free_blocks(), 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i)
    threads.emplace_back([&, i] { together[i] = GenerateAll(server, reqs[i]); });
  for (auto& t : threads) t.join();
  done = true;
  watcher.join();
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << i << ": " << together[i].status.error_message();
    EXPECT_EQ(together[i].ids.size(), 300u) << i;
    if (i < 3) {
      EXPECT_EQ(together[i].ids, solo[i].ids) << i;
    }
  }
  EXPECT_LE(max_running.load(), 3) << "the cache holds three reservations";
  EXPECT_GT(max_waiting.load(), 0) << "some requests should have waited for blocks";
  EXPECT_GT(max_tokens_per_s.load(), 0.0) << "GetServerInfo reports generation throughput";
  // TP 2: every step all-reduces, and the share is a fraction of rank 0's time.
  EXPECT_GT(max_allreduce_share.load(), 0.0) << "GetServerInfo reports the all-reduce share";
  EXPECT_LE(max_allreduce_share.load(), 1.0);
  const pb::ServerInfo after = server.Info();
  EXPECT_EQ(after.kv_cache_free_blocks(), after.kv_cache_total_blocks());
  EXPECT_EQ(after.kv_cache_used_bytes(), 0);
}

// A second server on a port that one already serves is a start-up error (gRPC's default
// SO_REUSEPORT had let it start, and clients were spread over both servers).
TEST_F(Gateway, ATakenPortIsAStartupError) {
  ServerProcess first(tiny(), 1);
  ASSERT_TRUE(first.ready()) << first.log();
  const std::string port = first.addr().substr(first.addr().rfind(':') + 1);
  int rc = 0;
  const std::string out =
      testing::RunCommand("timeout 60 mpirun --oversubscribe --allow-run-as-root -np 1 " + testing::BinDir() +
                              "/tpserve serve --model-path " + tiny() + " --port " + port + " 2>&1",
                          &rc);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "must not start serving";
  EXPECT_NE(out.find("cannot listen on 127.0.0.1:" + port), std::string::npos) << out;
  // The same for the metrics endpoint, on a free gRPC port.
  const std::string metrics_out =
      testing::RunCommand("timeout 60 mpirun --oversubscribe --allow-run-as-root -np 1 " + testing::BinDir() +
                              "/tpserve serve --model-path " + tiny() + " --port " +
                              std::to_string(testing::FreePort()) + " --metrics-port " + port + " 2>&1",
                          &rc);
  EXPECT_NE(rc, 0) << metrics_out;
  EXPECT_NE(rc, 124) << "must not start serving";
  EXPECT_NE(metrics_out.find("cannot serve metrics on 127.0.0.1:" + port), std::string::npos) << metrics_out;
  EXPECT_NE(metrics_out.find("--metrics-port"), std::string::npos) << metrics_out;
  const pb::ServerInfo info = first.Info();  // the first server still answers
  EXPECT_GT(info.kv_cache_total_blocks(), 0);
}

TEST_F(Gateway, KvCacheTooSmallForOneContextIsAStartupErrorNamingTheFix) {
  int rc = 0;
  const std::string out =
      testing::RunCommand("timeout 60 mpirun --oversubscribe --allow-run-as-root -np 2 " + testing::BinDir() +
                              "/tpserve serve --model-path " + tiny() + " --port " +
                              std::to_string(testing::FreePort()) + " --kv-cache-size 100 2>&1",
                          &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(rc, 124) << "must not hang";
  EXPECT_NE(out.find("fewer than one full context of 1024 tokens"), std::string::npos) << out;
  EXPECT_NE(out.find("lower --context-length"), std::string::npos) << out;
}

}  // namespace
}  // namespace tpserve

namespace tpserve {
namespace {

// Batch invariance of results: 32 requests of varied prompt and output lengths, arriving at random
// times into a running batch (with small prefill chunks, so prefill and decode rows mix), each
// give exactly their solo greedy tokens, at TP 1 and TP 2 in f32.
TEST_F(Gateway, ThirtyTwoRandomArrivalsEqualTheirSoloResults) {
  for (int np : {1, 2}) {
    ServerProcess server(tiny(), np, {"--chunked-prefill-size", "16"});
    ASSERT_TRUE(server.ready()) << server.log();
    std::mt19937 rng(1234 + np);
    constexpr int kRequests = 32;
    std::vector<pb::GenerateRequest> reqs;
    std::vector<int> delay_ms;
    for (int i = 0; i < kRequests; ++i) {
      std::vector<int32_t> prompt = {1};
      const int len = 1 + static_cast<int>(rng() % 40);
      for (int j = 0; j < len; ++j) prompt.push_back(static_cast<int32_t>(rng() % 1000));
      reqs.push_back(GreedyRequest(prompt, 1 + static_cast<int>(rng() % 80)));
      delay_ms.push_back(static_cast<int>(rng() % 200));
    }
    std::vector<Collected> solo(kRequests), together(kRequests);
    for (int i = 0; i < kRequests; ++i) solo[i] = GenerateAll(server, reqs[i]);
    std::vector<std::thread> threads;
    for (int i = 0; i < kRequests; ++i) {
      threads.emplace_back([&, i] {
        std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms[i]));
        together[i] = GenerateAll(server, reqs[i]);
      });
    }
    for (auto& t : threads) t.join();
    for (int i = 0; i < kRequests; ++i) {
      ASSERT_TRUE(solo[i].status.ok() && together[i].status.ok()) << i;
      EXPECT_EQ(static_cast<int>(together[i].ids.size()), reqs[i].max_new_tokens())
          << "np " << np << " req " << i;
      EXPECT_EQ(together[i].ids, solo[i].ids) << "np " << np << " req " << i;
    }
    const pb::ServerInfo info = server.Info();
    EXPECT_EQ(info.kv_cache_free_blocks(), info.kv_cache_total_blocks());
  }
}

// --- text: a tiny model that carries the shared Qwen3 tokenizer (tpserve-mkmodel --tokenizer) ---

class GatewayText : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string shared = testing::SharedDir();
    if (shared.empty()) return;
    dir_ = testing::MakeTempDir("gwtext");
    int rc = 0;
    const std::string out = testing::RunCommand(
        testing::BinDir() + "/tpserve-mkmodel --preset tiny --dtype f32 " +
            "--arch qwen3 --seed 3 --tokenizer " + shared + "/tokenizers/qwen3 --out " + dir_ + "/model 2>&1",
        &rc);
    ASSERT_EQ(rc, 0) << out;
    tok_ = std::move(LoadTokenizer(dir_ + "/model")).value();
  }
  static void TearDownTestSuite() {
    tok_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  void SetUp() override {
    if (!tok_) GTEST_SKIP() << "../shared (or $TPSERVE_SHARED) not found: no tokenizer fixture";
  }
  static std::string model() { return dir_ + "/model"; }
  static pb::GenerateRequest TextRequest(const std::string& text, int max_new_tokens) {
    pb::GenerateRequest r;
    r.set_text(text);
    r.set_max_new_tokens(max_new_tokens);
    r.set_ignore_eos(true);
    return r;
  }
  static std::string dir_;
  static std::unique_ptr<Tokenizer> tok_;
};
std::string GatewayText::dir_;
std::unique_ptr<Tokenizer> GatewayText::tok_;

// Text, chat and id prompts meet in the same ids; the streamed text is the decode of the
// streamed ids; stop strings end the stream just before the match, across token boundaries;
// Tokenize/Detokenize are the same tokenizer; bad text requests get INVALID_ARGUMENT.
TEST_F(GatewayText, TextChatStopStringsAndTokenizeRpcs) {
  ServerProcess server(model(), 2);
  ASSERT_TRUE(server.ready()) << server.log();
  const std::string prompt = "Once upon a time, in a land far away,";
  const std::vector<int32_t> prompt_ids = *tok_->Encode(prompt, true);

  Collected by_text = GenerateAll(server, TextRequest(prompt, 24));
  ASSERT_TRUE(by_text.status.ok()) << by_text.status.error_message();
  pb::GenerateRequest by_ids_req = GreedyRequest(prompt_ids, 24);
  by_ids_req.set_ignore_eos(true);
  Collected by_ids = GenerateAll(server, by_ids_req);
  ASSERT_TRUE(by_ids.status.ok());
  EXPECT_EQ(by_text.ids, by_ids.ids);
  EXPECT_EQ(by_text.final.usage().prompt_tokens(), static_cast<int>(prompt_ids.size()));
  EXPECT_EQ(by_text.text, tok_->Decode(by_text.ids, /*skip_special_tokens=*/true, false));

  // `tpserve run --prompt` encodes the same way and prints the same text.
  int rc = 0;
  const std::string run =
      testing::RunCommand("timeout 120 mpirun --oversubscribe --allow-run-as-root -np 1 " +
                              testing::BinDir() + "/tpserve run --model-path " + model() + " --prompt '" +
                              prompt + "' --max-new-tokens 24 --ignore-eos --json 2>/dev/null",
                          &rc);
  ASSERT_EQ(rc, 0) << run;
  const auto run_json = nlohmann::json::parse(run.substr(run.find('{')));
  EXPECT_EQ(run_json["token_ids"].get<std::vector<int32_t>>(), by_text.ids);
  EXPECT_EQ(run_json["text"].get<std::string>(), by_text.text);

  // A stop string made of the text of two adjacent tokens (so it crosses a token boundary).
  const std::string full = by_text.text;
  std::string stop;
  for (size_t k = 2; k + 2 < by_text.ids.size() && stop.empty(); ++k) {
    const std::vector<int32_t> pair(by_text.ids.begin() + k, by_text.ids.begin() + k + 2);
    const std::string t = tok_->Decode(pair, true, false);
    const std::string first = tok_->Decode(std::vector<int32_t>{pair[0]}, true, false);
    if (t.size() >= 2 && first.size() >= 1 && first.size() < t.size() && ValidateUtf8(t).ok() &&
        full.find(t) != std::string::npos) {
      stop = t;
    }
  }
  ASSERT_FALSE(stop.empty()) << "no two-token window of the output decodes on its own";
  const pb::ServerInfo before_stop = server.Info();
  pb::GenerateRequest with_stop = TextRequest(prompt, 24);
  with_stop.add_stop("no such text anywhere");
  with_stop.add_stop(stop);
  Collected stopped = GenerateAll(server, with_stop);
  ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_message();
  EXPECT_EQ(stopped.text, full.substr(0, full.find(stop))) << "stop " << nlohmann::json(stop).dump();
  EXPECT_EQ(stopped.final.finish_reason(), pb::FINISH_REASON_STOP);
  EXPECT_LT(stopped.ids.size(), by_text.ids.size());
  // A stop string finishes the request (it is not counted as cancelled), and frees its blocks.
  for (int i = 0; i < 100 && server.Info().finished_requests() == before_stop.finished_requests(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(server.Info().finished_requests(), before_stop.finished_requests() + 1);
  EXPECT_EQ(server.Info().cancelled_requests(), before_stop.cancelled_requests());

  // Chat: rendered with the model's template, encoded without extra BOS.
  pb::GenerateRequest chat;
  chat.set_max_new_tokens(6);
  chat.set_ignore_eos(true);
  auto* m1 = chat.mutable_chat()->add_messages();
  m1->set_role("system");
  m1->set_content("You are terse.");
  auto* m2 = chat.mutable_chat()->add_messages();
  m2->set_role("user");
  m2->set_content("Name a colour.");
  Collected by_chat = GenerateAll(server, chat);
  ASSERT_TRUE(by_chat.status.ok()) << by_chat.status.error_message();
  const std::string rendered =
      *RenderChat(tok_->config(),
                  {{"system", "You are terse.", std::nullopt}, {"user", "Name a colour.", std::nullopt}}, {});
  pb::GenerateRequest chat_ids = GreedyRequest(*tok_->Encode(rendered, false), 6);
  chat_ids.set_ignore_eos(true);
  EXPECT_EQ(by_chat.ids, GenerateAll(server, chat_ids).ids);
  EXPECT_EQ(by_chat.final.usage().prompt_tokens(), static_cast<int>(tok_->Encode(rendered, false)->size()));

  // Tokenize / Detokenize RPCs.
  auto stub = pb::TpServe::NewStub(server.channel());
  {
    grpc::ClientContext ctx;
    pb::TokenizeRequest req;
    req.set_text(prompt);
    pb::TokenizeResponse resp;
    ASSERT_TRUE(stub->Tokenize(&ctx, req, &resp).ok());
    EXPECT_EQ(std::vector<int32_t>(resp.ids().begin(), resp.ids().end()), prompt_ids);
  }
  {
    grpc::ClientContext ctx;
    pb::TokenizeRequest req;
    *req.mutable_chat() = chat.chat();
    pb::TokenizeResponse resp;
    ASSERT_TRUE(stub->Tokenize(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.rendered_chat(), rendered);
  }
  {
    grpc::ClientContext ctx;
    pb::DetokenizeRequest req;
    for (int32_t id : by_text.ids) req.add_ids(id);
    req.set_skip_special_tokens(true);
    pb::DetokenizeResponse resp;
    ASSERT_TRUE(stub->Detokenize(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.text(), tok_->Decode(by_text.ids, true));
  }
  {
    grpc::ClientContext ctx;
    pb::DetokenizeRequest req;
    req.add_ids(tok_->vocab_size());
    pb::DetokenizeResponse resp;
    const grpc::Status st = stub->Detokenize(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("outside the vocabulary"), std::string::npos) << st.error_message();
  }

  // Bad text requests, then the server still serves.
  pb::GenerateRequest no_messages;
  no_messages.set_max_new_tokens(4);
  no_messages.mutable_chat();
  ExpectRejected(server, no_messages, grpc::StatusCode::INVALID_ARGUMENT, "messages is empty");
  pb::GenerateRequest empty_stop = TextRequest(prompt, 4);
  empty_stop.add_stop("");
  ExpectRejected(server, empty_stop, grpc::StatusCode::INVALID_ARGUMENT, "stop[0] is empty");
  ExpectRejected(server, TextRequest("", 4), grpc::StatusCode::INVALID_ARGUMENT, "prompt is empty");
  Collected again = GenerateAll(server, TextRequest(prompt, 24));
  EXPECT_EQ(again.ids, by_text.ids);
  EXPECT_EQ(server.Terminate(30), 0) << server.log();
}

}  // namespace
}  // namespace tpserve
