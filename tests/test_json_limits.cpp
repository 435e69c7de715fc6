// The nesting limit on untrusted JSON (engine/json_limits.h), and that every parser fed by users'
// files applies it: before it, a config.json, tokenizer.json or JSONL line of ~120 KB of '['
// overflowed the stack when the parsed value was copied or printed (found by the fuzz targets'
// review; tests/fuzz).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "engine/error.h"
#include "engine/fs_util.h"
#include "engine/json_limits.h"
#include "engine/jsonl.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"
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

}  // namespace
}  // namespace ftune
