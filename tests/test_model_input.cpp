// Model input: config.json parsing, the safetensors reader (good and corrupt files), and the
// partition plan (default plans, YAML round trip, and every validation error).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/partition_plan.h"
#include "model/safetensors.h"
#include "test_util.h"

namespace tpserve {
namespace {

namespace fs = std::filesystem;
using kernels::DType;

void WriteText(const fs::path& p, const std::string& s) {
  std::ofstream(p, std::ios::binary) << s;
}

// Raw safetensors bytes with a given header JSON and data size.
std::string RawSafetensors(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out + header + std::string(data_bytes, '\x01');
}

::testing::AssertionResult FailsWith(const Status& st, const std::vector<std::string>& needles) {
  if (st.ok()) return ::testing::AssertionFailure() << "expected an error";
  for (const auto& n : needles) {
    if (st.message().find(n) == std::string::npos) {
      return ::testing::AssertionFailure() << "message lacks '" << n << "': " << st.message();
    }
  }
  return ::testing::AssertionSuccess();
}

// A model directory with a given config; matrix (row, col) holds value row * 1000 + col so
// slices can be checked exactly.
ModelConfig StoriesShape() {
  ModelConfig c;
  c.hidden_size = 64, c.intermediate_size = 172, c.num_hidden_layers = 2, c.num_attention_heads = 8;
  c.num_key_value_heads = 4, c.head_dim = 8, c.vocab_size = 512, c.tie_word_embeddings = true;
  return c;
}

std::string WriteModel(const ModelConfig& c, DType dt = DType::kF32) {
  const std::string dir = testing::MakeTempDir("model");
  nlohmann::json cfg = {{"model_type", "llama"},
                        {"hidden_size", c.hidden_size},
                        {"intermediate_size", c.intermediate_size},
                        {"num_hidden_layers", c.num_hidden_layers},
                        {"num_attention_heads", c.num_attention_heads},
                        {"num_key_value_heads", c.num_key_value_heads},
                        {"vocab_size", c.vocab_size},
                        {"tie_word_embeddings", c.tie_word_embeddings}};
  WriteText(fs::path(dir) / "config.json", cfg.dump());
  std::vector<SafetensorsWriter::Entry> entries;
  for (const TensorSpec& t : ModelTensors(c)) entries.push_back({t.name, dt, t.shape});
  auto w = SafetensorsWriter::Create(dir + "/model.safetensors", entries);
  EXPECT_TRUE(w.ok());
  for (const auto& e : entries) {
    const int64_t rows = e.shape[0], cols = e.shape.size() > 1 ? e.shape[1] : 1;
    std::vector<float> v(rows * cols);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t col = 0; col < cols; ++col) v[r * cols + col] = static_cast<float>(r * 1000 + col);
    }
    std::vector<uint8_t> bytes(v.size() * kernels::DTypeSize(dt));
    kernels::ConvertDType(v.data(), DType::kF32, bytes.data(), dt, v.size());
    EXPECT_TRUE(w->Append(bytes.data(), bytes.size()).ok());
  }
  EXPECT_TRUE(w->Close().ok());
  return dir;
}

// ---------------------------------------------------------------------------------------------
TEST(Config, ParsesLlama3RopeScalingAndEosList) {
  auto c = ParseModelConfig(R"({"model_type":"llama","hidden_size":64,"intermediate_size":128,
      "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,
      "eos_token_id":[128001,128009],"rope_theta":500000.0,
      "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
                      "original_max_position_embeddings":8192}})",
                            "cfg");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{128001, 128009}));
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  // Highest frequency (wavelength 2*pi) is kept; the lowest is divided by the factor.
  const auto inv = RopeInvFreq(*c);
  EXPECT_DOUBLE_EQ(inv[0], 1.0);
  EXPECT_NEAR(inv.back(), std::pow(500000.0, -14.0 / 16) / 8.0, 1e-15);
}

TEST(Config, QwenFlags) {
  const char* base = R"(,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,
      "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"head_dim":32})";
  auto q2 = ParseModelConfig(std::string(R"({"model_type":"qwen2")") + base, "c");
  auto q3 = ParseModelConfig(std::string(R"({"model_type":"qwen3")") + base, "c");
  ASSERT_TRUE(q2.ok() && q3.ok());
  EXPECT_TRUE(q2->attention_bias);
  EXPECT_FALSE(q2->qk_norm);
  EXPECT_TRUE(q3->qk_norm);
  EXPECT_EQ(q3->head_dim, 32);  // explicit head_dim wins over hidden / heads
}

