// `tpserve doctor`: what every rank sees (host, local rank, CPU ISA, GPUs, memory, library
// versions). Run it first when something hangs.
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <sstream>

#include <fmt/ranges.h>

#include "apps/commands.h"
#include "comm/mpi_comm.h"
#include "common/log.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#ifdef TPSERVE_HAVE_CUDA
#include <nccl.h>

#include "comm/nccl_comm.h"
#endif

namespace tpserve {
namespace {

std::string MemAvailable() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) == 0) return line.substr(13);
  }
  return "?";
}

int Doctor(int argc, char** argv) {
  auto env_or = MpiEnv::Init(&argc, &argv);
  if (!env_or.ok()) {
    log::Error("{}", env_or.status().message());
    return 1;
  }
  auto env = std::move(env_or).value();
  auto world = MpiComm::World();
  std::string gpus = "no CUDA support in this build";
#ifdef TPSERVE_HAVE_CUDA
  int nccl_version = 0;
  ncclGetVersion(&nccl_version);
  gpus = fmt::format("{} CUDA device(s), NCCL {}", NcclComm::DeviceCount(), nccl_version);
#endif
  const std::string line = fmt::format(
      "rank {}/{} host {} local_rank {}/{} pid {} isa {} (supported: {}; bf16 batches: {}) cpus_online {} "
      "mem_available {} | {}",
      env->world_rank(), env->world_size(), env->hostname(), env->local_rank(), env->local_size(), getpid(),
      kernels::ActiveKernels().isa, fmt::join(kernels::SupportedIsas(), ","), kernels::PackedBatchKernels(),
      sysconf(_SC_NPROCESSORS_ONLN), MemAvailable(), gpus);
  // Gather fixed-size lines so only rank 0 prints, in rank order.
  constexpr size_t kLine = 512;
  std::string padded = line.substr(0, kLine - 1);
  padded.resize(kLine, '\0');
  std::vector<char> all(kLine * world->size());
  if (Status s = world->AllGather(padded.data(), kLine, all.data()); !s.ok()) {
    log::Error("{}", s.message());
    return 1;
  }
  if (env->world_rank() == 0) {
    const std::string mpi = MpiEnv::LibraryVersion();
    std::cout << "MPI: " << mpi.substr(0, mpi.find('\n')) << "\n";
    for (int r = 0; r < world->size(); ++r) std::cout << &all[r * kLine] << "\n";
  }
  return 0;
}

}  // namespace

CommandMain AddDoctorCommand(CLI::App& app) {
  app.add_subcommand("doctor", "Print the MPI world, hosts, CPU ISA, GPUs and memory of every rank");
  return [](int argc, char** argv) { return Doctor(argc, argv); };
}

}  // namespace tpserve
