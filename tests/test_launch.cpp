// Data-parallel CPU ranks through `ftune launch` (mpirun): two ranks with micro-batch b give
// the losses and weights of one rank accumulating two micro-batches of b — the same global
// batch — and only rank 0 writes outputs.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/formats/safetensors.h"
#include "engine/train/checkpoint.h"
#include "engine/trust/encryption.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

const std::string kSrc = FTUNE_SOURCE_DIR;

std::string run_args(const std::string& out, int steps = 12) {
  return "train " + kSrc + "/recipes/quickstart-base.yaml output_dir=" + out +
         " data.train=" + kSrc + "/data/quickstart/train.jsonl data.packing=pack " +
         "train.seq_len=64 train.micro_batch_size=4 train.max_steps=" + std::to_string(steps) +
         " schedule.warmup_steps=2 " +
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

void expect_same_weights(const std::string& a_dir, const std::string& b_dir, double tol) {
  WeightStore wa = WeightStore::open_dir(a_dir), wb = WeightStore::open_dir(b_dir);
  for (const std::string& name : wb.names()) {
    const TensorInfo* t = wb.find(name);
    std::vector<float> x(size_t(t->numel())), y(x.size());
    wa.read_as(name, DType::F32, x.data());
    wb.read_as(name, DType::F32, y.data());
    EXPECT_LT(testing::rel_error(x, y), tol) << name;
  }
}

#ifdef FTUNE_HAVE_MPI
// One rank accumulating k micro-batches: the reference for k ranks, computed once per k.
const std::string& reference_run(int k) {
  static std::map<int, std::string> runs;
  auto it = runs.find(k);
  if (it != runs.end()) return it->second;
  const std::string dir = testing::make_temp_dir("zero_ref" + std::to_string(k)) + "/run";
  testing::CliRun r = testing::ftune(run_args(dir, 20) + " train.grad_accum=" + std::to_string(k));
  EXPECT_EQ(r.code, 0) << r.out;
  return runs[k] = dir;
}
#endif

// ZeRO-1/2/3 on 2 and 3 ranks (uneven slices: no unit divides evenly) give, over 20 steps, the
// losses and exported weights of one rank accumulating the same global batch.
class ZeroRanks : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(ZeroRanks, EqualOneRankWithTheSameGlobalBatch) {
#ifndef FTUNE_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#else
  const auto& [stage, n] = GetParam();
  const std::string out = testing::make_temp_dir(stage + std::to_string(n)) + "/run";
  testing::CliRun r = testing::ftune("launch -n " + std::to_string(n) + " " + run_args(out, 20) +
                                     " sharding=" + stage);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string& ref = reference_run(n);
  const std::vector<double> a = losses(out + "/metrics.jsonl"), b = losses(ref + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * b[i]) << "step " << i + 1;
  expect_same_weights(out + "/model", ref + "/model", 1e-5);
  // Each rank wrote its slice of the moments (ZeRO-3: of the weights too); read back whole they
  // equal the single rank's.
  const std::string ck = out + "/checkpoints/step-00000020";
  EXPECT_TRUE(
      path_exists(ck + "/optimizer.rank-00000-of-0000" + std::to_string(n) + ".safetensors"));
  EXPECT_EQ(path_exists(ck + "/model.safetensors"), stage != "zero3");
  const SafetensorsReader whole =
      SafetensorsReader::open(ref + "/checkpoints/step-00000020/optimizer.safetensors");
  ASSERT_TRUE(whole.find("adamw.exp_avg"));
  const size_t total = size_t(whole.find("adamw.exp_avg")->numel());
  auto be = make_cpu_backend();
  std::vector<float> m1(total), v1(total), m2(total), v2(total);
  load_checkpoint_moments(ck, 0, total, total, m1.data(), v1.data(), be.get());
  load_checkpoint_moments(ref + "/checkpoints/step-00000020", 0, total, total, m2.data(), v2.data(),
                          be.get());
  EXPECT_LT(testing::rel_error(m1, m2), 1e-4);
  EXPECT_LT(testing::rel_error(v1, v2), 1e-4);
  // Each rank's peak is on record for `ftune plan` to be checked against.
  const nlohmann::json mem = nlohmann::json::parse(read_file(out + "/memory.json"));
  ASSERT_EQ(mem["ranks"].size(), size_t(n));
  for (const auto& rk : mem["ranks"]) EXPECT_GT(rk["peak_allocated_bytes"].get<int64_t>(), 0);
#endif
}

INSTANTIATE_TEST_SUITE_P(Stages, ZeroRanks,
                         ::testing::Combine(::testing::Values("zero1", "zero2", "zero3"),
                                            ::testing::Values(2, 3)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "ranks";
                         });

// A ZeRO-3 export streams: rank 0 writes while each unit is gathered to it in turn, so it holds
// one unit of the weights at a time (memory.json records how much), here into several encrypted
// files; the weights equal the one-rank run's. Generation runs sharded on every rank, and rank
// 0 alone prints what `ftune generate` gives on the exported model.
TEST(Launch, ZeroThreeStreamsTheExportAndGeneratesSharded) {
#ifndef FTUNE_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#else
  const std::string base = testing::make_temp_dir("zero3_export");
  const std::string key = base + "/weights.key", out = base + "/run";
  ASSERT_EQ(testing::ftune("keygen --encrypt " + key).code, 0);
  const std::string prompt = "Once upon";
  testing::CliRun r = testing::ftune(
      "launch -n 3 " + run_args(out, 20) +
      " sharding=zero3 export.dtype=f32 export.max_shard_mb=1 export.encrypt.key_file=" + key +
      " generate.temperature=0 generate.max_new_tokens=12 'generate.prompt=" + prompt + "'");
  ASSERT_EQ(r.code, 0) << r.out;
  // Several weight files (the model is about 3.5 MB in f32), every one encrypted.
  ASSERT_TRUE(path_exists(out + "/model/model.safetensors.index.json"));
  EXPECT_TRUE(path_exists(out + "/model/model-00002-of-00004.safetensors"));
  EXPECT_THROW(WeightStore::open_dir(out + "/model"), Error);
  const WeightKey k = load_key_file(key);
  WeightStore got = WeightStore::open_dir(out + "/model", &k),
              ref = WeightStore::open_dir(reference_run(3) + "/model");
  size_t total = 0;
  for (const std::string& name : ref.names()) {
    const TensorInfo* t = ref.find(name);
    ASSERT_NE(got.find(name), nullptr) << name;
    std::vector<float> x(size_t(t->numel())), y(x.size());
    got.read_as(name, DType::F32, x.data());
    ref.read_as(name, DType::F32, y.data());
    EXPECT_LT(testing::rel_error(x, y), 1e-5) << name;
    total += x.size() * sizeof(float);
  }
  EXPECT_EQ(got.names().size(), ref.names().size());
  // Rank 0 held one unit (here a decoder layer: the tied embedding is smaller) at a time.
  const nlohmann::json mem = nlohmann::json::parse(read_file(out + "/memory.json"));
  const int64_t held = mem["export_host_bytes"].get<int64_t>();
  EXPECT_GT(held, 0);
  EXPECT_LT(held, int64_t(total / 4)) << "of " << total;
  // The sample, printed once, is the exported model's own greedy continuation.
  const std::string head = "--- sample (greedy=yes) ---\n";
  const size_t at = r.out.find(head);
  ASSERT_NE(at, std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(head, at + 1), std::string::npos) << "printed by more than one rank";
  const size_t from = at + head.size(), to = r.out.find("\n---", from);
  ASSERT_NE(to, std::string::npos);
  const std::string sample = r.out.substr(from, to - from);
  EXPECT_GT(sample.size(), prompt.size());
  testing::CliRun g = testing::ftune("generate " + out + "/model --key-file " + key + " -p '" +
                                     prompt + "' -n 12 -t 0 --context 64 --threads 1");
  ASSERT_EQ(g.code, 0) << g.out;
  EXPECT_NE(g.out.find(sample + "\n"), std::string::npos) << "train: " << sample << "\n" << g.out;
#endif
}

// dist.overlap (ZeRO-3 all-gathers started a layer ahead, reduce-scatters finished a layer
// later, both nonblocking) changes when data arrives, not what it is: 3 ranks give the losses
// and weights of the blocking collectives, to the last bits a different summation order in MPI's
// nonblocking reduce-scatter may move; the summary says how the gathers were served.
TEST(Launch, ZeroThreeOverlapChangesNothingButTiming) {
#ifndef FTUNE_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#else
  const std::string base = testing::make_temp_dir("zero3_overlap");
  std::map<bool, std::string> dirs;
  for (bool overlap : {true, false}) {
    const std::string out = base + (overlap ? "/on" : "/off");
    testing::CliRun r = testing::ftune(
        "launch -n 3 " + run_args(out, 8) +
        " sharding=zero3 train.recompute=full dist.overlap=" + (overlap ? "true" : "false"));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("ZeRO-3 weight gathers on rank 0"), std::string::npos) << r.out;
    const nlohmann::json g =
        nlohmann::json::parse(read_file(out + "/summary.json"))["zero3_gathers"];
    EXPECT_EQ(g["overlap"].get<bool>(), overlap);
    if (overlap)
      EXPECT_GT(g["prefetched"].get<int64_t>(), g["waited"].get<int64_t>()) << g.dump();
    else
      EXPECT_EQ(g["prefetched"].get<int64_t>(), 0) << g.dump();
    dirs[overlap] = out;
  }
  const std::vector<double> a = losses(dirs[true] + "/metrics.jsonl"),
                            b = losses(dirs[false] + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-6 * b[i]) << "step " << i + 1;
  expect_same_weights(dirs[true] + "/model", dirs[false] + "/model", 1e-5);
#endif
}

