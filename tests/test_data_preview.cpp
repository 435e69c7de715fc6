#include <gtest/gtest.h>

#include <fstream>

#include "engine/base/error.h"
#include "engine/recipe/recipe.h"
#include "engine/tools/data_preview.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

TEST(DataPreview, MarksTrainedSpansAndCountsTokens) {
  const std::string src = FTUNE_SOURCE_DIR;
  std::string dir = testing::make_temp_dir("preview");
  std::ofstream(dir + "/i.jsonl") << R"({"instruction": "Name a herb.", "output": "Basil."})"
                                  << "\n"
                                  << R"({"instruction": "Name a tree.", "output": "Oak."})"
                                  << "\n";
  RecipeConfig c;
  c.model_path = src + "/configs/models/quickstart-base";
  c.data_train = dir + "/i.jsonl";
  c.data_format = DataFormat::Instruction;
  c.data_chat_template = ChatTemplateChoice::Chatml;
  PreviewOptions p;
  p.count = 1;
  std::string out = preview_data(c, p);
  EXPECT_NE(out.find("chat template chatml"), std::string::npos) << out;
  EXPECT_NE(out.find("[[Basil.<|im_end|>]]"), std::string::npos) << out;
  EXPECT_NE(out.find("<|im_start|>user\nName a herb.<|im_end|>"), std::string::npos) << out;
  EXPECT_EQ(out.find("Oak."), std::string::npos) << "only the first record was asked for";
  EXPECT_NE(out.find("--- record 1: "), std::string::npos) << out;
  c.data_train_on_inputs = true;
  out = preview_data(c, p);
  // The first token is never a target; everything after it is trained now.
  EXPECT_NE(out.find("[[|im_start|>user\nName a herb.<|im_end|>"), std::string::npos) << out;

  c.data_format = DataFormat::Messages;
  try {
    preview_data(c, p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("i.jsonl:1: no \"messages\" field"), std::string::npos)
        << e.what();
  }
}

TEST(DataPreview, ShowsEverySourceWithItsOwnFormat) {
  const std::string src = FTUNE_SOURCE_DIR;
  std::string dir = testing::make_temp_dir("preview");
  std::ofstream(dir + "/i.jsonl") << R"({"instruction": "Name a herb.", "output": "Basil."})"
                                  << "\n";
  std::ofstream(dir + "/t.jsonl") << R"({"body": "Plain notes about soil."})"
                                  << "\n";
  Recipe r = load_recipe_text("model: {path: " + src + "/configs/models/quickstart-base}\n" +
                                  "data:\n  format: instruction\n  chat_template: chatml\n"
                                  "  train:\n    - {path: i.jsonl, weight: 2}\n"
                                  "    - {path: t.jsonl, format: text, text_field: body}\n" +
                                  "output_dir: out\n",
                              "p.yaml", dir);
  std::string out = preview_data(r.cfg, PreviewOptions{});
  EXPECT_NE(out.find("i.jsonl  (format instruction, chat template chatml)"), std::string::npos)
      << out;
  EXPECT_NE(out.find("t.jsonl  (format text)"), std::string::npos) << out;
  EXPECT_NE(out.find("[[Basil.<|im_end|>]]"), std::string::npos) << out;
  EXPECT_NE(out.find("soil."), std::string::npos) << out;
}

}  // namespace
}  // namespace ftune
