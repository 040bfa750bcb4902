// Starts and stops a real `mpirun -np N tpserve serve` for gateway tests, on a free loopback
// port, and runs the other binaries (tpserve run, tpserve-mkmodel) as subprocesses.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "tpserve.grpc.pb.h"

namespace tpserve::testing {

std::string BinDir();  // where tpserve, tpserve-mkmodel live
int FreePort();        // a loopback port nobody listens on now
std::string RunCommand(const std::string& cmd, int* exit_code = nullptr);  // stdout of `sh -c cmd`
std::vector<int32_t> RunGreedy(const std::string& model, int np, const std::vector<int32_t>& prompt,
                               int max_new_tokens);  // `tpserve run --json` token ids

class ServerProcess {
 public:
  // Launches the server and waits (up to 60 s) until Health reports SERVING.
  ServerProcess(const std::string& model, int np, const std::vector<std::string>& extra_args = {},
                const std::string& api_key = "");
  ~ServerProcess();  // SIGTERM to rank 0 (if still running), then waits
  std::string addr() const { return "127.0.0.1:" + std::to_string(port_); }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  void Authorize(grpc::ClientContext* ctx) const;
  tpserve::v1::ServerInfo Info() const;
  // Sends SIGTERM to rank 0 and waits for mpirun; returns its exit code, or -1 after `timeout_s`.
  int Terminate(double timeout_s);
  pid_t mpirun_pid() const { return pid_; }
  std::string log() const;  // the server's stderr so far
  bool ready() const { return ready_; }

 private:
  int port_ = 0;
  pid_t pid_ = -1;
  bool ready_ = false;
  std::string api_key_, log_path_;
  std::shared_ptr<grpc::Channel> channel_;
};

// A Generate call collected to the end.
struct Collected {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  std::string text;  // the streamed text deltas, joined
  tpserve::v1::GenerateResponse::Final final;
  int messages = 0;
};
Collected GenerateAll(const ServerProcess& server, const tpserve::v1::GenerateRequest& req);
tpserve::v1::GenerateRequest GreedyRequest(const std::vector<int32_t>& prompt, int max_new_tokens);

}  // namespace tpserve::testing
