// The oneDNN GEMM paths (prefill and batched rows) and prefill attention against plain
// double-precision references written here, with odd sizes, row strides and thread splits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>

#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"
#include "test_util.h"

namespace tpserve::kernels {
namespace {

using testing::RandomFloats;
std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  return RandomFloats(n, seed, scale);
}

// Values as the kernel sees them: bf16 weights meet activations rounded to bf16 as well.
std::vector<double> AsSeen(const std::vector<float>& v, DType dt) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = dt == DType::kBF16 ? Bf16ToF32(F32ToBf16(v[i])) : v[i];
  return out;
}

TEST(Gemm, GemmNTMatchesReferenceForOddShapesAndThreadCounts) {
  for (int threads : {1, 2, 3}) {
    SetThreads(threads);
    for (DType dt : {DType::kF32, DType::kBF16}) {
      for (int n : {8, 9, 33}) {
        for (int m : {1, 37, 64, 65, 200}) {
          for (int k : {1, 75, 129}) {
            const int ldy = m + 3;  // the output may be a column block of a wider matrix
            const std::vector<float> x = Random(static_cast<size_t>(n) * k, n + k),
                                     wf = Random(static_cast<size_t>(m) * k, m);
            std::vector<uint16_t> wb(wf.size());
            ConvertDType(wf.data(), DType::kF32, wb.data(), DType::kBF16, wf.size());
            const void* w = dt == DType::kBF16 ? static_cast<const void*>(wb.data()) : wf.data();
            std::vector<float> y(static_cast<size_t>(n) * ldy, -7.0f);
            GemmNT(x.data(), n, w, dt, m, k, y.data(), ldy);
            const std::vector<double> xs = AsSeen(x, dt), ws = AsSeen(wf, dt);
            for (int t = 0; t < n; ++t) {
              for (int o = 0; o < ldy; ++o) {
                if (o >= m) {
                  ASSERT_EQ(y[t * ldy + o], -7.0f) << "wrote past column " << m;
                  continue;
                }
                double want = 0, mag = 0;
                for (int i = 0; i < k; ++i) {
                  want += xs[t * k + i] * ws[o * k + i];
                  mag += std::abs(xs[t * k + i] * ws[o * k + i]);
                }
                ASSERT_NEAR(y[t * ldy + o], want, 4 * k * 6e-8 * mag + 1e-30)
                    << DTypeName(dt) << " n=" << n << " m=" << m << " k=" << k << " threads=" << threads;
              }
            }
          }
        }
      }
    }
  }
  SetThreads(1);
}

TEST(Gemm, StridedSerialProductsMatchReference) {
  const int n = 13, m = 29, k = 21, ldx = k + 5, ldw = 40, ldy = m + 2;
  const std::vector<float> x = Random(static_cast<size_t>(n) * ldx, 1),
                           w = Random(static_cast<size_t>(m) * ldw, 2),
                           wnn = Random(static_cast<size_t>(k) * ldw, 3);
  std::vector<float> y(static_cast<size_t>(n) * ldy), z(static_cast<size_t>(n) * ldy);
  GemmNTSerial(x.data(), ldx, n, w.data(), ldw, m, k, y.data(), ldy);    // w: (m, k) rows of ldw
  GemmNNSerial(x.data(), ldx, n, wnn.data(), ldw, m, k, z.data(), ldy);  // w: (k, m) rows of ldw
  for (int t = 0; t < n; ++t) {
    for (int o = 0; o < m; ++o) {
      double nt = 0, nn = 0;
      for (int i = 0; i < k; ++i) {
        nt += static_cast<double>(x[t * ldx + i]) * w[o * ldw + i];
        nn += static_cast<double>(x[t * ldx + i]) * wnn[i * ldw + o];
      }
      ASSERT_NEAR(y[t * ldy + o], nt, 1e-5);
      ASSERT_NEAR(z[t * ldy + o], nn, 1e-5);
    }
  }
}

