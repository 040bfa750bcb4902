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

// This rank's kernel threads and the CPUs to pin them to (`--threads`; 0 = automatic).
// host_masks: the CPUs each rank on this host may run on (its affinity), in world-rank order;
// `index`: this rank's entry. A rank whose mask no other rank on the host has (mpirun's binding,
// its default for up to 2 ranks: one core each; or Slurm's) keeps its CPUs. Ranks with the same
// mask (mpirun --bind-to none, maybe inside a container's or a job's cpuset) share it out: each
// takes an even, contiguous slice by its order among them (none, and one unpinned thread, when
// they outnumber its CPUs). Asking for more threads than the rank's CPUs is an error that names
// the fix: ranks never oversubscribe a host.
struct ThreadPlan {
  int threads = 1;
  std::vector<int> cpus;  // empty: do not pin
  std::string describe;   // for the start-up log
};
Result<ThreadPlan> PlanThreads(int requested, const std::vector<std::vector<int>>& host_masks, int index);

// Collective over the world: the affinity masks of the ranks on this rank's host, in world-rank
// order, and (*index) this rank's among them (PlanThreads' input).
Result<std::vector<std::vector<int>>> GatherHostMasks(MpiEnv& env, Communicator& world, int* index);

}  // namespace tpserve
