#include "engine/prefix_cache.h"

#include <algorithm>
#include <cassert>

namespace tpserve {

PrefixCache::PrefixCache(KvCachePool& pool, bool enabled)
    : pool_(pool), enabled_(enabled), block_size_(pool.block_size()) {}

uint64_t PrefixCache::BlockHash(uint64_t parent_hash, const int32_t* tokens) const {
  // FNV-1a over the parent's hash and the block's tokens, then a splitmix64 finish. Only a hint:
  // Match compares the tokens and the parent exactly.
  uint64_t h = 0xcbf29ce484222325ull ^ parent_hash;
  for (int i = 0; i < block_size_; ++i) {
    h ^= static_cast<uint32_t>(tokens[i]);
    h *= 0x100000001b3ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

int PrefixCache::Match(const std::vector<int32_t>& tokens, int max_tokens, std::vector<int32_t>* blocks,
                       Chain* chain) {
  *chain = Chain();
  if (!enabled_) return 0;
  max_tokens = std::min(max_tokens, static_cast<int>(tokens.size()));
  int32_t parent = -1;
  uint64_t parent_serial = 0;
  int n = 0;
  for (; (n + 1) * block_size_ <= max_tokens; ++n) {
    const int32_t* t = tokens.data() + static_cast<size_t>(n) * block_size_;
    const uint64_t h = BlockHash(chain->hash, t);
    auto it = index_.find(h);
    if (it == index_.end()) break;
    Entry& e = entries_.at(it->second);
    if (e.parent != parent || e.parent_serial != parent_serial ||
        !std::equal(t, t + block_size_, e.tokens.begin()))
      break;
    if (e.refs++ == 0) lru_.erase(e.lru);
    blocks->push_back(it->second);
    parent = it->second;
    parent_serial = e.serial;
    chain->hash = h;
  }
  chain->blocks = n;
  return n;
}

bool PrefixCache::Allocate(int64_t n, std::vector<int32_t>* blocks) {
  if (n > available_blocks()) return false;
  while (pool_.free_blocks() < n) Evict(lru_.back());
  return pool_.Allocate(n, blocks);
}

void PrefixCache::Evict(int32_t block) {
  auto it = entries_.find(block);
  assert(it != entries_.end() && it->second.refs == 0);
  index_.erase(it->second.hash);
  lru_.erase(it->second.lru);
  entries_.erase(it);
  std::vector<int32_t> one{block};
  pool_.Free(&one);
}

void PrefixCache::Register(const std::vector<int32_t>& blocks, const std::vector<int32_t>& tokens,
                           int full_blocks, Chain* chain) {
  if (!enabled_ || chain->broken) return;
  for (int b = chain->blocks; b < full_blocks; ++b) {
    const int32_t* t = tokens.data() + static_cast<size_t>(b) * block_size_;
    const uint64_t h = BlockHash(chain->hash, t);
    // An equal block is cached already (another sequence prefilled the same prefix alongside):
    // this one stays private, and so do the ones after it, whose parent it would be.
    if (index_.count(h) > 0) {
      chain->broken = true;
      return;
    }
    const int32_t block = blocks[b];
    assert(entries_.count(block) == 0);
    Entry e;
    e.hash = h;
    e.serial = next_serial_++;
    if (b > 0) {
      e.parent = blocks[b - 1];
      e.parent_serial = entries_.at(e.parent).serial;
    }
    e.tokens.assign(t, t + block_size_);
    e.refs = 1;
    entries_.emplace(block, std::move(e));
    index_.emplace(h, block);
    chain->blocks = b + 1;
    chain->hash = h;
  }
}

void PrefixCache::Release(std::vector<int32_t>* blocks) {
  std::vector<int32_t> unshared;
  for (auto it = blocks->rbegin(); it != blocks->rend(); ++it) {
    auto e = entries_.find(*it);
    if (e == entries_.end()) {
      unshared.push_back(*it);
    } else if (--e->second.refs == 0) {
      // The tail of a prefix is released first and so evicted first: what stays cached is always
      // a whole prefix that Match can reach.
      lru_.push_front(*it);
      e->second.lru = lru_.begin();
    }
  }
  std::reverse(unshared.begin(), unshared.end());  // KvCachePool::Free's own order for a table
  pool_.Free(&unshared);
  blocks->clear();
}

}  // namespace tpserve
