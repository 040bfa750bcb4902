// Element-wise, attention and sampling (argmax) kernels (portable, cloned for AVX-512 and, for
// decode attention, AVX2 + FMA; not on the weight-bandwidth-critical path).
#include <xmmintrin.h>

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
using U32x16 = uint32_t __attribute__((vector_size(64)));

// 32 cached K/V elements as floats, split into the even ones (e, lane i: element 2i) and the odd
// ones (o: element 2i + 1): bf16 by a shift and a mask of each 32-bit pair (its bits are the top
// half of an f32's: exact), f32 by two shuffles, so the arithmetic after the load is the same for
// both cache dtypes. For bf16 that is one load and two bit operations per 32 elements, where
// widening 16 in order takes a shuffle and a shift per 16. (Out-parameters: a 64-byte vector
// return would change the ABI of the non-AVX-512 clones.)
__attribute__((always_inline)) inline void LoadSplit32(const uint16_t* p, V16* e, V16* o) {
  U32x16 w;
  std::memcpy(&w, p, sizeof(w));
  *e = reinterpret_cast<V16>(w << 16);  // (a GCC vector cast: the same bits)
  *o = reinterpret_cast<V16>(w & 0xffff0000u);
}
__attribute__((always_inline)) inline void LoadSplit32(const float* p, V16* e, V16* o) {
  V16 lo, hi;
  std::memcpy(&lo, p, sizeof(V16));
  std::memcpy(&hi, p + 16, sizeof(V16));
  *e = __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  *o = __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
// The same for the last n < 32 elements of a row, read only up to n (the rest zeros): 16 (head
// dims 16 past a multiple of 32, such as 80) by one vector load, others element by element.
__attribute__((always_inline)) inline void LoadSplit16(const uint16_t* p, V16* e, V16* o) {
  U32x16 w{};
  std::memcpy(&w, p, 32);
  *e = reinterpret_cast<V16>(w << 16);  // (a GCC vector cast: the same bits)
  *o = reinterpret_cast<V16>(w & 0xffff0000u);
}
__attribute__((always_inline)) inline void LoadSplit16(const float* p, V16* e, V16* o) {
  V16 lo;
  std::memcpy(&lo, p, sizeof(V16));
  *e = __builtin_shufflevector(lo, V16{}, 0, 2, 4, 6, 8, 10, 12, 14, 16, 16, 16, 16, 16, 16, 16, 16);
  *o = __builtin_shufflevector(lo, V16{}, 1, 3, 5, 7, 9, 11, 13, 15, 16, 16, 16, 16, 16, 16, 16, 16);
}
template <class T>
__attribute__((always_inline)) inline void LoadSplitTail(const T* p, int n, V16* e, V16* o) {
  if (n == 16) return LoadSplit16(p, e, o);
  T row[32] = {};
  for (int i = 0; i < n; ++i) row[i] = p[i];
  LoadSplit32(row, e, o);
}
// A row's next 32-element chunk, `left` elements before its end.
template <class T>
__attribute__((always_inline)) inline void LoadChunk(const T* p, int left, V16* e, V16* o) {
  if (left >= 32) {
    LoadSplit32(p, e, o);
  } else {
    LoadSplitTail(p, left, e, o);
  }
}
inline float ToF32(float x) {
  return x;
}
inline float ToF32(uint16_t x) {
  return Bf16ToF32(x);
}

// Decode attention's layout of a head-sized vector (the queries and the output sums): per
// 32-element chunk its 16 even elements, then its 16 odd ones, as LoadSplit32 splits the cache's
// rows; zeros past d. dp = d rounded up to 32.
void SplitRow(const float* x, int d, int dp, float* split) {
  for (int c = 0; c < dp; c += 32) {
    for (int i = 0; i < 16; ++i) {
      split[c + i] = c + 2 * i < d ? x[c + 2 * i] : 0.0f;
      split[c + 16 + i] = c + 2 * i + 1 < d ? x[c + 2 * i + 1] : 0.0f;
    }
  }
}
void UnsplitRow(const float* split, int d, float* x) {
  for (int i = 0; i < d; ++i) x[i] = split[i / 32 * 32 + i % 2 * 16 + i % 32 / 2];
}

// kChunks (1 or 2) 32-element chunks of AccumulateRowsT (below), from element c of each row (rows
// d apart), into their split sums per head (os0, and os1 for a second head), in named sums.
// kHalf: one chunk of which only the first 16 elements exist (LoadSplit16).
template <class T, int H, int kChunks, bool kHalf>
__attribute__((always_inline)) inline void AccumulateChunks(const float* w0, const float* w1, const T* v,
                                                            int rows, int d, int c, float* os0, float* os1) {
  static_assert(kChunks == 1 || kChunks == 2);
  static_assert(!kHalf || kChunks == 1);
  constexpr size_t kV = sizeof(V16);
  float* s0 = os0 + c;
  float* s1 = nullptr;
  V16 a0, a1, a2{}, a3{}, b0{}, b1{}, b2{}, b3{};
  std::memcpy(&a0, s0, kV);
  std::memcpy(&a1, s0 + 16, kV);
  if constexpr (kChunks == 2) {
    std::memcpy(&a2, s0 + 32, kV);
    std::memcpy(&a3, s0 + 48, kV);
  }
  if constexpr (H == 2) {
    s1 = os1 + c;
    std::memcpy(&b0, s1, kV);
    std::memcpy(&b1, s1 + 16, kV);
    if constexpr (kChunks == 2) {
      std::memcpy(&b2, s1 + 32, kV);
      std::memcpy(&b3, s1 + 48, kV);
    }
  }
  for (int p = 0; p < rows; ++p) {
    const T* x = v + static_cast<size_t>(p) * d + c;
    V16 e0, o0, e1{}, o1{};
    if constexpr (kHalf) {
      LoadSplit16(x, &e0, &o0);
    } else {
      LoadSplit32(x, &e0, &o0);
    }
    if constexpr (kChunks == 2) LoadSplit32(x + 32, &e1, &o1);
    const float s = w0[p];
    a0 += s * e0;  // contracted to a fused multiply-add where the clone has FMA
    a1 += s * o0;
    if constexpr (kChunks == 2) {
      a2 += s * e1;
      a3 += s * o1;
    }
    if constexpr (H == 2) {
      const float t = w1[p];
      b0 += t * e0;
      b1 += t * o0;
      if constexpr (kChunks == 2) {
        b2 += t * e1;
        b3 += t * o1;
      }
    }
  }
  std::memcpy(s0, &a0, kV);
  std::memcpy(s0 + 16, &a1, kV);
  if constexpr (kChunks == 2) {
    std::memcpy(s0 + 32, &a2, kV);
    std::memcpy(s0 + 48, &a3, kV);
  }
  if constexpr (H == 2) {
    std::memcpy(s1, &b0, kV);
    std::memcpy(s1 + 16, &b1, kV);
    if constexpr (kChunks == 2) {
      std::memcpy(s1 + 32, &b2, kV);
      std::memcpy(s1 + 48, &b3, kV);
    }
  }
}

// os[h] += w[h][0] * v[0] + ... + w[h][rows - 1] * v[rows - 1] for H heads (1 or 2) over d
// elements in the split layout (SplitRow), the rows (d apart) added one after another into each
// element, and each element always by the same operation (a fused multiply-add where the clone
// has FMA), whatever the alignment, the rows per call and the other head: a result depends
// neither on how the rows are split into calls (the paged blocks) nor on where they lie, nor on
// which heads share the call. Each row is loaded and split once for both heads. 64 elements at
// a time (AccumulateChunks; the AVX2 and baseline clones spill the sums, being only fallbacks),
// then a last whole chunk of 32, then a last half chunk (head dims such as 80) or else the last
// d % 32 elements one by one.
template <class T, int H>
__attribute__((always_inline)) inline void AccumulateRowsT(const float* w0, const float* w1, const T* v,
                                                           int rows, int d, float* os0, float* os1) {
  int c = 0;
  for (; c + 64 <= d; c += 64) AccumulateChunks<T, H, 2, false>(w0, w1, v, rows, d, c, os0, os1);
  if (c + 32 <= d) {
    AccumulateChunks<T, H, 1, false>(w0, w1, v, rows, d, c, os0, os1);
    c += 32;
  }
  if (d - c == 16) {  // a last half chunk: lanes 8-15 of its sums add zeros
    AccumulateChunks<T, H, 1, true>(w0, w1, v, rows, d, c, os0, os1);
    return;
  }
  for (int p = 0; p < rows; ++p) {  // the last chunk, element by element, into its split places
    for (int i = c; i < d; ++i) {
      const int at = c + (i - c) % 2 * 16 + (i - c) / 2;
      const float x = ToF32(v[static_cast<size_t>(p) * d + i]);
      os0[at] = std::fma(w0[p], x, os0[at]);
      if constexpr (H == 2) os1[at] = std::fma(w1[p], x, os1[at]);
    }
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

// One key chunk (split: e, o) into its lane sums: *a += qe0 * e + qo0 * o, and for a second head
// *b likewise with qe1, qo1.
template <int H>
__attribute__((always_inline)) inline void AddKeyChunk(const V16& e, const V16& o, const V16& qe0,
                                                       const V16& qo0, const V16& qe1, const V16& qo1, V16* a,
                                                       V16* b) {
  *a += qe0 * e;  // contracted to a fused multiply-add where the clone has FMA
  *a += qo0 * o;
  if constexpr (H == 2) {
    *b += qe1 * e;
    *b += qo1 * o;
  }
}

// The 16 lane sums of q . key for NK keys (1 or 4; rows d apart) and H query heads (1 or 2; qs0,
// qs1 in the split layout): per key and head one chain over the 32-element chunks, the even
// elements then the odd ones, so a key's lanes are one fixed sequence of operations whichever
// keys and heads share the call; each key is loaded and split once for both heads. Named sums
// (AddKeyChunk's pointers to them vanish once it is inlined; an array of sums GCC keeps in
// memory). The last chunk reads the key only up to d.
template <class T, int NK, int H>
__attribute__((always_inline)) inline void KeyLanes(const float* qs0, const float* qs1, const T* key, int d,
                                                    V16* l0, V16* l1) {
  constexpr size_t kV = sizeof(V16);
  const T* k1 = key + (NK == 4 ? d : 0);
  const T* k2 = k1 + (NK == 4 ? d : 0);
  const T* k3 = k2 + (NK == 4 ? d : 0);
  V16 a0{}, a1{}, a2{}, a3{}, b0{}, b1{}, b2{}, b3{};
  for (int c = 0; c < d; c += 32) {
    V16 qe0, qo0, qe1{}, qo1{};
    std::memcpy(&qe0, qs0 + c, kV);
    std::memcpy(&qo0, qs0 + c + 16, kV);
    if constexpr (H == 2) {
      std::memcpy(&qe1, qs1 + c, kV);
      std::memcpy(&qo1, qs1 + c + 16, kV);
    }
    V16 e, o;
    const int left = d - c;
    // Key by key, so that one key's split chunk is live at a time (the AVX2 clone has 16
    // registers).
    LoadChunk(key + c, left, &e, &o);
    AddKeyChunk<H>(e, o, qe0, qo0, qe1, qo1, &a0, &b0);
    if constexpr (NK == 4) {
      LoadChunk(k1 + c, left, &e, &o);
      AddKeyChunk<H>(e, o, qe0, qo0, qe1, qo1, &a1, &b1);
      LoadChunk(k2 + c, left, &e, &o);
      AddKeyChunk<H>(e, o, qe0, qo0, qe1, qo1, &a2, &b2);
      LoadChunk(k3 + c, left, &e, &o);
      AddKeyChunk<H>(e, o, qe0, qo0, qe1, qo1, &a3, &b3);
    }
  }
  l0[0] = a0;
  if constexpr (NK == 4) l0[1] = a1, l0[2] = a2, l0[3] = a3;
  if constexpr (H == 2) {
    l1[0] = b0;
    if constexpr (NK == 4) l1[1] = b1, l1[2] = b2, l1[3] = b3;
  }
}

// s0[j] (and s1[j] for a second head) = q . keys[j] for j < n <= 16 keys: KeyLanes, four keys at
// a time, then SumLanes16, so each score is one fixed sequence of operations.
template <class T, int H>
__attribute__((always_inline)) inline void KeyScores16T(const float* qs0, const float* qs1, const T* keys,
                                                        int n, int d, float* s0, float* s1) {
  // Only the first n lanes are needed (SumLanes16 never mixes keys); the rest get defined zeros.
  // (Zeroing all 16, a 1 KB memset, cost ~10 % of decode attention: 1.04-1.28x in attention_bench.)
  V16 l0[16], l1[16];
  for (int t = n; t < 16; ++t) {
    l0[t] = V16{};
    if constexpr (H == 2) l1[t] = V16{};
  }
  int j = 0;
  for (; j + 4 <= n; j += 4)
    KeyLanes<T, 4, H>(qs0, qs1, keys + static_cast<size_t>(j) * d, d, &l0[j], &l1[j]);
  for (; j < n; ++j) KeyLanes<T, 1, H>(qs0, qs1, keys + static_cast<size_t>(j) * d, d, &l0[j], &l1[j]);
  SumLanes16(l0, n, s0);
  if constexpr (H == 2) SumLanes16(l1, n, s1);
}

// rows x d cached elements to L1: the callers ask for the next 16 keys, and for the first 16 rows
// of the next value block (a whole block at the default block size of 16); the loops' order
// (16-key groups across paged blocks, then the values) is one that the hardware prefetchers do not
// run ahead of. (A harness of 16 sequences whose KV is cold, calls alternated with and without:
// the next 16 keys and the next value block 1.20-1.26x, the first value block during the softmax
// another 1.10-1.20x at 32-64 positions; the values to L2 during the key pass 0.80-0.97x, the
// next call's first keys 0.95-1.02x.)
template <class T>
__attribute__((always_inline)) inline void PrefetchRows(const T* at, int rows, int d) {
  const char* c = reinterpret_cast<const char*>(at);
  const size_t bytes = static_cast<size_t>(rows) * d * sizeof(T);
  for (size_t l = 0; l < bytes; l += 64) _mm_prefetch(c + l, _MM_HINT_T0);
}

// AttentionHeads over either cache dtype: the public overloads below are cloned per ISA, and this
// body, with the key and value loops, is inlined into each clone (no per-block dispatch). The
// heads go in pairs, each key and value split once for both (and one alone where g is odd).
template <class T>
__attribute__((always_inline)) inline void AttentionHeadsT(const float* const* q, int g,
                                                           const T* const* k_blocks, const T* const* v_blocks,
                                                           int npos, int block_size, int d, float scale,
                                                           float* scratch, float* const* out) {
  if (npos <= 0) {  // no keys: a zero output, as the sums start (and nothing is read)
    for (int h = 0; h < g; ++h) std::fill(out[h], out[h] + d, 0.0f);
    return;
  }
  const int dp = (d + 31) / 32 * 32;
  float* qs = scratch + static_cast<size_t>(g) * npos;  // (g, dp): the queries, split
  float* os = qs + static_cast<size_t>(g) * dp;         // (g, dp): the output sums, split
  for (int h = 0; h < g; ++h) {
    SplitRow(q[h], d, dp, qs + static_cast<size_t>(h) * dp);
    std::fill(os + static_cast<size_t>(h) * dp, os + static_cast<size_t>(h + 1) * dp, 0.0f);
  }
  auto scores = [&](int h) { return scratch + static_cast<size_t>(h) * npos; };
  auto split = [&](float* base, int h) { return base + static_cast<size_t>(h) * dp; };
  const int nblocks = (npos + block_size - 1) / block_size;
  auto rows_in = [&](int b) { return std::min(block_size, npos - b * block_size); };
  // 16 keys at a time for every head of the group: the keys come from memory once, then from L1.
  for (int b = 0; b < nblocks; ++b) {
    const int p = b * block_size, n_in = rows_in(b);
    for (int j = 0; j < n_in; j += 16) {
      const T* keys = k_blocks[b] + static_cast<size_t>(j) * d;
      const int n = std::min(16, n_in - j);
      if (j + 16 < n_in) {
        PrefetchRows(keys + static_cast<size_t>(16) * d, std::min(16, n_in - j - 16), d);
      } else if (b + 1 < nblocks) {
        PrefetchRows(k_blocks[b + 1], std::min(16, rows_in(b + 1)), d);
      }
      int h = 0;
      for (; h + 2 <= g; h += 2) {
        KeyScores16T<T, 2>(split(qs, h), split(qs, h + 1), keys, n, d, scores(h) + p + j,
                           scores(h + 1) + p + j);
      }
      if (h < g) KeyScores16T<T, 1>(split(qs, h), nullptr, keys, n, d, scores(h) + p + j, nullptr);
    }
  }
  PrefetchRows(v_blocks[0], std::min(16, rows_in(0)), d);  // while the softmax runs
  for (int h = 0; h < g; ++h) ScaledSoftmax(scores(h), npos, scale);
  for (int b = 0; b < nblocks; ++b) {  // a block's values, likewise once from memory
    const int p = b * block_size, n_in = rows_in(b);
    if (b + 1 < nblocks) PrefetchRows(v_blocks[b + 1], std::min(16, rows_in(b + 1)), d);
    int h = 0;
    for (; h + 2 <= g; h += 2) {
      AccumulateRowsT<T, 2>(scores(h) + p, scores(h + 1) + p, v_blocks[b], n_in, d, split(os, h),
                            split(os, h + 1));
    }
    if (h < g) AccumulateRowsT<T, 1>(scores(h) + p, nullptr, v_blocks[b], n_in, d, split(os, h), nullptr);
  }
  for (int h = 0; h < g; ++h) UnsplitRow(split(os, h), d, out[h]);
}
}  // namespace

size_t AttentionScratchFloats(int g, int npos, int d) {
  return static_cast<size_t>(g) * (npos + 2 * ((d + 31) / 32 * 32));
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