// Rank 0 failing mid-export under ZeRO-3 still serves the other ranks' gathers: every rank
// ends promptly with the error (no collective left waiting for dist.timeout), and no partial
// model is left.
TEST(Launch, ZeroThreeExportFailureEndsEveryRankTogether) {
#ifndef FTUNE_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#else
  const std::string out = testing::make_temp_dir("zero3_export_fail") + "/run";
  const auto t0 = std::chrono::steady_clock::now();
  testing::CliRun r =
      testing::ftune("launch -n 2 " + run_args(out, 4) + " sharding=zero3 dist.timeout=60",
                     "FTUNE_TEST_EXPORT_FAIL_AT_UNIT=2");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_LT(secs, 50) << r.out;
  EXPECT_NE(r.out.find("injected export failure at unit 2"), std::string::npos) << r.out;
  // (Rank 1 raises "rank 0 could not write the model" at the same point, but mpirun may end it
  // before it prints, once rank 0 has exited non-zero.)
  EXPECT_EQ(r.out.find("did not finish within"), std::string::npos) << r.out;
  EXPECT_FALSE(path_exists(out + "/model"));
  for (const auto& e : std::filesystem::directory_iterator(out))
    EXPECT_EQ(e.path().filename().string().rfind("model.tmp", 0), std::string::npos) << e.path();
#endif
}

