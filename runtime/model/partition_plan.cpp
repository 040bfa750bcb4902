#include "model/partition_plan.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

namespace tpserve {
namespace {

// What a tensor is to the forward pass, which decides how it may be split.
enum class Role { kEmbed, kLmHead, kQ, kKV, kO, kGateUp, kDown, kNorm };

struct Expected {
  Role role;
  SplitKind split;
  std::vector<int64_t> shape;
  int layer = -1;
};

std::map<std::string, Expected> ExpectedTensors(const ModelConfig& c) {
  std::map<std::string, Expected> m;
  const int64_t h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), f = c.intermediate_size,
                v = c.vocab_size;
  m["model.embed_tokens.weight"] = {Role::kEmbed, SplitKind::kVocab, {v, h}};
  m["model.norm.weight"] = {Role::kNorm, SplitKind::kReplicate, {h}};
  if (!c.tie_word_embeddings) m["lm_head.weight"] = {Role::kLmHead, SplitKind::kVocab, {v, h}};
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    m[p + "input_layernorm.weight"] = {Role::kNorm, SplitKind::kReplicate, {h}, l};
    m[p + "post_attention_layernorm.weight"] = {Role::kNorm, SplitKind::kReplicate, {h}, l};
    m[p + "self_attn.q_proj.weight"] = {Role::kQ, SplitKind::kColumn, {q, h}, l};
    m[p + "self_attn.k_proj.weight"] = {Role::kKV, SplitKind::kColumn, {kv, h}, l};
    m[p + "self_attn.v_proj.weight"] = {Role::kKV, SplitKind::kColumn, {kv, h}, l};
    m[p + "self_attn.o_proj.weight"] = {Role::kO, SplitKind::kRow, {h, q}, l};
    m[p + "mlp.gate_proj.weight"] = {Role::kGateUp, SplitKind::kColumn, {f, h}, l};
    m[p + "mlp.up_proj.weight"] = {Role::kGateUp, SplitKind::kColumn, {f, h}, l};
    m[p + "mlp.down_proj.weight"] = {Role::kDown, SplitKind::kRow, {h, f}, l};
    if (c.attention_bias) {
      m[p + "self_attn.q_proj.bias"] = {Role::kQ, SplitKind::kColumn, {q}, l};
      m[p + "self_attn.k_proj.bias"] = {Role::kKV, SplitKind::kColumn, {kv}, l};
      m[p + "self_attn.v_proj.bias"] = {Role::kKV, SplitKind::kColumn, {kv}, l};
    }
    if (c.qk_norm) {
      m[p + "self_attn.q_norm.weight"] = {Role::kNorm, SplitKind::kReplicate, {c.head_dim}, l};
      m[p + "self_attn.k_norm.weight"] = {Role::kNorm, SplitKind::kReplicate, {c.head_dim}, l};
    }
  }
  return m;
}

// The dimension a split runs along: rows for column/vocab, columns for row.
int64_t SplitDim(SplitKind k, const std::vector<int64_t>& shape) {
  if (k == SplitKind::kRow) return shape.size() > 1 ? shape[1] : 0;
  return shape.empty() ? 0 : shape[0];
}

// ranges must tile [0, dim) exactly: no gap, no overlap, none empty.
Status CheckTiling(const std::string& where, const std::string& tensor, const std::vector<Range>& ranges,
                   int64_t dim) {
  std::vector<int> order(ranges.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return ranges[a].begin < ranges[b].begin; });
  int64_t next = 0;
  int prev_rank = -1;
  for (int r : order) {
    const Range& rg = ranges[r];
    if (rg.begin > next) {
      return TPS_ERROR("{}: tensor '{}': gap: [{}, {}) is not assigned to any rank (rank {} starts at {})",
                       where, tensor, next, rg.begin, r, rg.begin);
    }
    if (rg.begin < next) {
      return TPS_ERROR("{}: tensor '{}': rank {} range [{}, {}) overlaps rank {} (which ends at {})", where,
                       tensor, r, rg.begin, rg.end, prev_rank, next);
    }
    next = rg.end;
    prev_rank = r;
  }
  if (next != dim) {
    return TPS_ERROR("{}: tensor '{}': gap: [{}, {}) is not assigned to any rank", where, tensor, next, dim);
  }
  return Status();
}

