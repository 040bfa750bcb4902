// tpserve: tensor-parallel LLM inference under mpirun.
//   mpirun -np T tpserve run --model-path DIR --prompt-ids 1,2,3 --max-new-tokens 32 --json
//   mpirun -np T tpserve serve --model-path DIR --port 30000
//   mpirun -np T tpserve doctor
//   tpserve tokenize --model-path DIR --text 'Hello' --json
#include <CLI/CLI.hpp>

#include "apps/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"tpserve: tensor-parallel LLM inference (one MPI rank per TP shard)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "tpserve 0.1.0");
  const tpserve::CommandMain run = tpserve::AddRunCommand(app);
  const tpserve::CommandMain serve = tpserve::AddServeCommand(app);
  const tpserve::CommandMain doctor = tpserve::AddDoctorCommand(app);
  const tpserve::CommandMain tokenize = tpserve::AddTokenizeCommand(app);
  const tpserve::CommandMain detokenize = tpserve::AddDetokenizeCommand(app);
  CLI11_PARSE(app, argc, argv);
  if (app.got_subcommand("run")) return run(argc, argv);
  if (app.got_subcommand("serve")) return serve(argc, argv);
  if (app.got_subcommand("doctor")) return doctor(argc, argv);
  if (app.got_subcommand("tokenize")) return tokenize(argc, argv);
  if (app.got_subcommand("detokenize")) return detokenize(argc, argv);
  return 2;
}