TEST(Config, ErrorsNameFileAndKey) {
  EXPECT_TRUE(FailsWith(ParseModelConfig("{", "a.json").status(), {"a.json", "not valid JSON"}));
  EXPECT_TRUE(
      FailsWith(ParseModelConfig(R"({"model_type":"llama"})", "a.json").status(), {"a.json", "hidden_size"}));
  EXPECT_TRUE(
      FailsWith(ParseModelConfig(R"({"model_type":"gpt2"})", "a.json").status(), {"gpt2", "supported"}));
  EXPECT_TRUE(
      FailsWith(LoadModelConfig("/nonexistent/model").status(), {"/nonexistent/model", "does not exist"}));
  // Values that parse but would make every output garbage (a negative epsilon gave all-zero tokens).
  const std::string base = R"({"model_type":"llama","hidden_size":64,"intermediate_size":128,
      "num_hidden_layers":1,"num_attention_heads":4,"vocab_size":100)";
  ASSERT_TRUE(ParseModelConfig(base + "}", "a.json").ok());
  for (const char* bad :
       {R"("rms_norm_eps":-1.0)", R"("rms_norm_eps":0)", R"("rope_theta":-10000.0)", R"("rope_theta":0.0)"}) {
    const std::string key = std::string(bad).substr(1, std::string(bad).find('"', 1) - 1);
    EXPECT_TRUE(
        FailsWith(ParseModelConfig(base + "," + bad + "}", "a.json").status(), {"a.json", key, "positive"}))
        << bad;
  }
  for (const char* factor : {"0", "0.5"}) {
    EXPECT_TRUE(FailsWith(
        ParseModelConfig(base + R"(,"rope_scaling":{"type":"linear","factor":)" + factor + "}}", "a.json")
            .status(),
        {"a.json", "'factor'", ">= 1"}))
        << factor;
  }
  EXPECT_TRUE(FailsWith(ParseModelConfig(base + R"(,"rope_scaling":{"rope_type":"llama3","factor":8,
      "low_freq_factor":4,"high_freq_factor":1,"original_max_position_embeddings":8192}})",
                                         "a.json")
                            .status(),
                        {"a.json", "'high_freq_factor'", "'low_freq_factor'"}));
}

// ---------------------------------------------------------------------------------------------
class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("st"); }
  void TearDown() override { fs::remove_all(dir_); }
  Status OpenRaw(const std::string& bytes) {
    WriteText(fs::path(dir_) / "model.safetensors", bytes);
    return Checkpoint::Open(dir_).status();
  }
  std::string dir_;
};

TEST_F(Safetensors, TruncatedData) {
  const std::string h = R"({"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}})";
  EXPECT_TRUE(FailsWith(OpenRaw(RawSafetensors(h, 40)), {"model.safetensors", "'w'", "truncated"}));
}

TEST_F(Safetensors, HeaderLengthPastEnd) {
  std::string bytes = RawSafetensors("{}", 0);
  bytes[0] = static_cast<char>(0xff);
  bytes[1] = static_cast<char>(0xff);
  EXPECT_TRUE(FailsWith(OpenRaw(bytes), {"model.safetensors", "header length", "past the end"}));
}

TEST_F(Safetensors, TooShortFile) {
  EXPECT_TRUE(FailsWith(OpenRaw("abc"), {"model.safetensors", "too short"}));
}

TEST_F(Safetensors, UnknownDtype) {
  const std::string h = R"({"w":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_TRUE(FailsWith(OpenRaw(RawSafetensors(h, 8)), {"'w'", "unknown dtype 'Q9'"}));
}

TEST_F(Safetensors, BadHeaderJson) {
  EXPECT_TRUE(FailsWith(OpenRaw(RawSafetensors("{not json", 0)), {"model.safetensors", "not valid JSON"}));
}

TEST_F(Safetensors, OffsetsDisagreeWithShape) {
  const std::string h = R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
  EXPECT_TRUE(FailsWith(OpenRaw(RawSafetensors(h, 8)), {"'w'", "needs 12 bytes"}));
}

TEST_F(Safetensors, IntegerTensorIsRejectedWhenRead) {
  const std::string h = R"({"w":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})";
  WriteText(fs::path(dir_) / "model.safetensors", RawSafetensors(h, 8));
  auto ck = Checkpoint::Open(dir_);
  ASSERT_TRUE(ck.ok());
  float out[2];
  uint64_t read = 0;
  EXPECT_TRUE(FailsWith(ck->ReadSlice(*ck->Find("w"), 0, 2, 0, 1, DType::kF32, out, &read), {"'w'", "I32"}));
}

