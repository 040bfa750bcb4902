// Element-wise, attention and sampling (argmax) kernels (portable, cloned for AVX-512 and, for
// decode attention, AVX2 + FMA; not on the weight-bandwidth-critical path).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/dtype.h"
#include "cpu/kernels.h"

namespace tpserve::kernels {

// Cloned for AVX-512 and the baseline ISA like the loops further down.
__attribute__((target_clones("avx512f", "default"))) void RmsNorm(const float* x, const float* weight, int n,
                                                                  float eps, float* y) {
  // double: the sum of squares over hidden sizes of thousands loses bits in f32. Eight partial
  // sums in a fixed order, so the loop vectorizes and the result does not depend on the ISA.
  double part[8] = {};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) part[l] += static_cast<double>(x[i + l]) * x[i + l];
  }
  for (; i < n; ++i) part[i % 8] += static_cast<double>(x[i]) * x[i];
  double ss = 0.0;
  for (double p : part) ss += p;
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
  for (i = 0; i < n; ++i) y[i] = x[i] * inv * weight[i];
}

// The residual add before a norm, vectorized in the AVX-512 clone (the engine is built for the
// baseline ISA, where the same loop ran 4 floats at a time). Each element is one float add, so the
// result does not depend on the ISA.
__attribute__((target_clones("avx512f", "default"))) void AddInPlace(float* x, const float* add, int n) {
  for (int i = 0; i < n; ++i) x[i] += add[i];
}

void RopeRotateHalf(float* x, int head_dim, const float* cos_sin) {
  const int half = head_dim / 2;
  const float* c = cos_sin;
  const float* s = cos_sin + half;
  for (int i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * c[i] - b * s[i];
    x[i + half] = b * c[i] + a * s[i];
  }
}

namespace {
// exp(t) = 2^j * p(r), j = round(t / ln 2), r = t - j ln 2 (ln 2 split in two so r is exact),
// p the degree-6 Taylor polynomial on |r| <= ln 2 / 2. t is clamped to [-87, 88] (finite 2^j).
inline float ExpPoly(float t) {
  constexpr float kLog2e = 1.44269504f, kLn2Hi = 0.693145752f, kLn2Lo = 1.42860677e-6f;
  t = std::min(std::max(t, -87.0f), 88.0f);
  const float j = std::nearbyint(t * kLog2e);
  const float r = (t - j * kLn2Hi) - j * kLn2Lo;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(j) + 127) << 23);
}
}  // namespace

// The loops below are cloned for AVX-512 and the baseline ISA (GCC picks one at load time); both
// vectorize.
__attribute__((target_clones("avx512f", "default"))) float ExpShiftedSum(float* x, int n, float shift) {
  for (int i = 0; i < n; ++i) x[i] = x[i] - shift < -87.0f ? 0.0f : ExpPoly(x[i] - shift);
  // 16 partial sums: a fixed order the compiler can vectorize (a single running sum cannot be).
  float part[16] = {};
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int l = 0; l < 16; ++l) part[l] += x[i + l];
  }
  for (; i < n; ++i) part[i % 16] += x[i];
  float sum = 0.0f;
  for (float p : part) sum += p;
  return sum;
}

namespace {
// x *= scale, returning the largest x: 16 running maxima in a vector (the maximum does not depend
// on the order; a single running one keeps the compiler from vectorizing, and so did an array).
__attribute__((target_clones("avx512f", "default"))) float ScaleAndMax(float* x, int n, float scale) {
  using V16 = float __attribute__((vector_size(64)));
  V16 m = V16{} - INFINITY;
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    V16 v;
    std::memcpy(&v, x + i, sizeof(v));
    v *= scale;
    std::memcpy(x + i, &v, sizeof(v));
    m = v > m ? v : m;
  }
  float mx = -INFINITY;
  for (; i < n; ++i) {
    x[i] *= scale;
    mx = std::max(mx, x[i]);
  }
  for (int l = 0; l < 16; ++l) mx = std::max(mx, m[l]);
  return mx;
}

__attribute__((target_clones("avx512f", "default"))) void Scale(float* x, int n, float s) {
  for (int i = 0; i < n; ++i) x[i] *= s;
}
}  // namespace

void ScaledSoftmax(float* x, int n, float scale) {
  const float mx = ScaleAndMax(x, n, scale);
  Scale(x, n, 1.0f / ExpShiftedSum(x, n, mx));
}

