// The Prometheus exposition (server/metrics.h) and its HTTP endpoint (server/metrics_http.h). The
// expected values are worked out by hand from the observations, and the text is read back with a
// parser written here, which also checks the format's rules (HELP and TYPE before a family's
// samples, cumulative buckets ending in +Inf, _sum and _count).
#include <gtest/gtest.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/request_queue.h"

namespace tpserve {
namespace {

// Sample lines keyed "name{labels}" (or "name"), and the families' types.
struct Exposition {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;
};

// Reads the text format, failing the test on any line it does not follow.
Exposition Parse(const std::string& text) {
  Exposition e;
  std::set<std::string> helped;
  const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$)");
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("# HELP ", 0) == 0) {
      helped.insert(line.substr(7, line.find(' ', 7) - 7));
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream t(line.substr(7));
      std::string name, type;
      t >> name >> type;
      EXPECT_TRUE(helped.count(name)) << "TYPE before HELP: " << line;
      EXPECT_TRUE(type == "counter" || type == "gauge" || type == "histogram") << line;
      EXPECT_FALSE(e.types.count(name)) << "family declared twice: " << name;
      e.types[name] = type;
      continue;
    }
    std::smatch m;
    if (!std::regex_match(line, m, sample)) {
      ADD_FAILURE() << "not a sample line: '" << line << "'";
      continue;
    }
    std::string family = m[1];
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s = suffix;
      if (!e.types.count(family) && family.size() > s.size() &&
          family.compare(family.size() - s.size(), s.size(), s) == 0)
        family = family.substr(0, family.size() - s.size());
    }
    EXPECT_TRUE(e.types.count(family)) << "sample before its TYPE: " << line;
    if (e.types[family] == "counter") {
      EXPECT_EQ(family.substr(family.size() - 6), "_total") << line;
    }
    const std::string v = m[4];
    const double value = v == "+Inf" ? INFINITY : v == "NaN" ? NAN : std::stod(v);
    EXPECT_TRUE(e.samples.emplace(m[1].str() + m[2].str(), value).second) << "duplicate: " << line;
  }
  return e;
}

