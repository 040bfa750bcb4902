// The `tpserve` subcommands. Each registers its flags on the CLI and runs after parsing.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace tpserve {

// Returns the process exit code. argc/argv go to MPI_Init_thread.
using CommandMain = std::function<int(int argc, char** argv)>;

CommandMain AddRunCommand(CLI::App& app);
CommandMain AddServeCommand(CLI::App& app);
CommandMain AddDoctorCommand(CLI::App& app);
CommandMain AddTokenizeCommand(CLI::App& app);
CommandMain AddDetokenizeCommand(CLI::App& app);

}  // namespace tpserve