// The engine's Matmul takes the dot kernels below kGemmMinRows rows, in deterministic mode, and
// for dtypes the GEMM does not take: bitwise MatmulNT there.
TEST(Gemm, MatmulPolicyKeepsTheBatchInvariantKernelsWhereItMust) {
  const int m = 40, k = 67;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    const std::vector<float> wf = Random(static_cast<size_t>(m) * k, 9);
    std::vector<uint8_t> w(wf.size() * DTypeSize(dt));
    ConvertDType(wf.data(), DType::kF32, w.data(), dt, wf.size());
    for (int n : {1, kGemmMinRows - 1, kGemmMinRows, 20}) {
      for (bool batch_invariant : {false, true}) {
        const std::vector<float> x = Random(static_cast<size_t>(n) * k, n);
        std::vector<float> got(static_cast<size_t>(n) * m), want(got.size());
        Matmul(x.data(), n, w.data(), dt, m, k, got.data(), nullptr, batch_invariant);
        MatmulNT(x.data(), n, w.data(), dt, m, k, want.data());
        const bool gemm = !batch_invariant && n >= kGemmMinRows && GemmSupports(dt);
        if (!gemm) {
          EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
              << DTypeName(dt) << " n=" << n << " batch_invariant=" << batch_invariant;
        } else {
          for (size_t i = 0; i < got.size(); ++i)
            ASSERT_NEAR(got[i], want[i], 0.05) << DTypeName(dt) << " n=" << n;
        }
      }
    }
  }
}

// The packed layout written out from its definition (kernels.h), independently of PackedBf16.
std::vector<uint16_t> PackByDefinition(const std::vector<uint16_t>& w, int m, int k, int kpad) {
  const int blocks = (m + kPackedRows - 1) / kPackedRows;
  std::vector<uint16_t> out(static_cast<size_t>(blocks) * kpad * kPackedRows, 0);
  for (int o = 0; o < m; ++o) {
    for (int c = 0; c < k; ++c) {
      const size_t in_block = (static_cast<size_t>(c / 2) * kPackedRows + o % kPackedRows) * 2 + c % 2;
      out[static_cast<size_t>(o / kPackedRows) * kpad * kPackedRows + in_block] =
          w[static_cast<size_t>(o) * k + c];
    }
  }
  return out;
}

// y = x w^T with bf16 w (and x rounded to bf16 when x_bf16), in double, against got (rows of
// stride ldy).
void ExpectBf16Product(const std::vector<float>& x, bool x_bf16, const std::vector<float>& wf, int n, int m,
                       int k, const float* got, int ldy, const std::string& what) {
  const std::vector<double> xs = AsSeen(x, x_bf16 ? DType::kBF16 : DType::kF32),
                            ws = AsSeen(wf, DType::kBF16);
  for (int t = 0; t < n; ++t) {
    for (int o = 0; o < m; ++o) {
      double want = 0, mag = 0;
      for (int i = 0; i < k; ++i) {
        want += xs[t * k + i] * ws[o * k + i];
        mag += std::abs(xs[t * k + i] * ws[o * k + i]);
      }
      ASSERT_NEAR(got[static_cast<size_t>(t) * ldy + o], want, 4 * k * 6e-8 * mag + 1e-30)
          << what << " n=" << n << " m=" << m << " k=" << k << " row " << t << " col " << o;
    }
  }
}

std::vector<uint16_t> ToBf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  ConvertDType(v.data(), DType::kF32, out.data(), DType::kBF16, v.size());
  return out;
}

// One packed block of `cols` random output rows over k inputs, built from the layout's definition.
struct TestBlock {
  int kpad;
  std::vector<float> wf;        // the weights as drawn (cols x k)
  std::vector<uint16_t> block;  // their bf16 rounding, packed (64 x kpad)
};
TestBlock MakeTestBlock(int cols, int k) {
  TestBlock b;
  b.kpad = (k + kPackedKAlign - 1) / kPackedKAlign * kPackedKAlign;
  b.wf = Random(static_cast<size_t>(cols) * k, k + cols);
  b.block = PackByDefinition(ToBf16(b.wf), cols, k, b.kpad);
  return b;
}

