#include "engine/loader.h"

#include "common/log.h"
#include "model/partition_plan.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace tpserve {

namespace {

Result<kernels::DType> ResolveDType(const std::string& flag, const ModelConfig& c, const Checkpoint& ckpt) {
  kernels::DType dt;
  if (flag != "auto") {
    if (!kernels::ParseDType(flag, &dt))
      return TPS_ERROR("--dtype '{}' is not one of auto, f32, bf16, f16", flag);
    return dt;
  }
  // auto: the checkpoint's own dtype (its first matrix), so nothing is converted.
  if (const TensorInfo* t = ckpt.Find("model.embed_tokens.weight"); t && SafetensorsDType(t->dtype, &dt))
    return dt;
  if (kernels::ParseDType(c.torch_dtype, &dt)) return dt;
  return kernels::DType::kBF16;
}

}  // namespace

Result<std::unique_ptr<LlamaModel>> LoadModel(const LoadOptions& opts, Communicator& tp) {
  TPS_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(opts.model_path));
  TPS_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::Open(opts.model_path));
  PartitionPlan plan;
  std::string plan_name = "default plan";
  if (opts.partition_path.empty()) {
    TPS_ASSIGN_OR_RETURN(plan, MakeDefaultPlan(config, ckpt, tp.size()));
  } else {
    TPS_ASSIGN_OR_RETURN(plan, ReadPlanYaml(opts.partition_path));
    plan_name = opts.partition_path;
  }
  TPS_ASSIGN_OR_RETURN(std::vector<RankShard> shards, ValidatePlan(plan, config, ckpt, tp.size(), plan_name));
  TPS_ASSIGN_OR_RETURN(kernels::DType dtype, ResolveDType(opts.dtype, config, ckpt));
  if (!opts.quantization.empty() && opts.quantization != "int8") {
    return TPS_ERROR("--quantization '{}' is not supported (choose int8, or leave it out)",
                     opts.quantization);
  }
  TPS_ASSIGN_OR_RETURN(ModelWeights weights, LoadShard(ckpt, config, shards[tp.rank()], dtype,
                                                       opts.show_progress && tp.rank() == 0));
  if (opts.quantization == "int8") QuantizeWeightsInt8(&weights);
  log::Info("weights loaded: {} MB on this rank ({} MB sharded + {} MB replicated read) in {:.2f} s as {}",
            weights.stats.resident_bytes >> 20, weights.stats.sharded_bytes >> 20,
            weights.stats.replicated_bytes >> 20, weights.stats.seconds,
            opts.quantization.empty() ? kernels::DTypeName(dtype) : opts.quantization);
  for (const RankShard& s : shards) weights.all_lm_head_vocab.push_back(s.lm_head_vocab);
  return std::make_unique<LlamaModel>(std::move(config), std::move(weights), tp);
}

}  // namespace tpserve
