#include "server/metrics_http.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace tpserve {

struct MetricsHttpServer::Impl {
  httplib::Server http;
  std::thread listener;
  std::atomic<bool> ended{false};
};

MetricsHttpServer::MetricsHttpServer(std::unique_ptr<Impl> impl, int port)
    : impl_(std::move(impl)), port_(port) {}

MetricsHttpServer::~MetricsHttpServer() {
  Stop();
}

Result<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(const std::string& host, int port,
                                                                    Render render, Healthy healthy) {
  if (port < 0 || port > 65535) {
    return TPS_ERROR("the metrics port {} is not a TCP port (pass --metrics-port in 0-65535)", port);
  }
  auto impl = std::make_unique<Impl>();
  httplib::Server& http = impl->http;
  // A few workers: a scrape every few seconds needs no more, and the ranks own the cores. One
  // request per connection and short timeouts, so that an idle or kept-alive connection holds a
  // worker (and the shutdown, which waits for the workers) for at most a second, not httplib's 5.
  http.new_task_queue = [] { return new httplib::ThreadPool(4); };
  http.set_keep_alive_max_count(1);
  http.set_keep_alive_timeout(1);
  http.set_read_timeout(1, 0);
  // SO_REUSEADDR only: httplib's default SO_REUSEPORT would let a second server share a taken port.
  http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  http.Get("/metrics", [render](const httplib::Request&, httplib::Response& res) {
    res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http.Get("/health", [healthy](const httplib::Request&, httplib::Response& res) {
    const bool ok = healthy();
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "SERVING\n" : "NOT_SERVING\n", "text/plain");
  });
  const int bound = port == 0 ? http.bind_to_any_port(host) : (http.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return TPS_ERROR(
        "cannot serve metrics on {}:{}: the port is taken or the address is not local (pick another "
        "--metrics-port)",
        host, port);
  }
  std::atomic<bool>& ended = impl->ended;
  impl->listener = std::thread([&http, &ended] {
    http.listen_after_bind();
    ended = true;
  });
  // stop() only ends a loop that has started: wait for it (or its end), so that Stop() never
  // waits forever.
  while (!http.is_running() && !ended) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return std::unique_ptr<MetricsHttpServer>(new MetricsHttpServer(std::move(impl), bound));
}

void MetricsHttpServer::Stop() {
  if (!impl_ || !impl_->listener.joinable()) return;
  impl_->http.stop();
  impl_->listener.join();
}

}  // namespace tpserve
