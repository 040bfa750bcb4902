// SGLang-compatible launch flags (--nnodes, --node-rank, --dist-init-addr). Under MPI the world
// comes from the launcher, so these are checked against it; a mismatch is an error.
#pragma once

#include <string>
#include <vector>

#include "comm/mpi_comm.h"

namespace tpserve {

struct LaunchFlags {
  int nnodes = -1;     // -1: not given
  int node_rank = -1;  // -1: not given
  std::string dist_init_addr;
};

// Collective over the world: gathers host names to count nodes.
Status CheckLaunchFlags(const LaunchFlags& flags, MpiEnv& env, Communicator& world);

// This rank's kernel threads and the CPUs to pin them to (`--threads`; 0 = automatic). When mpirun
// bound the rank (its default for up to 2 ranks: one core each), its cores are the rank's; when
// the rank is unbound, the host's cores are shared out by local rank. Asking for more threads
// than the rank's share of cores is an error that names the fix: ranks never oversubscribe a host.
struct ThreadPlan {
  int threads = 1;
  std::vector<int> cpus;  // empty: do not pin
  std::string describe;   // for the start-up log
};
Result<ThreadPlan> PlanThreads(int requested, int local_rank, int local_size);

}  // namespace tpserve
