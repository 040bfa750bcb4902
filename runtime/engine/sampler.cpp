#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "cpu/kernels.h"

namespace tpserve {

Status SamplingParams::Validate() const {
  if (std::isnan(temperature) || temperature < 0.0f) {
    return Status::Error(fmt::format("temperature must be >= 0 (0 = greedy), got {}", temperature));
  }
  if (std::isnan(top_p) || top_p <= 0.0f || top_p > 1.0f) {
    return Status::Error(fmt::format("top_p must be in (0, 1], got {}", top_p));
  }
  if (top_k < 0) return Status::Error(fmt::format("top_k must be >= 0 (0 = off), got {}", top_k));
  if (std::isnan(min_p) || min_p < 0.0f || min_p >= 1.0f) {
    return Status::Error(fmt::format("min_p must be in [0, 1), got {}", min_p));
  }
  if (std::isnan(repetition_penalty) || repetition_penalty <= 0.0f) {
    return Status::Error(fmt::format("repetition_penalty must be > 0 (1 = off), got {}", repetition_penalty));
  }
  return Status();
}

void ApplyRepetitionPenalty(float* logits, int64_t begin, int n, const std::vector<int32_t>& seen,
                            float penalty) {
  if (penalty == 1.0f) return;
  std::vector<bool> done(n, false);  // each token is penalised once, however often it appeared
  for (int32_t t : seen) {
    const int64_t i = t - begin;
    if (i < 0 || i >= n || done[i]) continue;
    done[i] = true;
    logits[i] = logits[i] > 0 ? logits[i] / penalty : logits[i] * penalty;
  }
}

int SampleToken(const float* logits, int n, const SamplingParams& p, std::mt19937_64& rng) {
  if (p.greedy()) return kernels::ArgMax(logits, n);
  // Candidates sorted by logit (descending, ties by index so the order is deterministic).
  std::vector<int> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  int keep = (p.top_k > 0 && p.top_k < n) ? p.top_k : n;
  auto by_logit = [logits](int a, int b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), by_logit);
  idx.resize(keep);
  std::vector<double> prob(keep);
  const double max_logit = logits[idx[0]];
  double sum = 0.0;
  for (int i = 0; i < keep; ++i) {
    prob[i] = std::exp((logits[idx[i]] - max_logit) / p.temperature);
    sum += prob[i];
  }
  // Nucleus: the smallest prefix whose probability reaches top_p.
  if (p.top_p < 1.0f) {
    double cum = 0.0;
    int cut = keep;
    for (int i = 0; i < keep; ++i) {
      cum += prob[i] / sum;
      if (cum >= p.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    sum = std::accumulate(prob.begin(), prob.begin() + keep, 0.0);
  }
  // min-p: keep tokens whose probability is at least min_p times the top token's (prob[0]).
  if (p.min_p > 0.0f) {
    int cut = 1;
    while (cut < keep && prob[cut] >= p.min_p * prob[0]) ++cut;
    keep = cut;
    sum = std::accumulate(prob.begin(), prob.begin() + keep, 0.0);
  }
  const double u = std::uniform_real_distribution<double>(0.0, sum)(rng);
  double acc = 0.0;
  for (int i = 0; i < keep; ++i) {
    acc += prob[i];
    if (u < acc) return idx[i];
  }
  return idx[keep - 1];
}

}  // namespace tpserve
