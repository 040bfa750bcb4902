#include "apps/launch_check.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/log.h"

namespace tpserve {

Status CheckLaunchFlags(const LaunchFlags& flags, MpiEnv& env, Communicator& world) {
  // Node index of every rank = order of first appearance of its host name.
  constexpr size_t kName = 256;
  char mine[kName] = {};
  std::strncpy(mine, env.hostname().c_str(), kName - 1);
  std::vector<char> all(kName * world.size());
  TPS_RETURN_IF_ERROR(world.AllGather(mine, kName, all.data()));
  std::vector<std::string> hosts;
  int my_node = 0;
  for (int r = 0; r < world.size(); ++r) {
    std::string h(&all[r * kName]);
    auto it = std::find(hosts.begin(), hosts.end(), h);
    const int node = static_cast<int>(it - hosts.begin());
    if (it == hosts.end()) hosts.push_back(h);
    if (r == world.rank()) my_node = node;
  }
  const int nnodes = static_cast<int>(hosts.size());
  if (flags.nnodes >= 0 && flags.nnodes != nnodes) {
    return TPS_ERROR(
        "--nnodes {} but mpirun started ranks on {} node(s); under MPI the launcher decides the world, so "
        "drop --nnodes or fix the host list",
        flags.nnodes, nnodes);
  }
  if (flags.node_rank >= 0 && flags.node_rank != my_node) {
    return TPS_ERROR(
        "--node-rank {} but this rank runs on node {} ({}) of the MPI world; drop --node-rank under mpirun",
        flags.node_rank, my_node, hosts[my_node]);
  }
  if (!flags.dist_init_addr.empty() && world.rank() == 0) {
    log::Info("--dist-init-addr {} is not used: under MPI the ranks find each other through mpirun",
              flags.dist_init_addr);
  }
  return Status();
}

Result<ThreadPlan> PlanThreads(int requested, int local_rank, int local_size) {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> mask;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) mask.push_back(c);
    }
  }
  const int online = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  const bool bound = !mask.empty() && static_cast<int>(mask.size()) < online;
  std::vector<int> own;
  if (bound) {
    own = mask;  // mpirun gave this rank its cores
  } else if (!mask.empty() && static_cast<int>(mask.size()) >= local_size) {
    const int share = static_cast<int>(mask.size()) / local_size;
    own.assign(mask.begin() + local_rank * share, mask.begin() + (local_rank + 1) * share);
  }  // more ranks than cores on this host (oversubscribed): one unpinned thread each
  ThreadPlan plan;
  plan.threads = requested > 0 ? requested : std::max<int>(1, own.size());
  if (requested > 1 && requested > static_cast<int>(own.size())) {
    return TPS_ERROR(
        "--threads {} needs {} cores for this rank, but it has {} ({} of {} online CPUs {}, {} rank(s) on "
        "this host); "
        "lower --threads, run fewer ranks per host, or let mpirun give each rank more cores (--bind-to none, "
        "or "
        "--map-by slot:PE={})",
        requested, requested, own.size(), mask.size(), online, bound ? "bound by mpirun" : "shared",
        local_size, requested);
  }
  if (!own.empty()) plan.cpus.assign(own.begin(), own.begin() + plan.threads);
  std::string cpus;
  for (int c : plan.cpus) cpus += fmt::format("{}{}", cpus.empty() ? "" : ",", c);
  plan.describe = fmt::format("{} kernel thread(s), {}", plan.threads,
                              cpus.empty() ? "unpinned" : "pinned to CPU " + cpus);
  return plan;
}

}  // namespace tpserve
