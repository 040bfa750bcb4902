// MpiComm all-reduce latency and bus bandwidth from 4 B to 64 MB (nccl-tests conventions:
// algbw = bytes / time, busbw = algbw * 2 (n - 1) / n), through shared memory and through MPI's
// all-reduce in turn. Run under mpirun; rank 0 prints JSON.
//   mpirun -np 2 allreduce_bench [--max-mib 64] [--iters 20]
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/mpi_comm.h"

int main(int argc, char** argv) {
  using namespace tpserve;
  auto env = MpiEnv::Init(&argc, &argv);
  if (!env.ok()) {
    std::cerr << env.status().message() << "\n";
    return 1;
  }
  size_t max_bytes = size_t{64} << 20;
  int iters = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--max-mib") max_bytes = std::strtoull(argv[i + 1], nullptr, 10) << 20;
    if (a == "--iters") iters = std::atoi(argv[i + 1]);
  }
  auto world = MpiComm::World();
  const int n = world->size();
  // Both transports at each size, in turn: shared memory (HostAllReduce, where every rank is on
  // one host) and MPI's own all-reduce, so their ratio comes from the same minutes.
  std::vector<std::string> transports;
  if (world->host_shared_allreduce()) transports.push_back("shared_memory");
  transports.push_back("mpi");
  nlohmann::json points = nlohmann::json::array();
  std::vector<float> buf(max_bytes / sizeof(float), 1.0f);
  for (size_t bytes = 4; bytes <= max_bytes; bytes *= 4) {
    const size_t count = bytes / sizeof(float);
    // Fewer repetitions for large messages keep the whole sweep short.
    const int reps = bytes >= (size_t{4} << 20) ? std::max(3, iters / 4) : iters;
    std::map<std::string, std::vector<double>> times;
    for (int r = -2; r < reps; ++r) {  // two warm-up rounds
      for (const std::string& transport : transports) {
        world->SetHostSharedAllReduce(transport == "shared_memory");
        if (!world->Barrier().ok()) return 1;
        const auto t0 = std::chrono::steady_clock::now();
        if (!world->AllReduceSum(buf.data(), count).ok()) return 1;
        double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        // The slowest rank defines the collective's time.
        std::vector<double> all(n);
        if (!world->AllGather(&t, sizeof(t), all.data()).ok()) return 1;
        if (r >= 0) times[transport].push_back(*std::max_element(all.begin(), all.end()));
      }
    }
    std::map<std::string, double> median;
    for (auto& [transport, ts] : times) {
      std::sort(ts.begin(), ts.end());
      median[transport] = ts[ts.size() / 2];
    }
    for (const std::string& transport : transports) {
      const double algbw = bytes / median[transport] / 1e9;
      nlohmann::json point = {{"transport", transport},
                              {"bytes", bytes},
                              {"latency_us", median[transport] * 1e6},
                              {"algbw_gb_s", algbw},
                              {"busbw_gb_s", algbw * 2.0 * (n - 1) / n},
                              {"iterations", reps}};
      if (transport == "shared_memory") point["speedup_over_mpi"] = median["mpi"] / median[transport];
      points.push_back(point);
    }
  }
  if (world->rank() == 0) {
    std::cout << nlohmann::json{{"bench", "MpiComm::AllReduceSum (float sum, in place)"},
                                {"ranks", n},
                                {"mpi", MpiEnv::LibraryVersion().substr(0, 60)},
                                {"convention",
                                 "nccl-tests: busbw = algbw * 2(n-1)/n, median over iterations"},
                                {"points", points}}
                     .dump(2)
              << std::endl;
  }
  return 0;
}
