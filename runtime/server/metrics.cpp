#include "server/metrics.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <fmt/format.h>

namespace tpserve {

namespace {

// Bucket bounds in seconds, close to vLLM's and SGLang's, so that the same dashboards read them.
std::vector<double> TtftBounds() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,
          0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
}
std::vector<double> ItlBounds() {
  return {0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
          0.075,  0.1,   0.15,  0.2,   0.3,  0.4,   0.5,  0.75,  1.0,  2.5};
}
std::vector<double> E2eBounds() {
  return {0.01, 0.025, 0.05, 0.1,  0.25, 0.5,  1.0,   2.5,   5.0,   10.0,
          15.0, 20.0,  30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0};
}

// A sample value: integers as integers, other values as the shortest text that reads back the same.
std::string Number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

class Writer {
 public:
  void Head(const std::string& name, const char* type, const char* help) {
    out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  }
  void Sample(const std::string& name, const std::string& labels, double v) {
    out_ += labels.empty() ? fmt::format("{} {}\n", name, Number(v))
                           : fmt::format("{}{{{}}} {}\n", name, labels, Number(v));
  }
  void Gauge(const std::string& name, const char* help, double v) {
    Head(name, "gauge", help);
    Sample(name, "", v);
  }
  void Counter(const std::string& name, const char* help, double v) {
    Head(name, "counter", help);
    Sample(name, "", v);
  }
  void LabelledCounter(const std::string& name, const char* help, const char* label,
                       const std::map<std::string, uint64_t>& values) {
    Head(name, "counter", help);
    for (const auto& [key, v] : values)
      Sample(name, fmt::format("{}=\"{}\"", label, EscapeLabelValue(key)), static_cast<double>(v));
  }
  void Histo(const std::string& name, const char* help, const Histogram& h) {
    Head(name, "histogram", help);
    const std::vector<uint64_t> cumulative = h.CumulativeCounts();
    for (size_t i = 0; i < cumulative.size(); ++i) {
      const double le = i < h.bounds().size() ? h.bounds()[i] : INFINITY;
      Sample(name + "_bucket", fmt::format("le=\"{}\"", Number(le)), static_cast<double>(cumulative[i]));
    }
    Sample(name + "_sum", "", h.sum());
    Sample(name + "_count", "", static_cast<double>(h.count()));
  }
  std::string& text() { return out_; }

 private:
  std::string out_;
};

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double v) {
  // The first bound at or above v (`le` is inclusive); NaN lands in +Inf.
  const size_t i =
      std::isnan(v)
          ? bounds_.size()
          : static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  ++counts_[i];
  sum_ += v;
  ++count_;
}

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> out(counts_.size());
  uint64_t total = 0;
  for (size_t i = 0; i < counts_.size(); ++i) out[i] = total += counts_[i];
  return out;
}

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

ServingMetrics::ServingMetrics(std::map<std::string, std::string> info)
    : info_(std::move(info)),
      start_time_unix_s_(
          std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count()),
      finished_{{"length", 0}, {"stop", 0}},
      failed_{{"CANCELLED", 0}, {"INVALID_ARGUMENT", 0}, {"UNAUTHENTICATED", 0}, {"UNAVAILABLE", 0}},
      ttft_(TtftBounds()),
      itl_(ItlBounds()),
      e2e_(E2eBounds()) {}

void ServingMetrics::FirstToken(int prompt_tokens, double ttft_s) {
  std::lock_guard<std::mutex> lock(mu_);
  prompt_tokens_ += static_cast<uint64_t>(std::max(prompt_tokens, 0));
  ttft_.Observe(ttft_s);
}

