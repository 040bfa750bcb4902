#include "engine/batch_engine.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "cpu/kernels.h"

namespace tpserve {

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kNone:
      break;
  }
  return "";
}

struct BatchEngine::Sequence {
  RequestSpec spec;
  std::vector<int32_t> tokens;  // prompt, then generated
  int generated = 0;
  SequenceKv kv;             // kv.length < tokens.size() - 1 while the prompt is still being prefilled
  PrefixCache::Chain chain;  // kv.blocks[0, chain.blocks) are in the prefix cache
  std::mt19937_64 rng;
};

namespace {

// One rank's greedy candidate: (value, global index) of its local argmax; with logprobs also its
// log-sum-exp pieces (local max, sum of exp(x - local max)), so log Z needs no second round.
struct Candidate {
  float value;
  int32_t index;
  float local_max;
  float local_sumexp;
};
static_assert(sizeof(Candidate) == 16, "sent as raw bytes");

Candidate LocalCandidate(const float* logits, int n, int64_t begin, bool want_logprob) {
  const int local = kernels::ArgMax(logits, n);
  Candidate c{logits[local], static_cast<int32_t>(begin + local), logits[local], 0.0f};
  if (want_logprob) {
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += std::exp(static_cast<double>(logits[i]) - c.local_max);
    c.local_sumexp = static_cast<float>(s);
  }
  return c;
}

// The winner over ranks (ties -> lowest index) from candidates[r * stride].
TokenChoice PickGreedy(const Candidate* candidates, int ranks, int stride, bool want_logprob) {
  Candidate best = candidates[0];
  for (int r = 1; r < ranks; ++r) {
    const Candidate& c = candidates[r * stride];
    if (c.value > best.value || (c.value == best.value && c.index < best.index)) best = c;
  }
  TokenChoice choice{best.index, 0.0f};
  if (want_logprob) {
    double z = 0.0;
    for (int r = 0; r < ranks; ++r) {
      const Candidate& c = candidates[r * stride];
      z += c.local_sumexp * std::exp(static_cast<double>(c.local_max) - best.value);
    }
    choice.logprob = static_cast<float>(-std::log(z));  // value - logZ, with logZ = value + log(z)
  }
  return choice;
}

}  // namespace

Result<std::vector<TokenChoice>> SelectGreedyTokens(LlamaModel& model, const std::vector<float*>& logits,
                                                    const std::vector<bool>& want_logprob) {
  Communicator& tp = model.tp();
  const int count = static_cast<int>(logits.size());
  std::vector<Candidate> mine(count), all(static_cast<size_t>(count) * tp.size());  // all: (ranks, count)
  for (int i = 0; i < count; ++i) {
    mine[i] = LocalCandidate(logits[i], model.local_vocab(), model.vocab_range().begin, want_logprob[i]);
  }
  std::vector<TokenChoice> out(count);
  if (count == 0) return out;
  TPS_RETURN_IF_ERROR(tp.AllGather(mine.data(), mine.size() * sizeof(Candidate), all.data()));
  for (int i = 0; i < count; ++i) out[i] = PickGreedy(&all[i], tp.size(), count, want_logprob[i]);
  return out;
}

Result<TokenChoice> SelectToken(LlamaModel& model, float* logits, const SamplingParams& params,
                                const std::vector<int32_t>& seen, bool want_logprob, std::mt19937_64& rng) {
  Communicator& tp = model.tp();
  ApplyRepetitionPenalty(logits, model.vocab_range().begin, model.local_vocab(), seen,
                         params.repetition_penalty);
  if (params.greedy()) {
    TPS_ASSIGN_OR_RETURN(std::vector<TokenChoice> one, SelectGreedyTokens(model, {logits}, {want_logprob}));
    return one[0];
  }
  // Sampling: rank 0 sees the whole vocabulary, draws, and broadcasts the choice.
  const int vocab = model.config().vocab_size;
  TPS_ASSIGN_OR_RETURN(std::vector<float> full, model.GatherLogits(logits));
  TokenChoice choice;
  if (tp.rank() == 0) {
    choice.token = SampleToken(full.data(), vocab, params, rng);
    if (want_logprob) {
      const float mx = *std::max_element(full.begin(), full.end());
      double z = 0.0;
      for (float v : full) z += std::exp(static_cast<double>(v) - mx);
      choice.logprob = static_cast<float>(full[choice.token] - mx - std::log(z));
    }
  }
  static_assert(sizeof(TokenChoice) == 8, "sent as raw bytes");
  TPS_RETURN_IF_ERROR(tp.Broadcast(&choice, sizeof(choice), 0));
  return choice;
}

