// Every CPU kernel against a plain double-precision reference written here, for every ISA path
// this CPU supports and every weight dtype, with odd sizes and misaligned tails.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include "cpu/kernels.h"
#include "cpu/large_buffer.h"
#include "cpu/thread_pool.h"
#include "test_util.h"

namespace tpserve::kernels {
namespace {

using testing::RandomFloats;
std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  return RandomFloats(n, seed, scale);
}

// Weights in `dt` (bytes) plus their exact values as doubles. int8 is quantized per row of
// `cols` values: `exact` holds the raw q values (what the dot kernels sum), `scales` the row scales.
struct Weights {
  std::vector<uint8_t> bytes;
  std::vector<double> exact;
  std::vector<float> scales;
  const float* row_scales() const { return scales.empty() ? nullptr : scales.data(); }
  double value(size_t i, size_t cols) const {
    return scales.empty() ? exact[i] : exact[i] * scales[i / cols];
  }
};
Weights MakeWeights(const std::vector<float>& f, DType dt, size_t cols = 0) {
  Weights w;
  w.bytes.resize(f.size() * DTypeSize(dt) + 64);
  if (dt == DType::kI8) {
    if (cols == 0) cols = f.size();
    for (size_t r = 0; r * cols < f.size(); ++r) {
      w.scales.push_back(QuantizeRowInt8(&f[r * cols], static_cast<int>(cols),
                                         reinterpret_cast<int8_t*>(w.bytes.data()) + r * cols));
    }
    const auto* q = reinterpret_cast<const int8_t*>(w.bytes.data());
    w.exact.assign(q, q + f.size());
    return w;
  }
  ConvertDType(f.data(), DType::kF32, w.bytes.data(), dt, f.size());
  std::vector<float> back(f.size());
  ConvertDType(w.bytes.data(), dt, back.data(), DType::kF32, f.size());
  w.exact.assign(back.begin(), back.end());
  return w;
}

constexpr DType kFloatDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};
constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kI8};

// f32 accumulation of k products: error bound ~ k * eps * sum|x w|.
double DotTolerance(const std::vector<float>& x, const std::vector<double>& w, size_t off, int k) {
  double mag = 0;
  for (int i = 0; i < k; ++i) mag += std::abs(x[off + i] * w[i]);
  return 4.0 * k * 6e-8 * mag + 1e-30;
}

TEST(Kernels, DotEveryIsaEveryDtypeOddSizes) {
  for (const std::string& isa : SupportedIsas()) {
    const CpuKernelTable* kt = KernelsForIsa(isa);
    ASSERT_NE(kt, nullptr) << isa;
    for (DType dt : kFloatDTypes) {
      for (int k : {1, 3, 7, 8, 15, 16, 17, 31, 33, 63, 100, 257, 1001, 2048}) {
        for (size_t misalign : {size_t{0}, size_t{1}, size_t{3}}) {  // elements, not bytes
          const std::vector<float> x = Random(k + misalign, 11 + k);
          Weights w = MakeWeights(Random(k + misalign, 99 + k), dt);
          const size_t es = DTypeSize(dt);
          const void* wp = w.bytes.data() + misalign * es;
          double want = 0;
          for (int i = 0; i < k; ++i) want += static_cast<double>(x[misalign + i]) * w.exact[misalign + i];
          const float got = kt->dot[static_cast<int>(dt)](x.data() + misalign, wp, k);
          std::vector<double> wexact(w.exact.begin() + misalign, w.exact.end());
          EXPECT_NEAR(got, want, DotTolerance(x, wexact, misalign, k))
              << isa << " " << DTypeName(dt) << " k=" << k << " misalign=" << misalign;
        }
      }
    }
  }
}

TEST(Kernels, MatmulNTMatchesReference) {
  for (const std::string& isa : SupportedIsas()) {
    const CpuKernelTable& kt = *KernelsForIsa(isa);
    for (DType dt : kAllDTypes) {
      for (int n : {1, 2, 3, 5}) {  // n < 4 takes the rows4 path, n >= 4 dot4
        const int m = 37, k = 75;
        const std::vector<float> x = Random(n * k, 5);
        Weights w = MakeWeights(Random(m * k, 6), dt, k);
        std::vector<float> y(n * m);
        MatmulNT(kt, x.data(), n, w.bytes.data(), dt, m, k, y.data(), w.row_scales());
        for (int t = 0; t < n; ++t) {
          for (int o = 0; o < m; ++o) {
            double want = 0, mag = 0;
            for (int i = 0; i < k; ++i) {
              const double wv = w.value(o * k + i, k);
              want += static_cast<double>(x[t * k + i]) * wv;
              mag += std::abs(x[t * k + i] * wv);
            }
            // int8: x is quantized to int16 (error <= half a step of max|x| / 32767 per element).
            const double tol = dt == DType::kI8
                                   ? 4 * k * 6e-8 * mag + k * 0.5 / 32767 * 1.0 * 128 * w.scales[o]
                                   : 4 * k * 6e-8 * mag;
            ASSERT_NEAR(y[t * m + o], want, tol) << isa << " " << DTypeName(dt) << " n=" << n;
          }
        }
      }
    }
  }
}

