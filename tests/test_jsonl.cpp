#include <gtest/gtest.h>

#include <fstream>

#include "engine/base/error.h"
#include "engine/formats/jsonl.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

std::string file_with(const std::string& text) {
  std::string path = testing::make_temp_dir("jsonl") + "/d.jsonl";
  std::ofstream(path) << text;
  return path;
}

const std::string kMixed =
    "{\"text\": \"a\"}\n"
    "{\"text\": broken}\n"
    "\n"
    "[1, 2]\n"
    "{\"body\": \"no text field\"}\n"
    "{\"text\": \"b\"}\n";

std::string need_text(const nlohmann::json& j, int64_t) {
  return j.contains("text") ? "" : "no \"text\" field";
}

TEST(Jsonl, BadLinesAreErrorsNamingFileAndLine) {
  std::string path = file_with(kMixed);
  try {
    for_each_jsonl(path, false, need_text, nullptr);
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("d.jsonl:2: not valid JSON"), std::string::npos) << m;
    EXPECT_NE(m.find("data.skip_bad_lines"), std::string::npos) << m;
  }
}

TEST(Jsonl, SkipBadLinesCountsThem) {
  std::string path = file_with(kMixed);
  JsonlStats st;
  std::vector<int64_t> lines;
  for_each_jsonl(
      path, true,
      [&](const nlohmann::json& j, int64_t line) {
        std::string why = need_text(j, line);
        if (why.empty()) lines.push_back(line);
        return why;
      },
      &st);
  EXPECT_EQ(lines, (std::vector<int64_t>{1, 6}));
  EXPECT_EQ(st.lines, 5);
  EXPECT_EQ(st.records, 2);
  EXPECT_EQ(st.skipped, 3);
  ASSERT_EQ(st.examples.size(), 3u);
  EXPECT_NE(st.examples[1].find("d.jsonl:4: not a JSON object"), std::string::npos);
  EXPECT_NE(st.examples[2].find("d.jsonl:5: no \"text\" field"), std::string::npos);
}

}  // namespace
}  // namespace ftune