int64_t ReservedTokens(const RequestSpec& spec, int context_length) {
  return std::min<int64_t>(context_length, static_cast<int64_t>(spec.prompt.size()) + spec.max_new_tokens);
}

Status ValidateRequest(const ModelConfig& cfg, int context, int64_t kv_capacity_tokens,
                       const RequestSpec& r) {
  if (r.prompt.empty()) return Status::Error("the prompt is empty");
  for (int32_t id : r.prompt) {
    if (id < 0 || id >= cfg.vocab_size) {
      return Status::Error(
          fmt::format("prompt token id {} is outside the vocabulary [0, {})", id, cfg.vocab_size));
    }
  }
  if (static_cast<int>(r.prompt.size()) >= context) {
    return Status::Error(
        fmt::format("the prompt has {} tokens but the context length is {} (the prompt must leave "
                    "room for at least one new token)",
                    r.prompt.size(), context));
  }
  if (r.max_new_tokens < 1 || r.max_new_tokens > context) {
    return Status::Error(fmt::format("max_new_tokens must be in [1, {}] (the context length), got {}",
                                     context, r.max_new_tokens));
  }
  if (ReservedTokens(r, context) > kv_capacity_tokens) {
    return Status::Error(fmt::format("the request needs {} KV cache tokens but the whole cache holds {}",
                                     ReservedTokens(r, context), kv_capacity_tokens));
  }
  return r.sampling.Validate();
}

namespace {

int ContextLength(const EngineOptions& o, const ModelConfig& c) {
  return o.context_length > 0 ? std::min(o.context_length, c.max_position_embeddings)
                              : c.max_position_embeddings;
}

int64_t PoolBlocks(const EngineOptions& o, const ModelConfig& c) {
  if (o.kv_cache_blocks > 0) return o.kv_cache_blocks;
  return static_cast<int64_t>(o.max_running_requests) *
         KvCachePool::BlocksFor(ContextLength(o, c), o.kv_block_size);
}

}  // namespace

Result<kernels::DType> KvCacheDtype(const std::string& name, const LlamaModel& model) {
  if (name == "auto") {
    const auto& layers = model.weights().layers;
    return AutoKvCacheDtype(layers.empty() ? kernels::DType::kF32 : layers[0].qkv.dtype());
  }
  if (name == "float32" || name == "f32") return kernels::DType::kF32;
  if (name == "bfloat16" || name == "bf16") return kernels::DType::kBF16;
  return TPS_ERROR("--kv-cache-dtype '{}' is not one of auto, float32, bfloat16", name);
}

BatchEngine::BatchEngine(LlamaModel& model, EngineOptions opts)
    : model_(model),
      opts_(opts),
      context_(ContextLength(opts, model.config())),
      pool_(model.config(), model.weights().shard, PoolBlocks(opts, model.config()), opts.kv_block_size,
            [&] {  // the CLI checks the name first; a bad one here is a caller's bug
              Result<kernels::DType> t = KvCacheDtype(opts.kv_cache_dtype, model);
              if (!t.ok()) {
                std::fprintf(stderr, "tpserve: %s\n", t.status().message().c_str());
                std::abort();
              }
              return *t;
            }()),
      cache_(pool_, opts.prefix_cache),
      logits_(model.local_vocab()) {}

BatchEngine::~BatchEngine() = default;