// Batching must not change a token's result: dot4 and MatmulNT rows are bitwise equal to dot.
TEST(Kernels, Dot4AndMatmulRowsAreBitwiseTheSingleDot) {
  for (const std::string& isa : SupportedIsas()) {
    const CpuKernelTable& kt = *KernelsForIsa(isa);
    for (DType dt : kFloatDTypes) {
      for (int k : {1, 15, 16, 17, 33, 64, 100, 1001}) {
        // From 4 activation rows (dot4) 2 and 3 threads split the rows at grains of 16. Below
        // (rows4), at 2 and 3 threads the rows go in turns: three of 64 (runs of 16 per stream)
        // and one of 11 (runs of 2 and 3 single dots); at 1 thread one call (runs of 50 and 3).
        const int m = 203;
        const std::vector<float> x = Random(9 * k, 21 + k);
        Weights w = MakeWeights(Random(m * k, 22 + k), dt, k);
        const size_t row_bytes = static_cast<size_t>(k) * DTypeSize(dt);
        const auto row = [&](int o) { return w.bytes.data() + o * row_bytes; };
        const float* xs[4] = {&x[0], &x[k], &x[2 * k], &x[3 * k]};
        float out[4];
        for (const void* next : {static_cast<const void*>(nullptr), static_cast<const void*>(row(1))}) {
          kt.dot4[static_cast<int>(dt)](xs, row(0), k, out, next);
          for (int j = 0; j < 4; ++j) {
            const float single = kt.dot[static_cast<int>(dt)](xs[j], row(0), k);
            ASSERT_EQ(std::memcmp(&out[j], &single, 4), 0) << isa << " " << DTypeName(dt) << " k=" << k;
          }
        }
        if (kt.rows4[static_cast<int>(dt)] != nullptr) {  // one activation row, four weight rows
          // Dense rows, and rows at a padded stride (every third row of w).
          for (size_t stride : {row_bytes, 3 * row_bytes}) {
            kt.rows4[static_cast<int>(dt)](xs[0], row(0), stride, k, out);
            for (int j = 0; j < 4; ++j) {
              const float single = kt.dot[static_cast<int>(dt)](xs[0], row(0) + j * stride, k);
              ASSERT_EQ(std::memcmp(&out[j], &single, 4), 0)
                  << isa << " rows4 " << DTypeName(dt) << " k=" << k << " stride=" << stride;
            }
          }
        }
        for (int threads : {1, 2, 3}) {  // threads split the rows: results do not change
          SetThreads(threads);
          for (int n = 1; n <= 9; ++n) {
            std::vector<float> y(n * m);
            MatmulNT(kt, x.data(), n, w.bytes.data(), dt, m, k, y.data(), w.row_scales());
            for (int t = 0; t < n; ++t) {
              for (int o = 0; o < m; ++o) {
                const float single = kt.dot[static_cast<int>(dt)](&x[t * k], row(o), k);
                ASSERT_EQ(std::memcmp(&y[t * m + o], &single, 4), 0)
                    << isa << " n=" << n << " t=" << t << " o=" << o << " threads=" << threads;
              }
            }
          }
        }
        SetThreads(1);
      }
    }
  }
}

// Every build of the int8 kernels this CPU runs: each ISA's table, and where the CPU has AVX-512,
// also its plain build (vpmaddwd), which the CPU probe passes over for VNNI where that exists.
std::vector<std::pair<std::string, const CpuKernelTable*>> Int8Tables() {
  std::vector<std::pair<std::string, const CpuKernelTable*>> out;
  for (const std::string& isa : SupportedIsas()) {
    out.emplace_back(isa, KernelsForIsa(isa));
    if (isa == "avx512") out.emplace_back("avx512 without vnni", Avx512KernelsWithoutVnni());
  }
  return out;
}

