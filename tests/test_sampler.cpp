// Sampler: parameter validation, and the sampling distribution.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/sampler.h"

namespace tpserve {
namespace {

TEST(Sampler, ValidateRejectsBadValues) {
  SamplingParams p;
  EXPECT_TRUE(p.Validate().ok());
  p.temperature = -0.1f;
  EXPECT_FALSE(p.Validate().ok());
  p.temperature = NAN;
  EXPECT_FALSE(p.Validate().ok());
  p = {};
  p.top_p = 0.0f;
  EXPECT_FALSE(p.Validate().ok());
  p.top_p = 1.5f;
  EXPECT_FALSE(p.Validate().ok());
  p = {};
  p.top_k = -1;
  EXPECT_FALSE(p.Validate().ok());
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  const float v[] = {0.1f, 2.0f, 1.9f, -1.0f};
  std::mt19937_64 rng(1);
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 1;
  for (int i = 0; i < 50; ++i) EXPECT_EQ(SampleToken(v, 4, p, rng), 1);
  p.top_k = 0;
  p.top_p = 1e-6f;
  for (int i = 0; i < 50; ++i) EXPECT_EQ(SampleToken(v, 4, p, rng), 1);
}

TEST(Sampler, FrequenciesFollowSoftmax) {
  const float v[] = {0.0f, 1.0f, 2.0f};
  SamplingParams p;
  p.temperature = 1.0f;
  std::mt19937_64 rng(123);
  int counts[3] = {};
  const int n = 60000;
  for (int i = 0; i < n; ++i) ++counts[SampleToken(v, 3, p, rng)];
  const double z = 1 + std::exp(1.0) + std::exp(2.0);
  for (int i = 0; i < 3; ++i) {
    const double want = std::exp(static_cast<double>(i)) / z;
    EXPECT_NEAR(counts[i] / static_cast<double>(n), want, 0.01) << i;
  }
}

TEST(Sampler, TopPKeepsSmallestNucleus) {
  // probs ~ 0.665, 0.245, 0.090: top_p 0.8 keeps the first two only.
  const float v[] = {2.0f, 1.0f, 0.0f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.8f;
  std::mt19937_64 rng(5);
  for (int i = 0; i < 2000; ++i) EXPECT_NE(SampleToken(v, 3, p, rng), 2);
}

TEST(Sampler, SameSeedSameTokens) {
  std::vector<float> v(100);
  for (int i = 0; i < 100; ++i) v[i] = std::sin(i * 0.7f);
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 40;
  p.top_p = 0.95f;
  std::mt19937_64 a(42), b(42);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(SampleToken(v.data(), 100, p, a), SampleToken(v.data(), 100, p, b));
}

}  // namespace
}  // namespace tpserve