Status BatchEngine::Validate(const RequestSpec& r) const {
  return ValidateRequest(model_.config(), context_, pool_.capacity_tokens(), r);
}

void BatchEngine::Apply(const StepPlan& plan) {
  auto drop = [this](uint64_t id) {
    for (auto it = running_.begin(); it != running_.end(); ++it) {
      if ((*it)->spec.id == id) {
        cache_.Release(&(*it)->kv.blocks);
        running_.erase(it);
        return;
      }
    }
    auto w = std::find_if(waiting_.begin(), waiting_.end(), [id](const auto& s) { return s->spec.id == id; });
    if (w != waiting_.end()) waiting_.erase(w);
  };
  for (uint64_t id : plan.cancel) drop(id);
  for (const RequestSpec& spec : plan.add) {
    auto s = std::make_unique<Sequence>();
    s->spec = spec;
    s->tokens = spec.prompt;
    s->rng.seed(spec.sampling.seed);
    waiting_.push_back(std::move(s));
  }
  if (plan.shutdown) {
    for (auto& s : running_) cache_.Release(&s->kv.blocks);
    running_.clear();
    waiting_.clear();
  }
}

bool BatchEngine::PrefixBeingPrefilled(const Sequence& s, int shared) const {
  if (!cache_.enabled()) return false;
  const int bs = pool_.block_size();
  const size_t begin = static_cast<size_t>(shared) * bs, end = begin + bs;
  if (end + 1 > s.tokens.size()) return false;  // no further block of the prompt to share
  for (const auto& rp : running_) {
    const Sequence& r = *rp;
    // r registers its block `shared` next: its chain is s's so far, unbroken, and it has not yet
    // computed that block, whose tokens are s's.
    if (r.chain.broken || r.chain.blocks != shared || r.chain.hash != s.chain.hash) continue;
    if (r.tokens.size() < end || r.kv.length >= static_cast<int>(end)) continue;
    if (std::equal(s.tokens.begin() + begin, s.tokens.begin() + end, r.tokens.begin() + begin)) return true;
  }
  return false;
}