// int8 x int16 dot products are exact integers: every ISA path equals the int64 reference,
// including extreme values over long rows (int32 lanes must be widened before they overflow).
TEST(Kernels, Int8DotIsExactOnEveryIsa) {
  std::mt19937 rng(3);
  for (const auto& [isa, table] : Int8Tables()) {
    const CpuKernelTable& kt = *table;
    ASSERT_NE(kt.dot_i8, nullptr) << isa;
    for (int k : {1, 7, 16, 31, 32, 33, 100, 512, 1001, 1024, 2048, 2080, 2100, 20000}) {
      for (bool extreme : {false, true}) {
        std::vector<int16_t> x(k + 3);
        std::vector<int8_t> w(kRowsI8 * (k + 3));
        std::uniform_int_distribution<int> dx(-32767, 32767), dw(-127, 127);
        for (auto& v : x) v = extreme ? 32767 : dx(rng);
        for (auto& v : w) v = extreme ? 127 : dw(rng);
        for (int misalign : {0, 3}) {
          const int8_t* rows[kRowsI8];
          int64_t want[kRowsI8], got4[kRowsI8];
          for (int j = 0; j < kRowsI8; ++j) {
            rows[j] = &w[j * (k + 3) + misalign];
            want[j] = 0;
            for (int i = 0; i < k; ++i) want[j] += static_cast<int64_t>(x[misalign + i]) * rows[j][i];
            ASSERT_EQ(kt.dot_i8(&x[misalign], rows[j], k), want[j]) << isa << " k=" << k;
          }
          if (kt.rows_i8 != nullptr) {
            kt.rows_i8(&x[misalign], rows[0], k + 3, k, got4);
            for (int j = 0; j < kRowsI8; ++j) ASSERT_EQ(got4[j], want[j]) << isa << " rows k=" << k;
          }
          if (kt.rows_i8_batch != nullptr) {
            // Up to kI8BatchRows activation rows (each x shifted by t, every other one negated)
            // against kI8BatchWeightRows rows (w shifted by j, every other one negated: the extreme
            // case's sums then differ in sign from output to output), scaled: the exact dot in
            // double, as MatmulNT stores it. Row counts that fill the kernel's register tiles (3)
            // and leave 1 or 2 over.
            std::vector<int16_t> xb(kI8BatchRows * (k + 3));
            for (int t = 0; t < kI8BatchRows; ++t) {
              for (int i = 0; i < k + 3; ++i) xb[t * (k + 3) + i] = (t % 2 ? -1 : 1) * x[(i + t) % (k + 3)];
            }
            std::vector<int8_t> wb(kI8BatchWeightRows * (k + 3));
            for (int j = 0; j < kI8BatchWeightRows; ++j) {
              for (int i = 0; i < k + 3; ++i) wb[j * (k + 3) + i] = (j % 2 ? -1 : 1) * w[(i + j) % w.size()];
            }
            std::vector<float> x_scales(kI8BatchRows);
            for (int t = 0; t < kI8BatchRows; ++t) x_scales[t] = std::ldexp(1.0f + 0.37f * t, (t % 7) - 12);
            const float row_scales[] = {1.f, 0.25f, 3e-3f, 7.f, 0.1f, 2.f, 1e-4f, 9.f};
            static_assert(std::size(row_scales) == kI8BatchWeightRows);
            std::vector<int64_t> dots(kI8BatchRows * kI8BatchWeightRows, 0);
            for (int t = 0; t < kI8BatchRows; ++t) {
              for (int j = 0; j < kI8BatchWeightRows; ++j) {
                for (int i = 0; i < k; ++i) {
                  dots[t * kI8BatchWeightRows + j] +=
                      static_cast<int64_t>(xb[t * (k + 3) + misalign + i]) * wb[j * (k + 3) + misalign + i];
                }
              }
            }
            const int ldy = kI8BatchWeightRows + 5;
            for (int n : {1, 2, 3, 4, 5, 7, kI8BatchRows}) {
              std::vector<float> got((n + 1) * ldy, -1.0f);  // a row more: nothing may land there
              kt.rows_i8_batch(&xb[misalign], k + 3, n, x_scales.data(), &wb[misalign], k + 3, row_scales, k,
                               got.data(), ldy);
              for (int t = 0; t < n; ++t) {
                for (int j = 0; j < kI8BatchWeightRows; ++j) {
                  const float want = static_cast<float>(
                      static_cast<double>(dots[t * kI8BatchWeightRows + j]) * x_scales[t] * row_scales[j]);
                  ASSERT_EQ(std::memcmp(&got[t * ldy + j], &want, 4), 0)
                      << isa << " batch k=" << k << " n=" << n << " t=" << t << " j=" << j << ": "
                      << got[t * ldy + j] << " want " << want;
                }
                for (int j = kI8BatchWeightRows; j < ldy; ++j)
                  ASSERT_EQ(got[t * ldy + j], -1.0f) << "written past";
              }
              for (int j = 0; j < ldy; ++j) ASSERT_EQ(got[n * ldy + j], -1.0f) << "written past row " << n;
            }
          }
        }
      }
    }
  }
}

// int8 MatmulNT: the same bits for every ISA, batch size and thread count. Below 4 rows the
// AVX-512 row streams (AVX2 and portable: single dots): the threads take turns of 64 rows or
// more, each split into kRowsI8 runs and a remainder (5 rows: runs of 1 and a remainder of 1;
// 203 rows at 2 threads: turns of 64, 64, 64 and 11); k = 2100 makes each row longer than the
// 2 KB prefetch distance. From 4 rows the AVX-512 and AVX2 batch kernels: 8 weight rows against
// tiles of 3 (AVX2: 2) activation rows (n 4, 5, 16, 17: a last tile of 1 or 2), with the weight
// rows a turn leaves over one by one (m 5, 19, 53, 203), k past one 2048-element block (2100,
// 2112) and with a partial last step (203, 2100). Or, for k a multiple of 64 on a CPU with
// AMX-INT8, pairs of 16-row weight tiles (m 53 and 70: one and two pairs with rows left over, 64: two and
// none; 17 and 33 activation rows more than one tile).
TEST(Kernels, Int8MatmulIsTheSameForEveryIsaBatchAndThreadCount) {
  for (const int m : {5, 19, 53, 64, 70, 203}) {
    for (const int k : {203, 256, 2100, 2112}) {
      const std::vector<float> x = Random(97 * k, 41, 2.0f);
      Weights w = MakeWeights(Random(m * k, 42), DType::kI8, k);
      std::vector<float> first(97 * m);
      MatmulNT(PortableKernels(), x.data(), 97, w.bytes.data(), DType::kI8, m, k, first.data(),
               w.row_scales());
      for (const auto& [isa, table] : Int8Tables()) {
        for (int threads : {1, 2}) {
          SetThreads(threads);
          for (int n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 33, 49, 97}) {
            std::vector<float> y(n * m);
            MatmulNT(*table, x.data(), n, w.bytes.data(), DType::kI8, m, k, y.data(), w.row_scales());
            ASSERT_EQ(std::memcmp(y.data(), first.data(), y.size() * 4), 0)
                << isa << " m=" << m << " k=" << k << " n=" << n << " threads=" << threads;
          }
        }
      }
    }
  }
  SetThreads(1);
}

