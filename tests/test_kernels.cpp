// Every CPU kernel against a plain double-precision reference written here, for every ISA path
// this CPU supports and every weight dtype, with odd sizes and misaligned tails.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "cpu/kernels.h"

namespace tpserve::kernels {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Weights in `dt` (bytes) plus their exact values as doubles.
struct Weights {
  std::vector<uint8_t> bytes;
  std::vector<double> exact;
};
Weights MakeWeights(const std::vector<float>& f, DType dt) {
  Weights w;
  w.bytes.resize(f.size() * DTypeSize(dt) + 64);
  ConvertDType(f.data(), DType::kF32, w.bytes.data(), dt, f.size());
  std::vector<float> back(f.size());
  ConvertDType(w.bytes.data(), dt, back.data(), DType::kF32, f.size());
  w.exact.assign(back.begin(), back.end());
  return w;
}

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
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
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
    for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
      const int n = 3, m = 37, k = 75;
      const std::vector<float> x = Random(n * k, 5);
      Weights w = MakeWeights(Random(m * k, 6), dt);
      std::vector<float> y(n * m);
      MatmulNT(kt, x.data(), n, w.bytes.data(), dt, m, k, y.data());
      for (int t = 0; t < n; ++t) {
        for (int o = 0; o < m; ++o) {
          double want = 0, mag = 0;
          for (int i = 0; i < k; ++i) {
            want += static_cast<double>(x[t * k + i]) * w.exact[o * k + i];
            mag += std::abs(x[t * k + i] * w.exact[o * k + i]);
          }
          ASSERT_NEAR(y[t * m + o], want, 4 * k * 6e-8 * mag) << isa << " " << DTypeName(dt);
        }
      }
    }
  }
}

// Batching must not change a token's result: dot4 and MatmulNT rows are bitwise equal to dot.
TEST(Kernels, Dot4AndMatmulRowsAreBitwiseTheSingleDot) {
  for (const std::string& isa : SupportedIsas()) {
    const CpuKernelTable& kt = *KernelsForIsa(isa);
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
      for (int k : {1, 15, 16, 17, 33, 64, 100, 1001}) {
        const std::vector<float> x = Random(9 * k, 21 + k);
        Weights w = MakeWeights(Random(5 * k, 22 + k), dt);
        const float* xs[4] = {&x[0], &x[k], &x[2 * k], &x[3 * k]};
        float out[4];
        kt.dot4[static_cast<int>(dt)](xs, w.bytes.data(), k, out);
        for (int j = 0; j < 4; ++j) {
          const float single = kt.dot[static_cast<int>(dt)](xs[j], w.bytes.data(), k);
          ASSERT_EQ(std::memcmp(&out[j], &single, 4), 0) << isa << " " << DTypeName(dt) << " k=" << k;
        }
        for (int n = 1; n <= 9; ++n) {
          std::vector<float> y(n * 5);
          MatmulNT(kt, x.data(), n, w.bytes.data(), dt, 5, k, y.data());
          for (int t = 0; t < n; ++t) {
            for (int o = 0; o < 5; ++o) {
              const float single = kt.dot[static_cast<int>(dt)](
                  &x[t * k], w.bytes.data() + static_cast<size_t>(o) * k * DTypeSize(dt), k);
              ASSERT_EQ(std::memcmp(&y[t * 5 + o], &single, 4), 0) << isa << " n=" << n << " t=" << t;
            }
          }
        }
      }
    }
  }
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
  const std::vector<float> g = Random(101, 4, 8.0f), u = Random(101, 5);
  std::vector<float> out(101);
  SiluMul(g.data(), u.data(), 101, out.data());
  for (int i = 0; i < 101; ++i) {
    const double want = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
    ASSERT_NEAR(out[i], want, 1e-6 * (1 + std::abs(want)));
  }
}

TEST(Kernels, PagedAttentionHeadMatchesSoftmaxReference) {
  for (int npos : {1, 2, 16, 17, 19, 300}) {
    for (int block_size : {1, 16, 512}) {  // 512: the whole sequence in one (contiguous) block
      const int d = 24;
      const int nblocks = (npos + block_size - 1) / block_size;
      // Blocks in scattered order inside one pool, as a block table would place them.
      const std::vector<float> q = Random(d, 7, 2.0f), kpool = Random(nblocks * block_size * d * 2, 8, 2.0f),
                               vpool = Random(nblocks * block_size * d * 2, 9);
      std::vector<const float*> kb(nblocks), vb(nblocks);
      for (int b = 0; b < nblocks; ++b) {
        const size_t slot = static_cast<size_t>((b * 7) % (2 * nblocks)) * block_size * d;
        kb[b] = kpool.data() + slot;
        vb[b] = vpool.data() + slot;
      }
      auto k_at = [&](int p, int i) { return kb[p / block_size][(p % block_size) * d + i]; };
      auto v_at = [&](int p, int i) { return vb[p / block_size][(p % block_size) * d + i]; };
      std::vector<float> out(d), scratch(npos);
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
        ASSERT_NEAR(out[i], want, 2e-6) << "npos " << npos << " block " << block_size;
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
