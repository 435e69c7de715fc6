// `ftune tokenize` through the binary, against the ids and decodes Hugging Face tokenizers gave
// for the tokenizer fixtures (tests/fixtures/tokenizer).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/base/fs_util.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

std::string fixture(const std::string& name) {
  return testing::fixtures_dir() + "/tokenizer/" + name;
}

std::string quote(const std::string& s) {  // one single-quoted sh word
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

using testing::CliRun;
using testing::ftune;

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t nl; (nl = s.find('\n', start)) != std::string::npos; start = nl + 1)
    out.push_back(s.substr(start, nl - start));
  if (start < s.size()) out.push_back(s.substr(start));
  return out;
}

// The fixture cases a line-oriented tool can take: one line of valid text each.
std::vector<json> line_cases(const std::string& name) {
  json cases = json::parse(read_file(fixture(name) + "/cases.json"));
  std::vector<json> out;
  for (const json& c : cases["cases"]) {
    const std::string text = c["text"].get<std::string>();
    if (c.contains("input_hex") || text.find_first_of("\r\n") != std::string::npos) continue;
    out.push_back(c);
  }
  return out;
}

std::string write_file(const std::string& dir, const std::string& name, const std::string& body) {
  std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << body;
  return path;
}

class CliTokenize : public ::testing::TestWithParam<const char*> {};

TEST_P(CliTokenize, EncodesEachLineLikeTokenizers) {
  const std::string name = GetParam();
  std::vector<json> cases = line_cases(name);
  ASSERT_GT(cases.size(), 25u);
  std::string text, crlf;
  for (const json& c : cases) {
    text += c["text"].get<std::string>() + "\n";
    crlf += c["text"].get<std::string>() + "\r\n";
  }
  const std::string dir = testing::make_temp_dir("cli-tok");
  const std::string file = write_file(dir, "in.txt", text);
  const std::string crlf_file = write_file(dir, "crlf.txt", crlf);
  const std::string tok = quote(fixture(name));
  // --file, --text with several lines, standard input, a CRLF file: the same ids.
  const std::vector<std::string> commands = {
      "tokenize " + tok + " --file " + quote(file),
      "tokenize " + tok + " --text " + quote(text.substr(0, text.size() - 1)),
      "tokenize " + tok + " < " + quote(file),
      "tokenize " + tok + " --file " + quote(crlf_file),
  };
  for (const std::string& cmd : commands) {
    SCOPED_TRACE(cmd.substr(0, 200));
    CliRun r = ftune(cmd);
    ASSERT_EQ(r.code, 0) << r.out;
    std::vector<std::string> got = lines_of(r.out);
    ASSERT_EQ(got.size(), cases.size()) << r.out;
    for (size_t i = 0; i < cases.size(); ++i) {
      SCOPED_TRACE(cases[i]["text"].dump());
      EXPECT_EQ(json::parse(got[i]), cases[i]["ids"]);
    }
  }
  if (cases[0].contains("ids_with_special")) {
    CliRun r = ftune("tokenize " + tok + " --add-special --file " + quote(file));
    ASSERT_EQ(r.code, 0) << r.out;
    std::vector<std::string> got = lines_of(r.out);
    ASSERT_EQ(got.size(), cases.size());
    for (size_t i = 0; i < cases.size(); ++i)
      EXPECT_EQ(json::parse(got[i]), cases[i]["ids_with_special"]) << cases[i]["text"].dump();
  }
  fs::remove_all(dir);
}

TEST_P(CliTokenize, DecodesEachLineLikeTokenizers) {
  const std::string name = GetParam();
  std::vector<json> cases;
  for (const json& c : line_cases(name))
    if (c["decoded"].get<std::string>().find('\n') == std::string::npos) cases.push_back(c);
  std::string ids;
  for (const json& c : cases) ids += c["ids"].dump() + "\n";
  const std::string dir = testing::make_temp_dir("cli-detok");
  const std::string file = write_file(dir, "ids.txt", ids);
  for (bool skip : {false, true}) {
    CliRun r = ftune("tokenize " + quote(fixture(name)) + " --decode --file " + quote(file) +
                     (skip ? " --skip-special" : ""));
    ASSERT_EQ(r.code, 0) << r.out;
    std::vector<std::string> got = lines_of(r.out);
    ASSERT_EQ(got.size(), cases.size()) << r.out;
    for (size_t i = 0; i < cases.size(); ++i) {
      EXPECT_EQ(got[i], cases[i][skip ? "decoded_skip_special" : "decoded"].get<std::string>())
          << cases[i]["ids"].dump();
    }
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CliTokenize,
                         ::testing::Values("llama2_style", "metaspace_style", "llama3_style",
                                           "gpt2_style"));

TEST(CliTokenizeBasics, RoundTripThroughAPipeAndEmptyText) {
  const std::string tok = quote(fixture("llama2_style"));
  const std::string text = "Hello world, \xE4\xB8\xAD\xF0\x9F\xA6\x80 and <s> inside";
  CliRun r = ftune("tokenize " + tok + " --text " + quote(text) + " | " + testing::ftune_binary() +
                   " tokenize " + tok + " --decode");
  ASSERT_EQ(r.code, 0) << r.out;
  // The piece after <s> gains a metaspace, which decodes to a space (as in tokenizers).
  EXPECT_EQ(r.out, "Hello world, \xE4\xB8\xAD\xF0\x9F\xA6\x80 and <s>  inside\n");

  json cases = json::parse(read_file(fixture("llama2_style") + "/cases.json"));
  ASSERT_EQ(cases["cases"][0]["text"], "");
  r = ftune("tokenize " + tok + " --text '' --add-special");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(json::parse(r.out), cases["cases"][0]["ids_with_special"]);
}

TEST(CliTokenizeBasics, HelpHasExamples) {
  CliRun r = ftune("tokenize --help");
  EXPECT_EQ(r.code, 0);
  for (const char* s : {"Examples", "--text", "--file", "--decode", "--add-special"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
  EXPECT_NE(ftune("--help").out.find("tokenize"), std::string::npos);
}

TEST(CliTokenizeBasics, ErrorsNameTheProblem) {
  const std::string tok = quote(fixture("llama2_style"));
  CliRun r = ftune("tokenize " + tok + " --decode --text " + quote("[1, 2]\n[3, \"x\"]"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--text line 2"), std::string::npos) << r.out;

  const std::string dir = testing::make_temp_dir("cli-tok-err");
  const std::string ids = write_file(dir, "ids.txt", "[1]\nnot json\n");
  r = ftune("tokenize " + tok + " --decode --file " + quote(ids));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find(ids + " line 2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("JSON array"), std::string::npos) << r.out;

  r = ftune("tokenize " + tok + " --file " + quote(dir + "/missing.txt"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find(dir + "/missing.txt"), std::string::npos) << r.out;

  r = ftune("tokenize " + quote(dir) + " --text hi");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find(dir + "/tokenizer.json"), std::string::npos) << r.out;

  r = ftune("tokenize " + tok + " --decode --add-special --text '[1]'");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("excludes"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ftune