// At the AMX path's bound: every activation quantized to 32767 (low byte 255) against weights of
// +-127 over k = 65472, the low-byte sums within 2% of the int32 range.
TEST(Kernels, Int8MatmulIsExactAtTheLongestRows) {
  const int m = 32, n = 4, k = 65472;
  std::vector<float> wf(static_cast<size_t>(m) * k);
  for (int o = 0; o < m; ++o) std::fill_n(&wf[static_cast<size_t>(o) * k], k, o % 2 ? -1.0f : 1.0f);
  Weights w = MakeWeights(wf, DType::kI8, k);
  const std::vector<float> x(static_cast<size_t>(n) * k, 0.5f);
  std::vector<float> want(n * m), got(n * m);
  MatmulNT(PortableKernels(), x.data(), n, w.bytes.data(), DType::kI8, m, k, want.data(), w.row_scales());
  for (const auto& [isa, table] : Int8Tables()) {
    MatmulNT(*table, x.data(), n, w.bytes.data(), DType::kI8, m, k, got.data(), w.row_scales());
    ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << isa;
  }
  // The exact value: 0.5 quantizes to 32767 at scale 0.5 / 32767, +-1 to +-127 at 1 / 127.
  EXPECT_FLOAT_EQ(want[0], static_cast<float>(32767.0 * 127 * k * (0.5f / 32767.0f) * (1.0f / 127.0f)));
}

TEST(Kernels, Int8QuantizationRoundTripsWithinHalfAStep) {
  for (int k : {1, 5, 64, 1001}) {
    std::vector<float> w = Random(k, 7 + k, 3.0f);
    std::vector<int8_t> q(k);
    const float scale = QuantizeRowInt8(w.data(), k, q.data());
    float amax = 0;
    for (float v : w) amax = std::max(amax, std::abs(v));
    EXPECT_FLOAT_EQ(scale, amax / 127.0f);
    for (int i = 0; i < k; ++i) ASSERT_LE(std::abs(q[i] * scale - w[i]), 0.5f * scale * 1.0001f) << i;
  }
  std::vector<float> zeros(9, 0.0f);
  std::vector<int8_t> q(9, 1);
  EXPECT_EQ(QuantizeRowInt8(zeros.data(), 9, q.data()), 0.0f);
  for (int8_t v : q) EXPECT_EQ(v, 0);
}

// The VmFlags line of /proc/self/smaps for the mapping that holds `p` ("" when not found).
std::string VmFlagsOf(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') inside = lo <= at && at < hi;
    if (inside && line.rfind("VmFlags:", 0) == 0) return line;
  }
  return "";
}

TEST(Kernels, LargeBufferAlignmentAdviceAndMoves) {
  kernels::LargeBuffer small(100);
  ASSERT_NE(small.data(), nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small.data()) % 64, 0u);
  std::memset(small.data(), 1, 100);

  const size_t big_bytes = (size_t{5} << 20) + 123;  // not a multiple of the 2 MB page
  kernels::LargeBuffer big(big_bytes);
  ASSERT_NE(big.data(), nullptr);
  const auto* bytes = big.as<const unsigned char>();
  if (kernels::LargeBuffer::HugePagesRequested()) {  // a fresh mapping: untouched memory reads zero
    for (size_t i = 0; i < big_bytes; i += 4093) ASSERT_EQ(bytes[i], 0) << i;
  }
  big.as<unsigned char>()[big_bytes - 1] = 7;  // the last byte is ours
  if (kernels::LargeBuffer::HugePagesRequested()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(big.data()) % (size_t{2} << 20), 0u);
    if (std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good()) {
      // madvise(MADV_HUGEPAGE) reached the kernel: the mapping carries the "hg" flag.
      EXPECT_NE(VmFlagsOf(big.data()).find(" hg"), std::string::npos) << VmFlagsOf(big.data());
    }
  }
  kernels::LargeBuffer moved(std::move(big));
  EXPECT_EQ(big.data(), nullptr);
  EXPECT_EQ(moved.bytes(), big_bytes);
  EXPECT_EQ(moved.as<unsigned char>()[big_bytes - 1], 7);
  moved = kernels::LargeBuffer(64);  // frees the mapping
  EXPECT_EQ(moved.bytes(), 64u);
}