void ServingMetrics::InterTokenGaps(const std::vector<double>& gaps_s) {
  if (gaps_s.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (double g : gaps_s) itl_.Observe(g);
}

void ServingMetrics::Finished(const std::string& reason, double e2e_s) {
  std::lock_guard<std::mutex> lock(mu_);
  ++finished_[reason];
  e2e_.Observe(e2e_s);
}

void ServingMetrics::Failed(const std::string& code) {
  std::lock_guard<std::mutex> lock(mu_);
  ++failed_[code];
}

std::string ServingMetrics::Render(const ServerCounters& counters) const {
  Writer w;
  std::string labels;
  for (const auto& [k, v] : info_)
    labels += fmt::format("{}{}=\"{}\"", labels.empty() ? "" : ",", k, EscapeLabelValue(v));
  w.Head("tpserve_info", "gauge", "The server's build and layout, as labels (always 1).");
  w.Sample("tpserve_info", labels, 1);
  w.Gauge("process_start_time_seconds", "Start time of the server since the Unix epoch, in seconds.",
          start_time_unix_s_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    w.LabelledCounter("tpserve_request_success_total", "Generate calls that finished, by finish reason.",
                      "finished_reason", finished_);
    w.LabelledCounter("tpserve_request_failure_total",
                      "Generate calls that ended with an error, by gRPC status code (CANCELLED: the client "
                      "cancelled or went away).",
                      "code", failed_);
    w.Counter("tpserve_prompt_tokens_total",
              "Prompt tokens of requests that got their first token (prefix cache hits included).",
              static_cast<double>(prompt_tokens_));
    w.Histo("tpserve_time_to_first_token_seconds", "From a request's arrival (the RPC) to its first token.",
            ttft_);
    w.Histo("tpserve_inter_token_latency_seconds", "Between consecutive tokens of a request.", itl_);
    w.Histo("tpserve_e2e_request_latency_seconds", "From a request's arrival to its last token.", e2e_);
  }
  std::lock_guard<std::mutex> lock(counters.mu);
  const EngineStats& e = counters.engine;
  w.Counter("tpserve_generation_tokens_total", "Tokens generated, over all requests.",
            static_cast<double>(counters.generated_tokens));
  w.Gauge("tpserve_num_requests_running", "Sequences in the running batch.", e.running);
  w.Gauge("tpserve_num_requests_waiting", "Requests waiting for admission (KV blocks or a batch slot).",
          e.waiting);
  w.Gauge("tpserve_kv_cache_usage_ratio", "Share of the KV cache's blocks in use (0 to 1).",
          e.kv_total_blocks > 0
              ? static_cast<double>(e.kv_total_blocks - e.kv_free_blocks) / e.kv_total_blocks
              : 0.0);
  w.Gauge("tpserve_kv_cache_total_blocks", "Blocks of the paged KV cache (the same on every rank).",
          static_cast<double>(e.kv_total_blocks));
  w.Gauge("tpserve_kv_cache_free_blocks",
          "Blocks of the paged KV cache a new request can take (free, or cached and unused).",
          static_cast<double>(e.kv_free_blocks));
  w.Gauge("tpserve_kv_cache_capacity_tokens", "Tokens the KV cache holds.",
          static_cast<double>(e.kv_capacity_tokens));
  w.Gauge("tpserve_prefix_cache_blocks", "KV blocks the prefix cache holds (shared or free to take).",
          static_cast<double>(e.prefix_cached_blocks));
  w.Counter("tpserve_prefix_cache_queries_total",
            "Prompt tokens of admitted requests, looked up in the prefix cache.",
            static_cast<double>(e.prefix_query_tokens));
  w.Counter("tpserve_prefix_cache_hits_total", "Of those, tokens found in the prefix cache (not prefilled).",
            static_cast<double>(e.prefix_hit_tokens));
  w.Gauge("tpserve_generation_tokens_per_second",
          "Tokens generated per second over the last second or so of work.", counters.tokens_per_s);
  w.Gauge("tpserve_allreduce_share", "Share of rank 0's time in tensor-parallel all-reduces, same window.",
          counters.allreduce_share);
  w.Gauge(
      "tpserve_serving",
      "1 while the server takes requests (the health service's SERVING); 0 while draining or a rank is late.",
      counters.ServingLocked() ? 1 : 0);
  return std::move(w.text());
}

}  // namespace tpserve
