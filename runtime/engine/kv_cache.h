// Paged KV cache: one pool of fixed-size blocks per rank, shared by every sequence, and a block
// table per sequence. Each rank holds only its own KV heads (they differ per layer when a plan
// splits layers differently). Layout per layer, K and V alike:
//   (num_blocks, local_kv_heads, block_size, head_dim)
// so the keys of one head inside one block are contiguous rows for the attention kernel.
// Every rank of a TP group has the same number of blocks (agreed at start-up) and makes the
// same allocation decisions, because it applies the same StepPlans.
#pragma once

#include <cassert>
#include <cstdint>
#include <vector>

#include "common/status.h"
#include "cpu/dtype.h"
#include "cpu/large_buffer.h"
#include "model/config.h"
#include "model/partition_plan.h"

namespace tpserve {

class KvCachePool {
 public:
  static constexpr int kDefaultBlockSize = 16;

  // dtype: kF32 or kBF16 (the element type of every cached key and value).
  KvCachePool(const ModelConfig& config, const RankShard& shard, int64_t num_blocks,
              int block_size = kDefaultBlockSize, kernels::DType dtype = kernels::DType::kF32);

  int block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t capacity_tokens() const { return num_blocks_ * block_size_; }
  int64_t bytes() const { return num_blocks_ * block_size_ * bytes_per_token_; }
  int64_t bytes_per_token() const { return bytes_per_token_; }
  static int64_t BlocksFor(int64_t tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

  // Takes n blocks from the free list (false, and nothing taken, when fewer are free).
  bool Allocate(int64_t n, std::vector<int32_t>* blocks);
  void Free(std::vector<int32_t>* blocks);

  kernels::DType dtype() const { return dtype_; }

  // Row of head `local_head` at offset `slot` (< block_size) of `block` in `layer`, in dtype()
  // (for ConvertDType), or as T: float for an f32 cache, uint16_t (bf16 bits) for a bf16 one.
  void* k(int layer, int32_t block, int local_head, int slot) {
    return Row(k_, layer, block, local_head, slot);
  }
  void* v(int layer, int32_t block, int local_head, int slot) {
    return Row(v_, layer, block, local_head, slot);
  }
  template <class T>
  T* k(int layer, int32_t block, int local_head, int slot) {
    assert(sizeof(T) == kernels::DTypeSize(dtype_));
    return static_cast<T*>(k(layer, block, local_head, slot));
  }
  template <class T>
  T* v(int layer, int32_t block, int local_head, int slot) {
    assert(sizeof(T) == kernels::DTypeSize(dtype_));
    return static_cast<T*>(v(layer, block, local_head, slot));
  }

 private:
  void* Row(std::vector<kernels::LargeBuffer>& buf, int layer, int32_t block, int head, int slot) {
    const int nkv = kv_heads_[layer];
    const size_t element = ((static_cast<size_t>(block) * nkv + head) * block_size_ + slot) * head_dim_;
    return buf[layer].as<char>() + element * kernels::DTypeSize(dtype_);
  }

  kernels::DType dtype_;
  int block_size_, head_dim_;
  int64_t num_blocks_, bytes_per_token_;
  std::vector<int> kv_heads_;                // [layer] -> local KV heads
  std::vector<kernels::LargeBuffer> k_, v_;  // [layer] -> pool; pages are touched only when used
  std::vector<int32_t> free_;                // stack of free block ids
};

// The cache state of one sequence: its block table and how many tokens are stored.
struct SequenceKv {
  std::vector<int32_t> blocks;
  int length = 0;
  int capacity(int block_size) const { return static_cast<int>(blocks.size()) * block_size; }
};

// Cache size in blocks for this rank from the flags. kv_cache_tokens > 0 wins; otherwise
// mem_fraction_static of the memory available on this host (MemAvailable, or the cgroup limit
// when lower), shared by the `ranks_on_host` ranks there. Capped at `max_useful_tokens`.
struct KvCacheSizing {
  int64_t kv_cache_tokens = 0;
  double mem_fraction_static = 0.4;
  int ranks_on_host = 1;
  int64_t max_useful_tokens = 0;  // e.g. max running requests x context length
};
Result<int64_t> KvCacheBlocks(const KvCacheSizing& sizing, int64_t bytes_per_token, int block_size);
// Bytes this process may still use: min(MemAvailable, cgroup memory.max - memory.current).
int64_t AvailableMemoryBytes();

}  // namespace tpserve