TEST_F(Safetensors, NoCheckpointInDirectory) {
  EXPECT_TRUE(FailsWith(Checkpoint::Open(dir_).status(), {dir_, "no model.safetensors"}));
}

TEST(SafetensorsSlices, RowAndColumnSlicesWithConversion) {
  const std::string dir = WriteModel(StoriesShape(), DType::kBF16);
  auto ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status().message();
  const TensorInfo* t = ck->Find("model.layers.0.mlp.down_proj.weight");  // (64, 172)
  ASSERT_NE(t, nullptr);
  std::vector<float> out(64 * 21);
  uint64_t read = 0;
  ASSERT_TRUE(ck->ReadSlice(*t, 0, 64, 151, 172, DType::kF32, out.data(), &read).ok());
  EXPECT_EQ(read, 64u * 21 * 2);  // only the slice's bytes were read
  for (int r = 0; r < 64; r += 9) {
    for (int c = 0; c < 21; c += 5)
      EXPECT_EQ(out[r * 21 + c], kernels::Bf16ToF32(kernels::F32ToBf16(r * 1000.0f + 151 + c)));
  }
  fs::remove_all(dir);
}

TEST(SafetensorsIndex, ShardedCheckpointAndMissingShardEntry) {
  const std::string dir = WriteModel(StoriesShape());
  // Split into two files by moving the header entries: write a 2-file copy through the writer.
  auto ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok());
  nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", nlohmann::json::object()}};
  std::vector<SafetensorsWriter::Entry> a, b;
  for (const auto& [name, t] : ck->tensors()) {
    auto& dst = name.find("layers.1.") != std::string::npos ? b : a;
    dst.push_back({name, DType::kF32, t.shape});
    index["weight_map"][name] =
        &dst == &a ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  for (auto* part : {&a, &b}) {
    const std::string file =
        dir + (part == &a ? "/model-00001-of-00002.safetensors" : "/model-00002-of-00002.safetensors");
    auto w = SafetensorsWriter::Create(file, *part);
    ASSERT_TRUE(w.ok());
    for (const auto& e : *part) {
      const TensorInfo* t = ck->Find(e.name);
      std::vector<float> v(t->numel());
      uint64_t read = 0;
      ASSERT_TRUE(ck->ReadSlice(*t, 0, t->rows(), 0, t->cols(), DType::kF32, v.data(), &read).ok());
      ASSERT_TRUE(w->Append(v.data(), v.size() * 4).ok());
    }
    ASSERT_TRUE(w->Close().ok());
  }
  fs::remove(dir + "/model.safetensors");
  WriteText(fs::path(dir) / "model.safetensors.index.json", index.dump());
  auto sharded = Checkpoint::Open(dir);
  ASSERT_TRUE(sharded.ok()) << sharded.status().message();
  EXPECT_EQ(sharded->tensors().size(), ck->tensors().size());
  EXPECT_NE(sharded->Find("model.layers.1.mlp.up_proj.weight")->file,
            sharded->Find("model.norm.weight")->file);

  index["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors";
  WriteText(fs::path(dir) / "model.safetensors.index.json", index.dump());
  EXPECT_TRUE(FailsWith(Checkpoint::Open(dir).status(), {"model.extra.weight", "does not contain it"}));
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
class Plan : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = WriteModel(StoriesShape()); }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  Checkpoint Ckpt() { return std::move(Checkpoint::Open(dir_)).value(); }
  static std::string dir_;
};
std::string Plan::dir_;

TEST_F(Plan, DefaultPlanValidAtEveryTpUpToHeads) {
  const ModelConfig c = StoriesShape();
  Checkpoint ck = Ckpt();
  for (int tp = 1; tp <= 8; ++tp) {
    auto plan = MakeDefaultPlan(c, ck, tp);
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    auto shards = ValidatePlan(*plan, c, ck, tp, "default");
    ASSERT_TRUE(shards.ok()) << "tp " << tp << ": " << shards.status().message();
    int64_t ffn = 0, heads = 0;
    for (const RankShard& s : *shards) {
      ffn += s.layers[0].ffn.size();
      heads += s.layers[0].q_heads.size();
      EXPECT_LE(s.layers[0].ffn.size(), (172 + tp - 1) / tp);  // near-even, never refused
    }
    EXPECT_EQ(ffn, 172);
    EXPECT_EQ(heads, 8);
  }
}