// The pool runs every index exactly once, from any number of threads, many times in a row; chunks
// start at multiples of the grain and hold at least one grain (but the last may be shorter).
TEST(Kernels, ThreadPoolCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 4}) {
    SetThreads(threads);
    EXPECT_EQ(NumThreads(), threads);
    for (int total : {0, 1, 5, 16, 43, 1000}) {
      for (int grain : {1, 4, 16}) {
        for (int rep = 0; rep < 20; ++rep) {
          std::vector<std::atomic<int>> hits(total);
          std::atomic<int> chunks{0}, misplaced{0};
          ParallelFor(total, grain, [&](int b, int e) {
            ++chunks;
            if (b % grain != 0 || (e - b < grain && e != total)) ++misplaced;
            for (int i = b; i < e; ++i) hits[i]++;
          });
          for (int i = 0; i < total; ++i) {
            ASSERT_EQ(hits[i].load(), 1) << threads << " " << total << " " << grain << " " << i;
          }
          ASSERT_EQ(misplaced.load(), 0) << threads << " threads, total " << total << ", grain " << grain;
          ASSERT_LE(chunks.load(), threads);
        }
      }
    }
  }
  SetThreads(1);
}

// ParallelForDynamic: every index once, in chunks of `chunk` (the last may be shorter).
TEST(Kernels, DynamicThreadPoolCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 4}) {
    SetThreads(threads);
    EXPECT_EQ(NumThreads(), threads);
    for (int total : {0, 1, 5, 16, 43, 1000}) {
      for (int chunk : {1, 4, 16, 2000}) {
        const int chunks = (total + chunk - 1) / chunk;
        const int want_calls = threads > 1 && chunks > 1 ? chunks : total > 0 ? 1 : 0;
        for (int rep = 0; rep < 10; ++rep) {
          std::vector<std::atomic<int>> hits(total);
          std::atomic<int> misplaced{0}, calls{0};
          ParallelForDynamic(total, chunk, [&](int b, int e) {
            ++calls;
            if (b % chunk != 0 || (e - b != chunk && e != total) || e <= b) ++misplaced;
            for (int i = b; i < e; ++i) hits[i]++;
          });
          ASSERT_EQ(calls.load(), want_calls)
              << threads << " threads, total " << total << ", chunk " << chunk;
          for (int i = 0; i < total; ++i) {
            ASSERT_EQ(hits[i].load(), 1) << threads << " " << total << " " << chunk << " " << i;
          }
          ASSERT_EQ(misplaced.load(), 0) << threads << " threads, total " << total << ", chunk " << chunk;
        }
      }
    }
  }
  SetThreads(1);
}

// A thread held up in its first chunk does not hold up the rest: the first chunk waits until every
// other chunk is done, which only finishes if the other thread takes them all (with a fixed split,
// half of them would wait behind the held-up chunk).
TEST(Kernels, DynamicThreadPoolGivesASlowThreadsShareToTheOthers) {
  SetThreads(2);
  constexpr int kChunks = 16;
  std::atomic<int> done{0};
  std::atomic<bool> timed_out{false};
  ParallelForDynamic(kChunks, 1, [&](int b, int) {
    if (b == 0) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (done.load() < kChunks - 1) {
        if (std::chrono::steady_clock::now() > deadline) {
          timed_out = true;
          break;
        }
        std::this_thread::yield();
      }
    }
    ++done;
  });
  EXPECT_FALSE(timed_out.load()) << "the other chunks waited for the held-up one";
  EXPECT_EQ(done.load(), kChunks);
  SetThreads(1);
}

TEST(Kernels, RmsNorm) {
  for (int n : {1, 7, 64, 1003}) {
    const std::vector<float> x = Random(n, 1, 3.0f), w = Random(n, 2);
    std::vector<float> y(n);
    RmsNorm(x.data(), w.data(), n, 1e-5f, y.data());
    double ms = 0;
    for (float v : x) ms += static_cast<double>(v) * v;
    const double r = 1.0 / std::sqrt(ms / n + 1e-5);
    for (int i = 0; i < n; ++i) ASSERT_NEAR(y[i], x[i] * r * w[i], 1e-5 * std::abs(x[i] * r * w[i]) + 1e-7);
  }
}

// Every element, vector part and tail, gets exactly its one float add; the rest of the buffer is
// left alone.
TEST(Kernels, AddInPlace) {
  for (int n : {0, 1, 15, 16, 17, 100, 1003}) {
    const std::vector<float> a = Random(n + 5, 4, 3.0f), b = Random(n + 5, 5, 3.0f);
    std::vector<float> x = a;
    AddInPlace(x.data() + 1, b.data() + 1, n);  // misaligned by one float
    for (int i = 0; i < n + 5; ++i) {
      const float want = i >= 1 && i <= n ? a[i] + b[i] : a[i];
      ASSERT_EQ(x[i], want) << "n " << n << " at " << i;
    }
  }
}

