// A shortened run of the quickstart recipe through the real binary: from a random init of the
// quickstart architecture (no cached base model in CI), validation loss must drop, the model
// directory must be written and a sample generated.
#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "engine/base/fs_util.h"
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

  // `ftune eval` on the exported model over the same validation blocks gives the loss the run
  // reported (same weights written and read back, same blocks, same batches).
  std::string eval_out;
  code = testing::run_command(testing::ftune_binary() + " eval " + out + "/model " + src +
                                  "/data/quickstart/val.jsonl --seq-len 128 --batch 8 "
                                  "--max-batches 4",
                              &eval_out);
  ASSERT_EQ(code, 0) << eval_out;
  double eval_loss = 0;
  ASSERT_EQ(std::sscanf(eval_out.c_str(), "loss %lf", &eval_loss), 1) << eval_out;
  EXPECT_NEAR(eval_loss, after, 1e-4 * after) << eval_out;

  // `ftune generate` continues the prompt.
  std::string gen;
  code = testing::run_command(
      testing::ftune_binary() + " generate " + out + "/model -p 'Plant: Tomato' -n 5", &gen);
  ASSERT_EQ(code, 0) << gen;
  EXPECT_EQ(gen.rfind("Plant: Tomato", 0), 0u) << gen;
  EXPECT_GT(gen.size(), std::string("Plant: Tomato\n").size()) << gen;
}

TEST(Bench, ReportsThroughputForASmallShape) {
  std::string out;
  int code = testing::run_command(testing::ftune_binary() +
                                      " bench --hidden 64 --layers 2 --heads 4 --kv-heads 2"
                                      " --intermediate 96 --vocab 256 --seq 32 --batch 2"
                                      " --steps 2 --warmup 1 --threads 1 --json",
                                  &out);
  ASSERT_EQ(code, 0) << out;
  auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["impl"], "ftune");
  EXPECT_GT(j["tokens_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["gflops_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["peak_rss_mb"].get<double>(), 0.0);
  EXPECT_EQ(j["params"].get<int64_t>(),
            256 * 64 + 2 * (2 * 64 + 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 96) + 64);
}

}  // namespace
}  // namespace ftune
