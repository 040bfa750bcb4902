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

// Where a rank of the world runs: its host and the CPUs it may run on (its affinity).
struct RankPlace {
  std::string host;
  std::vector<int> cpus;
};
// Collective over the world: every rank's place, in world-rank order (one all-gather).
Result<std::vector<RankPlace>> GatherRankPlaces(MpiEnv& env, Communicator& world);

// The SGLang flags against the world as mpirun started it (`places`; this is world rank `rank`).
Status CheckLaunchFlags(const LaunchFlags& flags, const std::vector<RankPlace>& places, int rank);

// This rank's kernel threads and the CPUs to pin them to (`--threads`; 0 = automatic).
// `places`: every rank's (GatherRankPlaces); this is world rank `rank`, and only the ranks on its
// host count. A rank whose mask no other rank on the host has (mpirun's binding, its default for
// up to 2 ranks: one core each; or Slurm's) keeps its CPUs. Ranks with the same mask (mpirun
// --bind-to none, maybe inside a container's or a job's cpuset) share it out: each takes an even,
// contiguous slice by its order among them (none, and one unpinned thread, when they outnumber
// its CPUs). Asking for more threads than the rank's CPUs is an error that names
// the fix: ranks never oversubscribe a host.
struct ThreadPlan {
  int threads = 1;
  std::vector<int> cpus;  // empty: do not pin
  std::string describe;   // for the start-up log
};
Result<ThreadPlan> PlanThreads(int requested, const std::vector<RankPlace>& places, int rank);

}  // namespace tpserve
