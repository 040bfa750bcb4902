#include "apps/launch_check.h"

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

}  // namespace tpserve
