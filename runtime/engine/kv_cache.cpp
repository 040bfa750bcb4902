#include "engine/kv_cache.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>

namespace tpserve {

KvCachePool::KvCachePool(const ModelConfig& c, const RankShard& shard, int64_t num_blocks, int block_size,
                         kernels::DType dtype)
    : dtype_(dtype),
      block_size_(block_size),
      head_dim_(c.head_dim),
      num_blocks_(num_blocks),
      bytes_per_token_(KvBytesPerToken(c, shard, dtype)) {
  for (const LayerShard& l : shard.layers) {
    const int nkv = static_cast<int>(l.kv_heads.size());
    kv_heads_.push_back(nkv);
    const size_t n = static_cast<size_t>(num_blocks) * nkv * block_size * c.head_dim;
    // Untouched until blocks are first used (on huge pages where the kernel offers them).
    k_.emplace_back(n * kernels::DTypeSize(dtype));
    v_.emplace_back(n * kernels::DTypeSize(dtype));
    if (k_.back().data() == nullptr || v_.back().data() == nullptr) {
      std::fprintf(stderr, "tpserve: out of memory allocating the KV cache (%lld blocks)\n",
                   static_cast<long long>(num_blocks));
      std::abort();
    }
  }
  free_.resize(num_blocks);
  for (int64_t i = 0; i < num_blocks; ++i)
    free_[i] = static_cast<int32_t>(num_blocks - 1 - i);  // pop 0 first
}

bool KvCachePool::Allocate(int64_t n, std::vector<int32_t>* blocks) {
  if (n > free_blocks()) return false;
  for (int64_t i = 0; i < n; ++i) {
    blocks->push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void KvCachePool::Free(std::vector<int32_t>* blocks) {
  free_.insert(free_.end(), blocks->rbegin(), blocks->rend());
  blocks->clear();
}

namespace {

int64_t ReadInt(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  if (!(in >> s) || s == "max") return -1;
  try {
    return std::stoll(s);
  } catch (...) {
    return -1;
  }
}

}  // namespace

int64_t AvailableMemoryBytes() {
  int64_t avail = -1;
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") {
      avail = kb * 1024;
      break;
    }
  }
  // cgroup v2 (containers, Slurm): the limit can be far below what the host has free.
  const int64_t max = ReadInt("/sys/fs/cgroup/memory.max");
  const int64_t cur = ReadInt("/sys/fs/cgroup/memory.current");
  if (max > 0 && cur >= 0) avail = avail < 0 ? max - cur : std::min(avail, max - cur);
  return std::max<int64_t>(avail, 0);
}

Result<int64_t> KvCacheBlocks(const KvCacheSizing& s, int64_t bytes_per_token, int block_size) {
  int64_t tokens = s.kv_cache_tokens;
  if (tokens <= 0) {
    if (!(s.mem_fraction_static > 0.0 && s.mem_fraction_static <= 1.0)) {
      return TPS_ERROR("--mem-fraction-static must be in (0, 1], got {}", s.mem_fraction_static);
    }
    const double budget =
        s.mem_fraction_static * static_cast<double>(AvailableMemoryBytes()) / std::max(1, s.ranks_on_host);
    tokens = static_cast<int64_t>(budget / std::max<int64_t>(1, bytes_per_token));
  }
  if (s.max_useful_tokens > 0) tokens = std::min(tokens, s.max_useful_tokens);
  return tokens / block_size;
}

}  // namespace tpserve