// The `model:` block of a plan: each key with the model's value, as PlanToYaml writes them.
std::vector<std::pair<std::string, std::string>> ModelSummary(const ModelConfig& c) {
  return {{"model_type", c.model_type},
          {"num_hidden_layers", std::to_string(c.num_hidden_layers)},
          {"hidden_size", std::to_string(c.hidden_size)},
          {"num_attention_heads", std::to_string(c.num_attention_heads)},
          {"num_key_value_heads", std::to_string(c.num_key_value_heads)},
          {"intermediate_size", std::to_string(c.intermediate_size)},
          {"vocab_size", std::to_string(c.vocab_size)}};
}
const std::vector<std::string>& PlanModelKeys() {
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> out;
    for (const auto& kv : ModelSummary(ModelConfig{})) out.push_back(kv.first);
    return out;
  }();
  return keys;
}

// Keys outside `known`, named with the list of known ones (a misspelt key would otherwise be
// ignored without a word).
Status CheckKeys(const YAML::Node& map, const std::vector<std::string>& known, const std::string& where) {
  for (const auto& kv : map) {
    const std::string key = kv.first.as<std::string>();
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      return TPS_ERROR("{}: unknown key '{}' (known: {})", where, key, fmt::join(known, ", "));
    }
  }
  return Status();
}

std::string Shape(const std::vector<int64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

// Query/KV heads of one rank in the default plan.
void DefaultHeads(const ModelConfig& c, int tp, int r, Range* q, Range* kv) {
  const int g = c.group_size();
  if (tp <= c.num_key_value_heads) {
    *kv = EvenSplit(c.num_key_value_heads, tp, r);
    *q = {kv->begin * g, kv->end * g};
  } else {
    *q = EvenSplit(c.num_attention_heads, tp, r);
    *kv = {q->begin / g, (q->end - 1) / g + 1};
  }
}

}  // namespace

const char* SplitName(SplitKind k) {
  switch (k) {
    case SplitKind::kColumn:
      return "column";
    case SplitKind::kRow:
      return "row";
    case SplitKind::kVocab:
      return "vocab";
    case SplitKind::kReplicate:
      return "replicate";
  }
  return "?";
}