// Checks a histogram's buckets: ascending bounds, cumulative counts, +Inf == _count.
void ExpectWellFormedHistogram(const Exposition& e, const std::string& name) {
  std::vector<std::pair<double, double>> buckets;
  const std::regex le(name + R"re(_bucket\{le="([^"]+)"\})re");
  for (const auto& [key, v] : e.samples) {
    std::smatch m;
    if (std::regex_match(key, m, le)) buckets.push_back({m[1] == "+Inf" ? INFINITY : std::stod(m[1]), v});
  }
  std::sort(buckets.begin(), buckets.end());
  ASSERT_GE(buckets.size(), 2u) << name;
  EXPECT_TRUE(std::isinf(buckets.back().first)) << name << " has no +Inf bucket";
  for (size_t i = 1; i < buckets.size(); ++i) EXPECT_GE(buckets[i].second, buckets[i - 1].second) << name;
  EXPECT_EQ(buckets.back().second, e.samples.at(name + "_count")) << name;
  EXPECT_TRUE(e.samples.count(name + "_sum")) << name;
}

TEST(Histogram, BoundsAreInclusiveAndCountsCumulative) {
  Histogram h({1.0, 2.0, 5.0});
  for (double v : {0.5, 1.0, 1.5, 2.0, 7.0}) h.Observe(v);
  EXPECT_EQ(h.CumulativeCounts(), (std::vector<uint64_t>{2, 4, 4, 5}));
  EXPECT_EQ(h.count(), 5u);
  EXPECT_DOUBLE_EQ(h.sum(), 12.0);
}

TEST(Metrics, LabelValuesAreEscaped) {
  EXPECT_EQ(EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(EscapeLabelValue("/models/llama-3"), "/models/llama-3");
}

TEST(Metrics, RenderCountsWhatWasRecordedAndTheEngineGauges) {
  ServingMetrics m({{"model_path", "/m/\"x\""}, {"tp_size", "2"}});
  m.FirstToken(10, 0.003);
  m.FirstToken(5, 0.2);
  m.InterTokenGaps({0.0007, 0.004, 3.0});
  m.InterTokenGaps({});
  m.Finished("length", 0.5);
  m.Finished("stop", 2.0);
  m.Failed("CANCELLED");
  m.Failed("INTERNAL");
  ServerCounters c;
  c.engine.running = 3;
  c.engine.waiting = 2;
  c.engine.kv_total_blocks = 100;
  c.engine.kv_free_blocks = 25;
  c.engine.kv_capacity_tokens = 1600;
  c.engine.prefix_cached_blocks = 6;
  c.engine.prefix_query_tokens = 300;
  c.engine.prefix_hit_tokens = 96;
  c.generated_tokens = 42;
  c.tokens_per_s = 12.5;

  const Exposition e = Parse(m.Render(c));
  const auto& s = e.samples;
  EXPECT_EQ(s.at(R"(tpserve_info{model_path="/m/\"x\"",tp_size="2"})"), 1);
  EXPECT_EQ(s.at(R"(tpserve_request_success_total{finished_reason="length"})"), 1);
  EXPECT_EQ(s.at(R"(tpserve_request_success_total{finished_reason="stop"})"), 1);
  EXPECT_EQ(s.at(R"(tpserve_request_failure_total{code="CANCELLED"})"), 1);
  EXPECT_EQ(s.at(R"(tpserve_request_failure_total{code="INTERNAL"})"), 1);
  EXPECT_EQ(s.at(R"(tpserve_request_failure_total{code="INVALID_ARGUMENT"})"), 0);  // present from the start
  EXPECT_EQ(s.at("tpserve_prompt_tokens_total"), 15);
  EXPECT_EQ(s.at("tpserve_time_to_first_token_seconds_count"), 2);
  EXPECT_DOUBLE_EQ(s.at("tpserve_time_to_first_token_seconds_sum"), 0.203);
  EXPECT_EQ(s.at(R"(tpserve_time_to_first_token_seconds_bucket{le="0.001"})"), 0);
  EXPECT_EQ(s.at(R"(tpserve_time_to_first_token_seconds_bucket{le="0.005"})"), 1);
  EXPECT_EQ(s.at(R"(tpserve_time_to_first_token_seconds_bucket{le="0.25"})"), 2);
  EXPECT_EQ(s.at(R"(tpserve_inter_token_latency_seconds_bucket{le="0.0005"})"), 0);
  EXPECT_EQ(s.at(R"(tpserve_inter_token_latency_seconds_bucket{le="0.001"})"), 1);
  EXPECT_EQ(s.at(R"(tpserve_inter_token_latency_seconds_bucket{le="0.005"})"), 2);
  EXPECT_EQ(s.at(R"(tpserve_inter_token_latency_seconds_bucket{le="2.5"})"), 2);
  EXPECT_EQ(s.at(R"(tpserve_inter_token_latency_seconds_bucket{le="+Inf"})"), 3);
  EXPECT_EQ(s.at("tpserve_e2e_request_latency_seconds_count"), 2);
  EXPECT_EQ(s.at(R"(tpserve_e2e_request_latency_seconds_bucket{le="1"})"), 1);
  for (const char* h : {"tpserve_time_to_first_token_seconds", "tpserve_inter_token_latency_seconds",
                        "tpserve_e2e_request_latency_seconds"}) {
    EXPECT_EQ(e.types.at(h), "histogram");
    ExpectWellFormedHistogram(e, h);
  }
  EXPECT_EQ(s.at("tpserve_generation_tokens_total"), 42);
  EXPECT_EQ(s.at("tpserve_num_requests_running"), 3);
  EXPECT_EQ(s.at("tpserve_num_requests_waiting"), 2);
  EXPECT_DOUBLE_EQ(s.at("tpserve_kv_cache_usage_ratio"), 0.75);
  EXPECT_EQ(s.at("tpserve_kv_cache_free_blocks"), 25);
  EXPECT_EQ(s.at("tpserve_kv_cache_capacity_tokens"), 1600);
  EXPECT_EQ(s.at("tpserve_prefix_cache_blocks"), 6);
  EXPECT_EQ(s.at("tpserve_prefix_cache_queries_total"), 300);
  EXPECT_EQ(s.at("tpserve_prefix_cache_hits_total"), 96);
  EXPECT_DOUBLE_EQ(s.at("tpserve_generation_tokens_per_second"), 12.5);
  EXPECT_EQ(s.at("tpserve_serving"), 1);
  EXPECT_GT(s.at("process_start_time_seconds"), 1.7e9);

  c.draining = true;
  EXPECT_EQ(Parse(m.Render(c)).samples.at("tpserve_serving"), 0);
  c.draining = false;
  c.stalled_after = std::chrono::steady_clock::now() - std::chrono::seconds(1);  // a rank is late
  EXPECT_EQ(Parse(m.Render(c)).samples.at("tpserve_serving"), 0);
}

TEST(Metrics, AnEmptyCacheReadsZeroUsage) {
  ServingMetrics m({});
  ServerCounters c;  // no blocks at all: no division by zero
  EXPECT_EQ(Parse(m.Render(c)).samples.at("tpserve_kv_cache_usage_ratio"), 0);
}

TEST(MetricsHttp, ServesMetricsAndHealthAnswers404ElsewhereAndATakenPortIsAnError) {
  std::atomic<int> renders{0};
  std::atomic<bool> healthy{true};
  auto server = MetricsHttpServer::Start(
      "127.0.0.1", 0,
      [&renders] {
        ++renders;
        return std::string("# HELP x An example.\n# TYPE x gauge\nx 1\n");
      },
      [&healthy] { return healthy.load(); });
  ASSERT_TRUE(server.ok()) << server.status().message();
  const int port = (*server)->port();
  ASSERT_GT(port, 0);
  httplib::Client client("127.0.0.1", port);
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "# HELP x An example.\n# TYPE x gauge\nx 1\n");
  EXPECT_EQ(res->get_header_value("Content-Type").rfind("text/plain; version=0.0.4", 0), 0u)
      << res->get_header_value("Content-Type");
  EXPECT_EQ(renders.load(), 1);
  auto missing = client.Get("/nope");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(renders.load(), 1);
  auto health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "SERVING\n");
  healthy = false;
  health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503);
  EXPECT_EQ(health->body, "NOT_SERVING\n");

  auto second = MetricsHttpServer::Start(
      "127.0.0.1", port, [] { return std::string(); }, [] { return true; });
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("--metrics-port"), std::string::npos) << second.status().message();

  (*server)->Stop();
  httplib::Client after("127.0.0.1", port);
  EXPECT_FALSE(after.Get("/metrics"));  // nobody listens any more
}

TEST(RequestChannel, TokenGapsFollowEachTokenAfterTheFirst) {
  RequestChannel ch(7);
  auto push = [&ch](int32_t token) {
    TokenEvent ev;
    ev.id = 7;
    ev.token = token;
    ch.Push(ev);
  };
  push(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  push(2);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  push(3);
  StreamUpdate first = ch.Wait(std::chrono::milliseconds(0));
  ASSERT_EQ(first.tokens.size(), 3u);
  ASSERT_EQ(first.token_gaps_s.size(), 2u);
  EXPECT_GE(first.token_gaps_s[0], 0.020);
  EXPECT_GE(first.token_gaps_s[1], 0.005);
  push(4);
  StreamUpdate second = ch.Wait(std::chrono::milliseconds(0));
  ASSERT_EQ(second.tokens.size(), 1u);
  EXPECT_EQ(second.token_gaps_s.size(), 1u);  // the gap since token 3, read earlier
}

}  // namespace
}  // namespace tpserve