TEST(Kernels, RopeRotateHalf) {
  for (int d : {2, 8, 64, 128}) {
    for (int pos : {0, 1, 17, 4095}) {
      std::vector<float> x = Random(d, 3 + d), cos_sin(d);
      const std::vector<float> orig = x;
      std::vector<double> angle(d / 2);
      for (int i = 0; i < d / 2; ++i) {
        angle[i] = pos * std::pow(10000.0, -2.0 * i / d);
        cos_sin[i] = static_cast<float>(std::cos(angle[i]));
        cos_sin[d / 2 + i] = static_cast<float>(std::sin(angle[i]));
      }
      RopeRotateHalf(x.data(), d, cos_sin.data());
      for (int i = 0; i < d / 2; ++i) {
        const double c = std::cos(angle[i]), s = std::sin(angle[i]);
        EXPECT_NEAR(x[i], orig[i] * c - orig[i + d / 2] * s, 1e-5);
        EXPECT_NEAR(x[i + d / 2], orig[i + d / 2] * c + orig[i] * s, 1e-5);
      }
    }
  }
}

TEST(Kernels, SiluMul) {
  for (float range : {8.0f, 120.0f}) {  // 120: exp(-g) far outside the float range both ways
    const std::vector<float> g = Random(101, 4, range), u = Random(101, 5);
    std::vector<float> out(101);
    SiluMul(g.data(), u.data(), 101, out.data());
    for (int i = 0; i < 101; ++i) {
      const double want = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
      ASSERT_NEAR(out[i], want, 1e-6 * (1 + std::abs(want))) << "g " << g[i];
    }
  }
}

TEST(Kernels, PagedAttentionHeadMatchesSoftmaxReference) {
  // d = 24 takes only the kernels' element-by-element tails; 64 only whole 32-element chunks (two
  // at a time for the values); 72 both; 80 a last half chunk of 16; 96 a 32-element chunk past
  // the values' 64-wide step.
  for (int npos : {1, 2, 16, 17, 19, 300}) {
    for (int block_size : {1, 16, 512}) {  // 512: the whole sequence in one (contiguous) block
      for (int d : {24, 64, 72, 80, 96}) {
        const int nblocks = (npos + block_size - 1) / block_size;
        // Blocks in scattered order inside one pool, as a block table would place them.
        const std::vector<float> q = Random(d, 7, 2.0f),
                                 kpool = Random(nblocks * block_size * d * 2, 8, 2.0f),
                                 vpool = Random(nblocks * block_size * d * 2, 9);
        std::vector<const float*> kb(nblocks), vb(nblocks);
        for (int b = 0; b < nblocks; ++b) {
          const size_t slot = static_cast<size_t>((b * 7) % (2 * nblocks)) * block_size * d;
          kb[b] = kpool.data() + slot;
          vb[b] = vpool.data() + slot;
        }
        auto k_at = [&](int p, int i) { return kb[p / block_size][(p % block_size) * d + i]; };
        auto v_at = [&](int p, int i) { return vb[p / block_size][(p % block_size) * d + i]; };
        std::vector<float> out(d), scratch(AttentionScratchFloats(1, npos, d));
        const float scale = 1.0f / std::sqrt(static_cast<float>(d));
        AttentionHead(q.data(), kb.data(), vb.data(), npos, block_size, d, scale, scratch.data(), out.data());
        std::vector<double> s(npos);
        double mx = -1e300, z = 0;
        for (int p = 0; p < npos; ++p) {
          double dot = 0;
          for (int i = 0; i < d; ++i) dot += static_cast<double>(q[i]) * k_at(p, i);
          s[p] = dot / std::sqrt(static_cast<double>(d));
          mx = std::max(mx, s[p]);
        }
        for (double& x : s) z += (x = std::exp(x - mx));
        for (int i = 0; i < d; ++i) {
          double want = 0;
          for (int p = 0; p < npos; ++p) want += s[p] / z * v_at(p, i);
          ASSERT_NEAR(out[i], want, 2e-6) << "npos " << npos << " block " << block_size << " d " << d;
        }
      }
    }
  }
}

