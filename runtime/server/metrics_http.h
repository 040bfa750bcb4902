// The HTTP endpoint that Prometheus scrapes: GET /metrics answers with the text exposition format
// (0.0.4), and GET /health with 200 while the server serves and 503 otherwise (for load balancers
// and orchestrators that probe over HTTP, as vLLM's and SGLang's /health); any other path is 404.
// It runs beside the gRPC gateway on rank 0, on its own port.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "common/status.h"

namespace tpserve {

class MetricsHttpServer {
 public:
  using Render = std::function<std::string()>;
  using Healthy = std::function<bool()>;
  // Listens on host:port (0: any free port) and serves from a listener thread and up to 4 worker
  // threads of its own, born in the caller's thread so that they inherit its scheduling (see
  // Gateway::Start). A taken port is an error naming the flag to change.
  static Result<std::unique_ptr<MetricsHttpServer>> Start(const std::string& host, int port, Render render,
                                                          Healthy healthy);
  ~MetricsHttpServer();  // Stop()
  int port() const { return port_; }
  void Stop();

 private:
  struct Impl;
  MetricsHttpServer(std::unique_ptr<Impl> impl, int port);
  std::unique_ptr<Impl> impl_;
  int port_;
};

}  // namespace tpserve
