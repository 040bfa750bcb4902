// Prefix cache: full KV blocks that finished or running sequences computed stay indexed by their
// tokens, so a new sequence whose prompt starts with the same tokens shares them instead of
// prefilling them again (what vLLM's automatic prefix caching and SGLang's radix cache do for a
// shared system prompt or the earlier turns of a chat). A block is keyed by its tokens and its
// parent block, so a match is always a whole prefix, never a lookalike: the 64-bit hash only finds
// the candidate, and the tokens and the parent's identity are compared exactly.
//
// Block ownership: a block is free (in the pool's free list), private to one sequence, or cached
// (indexed here, with a reference count of the sequences that use it). Cached blocks that no
// sequence uses stay in the index until a new allocation needs them, least recently released
// first. Every rank of a TP group makes the same calls in the same order, so the caches agree.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "engine/kv_cache.h"

namespace tpserve {

class PrefixCache {
 public:
  // enabled false: Match finds nothing and Register keeps nothing (the pool's plain free list).
  PrefixCache(KvCachePool& pool, bool enabled);

  // Where one sequence's chain of cached blocks stands (its first `blocks` blocks are cached).
  struct Chain {
    int blocks = 0;
    uint64_t hash = 0;    // of the last cached block (0 for none)
    bool broken = false;  // a block could not be cached (an equal one was): none after it will be
  };

  // Appends to *blocks the cached blocks that hold tokens[0, n x block size) for the largest n
  // with n x block size <= max_tokens, takes a reference on each, and sets *chain. Returns n.
  int Match(const std::vector<int32_t>& tokens, int max_tokens, std::vector<int32_t>* blocks, Chain* chain);
  // Appends n blocks for new KV: free ones first, then unreferenced cached ones (evicted, least
  // recently released first). False, and nothing taken, when fewer are available.
  bool Allocate(int64_t n, std::vector<int32_t>* blocks);
  // Caches a sequence's blocks that became full: every block b with chain->blocks <= b <
  // full_blocks, whose tokens are tokens[b x block size, (b + 1) x block size).
  void Register(const std::vector<int32_t>& blocks, const std::vector<int32_t>& tokens, int full_blocks,
                Chain* chain);
  // Drops a sequence's blocks (last first): cached ones lose a reference (kept for reuse when
  // none is left), private ones go back to the free list. Clears *blocks.
  void Release(std::vector<int32_t>* blocks);

  // Blocks a new sequence can get: free plus unreferenced cached ones.
  int64_t available_blocks() const { return pool_.free_blocks() + static_cast<int64_t>(lru_.size()); }
  int64_t cached_blocks() const { return static_cast<int64_t>(entries_.size()); }
  bool enabled() const { return enabled_; }

 private:
  struct Entry {
    uint64_t hash = 0, serial = 0;
    int32_t parent = -1;         // the previous block of the prefix (-1: the first block)
    uint64_t parent_serial = 0;  // which caching of that block (block ids are reused)
    std::vector<int32_t> tokens;
    int refs = 0;
    std::list<int32_t>::iterator lru;  // valid while refs == 0
  };
  uint64_t BlockHash(uint64_t parent_hash, const int32_t* tokens) const;
  void Evict(int32_t block);

  KvCachePool& pool_;
  const bool enabled_;
  const int block_size_;
  uint64_t next_serial_ = 1;
  std::unordered_map<uint64_t, int32_t> index_;  // hash -> block
  std::unordered_map<int32_t, Entry> entries_;   // block -> its entry (cached blocks only)
  std::list<int32_t> lru_;                       // unreferenced cached blocks, most recent first
};

}  // namespace tpserve