// Greedy sampling's argmax against a plain scan: the maximum placed in the vector part (on every
// lane), in the tail, tied with a later index on every other lane and with the tail, among NaNs
// and infinities. (This runs the clone that fits the CPU: AVX-512 here.)
TEST(Kernels, ArgMaxIsTheFirstIndexOfTheMaximum) {
  auto reference = [](const std::vector<float>& x) {
    float mx = -INFINITY;
    for (float v : x) mx = v > mx ? v : mx;  // NaN never compares greater
    for (size_t i = 0; i < x.size(); ++i) {
      if (x[i] == mx) return static_cast<int>(i);
    }
    return 0;
  };
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> uni(-4.0f, 4.0f);
  int checked = 0;
  for (int n : {0, 1, 2, 15, 16, 17, 31, 33, 47, 64, 100, 1000, 16001, 32003}) {
    std::vector<float> base(n);
    for (float& v : base) v = uni(rng);
    std::vector<std::vector<float>> cases{base};
    for (int at : {0, n / 2, n - 1, n - n % 16, n - 17}) {  // a clear winner here
      if (at < 0 || at >= n) continue;
      cases.push_back(base);
      cases.back()[at] = 10.0f;
      for (int tie : {at + 1, at + 16, at + 5, n - 1}) {  // the same value later: first one wins
        if (tie <= at || tie >= n) continue;
        cases.push_back(cases[cases.size() - 1]);
        cases.back()[tie] = 10.0f;
      }
    }
    for (int lane = 0; n >= 48 && lane < 16; ++lane) {
      for (int other = 0; other < 16; ++other) {  // a tie later, on each lane (lower ones too)
        cases.push_back(base);
        cases.back()[16 + lane] = 10.0f;
        cases.back()[32 + other] = 10.0f;
      }
    }
    if (n > 0) {
      std::vector<float> special(n, -INFINITY);  // no value above -infinity
      cases.push_back(special);
      for (float& v : special) v = NAN;
      cases.push_back(special);  // all NaN
      special[n - 1] = -INFINITY;
      cases.push_back(special);  // NaNs, then -infinity in the tail or the vector part
      std::vector<float> nan_first = base;
      for (int i = 0; i < n; i += 3) nan_first[i] = NAN;
      cases.push_back(nan_first);
      nan_first[n / 3] = INFINITY;
      cases.push_back(nan_first);
    }
    for (const auto& x : cases) {
      ASSERT_EQ(ArgMax(x.data(), n), reference(x)) << "n " << n << " case " << checked;
      ++checked;
    }
  }
  EXPECT_GT(checked, 100);
}

// The same keys and values give bitwise the same output whatever the block size of the paged
// cache: a sequence's result must not depend on how its positions are split into blocks.
TEST(Kernels, PagedAttentionHeadDoesNotDependOnTheBlockSize) {
  for (int npos : {1, 5, 16, 33, 300}) {
    for (int d : {8, 24, 40, 64, 80, 96, 128}) {
      const std::vector<float> q = Random(d, 11, 2.0f),
                               keys = Random(static_cast<size_t>(npos) * d, 12, 2.0f),
                               vals = Random(static_cast<size_t>(npos) * d, 13);
      std::vector<float> first;
      for (int block_size : {1, 3, 16, 512}) {
        const int nblocks = (npos + block_size - 1) / block_size;
        // Each block in its own allocation, as scattered as a block table's.
        std::vector<std::vector<float>> kpool(nblocks), vpool(nblocks);
        std::vector<const float*> kb(nblocks), vb(nblocks);
        for (int b = 0; b < nblocks; ++b) {
          const int n_in = std::min(block_size, npos - b * block_size);
          const size_t at = static_cast<size_t>(b) * block_size * d;
          kpool[b].assign(keys.begin() + at, keys.begin() + at + static_cast<size_t>(n_in) * d);
          vpool[b].assign(vals.begin() + at, vals.begin() + at + static_cast<size_t>(n_in) * d);
          kb[b] = kpool[b].data();
          vb[b] = vpool[b].data();
        }
        std::vector<float> out(d), scratch(AttentionScratchFloats(1, npos, d));
        AttentionHead(q.data(), kb.data(), vb.data(), npos, block_size, d, 0.125f, scratch.data(),
                      out.data());
        if (first.empty()) {
          first = out;
          continue;
        }
        for (int i = 0; i < d; ++i) {
          ASSERT_EQ(out[i], first[i])
              << "npos " << npos << " d " << d << " block " << block_size << " at " << i;
        }
      }
    }
  }
}

// The query heads of a GQA group in one call (each KV block read once for them) give bitwise each
// head's own AttentionHead output, whatever the group size, the block size and the head dim.
TEST(Kernels, GroupedAttentionHeadsEqualEachHeadAlone) {
  for (int g : {1, 2, 3, 8}) {
    for (int d : {8, 24, 40, 64, 80, 96}) {
      for (int block_size : {3, 16}) {
        const int npos = 37, nblocks = (npos + block_size - 1) / block_size;
        const std::vector<float> q = Random(static_cast<size_t>(g) * d, 21, 2.0f),
                                 kpool = Random(static_cast<size_t>(nblocks) * block_size * d, 22, 2.0f),
                                 vpool = Random(kpool.size(), 23);
        std::vector<const float*> kb(nblocks), vb(nblocks), qs(g);
        for (int b = 0; b < nblocks; ++b) {
          const size_t slot = static_cast<size_t>(nblocks - 1 - b) * block_size * d;  // reversed order
          kb[b] = kpool.data() + slot;
          vb[b] = vpool.data() + slot;
        }
        std::vector<float> out(static_cast<size_t>(g) * d, NAN), scratch(AttentionScratchFloats(g, npos, d));
        std::vector<float*> outs(g);
        for (int h = 0; h < g; ++h) {
          qs[h] = q.data() + static_cast<size_t>(h) * d;
          outs[h] = out.data() + static_cast<size_t>(h) * d;
        }
        AttentionHeads(qs.data(), g, kb.data(), vb.data(), npos, block_size, d, 0.2f, scratch.data(),
                       outs.data());
        for (int h = 0; h < g; ++h) {
          std::vector<float> alone(d), scratch1(AttentionScratchFloats(1, npos, d));
          AttentionHead(qs[h], kb.data(), vb.data(), npos, block_size, d, 0.2f, scratch1.data(),
                        alone.data());
          for (int i = 0; i < d; ++i) {
            ASSERT_EQ(outs[h][i], alone[i])
                << "g " << g << " d " << d << " block " << block_size << " head " << h;
          }
        }
      }
    }
  }
}

