#include "comm/host_allreduce.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>

#include "comm/wait_pacer.h"
#include "common/log.h"

namespace tpserve {
namespace {

// Each rank's part of the segment: its flags on their own page, then its two slots.
constexpr size_t kFlagsBytes = 4096;
constexpr size_t kPartBytes = kFlagsBytes + 2 * HostAllReduce::kSlotFloats * sizeof(float);

bool AllRanks(MPI_Comm comm, bool mine) {
  int v = mine ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MIN, comm);
  return v == 1;
}

}  // namespace

std::unique_ptr<HostAllReduce> HostAllReduce::Create(MPI_Comm comm) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  if (size == 1) return nullptr;
  MPI_Comm local;
  MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local);
  int local_size = 0;
  MPI_Comm_size(local, &local_size);
  MPI_Comm_free(&local);
  const char* env = std::getenv("TPSERVE_SHM_ALLREDUCE");
  const bool wanted = env == nullptr || std::strcmp(env, "0") != 0;
  if (!AllRanks(comm, wanted && local_size == size)) return nullptr;

  // rank 0 creates the segment under a random name (unique across jobs and PID namespaces that
  // share /dev/shm) and sends the name; its pages are allocated now, so a full /dev/shm is a
  // failure here rather than a SIGBUS on first use.
  char name[64] = {};
  const size_t bytes = kPartBytes * size;
  std::string why;  // this rank's reason for failing, if it does
  int fd = -1;
  if (rank == 0) {
    std::random_device random;
    for (int attempt = 0; attempt < 4 && fd < 0; ++attempt) {
      std::snprintf(name, sizeof(name), "/tpserve-allreduce-%d-%08x%08x", static_cast<int>(getpid()),
                    random(), random());
      fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
      if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
      why = std::string("shm_open: ") + std::strerror(errno);
    } else if (const int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes)); err != 0) {
      why = std::string("allocating ") + std::to_string(bytes) + " bytes: " + std::strerror(err);
      close(fd);
      shm_unlink(name);
      fd = -1;
    }
    if (fd < 0) name[0] = '\0';  // tells the others there is nothing to open
  }
  MPI_Bcast(name, sizeof(name), MPI_CHAR, 0, comm);
  if (rank != 0 && name[0] != '\0') {
    fd = shm_open(name, O_RDWR, 0);
    struct stat st {};
    if (fd < 0) {
      why = std::string("shm_open: ") + std::strerror(errno);
    } else if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) != bytes) {
      why = "the segment has an unexpected size";
      close(fd);
      fd = -1;
    }
  }
  void* base = MAP_FAILED;
  if (fd >= 0) {
    base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) why = std::string("mmap: ") + std::strerror(errno);
    close(fd);
  }
  if (rank == 0 && base != MAP_FAILED) {
    for (int r = 0; r < size; ++r) new (static_cast<char*>(base) + kPartBytes * r) Flags();
  }
  const bool mapped = AllRanks(comm, base != MAP_FAILED);  // also orders the flags' construction
  if (rank == 0 && name[0] != '\0') shm_unlink(name);
  if (!mapped) {
    if (base != MAP_FAILED) munmap(base, bytes);
    if (!why.empty()) log::Warn("shared-memory all-reduce unavailable ({}): using MPI's", why);
    return nullptr;
  }
  return std::unique_ptr<HostAllReduce>(new HostAllReduce(base, rank, size));
}

HostAllReduce::HostAllReduce(void* base, int rank, int size) : base_(base), rank_(rank), size_(size) {}

HostAllReduce::~HostAllReduce() {
  munmap(base_, kPartBytes * size_);
}

HostAllReduce::Flags& HostAllReduce::flags(int r) const {
  return *std::launder(reinterpret_cast<Flags*>(static_cast<char*>(base_) + kPartBytes * r));
}

float* HostAllReduce::slot(int r, int parity) const {
  char* part = static_cast<char*>(base_) + kPartBytes * r;
  return reinterpret_cast<float*>(part + kFlagsBytes) + kSlotFloats * parity;
}

Status HostAllReduce::WaitReady(uint64_t seq, int parity, size_t n, double timeout_s,
                                const std::string& group) const {
  WaitPacer pacer(timeout_s);  // one deadline for all peers
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    const Flags& peer = flags(r);
    while (peer.ready.load(std::memory_order_acquire) < seq) {
      if (!pacer.Pause()) {
        return TPS_ERROR(
            "all_reduce on group '{}' timed out after {:g} s on rank {} (of {}) waiting for rank {}: "
            "a peer rank died or hung; raise TPSERVE_COLLECTIVE_TIMEOUT if this step is legitimately slow",
            group, timeout_s, rank_, size_, r);
      }
    }
    if (peer.length[parity] != n) {  // written before its ready store, read after our acquire
      return TPS_ERROR(
          "all_reduce on group '{}': rank {} passed a chunk of {} floats where rank {} passed {} "
          "(every rank must reduce the same count)",
          group, r, peer.length[parity], rank_, n);
    }
  }
  return Status();
}

Status HostAllReduce::Run(float* data, size_t count, double timeout_s, const std::string& group) {
  if (broken_)
    return TPS_ERROR("all_reduce on group '{}': an earlier all-reduce failed on rank {}", group, rank_);
  Flags& mine = flags(rank_);
  for (size_t off = 0; off < count; off += kSlotFloats) {
    const size_t n = std::min(kSlotFloats, count - off);
    const uint64_t seq = ++seq_;
    const int parity = static_cast<int>(seq & 1);
    // This slot last held chunk seq - 2, which every peer has finished summing: it marked chunk
    // seq - 1 ready (after that sum) before this rank got past the wait for seq - 1.
    std::memcpy(slot(rank_, parity), data + off, n * sizeof(float));
    mine.length[parity] = n;
    mine.ready.store(seq, std::memory_order_release);
    if (Status st = WaitReady(seq, parity, n, timeout_s, group); !st.ok()) {
      broken_ = true;
      return st;
    }
    // Rank order on every rank: the same bits everywhere. Blocks of 2K floats keep the partial
    // sums in L1 across the ranks' slots.
    float* out = data + off;
    constexpr size_t kBlock = 2048;
    for (size_t b = 0; b < n; b += kBlock) {
      const size_t m = std::min(kBlock, n - b);
      const float* s0 = slot(0, parity) + b;
      const float* s1 = slot(1, parity) + b;
      for (size_t i = 0; i < m; ++i) out[b + i] = s0[i] + s1[i];
      for (int r = 2; r < size_; ++r) {
        const float* s = slot(r, parity) + b;
        for (size_t i = 0; i < m; ++i) out[b + i] += s[i];
      }
    }
  }
  return Status();
}

}  // namespace tpserve
