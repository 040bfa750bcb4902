#include "apps/launch_check.h"

#include <sched.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/log.h"

namespace tpserve {

Result<std::vector<RankPlace>> GatherRankPlaces(MpiEnv& env, Communicator& world) {
  struct Entry {
    char host[256];
    cpu_set_t cpus;
  };
  Entry mine{};
  std::strncpy(mine.host, env.hostname().c_str(), sizeof(mine.host) - 1);
  if (sched_getaffinity(0, sizeof(mine.cpus), &mine.cpus) != 0) CPU_ZERO(&mine.cpus);
  std::vector<Entry> all(world.size());
  TPS_RETURN_IF_ERROR(world.AllGather(&mine, sizeof(Entry), all.data()));
  std::vector<RankPlace> places(all.size());
  for (size_t r = 0; r < all.size(); ++r) {
    places[r].host = std::string(all[r].host, strnlen(all[r].host, sizeof(all[r].host)));
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &all[r].cpus)) places[r].cpus.push_back(c);
    }
  }
  return places;
}

Status CheckLaunchFlags(const LaunchFlags& flags, const std::vector<RankPlace>& places, int rank) {
  // Node index of every rank = order of first appearance of its host name.
  std::vector<std::string> hosts;
  int my_node = 0;
  for (size_t r = 0; r < places.size(); ++r) {
    auto it = std::find(hosts.begin(), hosts.end(), places[r].host);
    const int node = static_cast<int>(it - hosts.begin());
    if (it == hosts.end()) hosts.push_back(places[r].host);
    if (static_cast<int>(r) == rank) my_node = node;
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
  if (!flags.dist_init_addr.empty() && rank == 0) {
    log::Info("--dist-init-addr {} is not used: under MPI the ranks find each other through mpirun",
              flags.dist_init_addr);
  }
  return Status();
}

Result<ThreadPlan> PlanThreads(int requested, const std::vector<RankPlace>& places, int rank) {
  const RankPlace& me = places.at(rank);
  const std::vector<int>& mask = me.cpus;
  int sharing = 0, order = 0;  // ranks on this host with this exact mask, and this rank's place
  for (size_t r = 0; r < places.size(); ++r) {
    if (places[r].host != me.host || places[r].cpus != mask) continue;
    if (static_cast<int>(r) < rank) ++order;
    ++sharing;
  }
  std::vector<int> own;
  if (static_cast<int>(mask.size()) >= sharing) {
    const int share = static_cast<int>(mask.size()) / sharing;
    own.assign(mask.begin() + order * share, mask.begin() + (order + 1) * share);
  }  // more ranks than CPUs in their mask (oversubscribed): one unpinned thread each
  ThreadPlan plan;
  plan.threads = requested > 0 ? requested : std::max<int>(1, own.size());
  if (requested > 1 && requested > static_cast<int>(own.size())) {
    return TPS_ERROR(
        "--threads {} needs {} cores for this rank, but it has {} (its {} allowed CPU(s) shared by {} "
        "rank(s) "
        "on this host); lower --threads, run fewer ranks per host, or let mpirun give each rank more cores "
        "(--bind-to none, or --map-by slot:PE={})",
        requested, requested, own.size(), mask.size(), sharing, requested);
  }
  if (!own.empty()) plan.cpus.assign(own.begin(), own.begin() + plan.threads);
  std::string cpus;
  for (int c : plan.cpus) cpus += fmt::format("{}{}", cpus.empty() ? "" : ",", c);
  plan.describe = fmt::format("{} kernel thread(s), {}", plan.threads,
                              cpus.empty() ? "unpinned" : "pinned to CPU " + cpus);
  return plan;
}

}  // namespace tpserve
