// Decode attention, one thread: the query heads of each GQA group in one call (AttentionHeads, as
// the engine runs them) against one call per head (AttentionHead), interleaved in one run, over a
// paged f32 KV cache of `seqs` sequences (the defaults: 4 MB, twice this CPU's L2, as the KV of a
// decode step comes from memory after its weights), and the grouped call over the same values in a
// bf16 cache. Reports us per layer and the ratios (per-head / grouped, f32 / bf16 cache).
//   attention_bench [--seqs 64] [--npos 64] [--kv-heads 2] [--group 2] [--head-dim 64] [--reps 15]
//   -> one JSON line
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cpu/kernels.h"

namespace k = tpserve::kernels;

int main(int argc, char** argv) {
  int seqs = 64, npos = 64, nkv = 2, g = 2, d = 64, reps = 15;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (a == "--seqs")
      seqs = v;
    else if (a == "--npos")
      npos = v;
    else if (a == "--kv-heads")
      nkv = v;
    else if (a == "--group")
      g = v;
    else if (a == "--head-dim")
      d = v;
    else if (a == "--reps")
      reps = v;
    else {
      std::cerr << "unknown flag " << a << "\n";
      return 2;
    }
  }
  if (g < 1 || g > 64 || seqs < 1 || npos < 1 || nkv < 1 || d < 1 || reps < 1) {
    std::cerr << "--group must be 1..64, the other values at least 1\n";
    return 2;
  }
  constexpr int kBlock = 16;
  const int nblocks = (npos + kBlock - 1) / kBlock;
  const size_t block_floats = static_cast<size_t>(kBlock) * d;
  // Each (sequence, KV head) owns its K and V blocks; blocks of all of them interleaved in the pool.
  const size_t owners = static_cast<size_t>(seqs) * nkv;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> pool(owners * nblocks * 2 * block_floats), q(owners * g * d), out(q.size());
  for (float& x : pool) x = uni(rng);
  for (float& x : q) x = uni(rng);
  // The same values in a bf16 pool (the default cache for bf16 weights), same layout.
  std::vector<uint16_t> pool16(pool.size());
  for (size_t i = 0; i < pool.size(); ++i) pool16[i] = k::F32ToBf16(pool[i]);
  std::vector<const float*> kb(owners * nblocks), vb(owners * nblocks);
  std::vector<const uint16_t*> kb16(owners * nblocks), vb16(owners * nblocks);
  for (size_t o = 0; o < owners; ++o) {
    for (int b = 0; b < nblocks; ++b) {
      const size_t slot = (static_cast<size_t>(b) * owners + o) * 2;
      kb[o * nblocks + b] = &pool[slot * block_floats];
      vb[o * nblocks + b] = &pool[(slot + 1) * block_floats];
      kb16[o * nblocks + b] = &pool16[slot * block_floats];
      vb16[o * nblocks + b] = &pool16[(slot + 1) * block_floats];
    }
  }
  std::vector<float> scratch(k::AttentionScratchFloats(g, npos, d));
  const float scale = 0.125f;
  enum Mode { kGrouped, kPerHead, kGroupedBf16 };
  auto layer = [&](Mode mode) {
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t o = 0; o < owners; ++o) {
      const float* qs[64];
      float* outs[64];
      for (int h = 0; h < g; ++h) {
        qs[h] = &q[(o * g + h) * d];
        outs[h] = &out[(o * g + h) * d];
      }
      if (mode == kGrouped) {
        k::AttentionHeads(qs, g, &kb[o * nblocks], &vb[o * nblocks], npos, kBlock, d, scale, scratch.data(),
                          outs);
      } else if (mode == kGroupedBf16) {
        k::AttentionHeads(qs, g, &kb16[o * nblocks], &vb16[o * nblocks], npos, kBlock, d, scale,
                          scratch.data(), outs);
      } else {
        for (int h = 0; h < g; ++h)
          k::AttentionHead(qs[h], &kb[o * nblocks], &vb[o * nblocks], npos, kBlock, d, scale, scratch.data(),
                           outs[h]);
      }
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e6;
  };
  std::vector<double> grouped, single, ratio, bf16, bf16_ratio;
  for (int r = 0; r < reps; ++r) {
    const double a = layer(kGrouped), b = layer(kPerHead), c = layer(kGroupedBf16);
    grouped.push_back(a);
    single.push_back(b);
    ratio.push_back(b / a);
    bf16.push_back(c);
    bf16_ratio.push_back(a / c);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  nlohmann::json j = {{"seqs", seqs},
                      {"npos", npos},
                      {"kv_heads", nkv},
                      {"group", g},
                      {"head_dim", d},
                      {"grouped_us_per_layer", median(grouped)},
                      {"per_head_us_per_layer", median(single)},
                      {"speedup", median(ratio)},
                      {"grouped_bf16_kv_us_per_layer", median(bf16)},
                      {"bf16_kv_speedup", median(bf16_ratio)}};
  std::cout << j.dump() << "\n";
}