// One pass: 16 lanes, each with its running maximum and the first index where it was reached
// (strictly greater replaces, so a lane keeps its earliest index); then the lowest index among
// the lanes that hold the overall maximum, then the tail, whose indices come after all of those.
__attribute__((target_clones("avx512f", "default"))) int ArgMax(const float* x, int n) {
  using V16 = float __attribute__((vector_size(64)));
  using I16 = int32_t __attribute__((vector_size(64)));
  V16 m = V16{} - INFINITY;
  I16 at = I16{}, idx = I16{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  int i = 0;
  for (; i <= n - 16; i += 16, idx += 16) {
    V16 v;
    std::memcpy(&v, x + i, sizeof(v));
    const I16 greater = v > m;
    m = greater ? v : m;
    at = greater ? idx : at;
  }
  float mx = -INFINITY;
  int best = -1;
  for (int l = 0; l < 16; ++l) {
    if (m[l] > mx || (m[l] == mx && best >= 0 && at[l] < best)) {
      mx = m[l];
      best = at[l];
    }
  }
  for (; i < n; ++i) {
    if (x[i] > mx) {
      mx = x[i];
      best = i;
    }
  }
  if (best >= 0) return best;
  for (i = 0; i < n; ++i) {  // nothing above -infinity: the first -infinity, if any
    if (x[i] == mx) return i;
  }
  return 0;
}

__attribute__((target_clones("avx512f", "default"))) void SiluMul(const float* gate, const float* up, int n,
                                                                  float* out) {
  for (int i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + ExpPoly(-gate[i])) * up[i];
}

namespace {
using V16 = float __attribute__((vector_size(64)));
using U16x16 = uint16_t __attribute__((vector_size(32)));
using U32x16 = uint32_t __attribute__((vector_size(64)));

// 16 cached K/V elements as floats: f32 as they are, bf16 widened exactly (its bits are the top
// half of an f32's), so the arithmetic after the load is the same for both cache dtypes.
// (Out-parameters: a 64-byte vector return would change the ABI of the non-AVX-512 clones.)
__attribute__((always_inline)) inline void Load16(const float* p, V16* v) {
  std::memcpy(v, p, sizeof(V16));
}
__attribute__((always_inline)) inline void Load16(const uint16_t* p, V16* v) {
  U16x16 h;
  std::memcpy(&h, p, sizeof(h));
  // Element by element rather than __builtin_convertvector, which GCC 12 widens in two halves
  // (vpmovzxwd to ymm twice, extract, insert); in the AVX-512 clone this form is one vpmovzxwd
  // from memory to zmm.
  U32x16 w = {h[0], h[1], h[2],  h[3],  h[4],  h[5],  h[6],  h[7],
              h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]};
  w <<= 16;
  std::memcpy(v, &w, sizeof(V16));
}
inline float ToF32(float x) {
  return x;
}
inline float ToF32(uint16_t x) {
  return Bf16ToF32(x);
}

// out += w[0] * v[0] + ... + w[rows - 1] * v[rows - 1] over d floats, the rows (d apart) added one
// after another into each element, and each element always by the same operation, whatever the
// alignment and the rows per call: a result depends neither on how the rows are split into calls
// (the paged blocks) nor on where they lie. (A plain loop let the compiler peel for alignment, and
// its scalar and vector parts rounded differently: at head_dim 8 the output changed with the block
// size.) 64 outputs at a time stay in four AVX-512 registers (GCC vector types; the baseline clone
// spills them, being only a fallback); the last d % 64 go through std::fma.
template <class T>
__attribute__((always_inline)) inline void AccumulateRowsT(const float* w, const T* v, int rows, int d,
                                                           float* out) {
  constexpr size_t kV = sizeof(V16);
  int i0 = 0;
  for (; i0 + 64 <= d; i0 += 64) {  // four named sums: GCC keeps an array of them in memory
    V16 s0, s1, s2, s3;
    std::memcpy(&s0, out + i0, kV);
    std::memcpy(&s1, out + i0 + 16, kV);
    std::memcpy(&s2, out + i0 + 32, kV);
    std::memcpy(&s3, out + i0 + 48, kV);
    for (int p = 0; p < rows; ++p) {
      const T* x = v + static_cast<size_t>(p) * d + i0;
      const float a = w[p];
      V16 x0, x1, x2, x3;
      Load16(x, &x0);
      Load16(x + 16, &x1);
      Load16(x + 32, &x2);
      Load16(x + 48, &x3);
      s0 += a * x0;  // contracted to a fused multiply-add where the clone has FMA
      s1 += a * x1;
      s2 += a * x2;
      s3 += a * x3;
    }
    std::memcpy(out + i0, &s0, kV);
    std::memcpy(out + i0 + 16, &s1, kV);
    std::memcpy(out + i0 + 32, &s2, kV);
    std::memcpy(out + i0 + 48, &s3, kV);
  }
  for (int p = 0; p < rows; ++p) {
    for (int i = i0; i < d; ++i) out[i] = std::fma(w[p], ToF32(v[static_cast<size_t>(p) * d + i]), out[i]);
  }
}

// Lane sums of v[0..n), v[j]'s into s[j] (lanes never mix between keys, so v[n..16) do not matter), by the
// same tree for every j: lanes i and i + 8, then i and i + 4, i and i + 2, i and i + 1 (the shuffles only
// route values). A key's score thus does not depend on which of the 16 slots it takes, so neither on the
// block size nor on its neighbours.
__attribute__((always_inline)) inline void SumLanes16(const V16* v, int n, float* s) {
  V16 u[8], w[4], x[2];
  for (int m = 0; m < 8; ++m) {
    u[m] = __builtin_shufflevector(v[2 * m], v[2 * m + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22,
                                   23) +
           __builtin_shufflevector(v[2 * m], v[2 * m + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28,
                                   29, 30, 31);
  }
  for (int m = 0; m < 4; ++m) {
    w[m] = __builtin_shufflevector(u[2 * m], u[2 * m + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25,
                                   26, 27) +
           __builtin_shufflevector(u[2 * m], u[2 * m + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29,
                                   30, 31);
  }
  for (int m = 0; m < 2; ++m) {
    x[m] = __builtin_shufflevector(w[2 * m], w[2 * m + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25,
                                   28, 29) +
           __builtin_shufflevector(w[2 * m], w[2 * m + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27,
                                   30, 31);
  }
  const V16 sums =
      __builtin_shufflevector(x[0], x[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
      __builtin_shufflevector(x[0], x[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  // n <= 16 floats in two fixed-size copies that may overlap: a memcpy of 4n bytes (or a loop,
  // which GCC turns into one) became `rep movsq`, whose start-up cost ~10 % of decode attention.
  float all[16];
  std::memcpy(all, &sums, sizeof(all));
  if (n >= 8) {
    std::memcpy(s, all, 32);
    std::memcpy(s + n - 8, all + n - 8, 32);
  } else if (n >= 4) {
    std::memcpy(s, all, 16);
    std::memcpy(s + n - 4, all + n - 4, 16);
  } else if (n >= 2) {
    std::memcpy(s, all, 8);
    std::memcpy(s + n - 2, all + n - 2, 8);
  } else if (n == 1) {
    s[0] = all[0];
  }
}

// One key's 16 lane sums of q * key over d in chunks of 16 (the last chunk reads the key only up
// to d; q is zero-padded to a multiple of 16).
template <class T>
__attribute__((always_inline)) inline void KeyLanes(const float* q, const T* key, int d, V16* lanes) {
  constexpr size_t kV = sizeof(V16);
  V16 a{};
  int c = 0;
  for (; c + 16 <= d; c += 16) {
    V16 qc, kc;
    std::memcpy(&qc, q + c, kV);
    Load16(key + c, &kc);
    a += qc * kc;  // contracted to a fused multiply-add where the clone has FMA
  }
  if (c < d) {
    V16 qc, kc{};
    std::memcpy(&qc, q + c, kV);
    for (int i = c; i < d; ++i) kc[i - c] = ToF32(key[i]);
    a += qc * kc;
  }
  *lanes = a;
}

// s[j] = q . keys[j] for j < n <= 16 keys (rows d apart): per key KeyLanes, then SumLanes16, so
// each score is one fixed sequence of operations. Four keys at a time in named sums (four
// independent chains in registers; GCC keeps an array of sums in memory).
template <class T>
__attribute__((always_inline)) inline void KeyScores16T(const float* q, const T* keys, int n, int d,
                                                        float* s) {
  constexpr size_t kV = sizeof(V16);
  // Only the first n lanes are needed (SumLanes16 never mixes keys); the rest get defined zeros.
  // (Zeroing all 16, a 1 KB memset, cost ~10 % of decode attention: 1.04-1.28x in attention_bench.)
  V16 lanes[16];
  for (int t = n; t < 16; ++t) lanes[t] = V16{};
  int j = 0;
  if (d % 16 == 0) {
    for (; j + 4 <= n; j += 4) {
      const T* k0 = keys + static_cast<size_t>(j) * d;
      const T *k1 = k0 + d, *k2 = k1 + d, *k3 = k2 + d;
      V16 a0{}, a1{}, a2{}, a3{};
      for (int c = 0; c < d; c += 16) {  // KeyLanes for four keys
        V16 qc, x0, x1, x2, x3;
        std::memcpy(&qc, q + c, kV);
        Load16(k0 + c, &x0);
        Load16(k1 + c, &x1);
        Load16(k2 + c, &x2);
        Load16(k3 + c, &x3);
        a0 += qc * x0;
        a1 += qc * x1;
        a2 += qc * x2;
        a3 += qc * x3;
      }
      lanes[j] = a0;
      lanes[j + 1] = a1;
      lanes[j + 2] = a2;
      lanes[j + 3] = a3;
    }
  }
  for (; j < n; ++j) KeyLanes(q, keys + static_cast<size_t>(j) * d, d, &lanes[j]);
  SumLanes16(lanes, n, s);
}

// AttentionHeads over either cache dtype: the public overloads below are cloned per ISA, and this
// body, with the key and value loops, is inlined into each clone (no per-block dispatch).
template <class T>
__attribute__((always_inline)) inline void AttentionHeadsT(const float* const* q, int g,
                                                           const T* const* k_blocks, const T* const* v_blocks,
                                                           int npos, int block_size, int d, float scale,
                                                           float* scratch, float* const* out) {
  const int dp = (d + 15) / 16 * 16;
  float* qpad = scratch + static_cast<size_t>(g) * npos;  // (g, dp): the queries, zero-padded
  for (int h = 0; h < g; ++h) {
    std::copy(q[h], q[h] + d, qpad + static_cast<size_t>(h) * dp);
    std::fill(qpad + static_cast<size_t>(h) * dp + d, qpad + static_cast<size_t>(h + 1) * dp, 0.0f);
  }
  auto scores = [&](int h) { return scratch + static_cast<size_t>(h) * npos; };
  const int nblocks = (npos + block_size - 1) / block_size;
  auto rows_in = [&](int b) { return std::min(block_size, npos - b * block_size); };
  // 16 keys at a time for every head of the group: the keys come from memory once, then from L1.
  for (int b = 0; b < nblocks; ++b) {
    const int p = b * block_size, n_in = rows_in(b);
    for (int j = 0; j < n_in; j += 16) {
      const T* keys = k_blocks[b] + static_cast<size_t>(j) * d;
      for (int h = 0; h < g; ++h) {
        KeyScores16T(qpad + static_cast<size_t>(h) * dp, keys, std::min(16, n_in - j), d, scores(h) + p + j);
      }
    }
  }
  for (int h = 0; h < g; ++h) {
    ScaledSoftmax(scores(h), npos, scale);
    std::fill(out[h], out[h] + d, 0.0f);
  }
  for (int b = 0; b < nblocks; ++b) {  // a block's values, likewise once from memory
    for (int h = 0; h < g; ++h)
      AccumulateRowsT(scores(h) + b * block_size, v_blocks[b], rows_in(b), d, out[h]);
  }
}
}  // namespace

size_t AttentionScratchFloats(int g, int npos, int d) {
  return static_cast<size_t>(g) * (npos + (d + 15) / 16 * 16);
}

__attribute__((target_clones("avx512f", "arch=haswell", "default"))) void AttentionHeads(
    const float* const* q, int g, const float* const* k_blocks, const float* const* v_blocks, int npos,
    int block_size, int d, float scale, float* scratch, float* const* out) {
  AttentionHeadsT(q, g, k_blocks, v_blocks, npos, block_size, d, scale, scratch, out);
}

__attribute__((target_clones("avx512f", "arch=haswell", "default"))) void AttentionHeads(
    const float* const* q, int g, const uint16_t* const* k_blocks, const uint16_t* const* v_blocks, int npos,
    int block_size, int d, float scale, float* scratch, float* const* out) {
  AttentionHeadsT(q, g, k_blocks, v_blocks, npos, block_size, d, scale, scratch, out);
}

void AttentionHead(const float* q, const float* const* k_blocks, const float* const* v_blocks, int npos,
                   int block_size, int d, float scale, float* scratch, float* out) {
  AttentionHeads(&q, 1, k_blocks, v_blocks, npos, block_size, d, scale, scratch, &out);
}

}  // namespace tpserve::kernels
