#include "comm/mpi_comm.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "comm/host_allreduce.h"
#include "comm/wait_pacer.h"
#include "common/log.h"

namespace tpserve {
namespace {

std::atomic<double> g_timeout_s{[] {
  const char* env = std::getenv("TPSERVE_COLLECTIVE_TIMEOUT");
  return env != nullptr ? std::atof(env) : 600.0;
}()};

std::string MpiErrorString(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, buf, &len);
  return std::string(buf, len);
}

// MPI counts are int: large buffers go in chunks of at most this many elements.
constexpr size_t kMaxChunk = size_t{1} << 30;

}  // namespace

// ---------------------------------------------------------------------------------------------
Result<std::unique_ptr<MpiEnv>> MpiEnv::Init(int* argc, char*** argv) {
  int provided = 0;
  int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  if (rc != MPI_SUCCESS) return TPS_ERROR("MPI_Init_thread failed: {}", MpiErrorString(rc));
  if (provided < MPI_THREAD_FUNNELED) {
    return TPS_ERROR("the MPI library provides thread level {} but tpserve needs MPI_THREAD_FUNNELED",
                     provided);
  }
  // Errors come back as codes (turned into Status) instead of aborting inside MPI.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::unique_ptr<MpiEnv> env(new MpiEnv());
  MPI_Comm_rank(MPI_COMM_WORLD, &env->rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &env->size_);
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, env->rank_, MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &env->local_rank_);
  MPI_Comm_size(local, &env->local_size_);
  MPI_Comm_free(&local);
  log::SetRank(env->rank_);
  return env;
}

MpiEnv::~MpiEnv() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::string MpiEnv::hostname() const {
  char name[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  MPI_Get_processor_name(name, &len);
  return std::string(name, len);
}

std::string MpiEnv::LibraryVersion() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(version, &len);
  return std::string(version, len);
}

void MpiEnv::Abort(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

// ---------------------------------------------------------------------------------------------
struct MpiComm::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  std::unique_ptr<HostAllReduce> host;  // null: the group spans hosts (or has one rank)
  bool use_host = true;
};

MpiComm::MpiComm(std::unique_ptr<Impl> impl, std::string name)
    : impl_(std::move(impl)), name_(std::move(name)) {
  MPI_Comm_rank(impl_->comm, &rank_);
  MPI_Comm_size(impl_->comm, &size_);
  MPI_Comm_set_errhandler(impl_->comm, MPI_ERRORS_RETURN);
  impl_->host = HostAllReduce::Create(impl_->comm);
}

void MpiComm::SetHostSharedAllReduce(bool on) {
  impl_->use_host = on;
}

bool MpiComm::host_shared_allreduce() const {
  return impl_->host != nullptr && impl_->use_host;
}

MpiComm::~MpiComm() {
  if (impl_) impl_->host.reset();  // local (munmap): no collective at teardown
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (impl_ && impl_->comm != MPI_COMM_NULL && !finalized) MPI_Comm_free(&impl_->comm);
}

std::unique_ptr<MpiComm> MpiComm::World(const std::string& name) {
  auto impl = std::make_unique<Impl>();
  MPI_Comm_dup(MPI_COMM_WORLD, &impl->comm);
  return std::unique_ptr<MpiComm>(new MpiComm(std::move(impl), name));
}

Result<std::unique_ptr<MpiComm>> MpiComm::Split(int color, int key, const std::string& name) const {
  auto impl = std::make_unique<Impl>();
  int rc = MPI_Comm_split(impl_->comm, color, key, &impl->comm);
  if (rc != MPI_SUCCESS) return TPS_ERROR("MPI_Comm_split of {} failed: {}", name_, MpiErrorString(rc));
  return std::unique_ptr<MpiComm>(new MpiComm(std::move(impl), name));
}

void MpiComm::SetCollectiveTimeout(double seconds) {
  g_timeout_s = seconds;
}
double MpiComm::CollectiveTimeout() {
  return g_timeout_s;
}

Status MpiComm::Wait(void* request_ptr, const char* op) {
  MPI_Request* request = static_cast<MPI_Request*>(request_ptr);
  WaitPacer pacer(g_timeout_s.load());
  for (;;) {
    int done = 0;
    int rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
      return TPS_ERROR("{} on group '{}' failed on rank {}: {}", op, name_, rank_, MpiErrorString(rc));
    }
    if (done) return Status();
    if (!pacer.Pause()) {
      return TPS_ERROR(
          "{} on group '{}' timed out after {:g} s on rank {} (of {}): a peer rank died or hung; "
          "raise TPSERVE_COLLECTIVE_TIMEOUT if this step is legitimately slow",
          op, name_, g_timeout_s.load(), rank_, size_);
    }
  }
}