TEST_F(Plan, KvHeadsReplicatedWhenTpExceedsKvHeads) {
  Checkpoint ck = Ckpt();
  auto plan = MakeDefaultPlan(StoriesShape(), ck, 8);
  auto shards = ValidatePlan(*plan, StoriesShape(), ck, 8, "default");
  ASSERT_TRUE(shards.ok());
  // 8 query heads, 4 KV heads, group 2: ranks 2r and 2r+1 both hold KV head r.
  for (int r = 0; r < 8; ++r) EXPECT_EQ((*shards)[r].layers[1].kv_heads, (Range{r / 2, r / 2 + 1}));
}

TEST_F(Plan, TpLargerThanHeadsIsRefused) {
  Checkpoint ck = Ckpt();
  EXPECT_TRUE(
      FailsWith(MakeDefaultPlan(StoriesShape(), ck, 16).status(), {"--tp 16", "num_attention_heads (8)"}));
}

TEST_F(Plan, YamlRoundTrip) {
  Checkpoint ck = Ckpt();
  auto plan = MakeDefaultPlan(StoriesShape(), ck, 3);
  const std::string file = dir_ + "/plan3.yaml";
  WriteText(file, PlanToYaml(*plan, StoriesShape()));
  auto back = ReadPlanYaml(file);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->tensors.size(), plan->tensors.size());
  EXPECT_TRUE(ValidatePlan(*back, StoriesShape(), ck, 3, file).ok());
}

// Mutates one range of a valid TP-2 plan and expects an error naming the tensor and rank.
class PlanErrors : public Plan {
 protected:
  Status Check(const std::string& tensor, int rank, Range r, int tp = 2) {
    Checkpoint ck = Ckpt();
    PartitionPlan plan = std::move(MakeDefaultPlan(StoriesShape(), ck, 2)).value();
    for (auto& t : plan.tensors) {
      if (t.name == tensor) t.ranges[rank] = r;
    }
    return ValidatePlan(plan, StoriesShape(), ck, tp, "plan.yaml").status();
  }
};

TEST_F(PlanErrors, Gap) {
  EXPECT_TRUE(FailsWith(Check("model.layers.0.mlp.gate_proj.weight", 1, {90, 172}),
                        {"plan.yaml", "model.layers.0.mlp.gate_proj.weight", "gap", "[86, 90)", "rank 1"}));
}

TEST_F(PlanErrors, Overlap) {
  EXPECT_TRUE(FailsWith(Check("model.layers.1.mlp.down_proj.weight", 1, {80, 172}),
                        {"model.layers.1.mlp.down_proj.weight", "rank 1", "overlaps rank 0"}));
}

TEST_F(PlanErrors, OutOfBounds) {
  EXPECT_TRUE(FailsWith(Check("model.embed_tokens.weight", 1, {256, 600}),
                        {"model.embed_tokens.weight", "rank 1", "inside [0, 512)"}));
}

TEST_F(PlanErrors, HeadsMustBeWhole) {
  // A valid tiling of q_proj rows that cuts head 3 (rows 24..32) in two.
  Checkpoint ck = Ckpt();
  PartitionPlan plan = std::move(MakeDefaultPlan(StoriesShape(), ck, 2)).value();
  for (auto& t : plan.tensors) {
    if (t.name == "model.layers.0.self_attn.q_proj.weight") t.ranges = {{0, 28}, {28, 64}};
  }
  EXPECT_TRUE(FailsWith(ValidatePlan(plan, StoriesShape(), ck, 2, "p").status(),
                        {"q_proj", "rank 0", "whole heads"}));
}

TEST_F(PlanErrors, UpMustFollowGate) {
  // A valid tiling of up_proj that disagrees with gate_proj.
  Checkpoint ck = Ckpt();
  PartitionPlan plan = std::move(MakeDefaultPlan(StoriesShape(), ck, 2)).value();
  for (auto& t : plan.tensors) {
    if (t.name == "model.layers.1.mlp.up_proj.weight") t.ranges = {{0, 80}, {80, 172}};
  }
  EXPECT_TRUE(FailsWith(ValidatePlan(plan, StoriesShape(), ck, 2, "p").status(),
                        {"model.layers.1.mlp.up_proj.weight", "rank 0", "gate_proj"}));
}

TEST_F(PlanErrors, TpMismatch) {
  EXPECT_TRUE(FailsWith(Check("(no tensor changed)", 0, {}, 4),
                        {"tp_size is 2", "--tp 4", "tpserve-partition --tp 4"}));
}

