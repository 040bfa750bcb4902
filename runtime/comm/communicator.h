// Communicator: collectives over one group of ranks (a TP group, the world, ...).
// Implementations: MpiComm (host buffers, Open MPI), NcclComm (device buffers, CUDA builds).
// Every call returns a Status: a timeout or a library error names the collective and rank.
// Collectives on a group of size 1 are no-ops (or plain copies).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace tpserve {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // e.g. "mpi:tp", for messages

  // data(count) <- sum over ranks of data(count), in place.
  virtual Status AllReduceSum(float* data, size_t count) = 0;
  // recv(size * bytes_per_rank) <- concatenation of every rank's send(bytes_per_rank), in rank order.
  virtual Status AllGather(const void* send, size_t bytes_per_rank, void* recv) = 0;
  // data(bytes) on every rank <- data(bytes) of root.
  virtual Status Broadcast(void* data, size_t bytes, int root) = 0;
  // On root: recv <- concatenation of send from every rank, rank r contributing recv_bytes[r]
  // bytes. send_bytes must equal recv_bytes[rank()] on every rank; recv is ignored off root.
  virtual Status Gather(const void* send, size_t send_bytes, void* recv,
                        const std::vector<size_t>& recv_bytes, int root) = 0;
  virtual Status Barrier() = 0;

  // Deterministic mode: AllReduceSum adds the ranks' contributions in rank order whatever the
  // message size, so results do not depend on the batch a token shares (the library's own
  // algorithms may pick another summation order by size). Default: off (the library's fastest).
  virtual void SetDeterministic(bool on) { (void)on; }

  // Wall time this rank has spent inside AllReduceSum (waiting for peers included): the decode
  // benchmark's all-reduce share, and the server's allreduce_share. 0 where not measured. Read it
  // on the thread that runs the collectives.
  virtual double allreduce_seconds() const { return 0; }
};

// Broadcasts a vector of trivially copyable T from root: the size first, then the bytes.
template <typename T>
Status BroadcastVector(Communicator& comm, std::vector<T>& v, int root) {
  uint64_t n = v.size();
  TPS_RETURN_IF_ERROR(comm.Broadcast(&n, sizeof(n), root));
  v.resize(n);
  if (n == 0) return Status();
  return comm.Broadcast(v.data(), n * sizeof(T), root);
}

}  // namespace tpserve