Result<std::vector<TokenEvent>> BatchEngine::Step() {
  const ModelConfig& cfg = model_.config();
  // FCFS admission: the head of the queue waits until its whole reservation fits. Its prompt's
  // cached prefix is shared; at least its last prompt token is computed, for the logits. It also
  // waits while a running sequence prefills the next block of that prefix, to share it too.
  while (!waiting_.empty() && static_cast<int>(running_.size()) < opts_.max_running_requests) {
    Sequence& s = *waiting_.front();
    const int64_t blocks = KvCachePool::BlocksFor(ReservedTokens(s.spec, context_), pool_.block_size());
    const int prompt = static_cast<int>(s.tokens.size());
    const int shared = cache_.Match(s.tokens, prompt - 1, &s.kv.blocks, &s.chain);
    if (PrefixBeingPrefilled(s, shared) || !cache_.Allocate(blocks - shared, &s.kv.blocks)) {
      cache_.Release(&s.kv.blocks);
      break;
    }
    s.kv.length = shared * pool_.block_size();
    prefix_query_tokens_ += prompt;
    prefix_hit_tokens_ += s.kv.length;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  // One forward pass: every decoding sequence's last token, and prompt chunks within the budget.
  std::vector<ForwardItem> items;
  std::vector<Sequence*> emits;  // sequences whose item ends at their last token: they sample
  int budget = opts_.chunked_prefill_size > 0 ? opts_.chunked_prefill_size : std::numeric_limits<int>::max();
  for (auto& sp : running_) {
    Sequence& s = *sp;
    const int pending = static_cast<int>(s.tokens.size()) - s.kv.length;
    int n = 1;
    if (pending > 1) {  // still in the prompt
      n = std::min(pending, budget);
      if (n == 0) continue;  // no prefill budget left this step
      budget -= n;
    }
    items.push_back({s.tokens.data() + s.kv.length, n, &s.kv});
    emits.push_back(n == pending ? &s : nullptr);
  }
  std::vector<TokenEvent> events;
  if (items.empty()) return events;
  logits_.resize(items.size() * static_cast<size_t>(model_.local_vocab()));  // (items, local vocab)
  TPS_RETURN_IF_ERROR(model_.ForwardBatch(items, pool_, logits_.data()));
  for (auto& sp : running_) {  // blocks that this pass filled join the prefix cache
    cache_.Register(sp->kv.blocks, sp->tokens, sp->kv.length / pool_.block_size(), &sp->chain);
  }
  // Token choice: every greedy sequence in one all-gather, sampled ones one by one (rank 0 draws).
  const size_t vocab = static_cast<size_t>(model_.local_vocab());
  std::vector<float*> greedy_logits;
  std::vector<bool> greedy_logprob;
  for (size_t i = 0; i < items.size(); ++i) {
    if (emits[i] == nullptr || !emits[i]->spec.sampling.greedy()) continue;
    Sequence& s = *emits[i];
    float* logits = &logits_[i * vocab];
    ApplyRepetitionPenalty(logits, model_.vocab_range().begin, model_.local_vocab(), s.tokens,
                           s.spec.sampling.repetition_penalty);
    greedy_logits.push_back(logits);
    greedy_logprob.push_back(s.spec.logprobs);
  }
  TPS_ASSIGN_OR_RETURN(std::vector<TokenChoice> greedy,
                       SelectGreedyTokens(model_, greedy_logits, greedy_logprob));
  size_t next_greedy = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    if (emits[i] == nullptr) continue;  // a prompt chunk that did not reach the prompt's end
    Sequence& s = *emits[i];
    TokenChoice c;
    if (s.spec.sampling.greedy()) {
      c = greedy[next_greedy++];
    } else {
      TPS_ASSIGN_OR_RETURN(
          c, SelectToken(model_, &logits_[i * vocab], s.spec.sampling, s.tokens, s.spec.logprobs, s.rng));
    }
    s.tokens.push_back(c.token);
    ++s.generated;
    TokenEvent ev{s.spec.id, c.token, c.logprob, FinishReason::kNone};
    const auto& eos = cfg.eos_token_ids;
    const auto& stop = s.spec.stop_token_ids;
    if ((!s.spec.ignore_eos && std::find(eos.begin(), eos.end(), c.token) != eos.end()) ||
        std::find(stop.begin(), stop.end(), c.token) != stop.end()) {
      ev.finish = FinishReason::kStop;
    } else if (s.generated >= s.spec.max_new_tokens || static_cast<int>(s.tokens.size()) >= context_) {
      ev.finish = FinishReason::kLength;
    }
    events.push_back(ev);
  }
  // Finished sequences leave at once, and their blocks go back to the pool.
  for (const TokenEvent& e : events) {
    if (e.finish == FinishReason::kNone) continue;
    auto it =
        std::find_if(running_.begin(), running_.end(), [&](const auto& s) { return s->spec.id == e.id; });
    cache_.Release(&(*it)->kv.blocks);
    running_.erase(it);
  }
  return events;
}

EngineStats BatchEngine::stats() const {
  EngineStats st;
  st.running = static_cast<int>(running_.size());
  st.waiting = static_cast<int>(waiting_.size());
  st.kv_block_size = pool_.block_size();
  st.kv_total_blocks = pool_.num_blocks();
  st.kv_free_blocks = cache_.available_blocks();
  st.kv_capacity_tokens = pool_.capacity_tokens();
  st.kv_used_tokens = (st.kv_total_blocks - st.kv_free_blocks) * st.kv_block_size;
  st.kv_used_bytes = st.kv_used_tokens * pool_.bytes_per_token();
  st.prefix_cached_blocks = cache_.cached_blocks();
  st.prefix_query_tokens = prefix_query_tokens_;
  st.prefix_hit_tokens = prefix_hit_tokens_;
  return st;
}

}  // namespace tpserve