// A checkpoint written by 3 ranks resumes on 2 ranks and on 1 rank with the same continuation:
// train.global_batch_size keeps the batch (3x2 = 2x3 = 1x6 micro-batches) and the recipe the same.
TEST(Launch, ResumeOnADifferentNumberOfRanks) {
#ifndef FTUNE_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#else
  const std::string base = testing::make_temp_dir("reshard");
  auto args = [&](const std::string& dir) {
    return run_args(dir, 8) + " train.global_batch_size=24 checkpoint.every=0 sharding=zero3";
  };
  testing::CliRun whole = testing::ftune("launch -n 3 " + args(base + "/three"));
  ASSERT_EQ(whole.code, 0) << whole.out;
  for (int n : {2, 1}) {
    const std::string dir = base + "/on" + std::to_string(n);
    // Stopped at step 4 by a signal (checkpoint, exit 75), as a preempted job would be.
    testing::CliRun first =
        testing::ftune("launch -n 3 " + args(dir), "FTUNE_TEST_SIGNAL_AT_STEP=4");
    ASSERT_NE(first.out.find("at step 4"), std::string::npos) << first.out;
    testing::CliRun rest =
        testing::ftune("launch -n " + std::to_string(n) + " " + args(dir) + " --resume");
    ASSERT_EQ(rest.code, 0) << rest.out;
    EXPECT_NE(rest.out.find("resumed from"), std::string::npos) << rest.out;
    const std::vector<double> a = losses(dir + "/metrics.jsonl"),
                              b = losses(base + "/three/metrics.jsonl");
    ASSERT_EQ(a.size(), 8u) << n;
    ASSERT_EQ(b.size(), 8u);
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_NEAR(a[i], b[i], 1e-5 * b[i]) << "step " << i + 1 << " on " << n << " ranks";
    expect_same_weights(dir + "/model", base + "/three/model", 1e-5);
  }
  // Without train.global_batch_size the batch would change with the rank count: refused.
  const std::string odd = base + "/odd";
  testing::CliRun first = testing::ftune("launch -n 3 " + run_args(odd, 8) + " checkpoint.every=0",
                                         "FTUNE_TEST_SIGNAL_AT_STEP=4");
  ASSERT_NE(first.out.find("at step 4"), std::string::npos) << first.out;
  testing::CliRun refused =
      testing::ftune("launch -n 2 " + run_args(odd, 8) + " checkpoint.every=0 --resume");
  EXPECT_NE(refused.code, 0);
  EXPECT_NE(refused.out.find("train.global_batch_size"), std::string::npos) << refused.out;
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
