// HostAllReduce: the sum all-reduce of a group whose ranks share one host, through a POSIX
// shared-memory segment instead of MPI's point-to-point messages (as vLLM's and SGLang's CPU
// backends do). Each rank copies its data into its own slot, and once every rank's slot is
// filled, every rank sums all slots in rank order, ((s0 + s1) + s2) + ..., into its data. So the
// ranks get the same bits, and the result does not depend on the message size (deterministic
// inference needs no other path). Messages longer than a slot go through in slot-sized chunks,
// two slots per rank in turn: a rank fills its next chunk while slower peers still read the last,
// and one counter per rank ("chunks ready") is all the synchronisation (host_allreduce.cpp). Each
// rank also publishes its chunk's length, so ranks that pass different counts get an error.
//
// Internal to tpserve_comm: MpiComm owns one per group (mpi_comm.h).
#pragma once

#include <mpi.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"

namespace tpserve {

class HostAllReduce {
 public:
  // Collective over `comm`. nullptr (the caller keeps MPI's all-reduce) when the group has one
  // rank, spans hosts, or any rank cannot map the segment. rank 0 creates the segment under a
  // random name and unlinks it as soon as every rank has mapped it, so a running job leaves
  // nothing in /dev/shm that a crash could strand.
  static std::unique_ptr<HostAllReduce> Create(MPI_Comm comm);
  ~HostAllReduce();
  HostAllReduce(const HostAllReduce&) = delete;
  HostAllReduce& operator=(const HostAllReduce&) = delete;

  // data(count) <- sum over the group's ranks, in rank order. Every rank calls it with the same
  // count. A peer that does not arrive within timeout_s seconds, or passes another count, gives
  // an error naming it; after an error the object refuses further calls (the job is ending).
  Status Run(float* data, size_t count, double timeout_s, const std::string& group);

  static constexpr size_t kSlotFloats = size_t{64} << 10;  // 256 KB: a chunk stays in L2

 private:
  struct Flags {  // one rank's progress, at the head of its part of the segment
    alignas(64) std::atomic<uint64_t> ready{0};  // chunks copied into its slots
    uint64_t length[2] = {0, 0};                 // floats of the chunk in each slot (before ready)
  };
  static_assert(std::atomic<uint64_t>::is_always_lock_free, "atomics shared between processes");
  HostAllReduce(void* base, int rank, int size);  // base: the mapped segment, kPartBytes per rank
  Flags& flags(int r) const;
  float* slot(int r, int parity) const;
  // Waits until every peer has copied chunk seq (of n floats, in slot `parity`) into its slot.
  Status WaitReady(uint64_t seq, int parity, size_t n, double timeout_s, const std::string& group) const;

  void* base_;
  int rank_, size_;
  uint64_t seq_ = 0;     // chunks reduced so far (the same on every rank)
  bool broken_ = false;  // a wait failed: the ranks are out of step
};

}  // namespace tpserve