// Every ISA's packed kernel over one block built from the layout's definition: row counts on
// both sides of its 4-row groups, k not a multiple of the pair or the 32-wide k block, and fewer
// than 64 valid output rows (the rest of y must stay untouched).
TEST(PackedBf16, BlockKernelOfEveryIsaMatchesReference) {
  for (const std::string& isa : SupportedIsas()) {
    const CpuKernelTable& kt = *KernelsForIsa(isa);
    for (int k : {1, 2, 31, 33, 100}) {
      for (int cols : {1, 17, 64}) {
        const auto [kpad, wf, block] = MakeTestBlock(cols, k);
        for (int n : {1, 2, 3, 4, 5, 7, 9}) {
          const std::vector<float> x = Random(static_cast<size_t>(n) * k, n * 3 + k);
          std::vector<float> xp(static_cast<size_t>(n) * kpad, 0.0f);
          for (int t = 0; t < n; ++t)
            std::copy_n(&x[static_cast<size_t>(t) * k], k, &xp[static_cast<size_t>(t) * kpad]);
          const int ldy = 70;
          std::vector<float> y(static_cast<size_t>(n) * ldy, -7.0f);
          kt.packed_bf16(xp.data(), n, kpad, block.data(), y.data(), ldy, cols);
          ExpectBf16Product(x, /*x_bf16=*/false, wf, n, cols, k, y.data(), ldy, isa);
          for (int t = 0; t < n; ++t) {
            for (int o = cols; o < ldy; ++o) ASSERT_EQ(y[static_cast<size_t>(t) * ldy + o], -7.0f) << isa;
          }
        }
      }
    }
  }
}

// The AMX block kernel (batched decode) over the same blocks, with bf16 activations: row counts
// on both sides of its 16-row tiles, partial tiles of k, fewer than 64 valid output rows.
TEST(PackedBf16, AmxBlockKernelMatchesReference) {
  if (!AmxBf16Usable()) GTEST_SKIP() << "this CPU (or kernel) offers no AMX-BF16: packed GEMMs use oneDNN";
  for (int k : {1, 31, 33, 100, 200}) {
    for (int cols : {1, 17, 64}) {
      const auto [kpad, wf, block] = MakeTestBlock(cols, k);
      for (int n : {1, 8, 15, 16, 17, 24, 33, 64}) {
        const std::vector<float> x = Random(static_cast<size_t>(n) * k, n * 3 + k);
        AlignedVector<uint16_t> xb(7, 0xffff);  // the call resizes it and writes every element
        AmxTileActivations(x.data(), n, k, kpad, &xb);
        ASSERT_EQ(reinterpret_cast<uintptr_t>(xb.data()) % 64, 0u);
        ASSERT_EQ(xb.size(), static_cast<size_t>((n + 15) / 16 * 16) * kpad);
        // The tile order, from its definition: row t, input c at group t / 16, tile c / 32.
        for (int t = 0; t < n; ++t) {
          for (int c = 0; c < kpad; ++c) {
            const size_t at = (static_cast<size_t>(t / 16) * kpad + c / 32 * 32) * 16 + t % 16 * 32 + c % 32;
            const uint16_t want = c < k ? ToBf16({x[static_cast<size_t>(t) * k + c]})[0] : 0;
            ASSERT_EQ(xb.data()[at], want) << "tile order, row " << t << " input " << c;
          }
        }
        const int ldy = 70;
        std::vector<float> y(static_cast<size_t>(n) * ldy, -7.0f);
        PackedBf16Amx(xb.data(), n, kpad, block.data(), /*nblocks=*/1, y.data(), ldy, cols);
        ExpectBf16Product(x, /*x_bf16=*/true, wf, n, cols, k, y.data(), ldy, "amx n=" + std::to_string(n));
        for (int t = 0; t < n; ++t) {
          for (int o = cols; o < ldy; ++o) ASSERT_EQ(y[static_cast<size_t>(t) * ldy + o], -7.0f) << "amx";
        }
      }
    }
  }
}

