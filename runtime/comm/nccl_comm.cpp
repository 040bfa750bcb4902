#include "comm/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <thread>

#include "comm/mpi_comm.h"

namespace tpserve {

struct NcclComm::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  float* barrier_scratch = nullptr;  // (1) device float used by Barrier()
  bool aborted = false;
};

#define TPS_CUDA_RETURN(expr)                                                                \
  do {                                                                                       \
    cudaError_t _e = (expr);                                                                 \
    if (_e != cudaSuccess) return TPS_ERROR("{} failed: {}", #expr, cudaGetErrorString(_e)); \
  } while (0)

int NcclComm::DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

Result<std::unique_ptr<NcclComm>> NcclComm::Create(Communicator& group, int local_rank) {
  const int devices = DeviceCount();
  if (devices == 0)
    return TPS_ERROR("NCCL needs a CUDA device, but none is visible on rank {}", group.rank());
  const int device = local_rank % devices;
  TPS_CUDA_RETURN(cudaSetDevice(device));

  ncclUniqueId id;
  if (group.rank() == 0) {
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) return TPS_ERROR("ncclGetUniqueId failed: {}", ncclGetErrorString(r));
  }
  TPS_RETURN_IF_ERROR(group.Broadcast(&id, sizeof(id), 0).WithContext("broadcasting the NCCL unique id"));

  auto impl = std::make_unique<Impl>();
  ncclResult_t r = ncclCommInitRank(&impl->comm, group.size(), id, group.rank());
  if (r != ncclSuccess) {
    return TPS_ERROR("ncclCommInitRank (rank {} of {}, device {}) failed: {}", group.rank(), group.size(),
                     device, ncclGetErrorString(r));
  }
  TPS_CUDA_RETURN(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
  TPS_CUDA_RETURN(cudaMalloc(&impl->barrier_scratch, sizeof(float)));
  std::unique_ptr<NcclComm> comm(new NcclComm(std::move(impl)));
  comm->name_ = "nccl:" + group.name();
  comm->rank_ = group.rank();
  comm->size_ = group.size();
  comm->device_ = device;
  return comm;
}

NcclComm::NcclComm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NcclComm::~NcclComm() {
  if (!impl_) return;
  if (impl_->comm != nullptr) {
    if (impl_->aborted) {
      ncclCommAbort(impl_->comm);
    } else {
      ncclCommDestroy(impl_->comm);
    }
  }
  if (impl_->barrier_scratch != nullptr) cudaFree(impl_->barrier_scratch);
  if (impl_->stream != nullptr) cudaStreamDestroy(impl_->stream);
}

Status NcclComm::Sync(const char* op) {
  // Poll the stream and NCCL's async error state up to the collective deadline; abort on either.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(MpiComm::CollectiveTimeout());
  auto sleep = std::chrono::microseconds(5);
  for (;;) {
    cudaError_t q = cudaStreamQuery(impl_->stream);
    if (q == cudaSuccess) return Status();
    if (q != cudaErrorNotReady) {
      impl_->aborted = true;
      return TPS_ERROR("{} on '{}' failed on rank {}: {}", op, name_, rank_, cudaGetErrorString(q));
    }
    ncclResult_t async_err = ncclSuccess;
    ncclCommGetAsyncError(impl_->comm, &async_err);
    if (async_err != ncclSuccess) {
      impl_->aborted = true;
      return TPS_ERROR("{} on '{}' failed on rank {}: {}", op, name_, rank_, ncclGetErrorString(async_err));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      impl_->aborted = true;
      return TPS_ERROR("{} on '{}' timed out on rank {} (of {}): a peer rank died or hung", op, name_, rank_,
                       size_);
    }
    std::this_thread::sleep_for(sleep);
    sleep = std::min(sleep * 2, std::chrono::microseconds(500));
  }
}

#define TPS_NCCL_RETURN(op, expr)                                                                     \
  do {                                                                                                \
    ncclResult_t _r = (expr);                                                                         \
    if (_r != ncclSuccess) {                                                                          \
      impl_->aborted = true;                                                                          \
      return TPS_ERROR("{} on '{}' failed on rank {}: {}", op, name_, rank_, ncclGetErrorString(_r)); \
    }                                                                                                 \
  } while (0)

Status NcclComm::AllReduceSum(float* data, size_t count) {
  if (size_ == 1) return Status();
  TPS_NCCL_RETURN("all_reduce",
                  ncclAllReduce(data, data, count, ncclFloat32, ncclSum, impl_->comm, impl_->stream));
  return Sync("all_reduce");
}

Status NcclComm::AllGather(const void* send, size_t bytes_per_rank, void* recv) {
  TPS_NCCL_RETURN("all_gather",
                  ncclAllGather(send, recv, bytes_per_rank, ncclUint8, impl_->comm, impl_->stream));
  return Sync("all_gather");
}

Status NcclComm::Broadcast(void* data, size_t bytes, int root) {
  if (size_ == 1 || bytes == 0) return Status();
  TPS_NCCL_RETURN("broadcast", ncclBroadcast(data, data, bytes, ncclUint8, root, impl_->comm, impl_->stream));
  return Sync("broadcast");
}

Status NcclComm::Gather(const void* send, size_t send_bytes, void* recv,
                        const std::vector<size_t>& recv_bytes, int root) {
  if (recv_bytes.size() != static_cast<size_t>(size_) || recv_bytes[rank_] != send_bytes) {
    return TPS_ERROR("gather on '{}': rank {} sends {} bytes but the layout expects another size", name_,
                     rank_, send_bytes);
  }
  // Point-to-point in one group call: root receives each rank's piece at its offset.
  TPS_NCCL_RETURN("gather", ncclGroupStart());
  if (rank_ == root) {
    size_t off = 0;
    for (int r = 0; r < size_; ++r) {
      char* dst = static_cast<char*>(recv) + off;
      if (r == root) {
        if (cudaMemcpyAsync(dst, send, send_bytes, cudaMemcpyDeviceToDevice, impl_->stream) != cudaSuccess) {
          ncclGroupEnd();
          return TPS_ERROR("gather on '{}': local copy failed", name_);
        }
      } else {
        TPS_NCCL_RETURN("gather", ncclRecv(dst, recv_bytes[r], ncclUint8, r, impl_->comm, impl_->stream));
      }
      off += recv_bytes[r];
    }
  } else {
    TPS_NCCL_RETURN("gather", ncclSend(send, send_bytes, ncclUint8, root, impl_->comm, impl_->stream));
  }
  TPS_NCCL_RETURN("gather", ncclGroupEnd());
  return Sync("gather");
}

Status NcclComm::Barrier() {
  // NCCL has no barrier: a 1-element all-reduce orders every rank behind the same point.
  if (size_ == 1) return Status();
  TPS_NCCL_RETURN("barrier", ncclAllReduce(impl_->barrier_scratch, impl_->barrier_scratch, 1, ncclFloat32,
                                           ncclSum, impl_->comm, impl_->stream));
  return Sync("barrier");
}

}  // namespace tpserve
