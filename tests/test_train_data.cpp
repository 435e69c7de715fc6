// Sample-based training end to end: instruction data rendered through a chat template, packed
// or padded, cached, trained on responses only, resumable bit for bit.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/recipe/recipe.h"
#include "engine/train/trainer.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

const std::string kSrc = FTUNE_SOURCE_DIR;

// Instruction records made from the quickstart garden notes: "How should I grow X?" -> note.
std::string instruction_file() {
  static std::string path = [] {
    std::string dir = testing::make_temp_dir("instr");
    std::istringstream in(read_file(kSrc + "/data/quickstart/train.jsonl"));
    std::ofstream out(dir + "/train.jsonl");
    std::string line;
    int n = 0;
    while (std::getline(in, line) && n < 240) {
      auto j = nlohmann::json::parse(line);
      std::string text = j["text"];
      auto nl = text.find('\n');
      std::string plant = text.substr(7, nl - 7);
      nlohmann::json rec = {{"instruction", "How should I grow " + plant + "?"},
                            {"output", text.substr(nl + 1)}};
      if (n % 3 == 0) rec["input"] = "In a small garden.";
      out << rec.dump() << "\n";
      ++n;
    }
    return dir + "/train.jsonl";
  }();
  return path;
}

Recipe recipe(const std::string& out, const std::string& cache,
              std::vector<std::string> extra = {}) {
  std::string yaml = "model:\n  path: " + kSrc +
                     "/configs/models/quickstart-base\n  init: random\n"
                     "data:\n  train: " +
                     instruction_file() +
                     "\n  format: instruction\n  val_fraction: 0.1\n"
                     "  cache_dir: " +
                     cache +
                     "\n"
                     "train:\n  seq_len: 96\n  micro_batch_size: 4\n  max_steps: 16\n"
                     "optim:\n  lr: 0.003\n"
                     "schedule:\n  warmup_steps: 2\n"
                     "checkpoint:\n  every: 8\n  keep_last: 0\n"
                     "output_dir: " +
                     out + "\nthreads: 2\nseed: 5\n";
  return load_recipe_text(yaml, "instr.yaml", kSrc, extra);
}

TrainOptions quiet() {
  TrainOptions o;
  o.quiet = true;
  return o;
}

TEST(TrainData, InstructionDataTrainsPackedAndCaches) {
  std::string cache = testing::make_temp_dir("cache");
  TrainResult a = run_training(recipe(testing::make_temp_dir("run"), cache), quiet());
  EXPECT_NE(a.data_summary.find("packed samples (chat template alpaca)"), std::string::npos)
      << a.data_summary;
  EXPECT_EQ(a.data_summary.find("from cache"), std::string::npos) << a.data_summary;
  ASSERT_EQ(a.losses.size(), 16u);
  EXPECT_LT(a.val_after.loss, a.val_before.loss - 1.0);
  // Same data and settings: the tokenized samples come from the cache, the run is identical.
  TrainResult b = run_training(recipe(testing::make_temp_dir("run"), cache), quiet());
  EXPECT_NE(b.data_summary.find("from cache"), std::string::npos) << b.data_summary;
  EXPECT_EQ(a.losses, b.losses);
  // A setting that changes the samples invalidates it.
  TrainResult c = run_training(recipe(testing::make_temp_dir("run"), cache,
                                      {"data.train_on_inputs=true", "train.max_steps=3"}),
                               quiet());
  EXPECT_EQ(c.data_summary.find("from cache"), std::string::npos) << c.data_summary;
}

TEST(TrainData, PaddedLayoutAndResume) {
  std::string cache = testing::make_temp_dir("cache");
  std::string full = testing::make_temp_dir("full"), part = testing::make_temp_dir("part");
  TrainResult a = run_training(recipe(full, cache, {"data.packing=pad"}), quiet());
  EXPECT_NE(a.data_summary.find("padded samples"), std::string::npos) << a.data_summary;
  TrainOptions stop = quiet();
  stop.stop_after_step = 8;
  run_training(recipe(part, cache, {"data.packing=pad"}), stop);
  TrainOptions resume = quiet();
  resume.resume = true;
  TrainResult rest = run_training(recipe(part, cache, {"data.packing=pad"}), resume);
  ASSERT_EQ(rest.losses.size(), 8u);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(rest.losses[i], a.losses[8 + i]) << "step " << 9 + i;
}

// With data.cache off nothing is kept on disk: the samples are still spilled to a file (so a
// big dataset never sits in memory) but it is unlinked once mapped.
TEST(TrainData, CacheOffLeavesNoFiles) {
  std::string cache = testing::make_temp_dir("cache");
  TrainResult a = run_training(
      recipe(testing::make_temp_dir("run"), cache, {"data.cache=false", "train.max_steps=4"}),
      quiet());
  ASSERT_EQ(a.losses.size(), 4u);
  EXPECT_TRUE(std::filesystem::is_empty(cache)) << "data.cache=false left files in " << cache;
  TrainResult b = run_training(
      recipe(testing::make_temp_dir("run"), cache, {"data.cache=false", "train.max_steps=4"}),
      quiet());
  EXPECT_EQ(b.data_summary.find("from cache"), std::string::npos) << b.data_summary;
  EXPECT_EQ(a.losses, b.losses);
}

// The stream layout (plain text pre-training) goes through the same cache.
TEST(TrainData, StreamLayoutCaches) {
  std::string cache = testing::make_temp_dir("cache");
  auto text = [&](const std::string& out) {
    return recipe(out, cache,
                  {"data.train=" + kSrc + "/data/quickstart/train.jsonl", "data.format=text",
                   "data.packing=stream", "train.max_steps=4"});
  };
  TrainResult a = run_training(text(testing::make_temp_dir("run")), quiet());
  EXPECT_NE(a.data_summary.find("stream layout"), std::string::npos) << a.data_summary;
  EXPECT_EQ(a.data_summary.find("from cache"), std::string::npos) << a.data_summary;
  TrainResult b = run_training(text(testing::make_temp_dir("run")), quiet());
  EXPECT_NE(b.data_summary.find("from cache"), std::string::npos) << b.data_summary;
  EXPECT_EQ(a.losses, b.losses);
}

TEST(TrainData, MessagesWithoutTemplateIsAClearError) {
  std::string dir = testing::make_temp_dir("msg");
  std::ofstream(dir + "/m.jsonl")
      << R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})"
      << "\n";
  try {
    run_training(recipe(testing::make_temp_dir("run"), dir,
                        {"data.format=messages", "data.train=" + dir + "/m.jsonl"}),
                 quiet());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("data.chat_template"), std::string::npos) << e.what();
  }
}

TEST(TrainData, NothingTrainableIsAClearError) {
  std::string dir = testing::make_temp_dir("empty");
  std::ofstream f(dir + "/t.jsonl");
  // Every prompt is longer than train.seq_len, so truncation cuts every response off.
  for (int i = 0; i < 50; ++i)
    f << R"({"instruction": "Describe, at great length and in many words, the whole history of )"
         R"(gardening in every country.", "output": "Gardens."})"
      << "\n";
  f.close();
  try {
    run_training(
        recipe(testing::make_temp_dir("run"), dir,
               {"data.train=" + dir + "/t.jsonl", "train.seq_len=12", "train.micro_batch_size=1"}),
        quiet());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("leaves no tokens to train on"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace ftune
