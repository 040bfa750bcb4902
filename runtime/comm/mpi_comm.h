// MpiComm: the CPU Communicator over an MPI communicator (Open MPI; UCX when present).
// Move-only owner of its MPI_Comm (freed on destruction); Split() returns a new owner.
// No MPI types in this header (pimpl).
//
// Watchdog: every collective is waited on with a deadline (SetCollectiveTimeout): MPI's issued
// non-blocking, the shared-memory all-reduce on its peers' counters. Waiting spins briefly for
// latency, then yields and sleeps with a growing backoff (WaitPacer), so an idle rank does not
// burn a core. On timeout the Status names the collective, the group and this rank; the caller
// aborts the job (MpiEnv::Abort).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace tpserve {

class MpiEnv {
 public:
  // MPI_Init_thread with MPI_THREAD_FUNNELED (only the main thread calls MPI).
  static Result<std::unique_ptr<MpiEnv>> Init(int* argc, char*** argv);
  ~MpiEnv();  // MPI_Finalize
  MpiEnv(const MpiEnv&) = delete;
  MpiEnv& operator=(const MpiEnv&) = delete;

  int world_rank() const { return rank_; }
  int world_size() const { return size_; }
  // Rank among the processes of this host (MPI_COMM_TYPE_SHARED); picks the GPU.
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  std::string hostname() const;
  static std::string LibraryVersion();  // MPI_Get_library_version

  // Ends every rank of the job with a non-zero code. Use after a rank-local fatal error,
  // when the peers may be blocked in a collective.
  [[noreturn]] static void Abort(int code);

 private:
  MpiEnv() = default;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

class MpiComm final : public Communicator {
 public:
  static std::unique_ptr<MpiComm> World(const std::string& name = "world");
  // Ranks with the same color form a new group, ordered by key.
  Result<std::unique_ptr<MpiComm>> Split(int color, int key, const std::string& name) const;

  ~MpiComm() override;
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }

  Status AllReduceSum(float* data, size_t count) override;
  Status AllGather(const void* send, size_t bytes_per_rank, void* recv) override;
  Status Broadcast(void* data, size_t bytes, int root) override;
  Status Gather(const void* send, size_t send_bytes, void* recv, const std::vector<size_t>& recv_bytes,
                int root) override;
  Status Barrier() override;
  void SetDeterministic(bool on) override { deterministic_ = on; }
  double allreduce_seconds() const override { return allreduce_seconds_; }

  // Where every rank of the group is on one host, AllReduceSum goes through a shared-memory
  // segment (HostAllReduce, in rank order) rather than MPI's all-reduce: on by default,
  // TPSERVE_SHM_ALLREDUCE=0 at start-up leaves MPI's. Set it alike on every rank of the group.
  void SetHostSharedAllReduce(bool on);
  bool host_shared_allreduce() const;  // true: AllReduceSum uses it

  // Deadline for every collective (all MpiComm instances). Default 600 s; TPSERVE_COLLECTIVE_TIMEOUT
  // (seconds) overrides it at start-up.
  static void SetCollectiveTimeout(double seconds);
  static double CollectiveTimeout();

 private:
  Status AllReduceSumImpl(float* data, size_t count);
  double allreduce_seconds_ = 0;
  struct Impl;
  MpiComm(std::unique_ptr<Impl> impl, std::string name);
  Status Wait(void* request, const char* op);

  std::unique_ptr<Impl> impl_;
  std::string name_;
  int rank_ = 0;
  int size_ = 1;
  bool deterministic_ = false;
  std::vector<float> gather_scratch_;  // (size, count) for the deterministic all-reduce
};

}  // namespace tpserve
