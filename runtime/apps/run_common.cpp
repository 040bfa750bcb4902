#include "apps/run_common.h"

#include "comm/mpi_comm.h"
#include "common/log.h"

namespace tpserve {

bool AllOk(Communicator& world, const Status& st) {
  if (!st.ok()) log::Error("{}", st.message());
  float failed = st.ok() ? 0.0f : 1.0f;
  if (Status s = world.AllReduceSum(&failed, 1); !s.ok()) {
    log::Error("{}", s.message());
    MpiEnv::Abort(1);
  }
  return failed == 0.0f;
}

void AddLaunchFlags(CLI::App* cmd, LaunchFlags* flags) {
  cmd->add_option("--nnodes", flags->nnodes, "Checked against the MPI world (SGLang compatibility)");
  cmd->add_option("--node-rank", flags->node_rank, "Checked against the MPI world (SGLang compatibility)");
  cmd->add_option("--dist-init-addr", flags->dist_init_addr,
                  "Accepted for SGLang compatibility; MPI needs none");
}

}  // namespace tpserve
