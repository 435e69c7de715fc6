// A shortened run of the quickstart recipe through the real binary: from a random init of the
// quickstart architecture (no cached base model in CI), validation loss must drop, the model
// directory must be written and a sample generated.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "engine/fs_util.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

TEST(Quickstart, ShortRunLowersValidationLoss) {
  const std::string src = FTUNE_SOURCE_DIR;
  const std::string out = testing::make_temp_dir("quickstart");
  std::string log;
  int code = testing::run_command(
      testing::ftune_binary() + " train " + src + "/recipes/quickstart.yaml" +
          " model.path=" + src + "/configs/models/quickstart-base model.init=random" +
          " train.max_steps=40 optim.lr=0.003 schedule.warmup_steps=5 eval.every=0" +
          " eval.max_batches=4 checkpoint.every=0 generate.max_new_tokens=8 output_dir=" + out,
      &log);
  ASSERT_EQ(code, 0) << log;
  auto summary = nlohmann::json::parse(read_file(out + "/summary.json"));
  const double before = summary["val_before"]["loss"], after = summary["val_after"]["loss"];
  EXPECT_LT(after, before - 0.5) << log;
  EXPECT_TRUE(path_exists(out + "/model/model.safetensors"));
  EXPECT_NE(log.find("validation before"), std::string::npos) << log;
  EXPECT_NE(log.find("sample"), std::string::npos) << log;
  EXPECT_EQ(std::count(log.begin(), log.end(), '\r'), 0) << "not a TTY: plain lines only";
}

}  // namespace
}  // namespace ftune
