// Prometheus metrics of rank 0 (text exposition format 0.0.4): what each Generate call came to
// and its latencies, recorded by the gateway's threads, plus the engine's gauges and counters
// from ServerCounters, read at each scrape. No gRPC or HTTP types here (see metrics_http.h).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "server/engine_loop.h"

namespace tpserve {

// A histogram with fixed upper bounds, as Prometheus reads it. Not thread-safe on its own.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);  // ascending upper bounds; +Inf is implied
  void Observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  // Observations at or below each bound, cumulative (Prometheus' `le`); the last entry is +Inf.
  std::vector<uint64_t> CumulativeCounts() const;
  double sum() const { return sum_; }
  uint64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, the last one above every bound
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Escapes a label value for the text format (backslash, double quote, newline).
std::string EscapeLabelValue(const std::string& value);

class ServingMetrics {
 public:
  // info: constant labels of the `tpserve_info` gauge (model path, TP size, dtype, ...).
  explicit ServingMetrics(std::map<std::string, std::string> info);

  // A request's first token: its prompt has been prefilled. ttft_s runs from its arrival.
  void FirstToken(int prompt_tokens, double ttft_s);
  // Gaps between consecutive tokens of one request, as the engine produced them.
  void InterTokenGaps(const std::vector<double>& gaps_s);
  // A Generate call that ended with a finish reason ("stop", "length"), after e2e_s in the server.
  void Finished(const std::string& reason, double e2e_s);
  // A Generate call that ended with an error: its gRPC status name ("CANCELLED", "UNAVAILABLE",
  // "INVALID_ARGUMENT", ...).
  void Failed(const std::string& code);

  // The whole exposition: these metrics, then the engine's from `counters` (locked here).
  std::string Render(const ServerCounters& counters) const;

 private:
  const std::map<std::string, std::string> info_;
  const double start_time_unix_s_;
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> finished_, failed_;  // by reason, by code
  uint64_t prompt_tokens_ = 0;
  Histogram ttft_, itl_, e2e_;
};

}  // namespace tpserve
