// Rank arithmetic in one value type: how the world splits into TP groups (and later DP/PP).
// Layout: world rank = (dp_rank * pp_size + pp_rank) * tp_size + tp_rank, so a TP group is a
// run of consecutive ranks (on one node when ranks are packed by node, which NVLink/shm favour).
#pragma once

#include "common/status.h"

namespace tpserve {

struct ParallelConfig {
  int world_size = 1;
  int world_rank = 0;
  int tp_size = 1;
  int dp_size = 1;
  int pp_size = 1;

  int tp_rank() const { return world_rank % tp_size; }
  int pp_rank() const { return (world_rank / tp_size) % pp_size; }
  int dp_rank() const { return world_rank / (tp_size * pp_size); }
  // Color for MPI_Comm_split: ranks of one TP group share it.
  int tp_group_color() const { return world_rank / tp_size; }

  // Checks tp * dp * pp == world_size. A tp of 0 means "the whole world".
  static Result<ParallelConfig> Make(int world_size, int world_rank, int tp_size, int dp_size = 1,
                                     int pp_size = 1) {
    if (tp_size == 0) tp_size = world_size / (dp_size * pp_size);
    if (tp_size < 1 || dp_size < 1 || pp_size < 1) {
      return Status::Error(
          fmt::format("--tp {}, --dp-size {} and --pp-size {} must all be >= 1", tp_size, dp_size, pp_size));
    }
    if (tp_size * dp_size * pp_size != world_size) {
      return Status::Error(fmt::format(
          "--tp {} x --dp-size {} x --pp-size {} = {} ranks, but the MPI world has {} ranks; launch with "
          "`mpirun -np {}` or pass --tp {}",
          tp_size, dp_size, pp_size, tp_size * dp_size * pp_size, world_size, tp_size * dp_size * pp_size,
          world_size / (dp_size * pp_size) > 0 ? world_size / (dp_size * pp_size) : 1));
    }
    ParallelConfig pc;
    pc.world_size = world_size;
    pc.world_rank = world_rank;
    pc.tp_size = tp_size;
    pc.dp_size = dp_size;
    pc.pp_size = pp_size;
    return pc;
  }
};

}  // namespace tpserve
