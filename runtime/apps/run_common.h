// The start of every subcommand that runs a model under mpirun: MPI, the rank layout checks,
// the TP group and this rank's shard. Failures are agreed on by every rank, so a bad flag or
// file ends the whole job with exit 1 and never leaves a rank waiting.
#pragma once

#include <memory>

#include <CLI/CLI.hpp>

#include "apps/launch_check.h"
#include "comm/communicator.h"
#include "comm/mpi_comm.h"
#include "comm/parallel_config.h"
#include "common/status.h"
#include "engine/llama.h"
#include "engine/loader.h"
#include "model/tokenizer/tokenizer.h"

namespace tpserve {

struct JobFlags {
  LoadOptions load;
  LaunchFlags launch;
  int tp = 0;  // 0: the whole world
  int dp = 1, pp = 1;
  bool deterministic = false;           // --enable-deterministic-inference
  std::string tokenizer;                // --tokenizer: a file or directory; default: the model directory's
  int threads = 0;                      // --threads: kernel threads per rank; 0 = the rank's cores
  std::string kv_cache_dtype = "auto";  // --kv-cache-dtype (KvCacheDtype)
};

// Declared in teardown order: the model and groups go before MPI_Finalize (env).
struct Job {
  std::unique_ptr<MpiEnv> env;
  std::unique_ptr<MpiComm> world;
  ParallelConfig parallel;
  std::unique_ptr<MpiComm> tp;
  std::unique_ptr<LlamaModel> model;
  std::vector<int> kernel_cpus;  // the CPUs this rank's kernel threads are pinned to (empty: none)
  bool leader() const { return parallel.world_rank == 0; }
};

// --model-path, --tp, --partition, --dtype and the SGLang launch flags.
void AddJobFlags(CLI::App* cmd, JobFlags* flags);

// Returns 0 with *job ready, or the exit code (the error was printed by the ranks that saw it).
// `extra_check` runs on every rank before loading (e.g. prompt flags); its error is agreed on too.
int StartJob(const JobFlags& flags, int argc, char** argv, Job* job, const Status& extra_check = Status());

// The model's tokenizer (rank 0 uses it): --tokenizer, else the model directory's files. Returns
// null when there are none and `required` is false. Checks that its ids fit the model's vocab.
Result<std::unique_ptr<Tokenizer>> LoadJobTokenizer(const JobFlags& flags, int model_vocab_size,
                                                    bool required);

// Every rank reached the same point: false on all ranks if any rank failed (each failing rank
// prints its own error first). Aborts the job if the agreement itself fails.
bool AllOk(Communicator& world, const Status& st);

}  // namespace tpserve