// The AVX512-BF16 block kernel (batched products without AMX) with bf16 activations: row counts
// on both sides of its 6-row groups, k across its 64-pair chunks (300: three chunks, the last
// partial), fewer than 64 and fewer than 33 valid output rows, NaN filler past each row's kpad.
TEST(PackedBf16, Bf16DotBlockKernelMatchesReference) {
  if (!Bf16DotUsable()) GTEST_SKIP() << "this CPU has no AVX512-BF16: packed GEMMs use AMX or oneDNN";
  for (int k : {1, 31, 33, 100, 300}) {
    for (int cols : {1, 17, 33, 64}) {
      const auto [kpad, wf, block] = MakeTestBlock(cols, k);
      for (int n : {1, 2, 8, 15, 16, 23, 24, 25, 29, 31, 36, 64}) {
        const std::vector<float> x = Random(static_cast<size_t>(n) * k, n * 3 + k);
        const int ldx = kpad + kBf16DotRowPad;  // rows of kpad, zero-padded, then filler
        std::vector<uint16_t> xb(static_cast<size_t>(n) * ldx, 0x7fc0);
        for (int t = 0; t < n; ++t) {
          uint16_t* row = &xb[static_cast<size_t>(t) * ldx];
          ConvertDType(&x[static_cast<size_t>(t) * k], DType::kF32, row, DType::kBF16, k);
          std::fill(row + k, row + kpad, uint16_t{0});
        }
        const int ldy = 70;
        std::vector<float> y(static_cast<size_t>(n) * ldy, -7.0f);
        PackedBf16Dot(xb.data(), ldx, n, kpad, block.data(), y.data(), ldy, cols);
        const std::string what = "bf16 dot cols=" + std::to_string(cols);
        ExpectBf16Product(x, /*x_bf16=*/true, wf, n, cols, k, y.data(), ldy, what);
        for (int t = 0; t < n; ++t) {
          for (int o = cols; o < ldy; ++o) ASSERT_EQ(y[static_cast<size_t>(t) * ldy + o], -7.0f) << what;
        }
      }
    }
  }
}

