// The nesting limit on untrusted JSON (engine/base/json_limits.h), and that every parser fed by
// users' files applies it: before it, a config.json, tokenizer.json or JSONL line of ~120 KB of '['
// overflowed the stack when the parsed value was copied or printed (found by the fuzz targets'
// review; tests/fuzz).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"
#include "engine/formats/jsonl.h"
#include "engine/model/model_config.h"
#include "engine/model/peft_adapter.h"
#include "engine/text/chat_template.h"
#include "engine/text/tokenizer.h"
#include "engine/train/checkpoint.h"
#include "engine/trust/manifest.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

using testing::expect_error;

std::string nested(size_t depth, const std::string& inner = "1") {
  return std::string(depth, '[') + inner + std::string(depth, ']');
}

TEST(JsonLimits, DepthCountsBracketsOutsideStrings) {
  EXPECT_EQ(json_nesting_depth(""), 0u);
  EXPECT_EQ(json_nesting_depth("1"), 0u);
  EXPECT_EQ(json_nesting_depth(R"({"a": [1, {"b": []}], "c": {}})"), 4u);
  // Brackets inside strings, escaped quotes included, do not count.
  EXPECT_EQ(json_nesting_depth(R"(["[[[[", "\"[[[", "\\", [2]])"), 2u);
  // Invalid text still gets a bounded answer (the parser rejects it afterwards).
  EXPECT_EQ(json_nesting_depth("]]]][["), 2u);
  // Counting stops just past the limit, whatever follows.
  EXPECT_EQ(json_nesting_depth(nested(100000)), kMaxJsonDepth + 1);
}

TEST(JsonLimits, BoundedParseRefusesDeepTextAndKeepsSyntaxErrors) {
  EXPECT_EQ(parse_json_bounded(nested(kMaxJsonDepth), "ok.json").size(), 1u);
  expect_error([] { parse_json_bounded(nested(kMaxJsonDepth + 1), "deep.json"); },
               {"deep.json", "nested more than 512 levels"});
  EXPECT_THROW(parse_json_bounded("{\"a\": ", "bad.json"), nlohmann::json::parse_error);
}

TEST(JsonLimits, ExcerptIsShort) {
  const nlohmann::json big = std::string(100000, 'x');
  const std::string e = json_excerpt(big);
  EXPECT_EQ(e.size(), 83u);
  EXPECT_EQ(e.substr(0, 2), "\"x");
  EXPECT_EQ(e.substr(80), "...");
  EXPECT_EQ(json_excerpt(nlohmann::json::parse("[1,2]")), "[1,2]");
}

class DeepFiles : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = ftune::testing::make_temp_dir("json-limits"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
  // Deep enough to have overflowed an 8 MB stack when copied (about 60,000 levels did).
  const std::string deep_ = nested(1000000);
};

TEST_F(DeepFiles, ModelConfig) {
  write_file_atomic(dir_ + "/config.json", R"({"model_type": "llama", "x": )" + deep_ + "}");
  expect_error([&] { load_model_config(dir_); },
               {dir_ + "/config.json", "nested more than 512 levels"});
}

TEST_F(DeepFiles, Tokenizer) {
  write_file_atomic(dir_ + "/tokenizer.json", R"({"added_tokens": )" + deep_ + "}");
  expect_error([&] { Tokenizer::load(dir_); },
               {dir_ + "/tokenizer.json", "nested more than 512 levels"});
}

TEST_F(DeepFiles, JsonlLineIsABadRecord) {
  const std::string path = dir_ + "/data.jsonl";
  write_file_atomic(path, "{\"text\": \"ok\"}\n{\"text\": " + deep_ + "}\n{\"text\": \"ok\"}\n");
  int records = 0;
  JsonlStats st;
  for_each_jsonl(
      path, /*skip_bad=*/true,
      [&](const nlohmann::json& rec, int64_t) {
        const nlohmann::json copy = rec;  // what append_samples does with every record
        ++records;
        return std::string();
      },
      &st);
  EXPECT_EQ(records, 2);
  EXPECT_EQ(st.skipped, 1);
  ASSERT_EQ(st.examples.size(), 1u);
  EXPECT_NE(st.examples[0].find(path + ":2: JSON nested more than 512 levels"), std::string::npos)
      << st.examples[0];
  expect_error(
      [&] {
        for_each_jsonl(
            path, false, [](const nlohmann::json&, int64_t) { return std::string(); }, nullptr);
      },
      {path + ":2", "nested more than 512 levels", "skip_bad_lines"});
}

// Files a user hands over (an adapter, a tokenizer_config.json) are refused with the file named.
TEST_F(DeepFiles, AdapterConfigAndChatTemplate) {
  write_file_atomic(dir_ + "/adapter_config.json", R"({"r": 8, "x": )" + deep_ + "}");
  expect_error([&] { read_adapter_config(dir_); },
               {dir_ + "/adapter_config.json", "nested more than 512 levels"});
  write_file_atomic(dir_ + "/tokenizer_config.json", R"({"chat_template": )" + deep_ + "}");
  expect_error([&] { ChatTemplate::from_tokenizer_config(dir_); },
               {dir_ + "/tokenizer_config.json", "nested more than 512 levels"});
}

// Files ftune wrote and something damaged: a checkpoint's state.json is an error naming it; a
// manifest or signature is a verification problem, not a crash.
TEST_F(DeepFiles, CheckpointStateAndManifest) {
  write_file_atomic(dir_ + "/state.json", R"({"step": )" + deep_ + "}");
  expect_error([&] { read_checkpoint_state(dir_); },
               {dir_ + "/state.json", "nested more than 512 levels"});
  write_file_atomic(dir_ + "/ftune-manifest.json", deep_);
  const VerifyReport r = verify_output(dir_, "");
  EXPECT_FALSE(r.ok);
  ASSERT_FALSE(r.problems.empty());
  EXPECT_NE(r.problems[0].find("nested more than 512 levels"), std::string::npos) << r.problems[0];
}

// metrics.jsonl lines are read by `ftune status` and `ftune report`: a damaged line is skipped.
TEST_F(DeepFiles, MetricsLineIsSkippedByStatusAndReport) {
  write_file_atomic(dir_ + "/metrics.jsonl", "{\"step\": 1, \"loss\": 2.5, \"lr\": 0.001}\n" +
                                                 deep_ + "\n{\"step\": 2, \"loss\": 2.25, " +
                                                 "\"lr\": 0.001}\n");
  testing::CliRun st = testing::ftune("status " + dir_);
  EXPECT_EQ(st.code, 0) << st.out;
  EXPECT_NE(st.out.find("2.25"), std::string::npos) << st.out;
  testing::CliRun rep = testing::ftune("report " + dir_);
  EXPECT_EQ(rep.code, 0) << rep.out;
  EXPECT_TRUE(path_exists(dir_ + "/report.html")) << rep.out;
}

}  // namespace
}  // namespace ftune
