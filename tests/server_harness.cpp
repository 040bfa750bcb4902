#include "server_harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "grpc/health/v1/health.grpc.pb.h"

extern char** environ;

namespace tpserve::testing {

std::string BinDir() {
  return TPSERVE_BIN_DIR;
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

std::string RunCommand(const std::string& cmd, int* exit_code) {
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  if (exit_code) *exit_code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return out;
}

std::vector<int32_t> RunGreedy(const std::string& model, int np, const std::vector<int32_t>& prompt,
                               int max_new_tokens) {
  std::string ids;
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (i) ids += ',';
    ids += std::to_string(prompt[i]);
  }
  const std::string cmd = "timeout 120 mpirun --oversubscribe --allow-run-as-root -np " + std::to_string(np) +
                          " " + BinDir() + "/tpserve run --model-path " + model + " --prompt-ids " + ids +
                          " --max-new-tokens " + std::to_string(max_new_tokens) +
                          " --ignore-eos --json 2>/dev/null";
  const std::string out = RunCommand(cmd);
  try {
    return nlohmann::json::parse(out)["token_ids"].get<std::vector<int32_t>>();
  } catch (const std::exception&) {
    return {};
  }
}

ServerProcess::ServerProcess(const std::string& model, int np, const std::vector<std::string>& extra,
                             const std::string& api_key)
    : port_(FreePort()), api_key_(api_key) {
  char tmpl[] = "/tmp/tpserve-server-log-XXXXXX";
  const int fd = mkstemp(tmpl);
  log_path_ = tmpl;
  std::vector<std::string> args = {"mpirun", "--oversubscribe",    "--allow-run-as-root",
                                   "-np",    std::to_string(np),   BinDir() + "/tpserve",
                                   "serve",  "--model-path",       model,
                                   "--port", std::to_string(port_)};
  if (!api_key.empty()) args.insert(args.end(), {"--api-key", api_key});
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fd, STDERR_FILENO);
  posix_spawn_file_actions_adddup2(&fa, fd, STDOUT_FILENO);
  posix_spawnp(&pid_, "mpirun", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fd);

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    // A fresh channel per probe: a channel that failed to connect backs off for seconds.
    channel_ = grpc::CreateChannel(addr(), grpc::InsecureChannelCredentials());
    auto health = grpc::health::v1::Health::NewStub(channel_);
    grpc::ClientContext ctx;
    Authorize(&ctx);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    grpc::health::v1::HealthCheckResponse resp;
    if (health->Check(&ctx, {}, &resp).ok() &&
        resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      ready_ = true;
      return;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {  // the server exited during start-up
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && Terminate(30) < 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  std::remove(log_path_.c_str());
}

void ServerProcess::Authorize(grpc::ClientContext* ctx) const {
  if (!api_key_.empty()) ctx->AddMetadata("authorization", "Bearer " + api_key_);
}

tpserve::v1::ServerInfo ServerProcess::Info() const {
  auto stub = tpserve::v1::TpServe::NewStub(channel_);
  grpc::ClientContext ctx;
  Authorize(&ctx);
  tpserve::v1::ServerInfo info;
  stub->GetServerInfo(&ctx, {}, &info);
  return info;
}

int ServerProcess::Terminate(double timeout_s) {
  if (pid_ <= 0) return -1;
  const int gateway = Info().gateway_pid();
  kill(gateway > 0 ? gateway : pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

std::string ServerProcess::log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

tpserve::v1::GenerateRequest GreedyRequest(const std::vector<int32_t>& prompt, int max_new_tokens) {
  tpserve::v1::GenerateRequest req;
  for (int32_t id : prompt) req.mutable_token_ids()->add_ids(id);
  req.set_max_new_tokens(max_new_tokens);
  req.set_ignore_eos(true);
  return req;
}

Collected GenerateAll(const ServerProcess& server, const tpserve::v1::GenerateRequest& req) {
  auto stub = tpserve::v1::TpServe::NewStub(server.channel());
  grpc::ClientContext ctx;
  server.Authorize(&ctx);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  Collected c;
  auto reader = stub->Generate(&ctx, req);
  tpserve::v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    ++c.messages;
    c.ids.insert(c.ids.end(), msg.token_ids().begin(), msg.token_ids().end());
    c.logprobs.insert(c.logprobs.end(), msg.logprobs().begin(), msg.logprobs().end());
    c.text += msg.text();
    if (msg.has_final()) c.final = msg.final();
  }
  c.status = reader->Finish();
  return c;
}

}  // namespace tpserve::testing
