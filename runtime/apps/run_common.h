// Pieces shared by the subcommands that run under mpirun.
#pragma once

#include <CLI/CLI.hpp>

#include "apps/launch_check.h"
#include "comm/communicator.h"
#include "common/status.h"

namespace tpserve {

// Every rank reached the same point: false on all ranks if any rank failed (each failing rank
// prints its own error first). Aborts the job if the agreement itself fails.
bool AllOk(Communicator& world, const Status& st);

// --nnodes, --node-rank, --dist-init-addr.
void AddLaunchFlags(CLI::App* cmd, LaunchFlags* flags);

}  // namespace tpserve
