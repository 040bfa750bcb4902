// NcclComm: the GPU Communicator (device buffers, one CUDA stream per communicator).
// Bootstrap: rank 0 of the group calls ncclGetUniqueId, the id is broadcast over the MPI group
// (MpiComm), and every rank calls ncclCommInitRank on device local_rank % device_count.
// Move-only owner of the ncclComm_t and the stream; on an error the communicator is aborted
// (ncclCommAbort) rather than destroyed, so peers are not left waiting.
// Built only with TPSERVE_HAVE_CUDA; no CUDA/NCCL types in this header.
#pragma once

#include <memory>

#include "comm/communicator.h"

namespace tpserve {

class MpiComm;

class NcclComm final : public Communicator {
 public:
  // Collective over `group`: every rank of the group must call it.
  static Result<std::unique_ptr<NcclComm>> Create(Communicator& group, int local_rank);
  ~NcclComm() override;
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }
  int device() const { return device_; }

  // All buffers are device pointers. Each call enqueues on the communicator's stream and waits
  // for it with the collective timeout (MpiComm::CollectiveTimeout()).
  Status AllReduceSum(float* data, size_t count) override;
  Status AllGather(const void* send, size_t bytes_per_rank, void* recv) override;
  Status Broadcast(void* data, size_t bytes, int root) override;
  Status Gather(const void* send, size_t send_bytes, void* recv, const std::vector<size_t>& recv_bytes,
                int root) override;
  Status Barrier() override;

  // Number of visible CUDA devices (0 when there is no driver or no GPU).
  static int DeviceCount();

 private:
  struct Impl;
  explicit NcclComm(std::unique_ptr<Impl> impl);
  Status Sync(const char* op);

  std::unique_ptr<Impl> impl_;
  std::string name_;
  int rank_ = 0, size_ = 1, device_ = 0;
};

}  // namespace tpserve