// Pack writes exactly the defined layout (zero padding included) and Unpack restores the matrix
// bit for bit; MatmulPacked, through the block kernel (fewer than 8 rows) and from 8 rows on
// through the AMX kernel (where the CPU has AMX), the AVX512-BF16 one and oneDNN, then computes the right
// product, which shows that oneDNN reads the layout as defined. Shapes
// cover partial blocks, at k = 2100 several ~1 MB slices per thread, and at k = 2048 a batch of
// more than one row chunk.
TEST(PackedBf16, PackUnpackAndProductsMatchReference) {
  if (!PackedBf16::Pack(std::vector<uint16_t>(64 * 64).data(), 64, 64)) {
    GTEST_SKIP() << "this CPU's oneDNN bf16 kernels use another weight layout, or it lacks AVX512-BF16: "
                    "bf16 weights stay plain here";
  }
  struct Case {
    int m, k;
  };
  // Products at 1 thread, to compare the others with bit for bit: each block is one thread's work
  // whatever the split (fixed or taken in turns). Not the oneDNN path (AMX off or missing): its
  // GEMM over a thread's slice of the weights may sum in another order than over the whole.
  std::map<std::string, std::vector<float>> one_thread;
  for (int threads : {1, 2, 3}) {
    SetThreads(threads);
    for (const Case& c : {Case{1, 1}, Case{37, 75}, Case{64, 64}, Case{65, 129}, Case{200, 33},
                          Case{450, 2100}, Case{130, 2048}}) {
      const std::vector<float> wf = Random(static_cast<size_t>(c.m) * c.k, c.m + c.k);
      const std::vector<uint16_t> wb = ToBf16(wf);
      auto packed = PackedBf16::Pack(wb.data(), c.m, c.k);
      ASSERT_TRUE(packed) << "m=" << c.m << " k=" << c.k;
      ASSERT_EQ(packed->padded_cols() % kPackedKAlign, 0);
      const std::vector<uint16_t> want = PackByDefinition(wb, c.m, c.k, packed->padded_cols());
      ASSERT_EQ(packed->bytes(), want.size() * sizeof(uint16_t));
      ASSERT_EQ(std::memcmp(packed->block(0), want.data(), packed->bytes()), 0)
          << "m=" << c.m << " k=" << c.k;
      std::vector<uint16_t> back(wb.size(), 0xffff);
      packed->Unpack(back.data());
      ASSERT_EQ(back, wb);
      std::vector<uint16_t> row(c.k);
      packed->UnpackRow(c.m - 1, row.data());
      ASSERT_EQ(std::memcmp(row.data(), &wb[static_cast<size_t>(c.m - 1) * c.k], c.k * sizeof(uint16_t)), 0);
      // The batched paths in turn: AMX (where the CPU has it), AVX512-BF16, oneDNN.
      for (const auto& [amx, dot] :
           {std::pair{true, true}, std::pair{false, true}, std::pair{false, false}}) {
        UseAmxForPackedGemm(amx);
        UseBf16DotForPackedGemm(dot);
        const char* path = AmxForPackedGemm() ? " amx" : Bf16DotForPackedGemm() ? " dot" : " onednn";
        // 50: a last group of 18 rows after a full one (the AMX tile configuration changes
        // twice per block); 600 at k = 2048: two row chunks of the AMX path (288 + 312).
        std::vector<int> ns = {1, 3, kGemmMinRows - 1, kGemmMinRows, 9, 20, kBf16DotMaxRows, 33, 50, 70};
        if (c.k == 2048) ns.push_back(600);
        // 130 and 160 at k <= 512: the AMX kernel's group-by-group order (a last group of 2 rows,
        // and partial blocks, at 130).
        if (c.k <= 512 && c.m >= 37) ns.insert(ns.end(), {130, 160});
        for (int n : ns) {
          const std::vector<float> x = Random(static_cast<size_t>(n) * c.k, n + 5);
          std::vector<float> y(static_cast<size_t>(n) * c.m);
          MatmulPacked(x.data(), n, *packed, y.data());
          const std::string key = std::to_string(c.m) + " " + std::to_string(c.k) + " " + std::to_string(n) +
                                  (amx ? " amx" : "") + (dot ? " dot" : "");
          if (threads == 1) {
            one_thread[key] = y;
          } else if (n < kGemmMinRows || std::string(path) != " onednn") {  // oneDNN's slices differ
            ASSERT_EQ(std::memcmp(y.data(), one_thread[key].data(), y.size() * sizeof(float)), 0)
                << key << " at " << threads << " threads";
          }
          // Like plain bf16 weights: the GEMM (kGemmMinRows rows and more) takes bf16 activations.
          ExpectBf16Product(x, n >= kGemmMinRows, wf, n, c.m, c.k, y.data(), c.m,
                            "threads " + std::to_string(threads) + path);
        }
      }
      UseAmxForPackedGemm(true);
      UseBf16DotForPackedGemm(true);
    }
  }
  SetThreads(1);
}

// Double reference of one query's causal attention: softmax(scale q.k) over keys 0..valid-1
// (k, v: rows of d), then the weighted sum of the values.
std::vector<double> AttentionReference(const float* q, const std::vector<float>& k,
                                       const std::vector<float>& v, int d, int valid, double scale) {
  std::vector<double> s(valid), out(d, 0.0);
  double mx = -1e300, z = 0;
  for (int p = 0; p < valid; ++p) {
    double dot = 0;
    for (int i = 0; i < d; ++i) dot += static_cast<double>(q[i]) * k[static_cast<size_t>(p) * d + i];
    s[p] = dot * scale;
    mx = std::max(mx, s[p]);
  }
  for (double& x : s) z += (x = std::exp(x - mx));
  for (int p = 0; p < valid; ++p) {
    for (int i = 0; i < d; ++i) out[i] += s[p] / z * v[static_cast<size_t>(p) * d + i];
  }
  return out;
}