const TensorPlan* PartitionPlan::Find(const std::string& name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Range EvenSplit(int64_t n, int parts, int index) {
  const int64_t base = n / parts, extra = n % parts;
  const int64_t begin = index * base + std::min<int64_t>(index, extra);
  return {begin, begin + base + (index < extra ? 1 : 0)};
}

std::vector<TensorSpec> ModelTensors(const ModelConfig& config) {
  std::vector<TensorSpec> out;
  for (const auto& [name, e] : ExpectedTensors(config)) out.push_back({name, e.shape});
  return out;
}

Result<PartitionPlan> MakeDefaultPlan(const ModelConfig& c, const Checkpoint& ckpt, int tp) {
  if (tp < 1) return TPS_ERROR("--tp must be >= 1, got {}", tp);
  if (tp > c.num_attention_heads) {
    return TPS_ERROR(
        "--tp {} exceeds num_attention_heads ({}): every rank needs at least one attention head; use "
        "--tp <= {}",
        tp, c.num_attention_heads, c.num_attention_heads);
  }
  if (tp > c.intermediate_size || tp > c.vocab_size) {
    return TPS_ERROR("--tp {} exceeds intermediate_size ({}) or vocab_size ({})", tp, c.intermediate_size,
                     c.vocab_size);
  }
  PartitionPlan plan;
  plan.tp_size = tp;
  for (const auto& [name, e] : ExpectedTensors(c)) {
    TensorPlan t;
    t.name = name;
    const TensorInfo* info = ckpt.Find(name);
    t.shape = info != nullptr ? info->shape : e.shape;
    t.split = e.split;
    for (int r = 0; r < tp && e.split != SplitKind::kReplicate; ++r) {
      Range q, kv;
      DefaultHeads(c, tp, r, &q, &kv);
      switch (e.role) {
        case Role::kQ:
        case Role::kO:
          t.ranges.push_back({q.begin * c.head_dim, q.end * c.head_dim});
          break;
        case Role::kKV:
          t.ranges.push_back({kv.begin * c.head_dim, kv.end * c.head_dim});
          break;
        case Role::kGateUp:
        case Role::kDown:
          t.ranges.push_back(EvenSplit(c.intermediate_size, tp, r));
          break;
        case Role::kEmbed:
        case Role::kLmHead:
          t.ranges.push_back(EvenSplit(c.vocab_size, tp, r));
          break;
        case Role::kNorm:
          break;
      }
    }
    plan.tensors.push_back(std::move(t));
  }
  return plan;
}

Result<std::vector<RankShard>> ValidatePlan(const PartitionPlan& plan, const ModelConfig& c,
                                            const Checkpoint& ckpt, int tp, const std::string& where) {
  if (plan.tp_size != tp) {
    return TPS_ERROR(
        "{}: tp_size is {} but this job runs --tp {}; regenerate it with `tpserve-partition --tp {}`", where,
        plan.tp_size, tp, tp);
  }
  // The plan's description of its model, where it has one, must be this model's (sizes compared
  // as numbers: 064 is 64).
  const auto summary = ModelSummary(c);
  for (const auto& [key, value] : plan.model) {
    auto it = std::find_if(summary.begin(), summary.end(), [&](const auto& kv) { return kv.first == key; });
    if (it == summary.end()) {
      return TPS_ERROR("{}: model: unknown key '{}' (known: {})", where, key,
                       fmt::join(PlanModelKeys(), ", "));
    }
    bool same = it->second == value;
    if (!same && key != "model_type") {
      char* end = nullptr;
      const long long n = std::strtoll(value.c_str(), &end, 10);
      same = !value.empty() && *end == '\0' && std::to_string(n) == it->second;
    }
    if (!same) {
      return TPS_ERROR(
          "{}: the plan was written for a model with {} {}, but this model has {}; regenerate it with "
          "`tpserve-partition --model-path DIR --tp {}`",
          where, key, value, it->second, tp);
    }
  }
  const auto expected = ExpectedTensors(c);
  std::set<std::string> seen;
  for (const TensorPlan& t : plan.tensors) {
    if (!seen.insert(t.name).second) return TPS_ERROR("{}: tensor '{}' is listed twice", where, t.name);
    if (!expected.count(t.name)) {
      return TPS_ERROR("{}: tensor '{}' is not a weight this model ({}) uses; remove it", where, t.name,
                       c.model_type);
    }
  }
  for (const auto& [name, e] : expected) {
    const TensorPlan* t = plan.Find(name);
    if (t == nullptr) return TPS_ERROR("{}: no entry for tensor '{}'; every weight needs one", where, name);
    const TensorInfo* info = ckpt.Find(name);
    if (info == nullptr) {
      return TPS_ERROR("checkpoint is missing tensor '{}' (needed by model_type '{}'; checked against {})",
                       name, c.model_type,
                       ckpt.tensors().empty() ? "an empty checkpoint" : ckpt.file_path(0));
    }
    if (info->shape != e.shape) {
      return TPS_ERROR("{}: tensor '{}' has shape {} but config.json implies {}", ckpt.file_path(info->file),
                       name, Shape(info->shape), Shape(e.shape));
    }
    if (t->shape != info->shape) {
      return TPS_ERROR("{}: tensor '{}' has shape {} in the plan but {} in the checkpoint", where, name,
                       Shape(t->shape), Shape(info->shape));
    }
    if (t->split != e.split) {
      return TPS_ERROR("{}: tensor '{}' must be split '{}' (the plan says '{}')", where, name,
                       SplitName(e.split), SplitName(t->split));
    }
    if (e.split == SplitKind::kReplicate) continue;
    if (static_cast<int>(t->ranges.size()) != tp) {
      return TPS_ERROR("{}: tensor '{}' has {} ranges but tp_size is {}; give one range per rank", where,
                       name, t->ranges.size(), tp);
    }
    const int64_t dim = SplitDim(e.split, t->shape);
    for (int r = 0; r < tp; ++r) {
      const Range& rg = t->ranges[r];
      if (rg.begin < 0 || rg.end > dim || rg.begin >= rg.end) {
        return TPS_ERROR("{}: tensor '{}': rank {} range [{}, {}) must be non-empty and inside [0, {})",
                         where, name, r, rg.begin, rg.end, dim);
      }
    }
    if (e.role != Role::kKV) TPS_RETURN_IF_ERROR(CheckTiling(where, name, t->ranges, dim));
  }

  // Cross-tensor agreement, layer by layer.
  auto ranges = [&](const std::string& name) -> const std::vector<Range>& { return plan.Find(name)->ranges; };
  const int hd = c.head_dim, g = c.group_size();
  std::vector<RankShard> shards(tp);
  for (int r = 0; r < tp; ++r) {
    shards[r].rank = r;
    shards[r].layers.resize(c.num_hidden_layers);
    shards[r].embed_vocab = ranges("model.embed_tokens.weight")[r];
    shards[r].lm_head_vocab = c.tie_word_embeddings ? shards[r].embed_vocab : ranges("lm_head.weight")[r];
  }
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    for (int r = 0; r < tp; ++r) {
      const Range q = ranges(p + "self_attn.q_proj.weight")[r];
      if (q.begin % hd != 0 || q.end % hd != 0) {
        return TPS_ERROR(
            "{}: tensor '{}q_proj.weight': rank {} range [{}, {}) must cover whole heads (multiples of "
            "head_dim {})",
            where, p + "self_attn.", r, q.begin, q.end, hd);
      }
      const Range qh{q.begin / hd, q.end / hd};
      const Range kvh{qh.begin / g, (qh.end - 1) / g + 1};
      const Range kv_rows{kvh.begin * hd, kvh.end * hd};
      auto must_equal = [&](const std::string& name, const Range& want, const char* why) -> Status {
        if (plan.Find(name) == nullptr) return Status();  // optional tensor (bias) absent for this model
        const Range got = ranges(name)[r];
        if (got == want) return Status();
        return TPS_ERROR("{}: tensor '{}': rank {} has [{}, {}) but needs [{}, {}) ({})", where, name, r,
                         got.begin, got.end, want.begin, want.end, why);
      };
      const char* kv_why = "the KV heads used by this rank's query heads";
      TPS_RETURN_IF_ERROR(must_equal(p + "self_attn.k_proj.weight", kv_rows, kv_why));
      TPS_RETURN_IF_ERROR(must_equal(p + "self_attn.v_proj.weight", kv_rows, kv_why));
      TPS_RETURN_IF_ERROR(must_equal(p + "self_attn.o_proj.weight", q, "the same columns as q_proj rows"));
      if (c.attention_bias) {
        TPS_RETURN_IF_ERROR(must_equal(p + "self_attn.q_proj.bias", q, "the same rows as q_proj.weight"));
        TPS_RETURN_IF_ERROR(must_equal(p + "self_attn.k_proj.bias", kv_rows, kv_why));
        TPS_RETURN_IF_ERROR(must_equal(p + "self_attn.v_proj.bias", kv_rows, kv_why));
      }
      const Range f = ranges(p + "mlp.gate_proj.weight")[r];
      TPS_RETURN_IF_ERROR(must_equal(p + "mlp.up_proj.weight", f, "the same rows as gate_proj"));
      TPS_RETURN_IF_ERROR(must_equal(p + "mlp.down_proj.weight", f, "the same columns as gate_proj rows"));
      shards[r].layers[l] = {qh, kvh, f};
    }
  }
  return shards;
}