// A bf16 KV cache: each key and value widened to f32 as it is read, so the output is bitwise the
// f32 path's over the widened values, for group sizes (one head alone and pairs), head dims with
// and without a tail past their 32-element chunks (a half chunk at 80), and block sizes that split
// the 16-key groups; and close to a float64 softmax attention over the same values.
TEST(Kernels, Bf16CacheAttentionIsTheF32PathOverWidenedValues) {
  for (int g : {1, 2, 3}) {
    for (int d : {8, 24, 40, 64, 80, 96}) {
      for (int block_size : {3, 16}) {
        const int npos = 37, nblocks = (npos + block_size - 1) / block_size;
        const size_t n = static_cast<size_t>(nblocks) * block_size * d;
        const std::vector<float> q = Random(static_cast<size_t>(g) * d, 31, 2.0f), kraw = Random(n, 32, 2.0f),
                                 vraw = Random(n, 33);
        std::vector<uint16_t> k16(n), v16(n);
        std::vector<float> kw(n), vw(n);  // the bf16 values widened back
        for (size_t i = 0; i < n; ++i) {
          k16[i] = F32ToBf16(kraw[i]), v16[i] = F32ToBf16(vraw[i]);
          kw[i] = Bf16ToF32(k16[i]), vw[i] = Bf16ToF32(v16[i]);
        }
        std::vector<const uint16_t*> kb16(nblocks), vb16(nblocks);
        std::vector<const float*> kb(nblocks), vb(nblocks), qs(g);
        for (int b = 0; b < nblocks; ++b) {
          const size_t slot = static_cast<size_t>(nblocks - 1 - b) * block_size * d;  // reversed order
          kb16[b] = k16.data() + slot, vb16[b] = v16.data() + slot;
          kb[b] = kw.data() + slot, vb[b] = vw.data() + slot;
        }
        std::vector<float> got(static_cast<size_t>(g) * d, NAN), want(got.size(), NAN),
            scratch(AttentionScratchFloats(g, npos, d));
        std::vector<float*> gots(g), wants(g);
        for (int h = 0; h < g; ++h) {
          qs[h] = q.data() + static_cast<size_t>(h) * d;
          gots[h] = got.data() + static_cast<size_t>(h) * d;
          wants[h] = want.data() + static_cast<size_t>(h) * d;
        }
        const float scale = 0.2f;
        AttentionHeads(qs.data(), g, kb16.data(), vb16.data(), npos, block_size, d, scale, scratch.data(),
                       gots.data());
        AttentionHeads(qs.data(), g, kb.data(), vb.data(), npos, block_size, d, scale, scratch.data(),
                       wants.data());
        for (int h = 0; h < g; ++h) {
          // float64 reference: softmax(scale * q . k) . v over the widened values
          std::vector<double> sc(npos);
          double mx = -INFINITY, sum = 0;
          for (int p = 0; p < npos; ++p) {
            const float* key = kb[p / block_size] + static_cast<size_t>(p % block_size) * d;
            double dot = 0;
            for (int i = 0; i < d; ++i) dot += static_cast<double>(qs[h][i]) * key[i];
            sc[p] = scale * dot;
            mx = std::max(mx, sc[p]);
          }
          for (double& x : sc) sum += (x = std::exp(x - mx));
          for (int i = 0; i < d; ++i) {
            double ref = 0;
            for (int p = 0; p < npos; ++p)
              ref += sc[p] / sum * vb[p / block_size][static_cast<size_t>(p % block_size) * d + i];
            ASSERT_EQ(gots[h][i], wants[h][i]) << "g " << g << " d " << d << " block " << block_size;
            ASSERT_NEAR(gots[h][i], ref, 1e-5 + 1e-5 * std::fabs(ref)) << "g " << g << " d " << d;
          }
        }
      }
    }
  }
}

TEST(DTypes, Bf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties go to the even mantissa.
  EXPECT_EQ(F32ToBf16(1.0f + 1.0f / 256), 0x3f80);
  EXPECT_EQ(F32ToBf16(1.0f + 3.0f / 256), 0x3f82);
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(NAN))));
  EXPECT_EQ(Bf16ToF32(F32ToBf16(-2.5f)), -2.5f);
}

TEST(DTypes, F16EveryValueRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToF16(f), h) << std::hex << h;
  }
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));         // smallest subnormal
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);                      // rounds to inf
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);                      // largest finite
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie -> even
}

TEST(DTypes, DispatchPicksASupportedIsa) {
  const auto isas = SupportedIsas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.back(), "portable");
  EXPECT_EQ(std::string(ActiveKernels().isa), getenv("TPSERVE_ISA") ? getenv("TPSERVE_ISA") : isas.front());
}

}  // namespace
}  // namespace tpserve::kernels