// Causal attention of a prefill chunk (rows at positions pos0..) against a double softmax
// reference, across the query-tile boundary and with row strides, as the engine calls it.
TEST(Gemm, AttentionPrefillMatchesCausalSoftmaxReference) {
  const int d = 24, ldq = 3 * d;  // three heads per row: this test reads the middle one
  for (int pos0 : {0, 5, 100}) {
    for (int rows : {1, 8, kAttentionTileRows, kAttentionTileRows + 7}) {
      const int npos = pos0 + rows;
      const std::vector<float> q = Random(static_cast<size_t>(rows) * ldq, 1 + rows, 2.0f),
                               kk = Random(static_cast<size_t>(npos) * d, 2 + npos, 2.0f),
                               v = Random(static_cast<size_t>(npos) * d, 3 + npos);
      std::vector<float> out(static_cast<size_t>(rows) * ldq, 0.0f),
          scratch(static_cast<size_t>(kAttentionTileRows) * npos);
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      AttentionPrefill(q.data() + d, ldq, rows, pos0, kk.data(), v.data(), d, scale, out.data() + d, ldq,
                       scratch.data());
      for (int r = 0; r < rows; ++r) {
        const std::vector<double> want = AttentionReference(&q[r * ldq + d], kk, v, d, pos0 + r + 1,
                                                            1.0 / std::sqrt(static_cast<double>(d)));
        for (int i = 0; i < d; ++i) {
          ASSERT_NEAR(out[r * ldq + d + i], want[i], 2e-6)
              << "pos0 " << pos0 << " rows " << rows << " row " << r;
          ASSERT_EQ(out[r * ldq + i], 0.0f) << "wrote into the neighbouring head";
        }
      }
    }
  }
}

// The AMX attention against a double reference over the same bf16-rounded queries, keys and
// values: what is left is the probabilities' rounding to bf16 (at most 2^-8 of each, so of the
// output at most 2^-8 of max |v|) and f32 sums. Across 16-row tiles, 64-key groups, d not a
// multiple of 64, and with row strides; a prompt split into two calls gives the same bits.
TEST(Gemm, AttentionPrefillAmxMatchesCausalSoftmaxReference) {
  if (!AmxBf16Usable()) GTEST_SKIP() << "no AMX-BF16 on this CPU (or Linux did not grant the tile state)";
  auto bf16 = [](std::vector<float> x) {
    for (float& f : x) f = Bf16ToF32(F32ToBf16(f));
    return x;
  };
  for (int d : {32, 64, 96, 128, 256}) {
    ASSERT_TRUE(AmxAttentionSupports(d));
    const int ldq = 3 * d;  // three heads per row: this test reads and writes the middle one
    for (int pos0 : {0, 5, 100}) {
      for (int rows : {1, 8, 16, 17, 40}) {
        const int npos = pos0 + rows;
        const std::vector<float> q = Random(static_cast<size_t>(rows) * ldq, 1 + rows + d, 2.0f),
                                 kk = Random(static_cast<size_t>(npos) * d, 2 + npos + d, 2.0f),
                                 v = Random(static_cast<size_t>(npos) * d, 3 + npos + d);
        const std::vector<float> qr = bf16(q), kr = bf16(kk), vr = bf16(v);
        AmxKvTiles kv;
        PrepareAmxKv(kk.data(), v.data(), npos, d, &kv);
        std::vector<float> out(static_cast<size_t>(rows) * ldq, 0.0f);
        const float scale = 1.0f / std::sqrt(static_cast<float>(d));
        AttentionPrefillAmx(q.data() + d, ldq, rows, pos0, kv, scale, out.data() + d, ldq);
        const std::string where =
            "d " + std::to_string(d) + " pos0 " + std::to_string(pos0) + " rows " + std::to_string(rows);
        const double vmax = std::abs(*std::max_element(
            vr.begin(), vr.end(), [](float a, float b) { return std::abs(a) < std::abs(b); }));
        for (int r = 0; r < rows; ++r) {
          const std::vector<double> want =
              AttentionReference(&qr[r * ldq + d], kr, vr, d, pos0 + r + 1, scale);
          for (int i = 0; i < d; ++i) {
            ASSERT_NEAR(out[r * ldq + d + i], want[i], (1.0 / 256 + 1e-5) * vmax)
                << where << " row " << r << " dim " << i;
            ASSERT_EQ(out[r * ldq + i], 0.0f) << "wrote into the neighbouring head";
            ASSERT_EQ(out[r * ldq + 2 * d + i], 0.0f) << "wrote into the neighbouring head";
          }
        }
        // Chunked as the engine does it: the first `split` rows with the tiles of only the keys
        // they may see, then the rest at their positions with all of them.
        const int split = rows / 2 + 1;
        if (split < rows) {
          std::vector<float> chunked(out.size(), 0.0f);
          AmxKvTiles first;
          PrepareAmxKv(kk.data(), v.data(), pos0 + split, d, &first);
          AttentionPrefillAmx(q.data() + d, ldq, split, pos0, first, scale, chunked.data() + d, ldq);
          AttentionPrefillAmx(q.data() + static_cast<size_t>(split) * ldq + d, ldq, rows - split,
                              pos0 + split, kv, scale, chunked.data() + static_cast<size_t>(split) * ldq + d,
                              ldq);
          ASSERT_EQ(std::memcmp(chunked.data(), out.data(), out.size() * sizeof(float)), 0) << where;
        }
      }
    }
  }
}