TEST_F(PlanErrors, MissingEntryAndUnknownEntry) {
  Checkpoint ck = Ckpt();
  PartitionPlan plan = std::move(MakeDefaultPlan(StoriesShape(), ck, 2)).value();
  plan.tensors.erase(plan.tensors.begin());
  EXPECT_TRUE(FailsWith(ValidatePlan(plan, StoriesShape(), ck, 2, "p").status(), {"no entry for tensor"}));
  plan = std::move(MakeDefaultPlan(StoriesShape(), ck, 2)).value();
  plan.tensors.push_back({"model.bogus.weight", {1}, SplitKind::kReplicate, {}});
  EXPECT_TRUE(FailsWith(ValidatePlan(plan, StoriesShape(), ck, 2, "p").status(), {"model.bogus.weight"}));
}

TEST_F(PlanErrors, MissingTensorInCheckpoint) {
  ModelConfig c = StoriesShape();
  c.tie_word_embeddings = false;  // now lm_head.weight is required, and the checkpoint lacks it
  Checkpoint ck = Ckpt();
  auto plan = MakeDefaultPlan(c, ck, 2);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(FailsWith(ValidatePlan(*plan, c, ck, 2, "p").status(), {"missing tensor 'lm_head.weight'"}));
}

TEST_F(PlanErrors, YamlErrorsNameFileAndKey) {
  const std::string file = dir_ + "/bad.yaml";
  WriteText(file, "tp_size: 2\ntensors:\n  - name: model.norm.weight\n    shape: [64]\n");
  EXPECT_TRUE(FailsWith(ReadPlanYaml(file).status(), {file, "model.norm.weight", "'split'"}));
  WriteText(file, "tp_size: 2\ntensors:\n  - name: x\n    shape: [64]\n    split: diagonal\n");
  EXPECT_TRUE(FailsWith(ReadPlanYaml(file).status(), {"diagonal", "column, row, vocab, replicate"}));
  WriteText(file, "tensors: [\n");
  EXPECT_TRUE(FailsWith(ReadPlanYaml(file).status(), {file, "YAML"}));
  EXPECT_TRUE(FailsWith(ReadPlanYaml(dir_ + "/none.yaml").status(), {"none.yaml", "tpserve-partition"}));
}

// A misspelt key is an error, not ignored; and a plan written for another model is refused
// through its `model:` block, before any tensor is looked at.
TEST_F(PlanErrors, UnknownKeysAndAnotherModelAreRefused) {
  Checkpoint ck = Ckpt();
  const std::string valid =
      PlanToYaml(std::move(MakeDefaultPlan(StoriesShape(), ck, 2)).value(), StoriesShape());
  const std::string file = dir_ + "/keys.yaml";
  auto read_with = [&](const std::string& from, const std::string& to) {
    std::string text = valid;
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
    WriteText(file, text);
    return ReadPlanYaml(file);
  };
  auto round_trip = read_with("tp_size: 2", "tp_size: 2");
  ASSERT_TRUE(round_trip.ok()) << round_trip.status().message();
  EXPECT_TRUE(ValidatePlan(*round_trip, StoriesShape(), ck, 2, file).ok());
  EXPECT_TRUE(FailsWith(read_with("tp_size: 2", "tp_size: 2\ntp_sizes: 3").status(),
                        {file, "unknown key 'tp_sizes'", "tp_size, model, tensors"}));
  EXPECT_TRUE(FailsWith(read_with("split: column", "split: column\n    rangez: []").status(),
                        {file, "tensors[", "unknown key 'rangez'", "name, shape, split, ranges"}));
  EXPECT_TRUE(
      FailsWith(read_with("version: 1", "version: 2").status(), {file, "version 2", "tpserve-partition"}));
  auto other = read_with("hidden_size: 64", "hidden_size: 128");
  ASSERT_TRUE(other.ok()) << other.status().message();
  EXPECT_TRUE(FailsWith(ValidatePlan(*other, StoriesShape(), ck, 2, file).status(),
                        {file, "hidden_size 128", "this model has 64", "tpserve-partition"}));
  EXPECT_TRUE(FailsWith(read_with("hidden_size: 64", "hidden_size: 64\n  hidden_sise: 64").status(),
                        {file, "model: unknown key 'hidden_sise'", "vocab_size"}));
  auto padded = read_with("hidden_size: 64", "hidden_size: 064");  // sizes compare as numbers
  ASSERT_TRUE(padded.ok()) << padded.status().message();
  EXPECT_TRUE(ValidatePlan(*padded, StoriesShape(), ck, 2, file).ok());
}

}  // namespace
}  // namespace tpserve