// ---------------------------------------------------------------------------------------------
std::string PlanToYaml(const PartitionPlan& plan, const ModelConfig& c) {
  YAML::Emitter out;
  out << YAML::Comment(
      "tpserve partition plan. ranges[r] = [begin, end) of TP rank r along the split dimension:\n"
      "column = output rows, row = input columns (followed by an all-reduce), vocab = vocabulary rows.");
  out << YAML::BeginMap;
  out << YAML::Key << "version" << YAML::Value << 1;
  out << YAML::Key << "tp_size" << YAML::Value << plan.tp_size;
  out << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  for (const auto& [key, value] : ModelSummary(c)) out << YAML::Key << key << YAML::Value << value;
  out << YAML::EndMap;
  out << YAML::Key << "tensors" << YAML::Value << YAML::BeginSeq;
  for (const TensorPlan& t : plan.tensors) {
    out << YAML::BeginMap;
    out << YAML::Key << "name" << YAML::Value << t.name;
    out << YAML::Key << "shape" << YAML::Value << YAML::Flow << t.shape;
    out << YAML::Key << "split" << YAML::Value << SplitName(t.split);
    if (t.split != SplitKind::kReplicate) {
      out << YAML::Key << "ranges" << YAML::Value << YAML::Flow << YAML::BeginSeq;
      for (const Range& r : t.ranges) out << YAML::Flow << std::vector<int64_t>{r.begin, r.end};
      out << YAML::EndSeq;
    }
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

Result<PartitionPlan> ReadPlanYaml(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return TPS_ERROR(
        "cannot open partition plan '{}'; write one with `tpserve-partition --model-path DIR --tp T -o {}`",
        path, path);
  } catch (const YAML::Exception& e) {
    return TPS_ERROR("{}: not valid YAML: {}", path, e.what());
  }
  PartitionPlan plan;
  try {
    if (!root.IsMap()) return TPS_ERROR("{}: expected a mapping with keys 'tp_size' and 'tensors'", path);
    TPS_RETURN_IF_ERROR(CheckKeys(root, {"version", "tp_size", "model", "tensors"}, path));
    if (root["version"] && root["version"].as<int>() != 1) {
      return TPS_ERROR(
          "{}: version {} is not supported (this tpserve reads version 1); regenerate it with "
          "`tpserve-partition`",
          path, root["version"].as<int>());
    }
    if (const YAML::Node model = root["model"]) {
      if (!model.IsMap()) return TPS_ERROR("{}: key 'model' must be a mapping of the model's sizes", path);
      TPS_RETURN_IF_ERROR(CheckKeys(model, PlanModelKeys(), path + ": model"));
      for (const auto& kv : model)
        plan.model.emplace_back(kv.first.as<std::string>(), kv.second.as<std::string>());
    }
    if (!root["tp_size"]) return TPS_ERROR("{}: missing key 'tp_size' (the number of TP ranks)", path);
    plan.tp_size = root["tp_size"].as<int>();
    const YAML::Node tensors = root["tensors"];
    if (!tensors || !tensors.IsSequence()) {
      return TPS_ERROR("{}: missing key 'tensors' (a list of {{name, shape, split, ranges}})", path);
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      const YAML::Node n = tensors[i];
      TensorPlan t;
      const std::string at = fmt::format("{}: tensors[{}]", path, i);
      if (!n.IsMap()) return TPS_ERROR("{}: expected a mapping {{name, shape, split, ranges}}", at);
      TPS_RETURN_IF_ERROR(CheckKeys(n, {"name", "shape", "split", "ranges"}, at));
      if (!n["name"]) return TPS_ERROR("{}: missing key 'name'", at);
      t.name = n["name"].as<std::string>();
      const std::string where = fmt::format("{} ('{}')", at, t.name);
      if (!n["shape"]) return TPS_ERROR("{}: missing key 'shape'", where);
      t.shape = n["shape"].as<std::vector<int64_t>>();
      if (!n["split"]) return TPS_ERROR("{}: missing key 'split' (column, row, vocab or replicate)", where);
      const std::string split = n["split"].as<std::string>();
      if (split == "column") {
        t.split = SplitKind::kColumn;
      } else if (split == "row") {
        t.split = SplitKind::kRow;
      } else if (split == "vocab") {
        t.split = SplitKind::kVocab;
      } else if (split == "replicate") {
        t.split = SplitKind::kReplicate;
      } else {
        return TPS_ERROR("{}: key 'split' is '{}'; use one of column, row, vocab, replicate", where, split);
      }
      if (t.split != SplitKind::kReplicate) {
        if (!n["ranges"] || !n["ranges"].IsSequence()) {
          return TPS_ERROR("{}: missing key 'ranges' (one [begin, end] per rank)", where);
        }
        for (const auto& rn : n["ranges"]) {
          auto v = rn.as<std::vector<int64_t>>();
          if (v.size() != 2) return TPS_ERROR("{}: each entry of 'ranges' must be [begin, end]", where);
          t.ranges.push_back({v[0], v[1]});
        }
      }
      plan.tensors.push_back(std::move(t));
    }
  } catch (const YAML::Exception& e) {
    return TPS_ERROR("{}: malformed plan at line {}: {}", path, e.mark.line + 1, e.msg);
  }
  return plan;
}

std::vector<RankBytes> PlanRankBytes(const PartitionPlan& plan, size_t esize) {
  std::vector<RankBytes> out(plan.tp_size);
  for (const TensorPlan& t : plan.tensors) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    if (t.split == SplitKind::kReplicate) {
      for (auto& b : out) b.replicated += numel * esize;
      continue;
    }
    const int64_t dim = SplitDim(t.split, t.shape);
    for (int r = 0; r < plan.tp_size && r < static_cast<int>(t.ranges.size()); ++r) {
      out[r].sharded += static_cast<uint64_t>(numel / dim * t.ranges[r].size()) * esize;
    }
  }
  return out;
}

int64_t KvBytesPerToken(const ModelConfig& config, const RankShard& shard, kernels::DType kv_dtype) {
  int64_t heads = 0;
  for (const LayerShard& l : shard.layers) heads += static_cast<int64_t>(l.kv_heads.size());
  return heads * config.head_dim * 2 * static_cast<int64_t>(kernels::DTypeSize(kv_dtype));
}

kernels::DType AutoKvCacheDtype(kernels::DType weight_dtype) {
  return weight_dtype == kernels::DType::kBF16 ? kernels::DType::kBF16 : kernels::DType::kF32;
}

}  // namespace tpserve