Status MpiComm::AllReduceSum(float* data, size_t count) {
  if (size_ == 1) return Status();
  const auto t0 = std::chrono::steady_clock::now();
  Status st = AllReduceSumImpl(data, count);
  allreduce_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

Status MpiComm::AllReduceSumImpl(float* data, size_t count) {
  // Shared memory sums in rank order at every size: deterministic as it is.
  if (host_shared_allreduce()) return impl_->host->Run(data, count, g_timeout_s.load(), name_);
  if (deterministic_ && count * size_ * sizeof(float) <= static_cast<size_t>(INT_MAX)) {
    // Every rank gathers all contributions and sums them in rank order: ((c0 + c1) + c2) + ...
    gather_scratch_.resize(count * size_);
    TPS_RETURN_IF_ERROR(AllGather(data, count * sizeof(float), gather_scratch_.data()));
    for (size_t i = 0; i < count; ++i) {
      float acc = gather_scratch_[i];
      for (int r = 1; r < size_; ++r) acc += gather_scratch_[static_cast<size_t>(r) * count + i];
      data[i] = acc;
    }
    return Status();
  }
  for (size_t off = 0; off < count; off += kMaxChunk) {
    const int n = static_cast<int>(std::min(kMaxChunk, count - off));
    MPI_Request req;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, data + off, n, MPI_FLOAT, MPI_SUM, impl_->comm, &req);
    if (rc != MPI_SUCCESS) return TPS_ERROR("all_reduce on '{}' failed: {}", name_, MpiErrorString(rc));
    TPS_RETURN_IF_ERROR(Wait(&req, "all_reduce"));
  }
  return Status();
}

Status MpiComm::AllGather(const void* send, size_t bytes_per_rank, void* recv) {
  if (size_ == 1) {
    std::memcpy(recv, send, bytes_per_rank);
    return Status();
  }
  if (bytes_per_rank > static_cast<size_t>(INT_MAX)) {
    return TPS_ERROR("all_gather of {} bytes per rank exceeds the MPI count limit", bytes_per_rank);
  }
  MPI_Request req;
  int rc = MPI_Iallgather(send, static_cast<int>(bytes_per_rank), MPI_BYTE, recv,
                          static_cast<int>(bytes_per_rank), MPI_BYTE, impl_->comm, &req);
  if (rc != MPI_SUCCESS) return TPS_ERROR("all_gather on '{}' failed: {}", name_, MpiErrorString(rc));
  return Wait(&req, "all_gather");
}

Status MpiComm::Broadcast(void* data, size_t bytes, int root) {
  if (size_ == 1 || bytes == 0) return Status();
  char* p = static_cast<char*>(data);
  for (size_t off = 0; off < bytes; off += kMaxChunk) {
    const int n = static_cast<int>(std::min(kMaxChunk, bytes - off));
    MPI_Request req;
    int rc = MPI_Ibcast(p + off, n, MPI_BYTE, root, impl_->comm, &req);
    if (rc != MPI_SUCCESS) return TPS_ERROR("broadcast on '{}' failed: {}", name_, MpiErrorString(rc));
    TPS_RETURN_IF_ERROR(Wait(&req, "broadcast"));
  }
  return Status();
}

Status MpiComm::Gather(const void* send, size_t send_bytes, void* recv, const std::vector<size_t>& recv_bytes,
                       int root) {
  if (recv_bytes.size() != static_cast<size_t>(size_) || recv_bytes[rank_] != send_bytes) {
    return TPS_ERROR("gather on '{}': rank {} sends {} bytes but the layout expects {}", name_, rank_,
                     send_bytes, recv_bytes.size() == static_cast<size_t>(size_) ? recv_bytes[rank_] : 0);
  }
  if (size_ == 1) {
    std::memcpy(recv, send, send_bytes);
    return Status();
  }
  std::vector<int> counts(size_), displs(size_);
  size_t total = 0;
  for (int r = 0; r < size_; ++r) {
    if (total + recv_bytes[r] > static_cast<size_t>(INT_MAX)) {
      return TPS_ERROR("gather of {} bytes exceeds the MPI count limit", total + recv_bytes[r]);
    }
    counts[r] = static_cast<int>(recv_bytes[r]);
    displs[r] = static_cast<int>(total);
    total += recv_bytes[r];
  }
  MPI_Request req;
  int rc = MPI_Igatherv(send, static_cast<int>(send_bytes), MPI_BYTE, recv, counts.data(), displs.data(),
                        MPI_BYTE, root, impl_->comm, &req);
  if (rc != MPI_SUCCESS) return TPS_ERROR("gather on '{}' failed: {}", name_, MpiErrorString(rc));
  return Wait(&req, "gather");
}

Status MpiComm::Barrier() {
  if (size_ == 1) return Status();
  MPI_Request req;
  int rc = MPI_Ibarrier(impl_->comm, &req);
  if (rc != MPI_SUCCESS) return TPS_ERROR("barrier on '{}' failed: {}", name_, MpiErrorString(rc));
  return Wait(&req, "barrier");
}

}  // namespace tpserve
