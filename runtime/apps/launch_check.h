// SGLang-compatible launch flags (--nnodes, --node-rank, --dist-init-addr). Under MPI the world
// comes from the launcher, so these are checked against it; a mismatch is an error.
#pragma once

#include <string>

#include "comm/mpi_comm.h"

namespace tpserve {

struct LaunchFlags {
  int nnodes = -1;     // -1: not given
  int node_rank = -1;  // -1: not given
  std::string dist_init_addr;
};

// Collective over the world: gathers host names to count nodes.
Status CheckLaunchFlags(const LaunchFlags& flags, MpiEnv& env, Communicator& world);

}  // namespace tpserve
