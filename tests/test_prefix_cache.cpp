// PrefixCache's bookkeeping on a small pool (blocks of 4 tokens): what Match finds, what it
// shares, what Allocate may evict and in which order, and that every block comes back.
#include <gtest/gtest.h>

#include <numeric>

#include "engine/prefix_cache.h"

namespace tpserve {
namespace {

class PrefixCacheTest : public ::testing::Test {
 protected:
  static constexpr int kBlocks = 10, kBlockSize = 4;
  PrefixCacheTest() : pool_(Config(), Shard(), kBlocks, kBlockSize) {}
  static ModelConfig Config() {
    ModelConfig c;
    c.head_dim = 8;
    return c;
  }
  static RankShard Shard() {
    RankShard s;
    s.layers.push_back(LayerShard{{0, 1}, {0, 1}, {0, 8}});
    return s;
  }
  // A sequence that computed `tokens` (all of them in its KV) and cached its full blocks.
  std::vector<int32_t> Computed(PrefixCache& cache, const std::vector<int32_t>& tokens) {
    std::vector<int32_t> blocks;
    PrefixCache::Chain chain;
    const int shared = cache.Match(tokens, static_cast<int>(tokens.size()) - 1, &blocks, &chain);
    const int need =
        static_cast<int>(KvCachePool::BlocksFor(static_cast<int64_t>(tokens.size()), kBlockSize));
    EXPECT_TRUE(cache.Allocate(need - shared, &blocks));
    cache.Register(blocks, tokens, static_cast<int>(tokens.size()) / kBlockSize, &chain);
    return blocks;
  }
  static std::vector<int32_t> Tokens(int n, int first = 100) {
    std::vector<int32_t> t(n);
    std::iota(t.begin(), t.end(), first);
    return t;
  }
  KvCachePool pool_;
};

TEST_F(PrefixCacheTest, MatchesWholeCachedBlocksOfAnEqualPrefixOnly) {
  PrefixCache cache(pool_, true);
  std::vector<int32_t> a = Computed(cache, Tokens(12));  // 3 full blocks
  EXPECT_EQ(cache.cached_blocks(), 3);
  const std::vector<int32_t> a_blocks = a;
  cache.Release(&a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(cache.available_blocks(), kBlocks);  // cached but unreferenced blocks can be taken

  std::vector<int32_t> blocks;
  PrefixCache::Chain chain;
  // The same 12 tokens, but the last one must be computed: 2 blocks.
  EXPECT_EQ(cache.Match(Tokens(12), 11, &blocks, &chain), 2);
  EXPECT_EQ(blocks, (std::vector<int32_t>{a_blocks[0], a_blocks[1]}));
  EXPECT_EQ(chain.blocks, 2);
  EXPECT_EQ(cache.available_blocks(), kBlocks - 2);  // shared blocks are taken
  cache.Release(&blocks);
  // A prompt that differs in its 6th token: block 0 only.
  std::vector<int32_t> t = Tokens(12);
  t[5] = 7;
  EXPECT_EQ(cache.Match(t, 11, &blocks, &chain), 1);
  cache.Release(&blocks);
  // Block 1's tokens behind another block 0: nothing (a prefix, never a lookalike block).
  t = Tokens(12);
  t[0] = 7;
  EXPECT_EQ(cache.Match(t, 11, &blocks, &chain), 0);
  EXPECT_TRUE(blocks.empty());
  EXPECT_EQ(cache.available_blocks(), kBlocks);
}

TEST_F(PrefixCacheTest, SharedBlocksAreNeverEvictedAndTheTailGoesFirst) {
  PrefixCache cache(pool_, true);
  std::vector<int32_t> a = Computed(cache, Tokens(12));
  const std::vector<int32_t> a_blocks = a;
  cache.Release(&a);
  std::vector<int32_t> b;
  PrefixCache::Chain chain;
  ASSERT_EQ(cache.Match(Tokens(9), 8, &b, &chain), 2);  // b shares a's first two blocks
  // 7 free blocks and a's unreferenced third: 8 can be had, by evicting the third.
  std::vector<int32_t> c;
  EXPECT_FALSE(cache.Allocate(9, &c));
  EXPECT_TRUE(c.empty());
  EXPECT_TRUE(cache.Allocate(8, &c));
  EXPECT_NE(std::find(c.begin(), c.end(), a_blocks[2]), c.end());
  EXPECT_EQ(cache.cached_blocks(), 2);
  EXPECT_EQ(cache.available_blocks(), 0);
  cache.Release(&c);
  cache.Release(&b);
  EXPECT_EQ(cache.available_blocks(), kBlocks);
  // Eviction from the tail of a prefix: with one block wanted beyond the free ones, a's second
  // block goes, and the first one still matches.
  std::vector<int32_t> d;
  ASSERT_TRUE(cache.Allocate(kBlocks - 1, &d));
  EXPECT_EQ(cache.cached_blocks(), 1);
  std::vector<int32_t> e;
  EXPECT_EQ(cache.Match(Tokens(12), 11, &e, &chain), 1);
  EXPECT_EQ(e, (std::vector<int32_t>{a_blocks[0]}));
  cache.Release(&e);
  cache.Release(&d);
  EXPECT_EQ(cache.available_blocks(), kBlocks);
  EXPECT_EQ(pool_.free_blocks() + cache.cached_blocks(), kBlocks);
}

TEST_F(PrefixCacheTest, AnEqualPrefixComputedTwiceIsCachedOnce) {
  PrefixCache cache(pool_, true);
  // Two sequences prefilled the same 8 tokens side by side, each in blocks of its own.
  std::vector<int32_t> a, b;
  PrefixCache::Chain ca, cb;
  ASSERT_TRUE(cache.Allocate(2, &a));
  ASSERT_TRUE(cache.Allocate(2, &b));
  cache.Register(a, Tokens(8), 2, &ca);
  cache.Register(b, Tokens(8), 2, &cb);
  EXPECT_EQ(ca.blocks, 2);
  EXPECT_TRUE(cb.broken);
  EXPECT_EQ(cache.cached_blocks(), 2);
  cache.Release(&b);  // b's blocks were its own: free again, not cached
  EXPECT_EQ(pool_.free_blocks(), kBlocks - 2);
  cache.Release(&a);
  EXPECT_EQ(cache.available_blocks(), kBlocks);
}

TEST_F(PrefixCacheTest, DisabledItIsThePlainFreeList) {
  PrefixCache cache(pool_, false);
  std::vector<int32_t> a = Computed(cache, Tokens(12));
  EXPECT_EQ(cache.cached_blocks(), 0);
  cache.Release(&a);
  std::vector<int32_t> blocks;
  PrefixCache::Chain chain;
  EXPECT_EQ(cache.Match(Tokens(12), 11, &blocks, &chain), 0);
  EXPECT_EQ(pool_.free_blocks(), kBlocks);
}

}  // namespace
}  // namespace tpserve
