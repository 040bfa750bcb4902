#include "engine/generator.h"

#include <chrono>

namespace tpserve {

RequestSpec MakeRequestSpec(const std::vector<int32_t>& prompt, const GenerateOptions& opts) {
  RequestSpec spec;
  spec.id = 1;
  spec.prompt = prompt;
  spec.sampling = opts.sampling;
  spec.max_new_tokens = opts.max_new_tokens;
  spec.ignore_eos = opts.ignore_eos;
  spec.stop_token_ids = opts.stop_token_ids;
  return spec;
}

namespace {
EngineOptions EngineFor(const GenerateOptions& opts) {
  EngineOptions e;
  e.kv_cache_dtype = opts.kv_cache_dtype;
  return e;
}
}  // namespace

Status ValidateGenerateRequest(LlamaModel& model, const std::vector<int32_t>& prompt,
                               const GenerateOptions& opts) {
  return BatchEngine(model, EngineFor(opts)).Validate(MakeRequestSpec(prompt, opts));
}

Result<GenerateResult> Generate(LlamaModel& model, const std::vector<int32_t>& prompt,
                                const GenerateOptions& opts) {
  BatchEngine engine(model, EngineFor(opts));
  StepPlan plan;
  plan.add.push_back(MakeRequestSpec(prompt, opts));
  TPS_RETURN_IF_ERROR(engine.Validate(plan.add[0]));
  engine.Apply(plan);
  GenerateResult out;
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto t1 = t0;
  while (engine.HasWork()) {
    TPS_ASSIGN_OR_RETURN(std::vector<TokenEvent> events, engine.Step());
    if (out.token_ids.empty()) t1 = Clock::now();  // the first step is the prefill
    for (const TokenEvent& e : events) {
      out.token_ids.push_back(e.token);
      if (e.finish != FinishReason::kNone) out.finish_reason = FinishReasonName(e.finish);
    }
  }
  out.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  out.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  return out;
}

}  // namespace tpserve
