#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace tpserve {

Result<int32_t> SelectToken(LlamaModel& model, const float* logits, const SamplingParams& params,
                            std::mt19937_64& rng) {
  Communicator& tp = model.tp();
  const Range vr = model.vocab_range();
  if (params.greedy()) {
    // Distributed argmax: every rank contributes (max value, global index of its first max).
    struct Candidate {
      float value;
      int32_t index;
    };
    static_assert(sizeof(Candidate) == 8, "sent as raw bytes");
    const int local = ArgMax(logits, model.local_vocab());
    Candidate mine{logits[local], static_cast<int32_t>(vr.begin + local)};
    std::vector<Candidate> all(tp.size());
    TPS_RETURN_IF_ERROR(tp.AllGather(&mine, sizeof(mine), all.data()));
    Candidate best = all[0];
    for (const Candidate& c : all) {
      if (c.value > best.value || (c.value == best.value && c.index < best.index)) best = c;
    }
    return best.index;
  }
  // Sampling: rank 0 sees the whole vocabulary.
  const ModelConfig& cfg = model.config();
  std::vector<Range> ranges(tp.size());
  Range mine = vr;
  TPS_RETURN_IF_ERROR(tp.AllGather(&mine, sizeof(mine), ranges.data()));
  std::vector<size_t> bytes(tp.size());
  for (int r = 0; r < tp.size(); ++r) bytes[r] = ranges[r].size() * sizeof(float);
  std::vector<float> full(tp.rank() == 0 ? cfg.vocab_size : 0);
  TPS_RETURN_IF_ERROR(tp.Gather(logits, bytes[tp.rank()], full.data(), bytes, 0));
  int32_t token = 0;
  if (tp.rank() == 0) token = SampleToken(full.data(), cfg.vocab_size, params, rng);
  TPS_RETURN_IF_ERROR(tp.Broadcast(&token, sizeof(token), 0));
  return token;
}

Status ValidateGenerateRequest(const ModelConfig& cfg, const std::vector<int32_t>& prompt,
                               const GenerateOptions& opts) {
  if (prompt.empty()) return TPS_ERROR("the prompt is empty");
  TPS_RETURN_IF_ERROR(opts.sampling.Validate());
  if (opts.max_new_tokens < 1) return TPS_ERROR("max_new_tokens must be >= 1, got {}", opts.max_new_tokens);
  const int context = cfg.max_position_embeddings;
  if (static_cast<int>(prompt.size()) >= context) {
    return TPS_ERROR("the prompt has {} tokens but the context length is {}", prompt.size(), context);
  }
  for (int32_t id : prompt) {
    if (id < 0 || id >= cfg.vocab_size) {
      return TPS_ERROR("prompt token id {} is outside the vocabulary [0, {})", id, cfg.vocab_size);
    }
  }
  return Status();
}

Result<GenerateResult> Generate(LlamaModel& model, const std::vector<int32_t>& prompt,
                                const GenerateOptions& opts, const TokenCallback& on_token) {
  const ModelConfig& cfg = model.config();
  TPS_RETURN_IF_ERROR(ValidateGenerateRequest(cfg, prompt, opts));
  const int context = cfg.max_position_embeddings;
  const int capacity = std::min<int>(context, static_cast<int>(prompt.size()) + opts.max_new_tokens);
  KvCache cache(cfg, model.weights().shard, capacity);
  std::vector<float> logits(model.local_vocab());
  std::mt19937_64 rng(opts.sampling.seed);

  GenerateResult out;
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  TPS_RETURN_IF_ERROR(model.Forward(prompt.data(), static_cast<int>(prompt.size()), cache, logits.data()));
  auto t1 = Clock::now();
  out.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  out.finish_reason = "length";
  for (;;) {
    TPS_ASSIGN_OR_RETURN(int32_t token, SelectToken(model, logits.data(), opts.sampling, rng));
    out.token_ids.push_back(token);
    if (on_token) on_token(token);
    const bool is_eos =
        std::find(cfg.eos_token_ids.begin(), cfg.eos_token_ids.end(), token) != cfg.eos_token_ids.end();
    const bool is_stop =
        std::find(opts.stop_token_ids.begin(), opts.stop_token_ids.end(), token) != opts.stop_token_ids.end();
    if ((is_eos && !opts.ignore_eos) || is_stop) {
      out.finish_reason = "stop";
      break;
    }
    if (static_cast<int>(out.token_ids.size()) >= opts.max_new_tokens || cache.length() >= capacity) break;
    TPS_RETURN_IF_ERROR(model.Forward(&token, 1, cache, logits.data()));
  }
  out.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  return out;
}

}  // namespace tpserve
