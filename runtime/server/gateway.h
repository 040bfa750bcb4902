// Gateway: the gRPC front of rank 0 (tpserve.v1.TpServe, grpc.health.v1.Health, server
// reflection). Its threads convert protobuf requests to RequestSpecs, validate them, and hand
// them to the engine loop through the RequestQueue; they never call MPI. No gRPC types here.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/parallel_config.h"
#include "common/status.h"
#include "engine/step_plan.h"
#include "model/config.h"
#include "model/tokenizer/tokenizer.h"
#include "server/engine_loop.h"
#include "server/request_queue.h"

namespace tpserve {

struct GatewayOptions {
  std::string host = "127.0.0.1";
  int port = 30000;
  std::string api_key;              // non-empty: every RPC needs "authorization: Bearer <key>"
  std::string tls_cert, tls_key;    // PEM files; both or neither
  int max_message_bytes = 4 << 20;  // larger requests get RESOURCE_EXHAUSTED
  int max_prompt_tokens = 0;        // 0: the context length - 1
  int metrics_port = -1;            // Prometheus /metrics over HTTP on host: -1 off, 0 any free port
  // Rank 0's kernel CPUs: gRPC's threads run on the host's other CPUs where there are any (see
  // Gateway::Start). Empty: any CPU.
  std::vector<int> engine_cpus;
};

// Static facts reported by GetModelInfo / GetServerInfo.
struct GatewayInfo {
  std::string model_path;
  ModelConfig config;
  std::string weight_dtype;
  int context_length = 0;
  ParallelConfig parallel;
  std::map<std::string, std::string> flags;
  std::string cpu_isa;
  const Tokenizer* tokenizer = nullptr;  // text prompts, chat, stop strings and output text; may be null
};

class Gateway {
 public:
  using Validator = std::function<Status(const RequestSpec&)>;
  static Result<std::unique_ptr<Gateway>> Start(const GatewayOptions& opts, const GatewayInfo& info,
                                                RequestQueue& queue, const ServerCounters& counters,
                                                Validator validate);
  ~Gateway();
  int port() const;
  int metrics_port() const;  // -1 when off
  // Stops accepting RPCs and waits for the handlers (streams end once the queue aborts them).
  void Shutdown();

 private:
  static Result<std::unique_ptr<Gateway>> StartHere(const GatewayOptions& opts, const GatewayInfo& info,
                                                    RequestQueue& queue, const ServerCounters& counters,
                                                    Validator validate);
  struct Impl;
  explicit Gateway(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tpserve
