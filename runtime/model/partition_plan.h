// Partition plan: for every weight tensor, how it is split over the TP ranks.
//   column    : rows of the (out, in) weight (output features) are split; no communication after
//   row       : columns (input features) are split; the partial outputs are all-reduced
//   vocab     : rows of the embedding / lm_head (vocabulary entries) are split
//   replicate : every rank holds the whole tensor (norm weights)
// ranges[r] = [begin, end) along the split dimension for TP rank r. Splits need not be even
// (FFN 172 over 8 ranks). K/V projections follow the rank's query heads, so their ranges
// overlap when TP > num_key_value_heads (KV heads are then replicated).
//
// The plan is YAML (see configs/ for an example), written by `tpserve-partition` and checked
// against the checkpoint by ValidatePlan before any weight is read.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "cpu/dtype.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace tpserve {

enum class SplitKind { kColumn, kRow, kVocab, kReplicate };
const char* SplitName(SplitKind k);

struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const Range&) const = default;
};

struct TensorPlan {
  std::string name;
  std::vector<int64_t> shape;
  SplitKind split = SplitKind::kReplicate;
  std::vector<Range> ranges;  // one per TP rank; empty for kReplicate
};

struct PartitionPlan {
  int tp_size = 1;
  std::vector<TensorPlan> tensors;
  // The plan file's `model:` block (model_type and sizes, as written by PlanToYaml), checked
  // against the model it is used with; empty where the file has none.
  std::vector<std::pair<std::string, std::string>> model;
  const TensorPlan* Find(const std::string& name) const;
};

// What one TP rank holds, derived from a validated plan. Head ranges count heads, ffn/vocab
// ranges count rows.
struct LayerShard {
  Range q_heads, kv_heads, ffn;
};
struct RankShard {
  int rank = 0;
  std::vector<LayerShard> layers;
  Range embed_vocab, lm_head_vocab;
};

// The weights the forward pass reads (checkpoint names) and the shapes config.json implies.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<TensorSpec> ModelTensors(const ModelConfig& config);

// Near-even split of n items over `parts`: the first n % parts parts get one more.
Range EvenSplit(int64_t n, int parts, int index);

// The default plan: KV heads split over ranks (replicated when tp > kv heads), query heads
// follow their KV head groups, FFN and vocab split near-evenly. Fails when tp exceeds the
// number of attention heads.
Result<PartitionPlan> MakeDefaultPlan(const ModelConfig& config, const Checkpoint& ckpt, int tp);

// Checks a plan against the model: the tp size, full coverage and no overlap, shapes equal to
// the checkpoint, split kinds the forward pass can run, and head/FFN ranges that agree across
// the tensors of each layer. Returns every rank's shard. Errors name the tensor and rank.
Result<std::vector<RankShard>> ValidatePlan(const PartitionPlan& plan, const ModelConfig& config,
                                            const Checkpoint& ckpt, int tp, const std::string& plan_name);

Result<PartitionPlan> ReadPlanYaml(const std::string& path);
std::string PlanToYaml(const PartitionPlan& plan, const ModelConfig& config);

// Bytes each rank loads for this plan if weights are stored as `dtype`, split into sharded
// and replicated parts.
struct RankBytes {
  uint64_t sharded = 0;
  uint64_t replicated = 0;
};
std::vector<RankBytes> PlanRankBytes(const PartitionPlan& plan, size_t dtype_size);

// One rank's KV cache bytes per token: K and V of its heads over all layers, elements of
// `kv_dtype` (KvCachePool's layout).
int64_t KvBytesPerToken(const ModelConfig& config, const RankShard& shard, kernels::DType kv_dtype);
// The KV cache dtype `--kv-cache-dtype auto` gives weights stored as `weight_dtype`: bf16 for bf16
// (the cache takes the model's dtype, as in vLLM and SGLang), f32 for f32, f16 and int8.
kernels::DType AutoKvCacheDtype(kernels::DType weight_dtype);

}  // namespace tpserve
