// Data-parallel CPU ranks through `ftune launch` (mpirun): two ranks with micro-batch b give
// the losses and weights of one rank accumulating two micro-batches of b — the same global
// batch — and only rank 0 writes outputs.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/fs_util.h"
#include "engine/safetensors.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

const std::string kSrc = FTUNE_SOURCE_DIR;

std::string run_args(const std::string& out) {
  return "train " + kSrc + "/recipes/quickstart-base.yaml output_dir=" + out +
         " data.train=" + kSrc + "/data/quickstart/train.jsonl data.packing=pack " +
         "train.seq_len=64 train.micro_batch_size=4 train.max_steps=12 schedule.warmup_steps=2 " +
         "eval.every=0 checkpoint.every=6 checkpoint.keep_last=0 generate.prompt= threads=1 " +
         "data.cache=false";
}

std::vector<double> losses(const std::string& metrics) {
  std::vector<double> out;
  std::istringstream in(read_file(metrics));
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  return out;
}

TEST(Launch, TwoRanksEqualOneRankAccumulating) {
#ifndef FTUNE_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#else
  const std::string two = testing::make_temp_dir("ranks2") + "/run";
  const std::string one = testing::make_temp_dir("ranks1") + "/run";
  testing::CliRun r2 = testing::ftune("launch -n 2 " + run_args(two));
  ASSERT_EQ(r2.code, 0) << r2.out;
  testing::CliRun r1 = testing::ftune(run_args(one) + " train.grad_accum=2");
  ASSERT_EQ(r1.code, 0) << r1.out;
  const std::vector<double> a = losses(two + "/metrics.jsonl"), b = losses(one + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * b[i]) << "step " << i + 1;
  WeightStore wa = WeightStore::open_dir(two + "/model"),
              wb = WeightStore::open_dir(one + "/model");
  for (const std::string& name : wb.names()) {
    const TensorInfo* t = wb.find(name);
    std::vector<float> x(size_t(t->numel())), y(x.size());
    wa.read_as(name, DType::F32, x.data());
    wb.read_as(name, DType::F32, y.data());
    EXPECT_LT(testing::rel_error(x, y), 1e-5) << name;
  }
  // Rank 0 alone writes: one metrics line per step, one set of checkpoints.
  EXPECT_TRUE(path_exists(two + "/checkpoints/step-00000006/state.json"));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(two + "/checkpoints"),
                          std::filesystem::directory_iterator{}),
            3);  // step-6, step-12, latest
#endif
}

// ZeRO-1: three ranks (uneven slices of the optimizer state) each update their slice and
// all-gather the weights; the run still equals one rank accumulating three micro-batches.
TEST(Launch, Zero1ThreeRanksEqualOneRankAccumulating) {
#ifndef FTUNE_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#else
  const std::string three = testing::make_temp_dir("zero1") + "/run";
  const std::string one = testing::make_temp_dir("zero1ref") + "/run";
  testing::CliRun r3 = testing::ftune("launch -n 3 " + run_args(three) + " sharding=zero1");
  ASSERT_EQ(r3.code, 0) << r3.out;
  EXPECT_NE(r3.out.find("optimizer"), std::string::npos) << r3.out;
  testing::CliRun r1 = testing::ftune(run_args(one) + " sharding=zero1 train.grad_accum=3");
  ASSERT_EQ(r1.code, 0) << r1.out;
  const std::vector<double> a = losses(three + "/metrics.jsonl");
  const std::vector<double> b = losses(one + "/metrics.jsonl");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * b[i]) << "step " << i + 1;
  // The checkpoint holds the whole moments, gathered from the three slices.
  SafetensorsReader o3 =
      SafetensorsReader::open(three + "/checkpoints/step-00000012/optimizer.safetensors");
  SafetensorsReader o1 =
      SafetensorsReader::open(one + "/checkpoints/step-00000012/optimizer.safetensors");
  for (const char* name : {"adamw.exp_avg", "adamw.exp_avg_sq"}) {
    const TensorInfo* t3 = o3.find(name);
    const TensorInfo* t1 = o1.find(name);
    ASSERT_TRUE(t3 && t1);
    std::vector<float> x(size_t(t3->numel())), y(size_t(t1->numel()));
    o3.read_as(*t3, DType::F32, x.data());
    o1.read_as(*t1, DType::F32, y.data());
    EXPECT_LT(testing::rel_error(x, y), 1e-4) << name;
  }
#endif
}

// A rank that stops answering (FTUNE_TEST_HANG_RANK makes rank 1 sleep at step 2) must end
// the job within dist.timeout with a message naming the rank and the collective.
TEST(Launch, HungRankEndsTheJobWithinTheTimeout) {
#ifndef FTUNE_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#else
  const std::string out = testing::make_temp_dir("hang") + "/run";
  const auto t0 = std::chrono::steady_clock::now();
  testing::CliRun r =
      testing::ftune("launch -n 2 " + run_args(out) + " dist.timeout=2", "FTUNE_TEST_HANG_RANK=1");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("rank 0: MPI all-reduce did not finish within 2 s"), std::string::npos)
      << r.out;
  EXPECT_LT(secs, 30.0);
#endif
}

TEST(Launch, ErrorsEndTheJob) {
#ifndef FTUNE_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#else
  testing::CliRun r = testing::ftune("launch -n 2 train /nonexistent/recipe.yaml");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("/nonexistent/recipe.yaml"), std::string::npos) << r.out;
  testing::CliRun none = testing::ftune("launch -n 2");
  EXPECT_NE(none.code, 0);
#endif
}

}  // namespace
}  // namespace ftune