// The K/V tiles, written out here from their layout (kernels.h: AmxKvTiles; zeros past the keys, up
// to a multiple of kAmxKeyBlock), from a contiguous f32 cache and from paged f32 and bf16 caches
// holding the same values, whatever the block size and a last block's fill. The rows past the keys
// hold NaN, as stale rows of a reused block may: a read of them would show. (No tile instructions:
// runs on any CPU.)
TEST(Gemm, PrepareAmxKvFromPagedBlocksMatchesTheTileLayout) {
  for (int d : {32, 96}) {
    for (int keys : {1, 17, 64, 65, 70}) {
      const std::vector<float> kk = Random(static_cast<size_t>(keys) * d, 5 + keys + d, 2.0f),
                               v = Random(static_cast<size_t>(keys) * d, 6 + keys + d);
      const int padded = (keys + kAmxKeyBlock - 1) / kAmxKeyBlock * kAmxKeyBlock;
      const int dsteps = d / 32, dcols = d / 16;
      // kt: tile (16 keys jb, 32 dims ds), row = pair of dims, column = key x 2 + dim in the pair;
      // vt: tile (32 keys js, 16 dims cb), row = pair of keys, column = dim x 2 + key in the pair.
      AlignedVector<uint16_t> kt(static_cast<size_t>(padded) * d, 0), vt(kt.size(), 0);
      for (int j = 0; j < keys; ++j) {
        for (int c = 0; c < d; ++c) {
          kt[static_cast<size_t>(j / 16 * dsteps + c / 32) * 512 + (c % 32 / 2) * 32 + (j % 16) * 2 + c % 2] =
              F32ToBf16(kk[static_cast<size_t>(j) * d + c]);
          vt[static_cast<size_t>(j / 32 * dcols + c / 16) * 512 + (j % 32 / 2) * 32 + (c % 16) * 2 + j % 2] =
              F32ToBf16(v[static_cast<size_t>(j) * d + c]);
        }
      }
      AmxKvTiles contiguous;
      PrepareAmxKv(kk.data(), v.data(), keys, d, &contiguous);
      EXPECT_EQ(contiguous.keys, keys);
      EXPECT_EQ(contiguous.kt, kt) << "contiguous, d " << d << " keys " << keys;
      EXPECT_EQ(contiguous.vt, vt) << "contiguous, d " << d << " keys " << keys;
      for (int bs : {1, 3, 16}) {
        for (DType dt : {DType::kF32, DType::kBF16}) {
          // Each block in a buffer of its own, a full block's size, as the cache's blocks are.
          const int nblocks = (keys + bs - 1) / bs;
          const size_t elem = DTypeSize(dt), block_bytes = static_cast<size_t>(bs) * d * elem;
          std::vector<std::vector<char>> kbuf(nblocks, std::vector<char>(block_bytes, '\xff')),
              vbuf(nblocks, std::vector<char>(block_bytes, '\xff'));
          std::vector<const void*> kb(nblocks), vb(nblocks);
          for (int b = 0; b < nblocks; ++b) {
            const size_t n = static_cast<size_t>(std::min(bs, keys - b * bs)) * d;
            ConvertDType(&kk[static_cast<size_t>(b) * bs * d], DType::kF32, kbuf[b].data(), dt, n);
            ConvertDType(&v[static_cast<size_t>(b) * bs * d], DType::kF32, vbuf[b].data(), dt, n);
            kb[b] = kbuf[b].data();
            vb[b] = vbuf[b].data();
          }
          AmxKvTiles got;
          PrepareAmxKv(kb.data(), vb.data(), dt, bs, keys, d, &got);
          const std::string where = "d " + std::to_string(d) + " keys " + std::to_string(keys) + " block " +
                                    std::to_string(bs) + (dt == DType::kBF16 ? " bf16" : " f32");
          EXPECT_EQ(got.keys, keys) << where;
          EXPECT_EQ(got.kt, kt) << where;
          EXPECT_EQ(got.vt, vt) << where;
        }
      }
    }
  }
}

