// HostAllReduce: the sum all-reduce of a group whose ranks share one host, through a POSIX
// shared-memory segment instead of MPI's point-to-point messages (as vLLM's and SGLang's CPU
// backends do). Each rank copies its data into its own slot, and once every rank's slot is
// filled, every rank sums all slots in rank order, ((s0 + s1) + s2) + ..., into its data. So the
// ranks get the same bits, and the result does not depend on the message size (deterministic
// inference needs no other path). Messages longer than a slot go through in slot-sized chunks,
// two slots per rank in turn: a rank fills its next chunk while slower peers still read the last,
// and one counter per rank ("chunks ready") is all the synchronisation (host_allreduce.cpp).
//
// Internal to tpserve_comm: MpiComm owns one per group (mpi_comm.h).
#pragma once

#include <mpi.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace tpserve {

class HostAllReduce {
 public:
  // Collective over `comm`. nullptr (the caller keeps MPI's all-reduce) when the group has one
  // rank, spans hosts, or any rank cannot map the segment. rank 0 names the segment, and unlinks
  // it once every rank has mapped it, so nothing is left in /dev/shm after a crash.
  static std::unique_ptr<HostAllReduce> Create(MPI_Comm comm);
  ~HostAllReduce();
  HostAllReduce(const HostAllReduce&) = delete;
  HostAllReduce& operator=(const HostAllReduce&) = delete;

  // data(count) <- sum over the group's ranks, in rank order. Every rank calls it with the same
  // count. A peer that does not arrive within timeout_s seconds gives an error naming it.
  Status Run(float* data, size_t count, double timeout_s, const std::string& group);

  static constexpr size_t kSlotFloats = size_t{64} << 10;  // 256 KB: a chunk stays in L2

 private:
  struct Flags {  // one rank's progress, at the head of its part of the segment
    alignas(64) std::atomic<uint64_t> ready{0};  // chunks copied into its slots
  };
  HostAllReduce(void* base, size_t bytes, int rank, int size);
  Flags& flags(int r) const;
  float* slot(int r, int parity) const;
  // Waits until every peer has copied chunk seq into its slot.
  Status WaitReady(uint64_t seq, double timeout_s, const std::string& group) const;

  void* base_;
  size_t bytes_;
  int rank_, size_;
  uint64_t seq_ = 0;  // chunks reduced so far (the same on every rank)
};

}  // namespace tpserve