TEST(Gemm, ExpShiftedSumMatchesStdExp) {
  for (float top : {10.0f, 88.0f}) {  // the sum is checked where it stays finite
    std::vector<float> x;
    for (float t = -100.0f; t <= top; t += 0.0137f) x.push_back(t);
    std::vector<float> e = x;
    const float sum = ExpShiftedSum(e.data(), static_cast<int>(e.size()), 0.0f);
    double want_sum = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double want = x[i] < -87.0f ? 0.0 : std::exp(static_cast<double>(x[i]));
      want_sum += want;
      ASSERT_NEAR(e[i], want, 4e-7 * want) << "exp(" << x[i] << ")";
    }
    if (top < 80) {
      EXPECT_NEAR(sum, want_sum, 1e-5 * want_sum);
    }
  }
  float one = 3.5f;  // exp(shift - shift) = 1
  EXPECT_EQ(ExpShiftedSum(&one, 1, 3.5f), 1.0f);
}

// Softmax of scaled scores against double, with the largest score in the vector part or in the
// tail (n not a multiple of 16) and large enough that exp overflows unless it is subtracted.
TEST(Gemm, ScaledSoftmaxMatchesReferenceWhereExpWouldOverflow) {
  for (int n : {1, 15, 16, 17, 40, 301}) {
    for (int top : {0, n - 1, n / 2}) {
      std::vector<float> x = Random(n, n + top, 3.0f);
      x[top] = 300.0f;
      if (n > 1) x[(top + 1) % n] = 299.5f;
      const float scale = 0.5f;
      std::vector<float> y = x;
      ScaledSoftmax(y.data(), n, scale);
      double mx = -1e300, z = 0;
      for (float v : x) mx = std::max(mx, static_cast<double>(v) * scale);
      for (float v : x) z += std::exp(static_cast<double>(v) * scale - mx);
      for (int i = 0; i < n; ++i) {
        const double want = std::exp(static_cast<double>(x[i]) * scale - mx) / z;
        ASSERT_NEAR(y[i], want, 1e-6) << "n " << n << " top " << top << " at " << i;
      }
    }
  }
}

}  // namespace
}  // namespace tpserve::kernels
