// Numeric guards: a NaN injected into one step's gradients (FTUNE_TEST_NAN_AT_STEP) or a loss
// spike (FTUNE_TEST_SPIKE_AT_STEP) under each policy — stop, skip, rollback — on one rank and on
// two ZeRO-2 ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/formats/safetensors.h"
#include "engine/recipe/recipe.h"
#include "engine/train/checkpoint.h"
#include "engine/train/trainer.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace ftune {
namespace {

const std::string kSrc = FTUNE_SOURCE_DIR;

// Every run of a test uses this recipe's fixed `threads`, so runs that are compared bit for bit
// (resume, rollback replay) make the same GEMM calls on the same OpenBLAS thread count: bitwise by
// construction on any CPU, though not across CPUs (docs/reliability.md).
Recipe small_recipe(const std::string& out, std::vector<std::string> extra = {}) {
  std::string yaml = "model:\n  path: " + kSrc +
                     "/configs/models/quickstart-base\n  init: random\n"
                     "data:\n  train: " +
                     kSrc +
                     "/data/quickstart/train.jsonl\n  val_fraction: 0.02\n  cache: false\n"
                     "train:\n  seq_len: 32\n  micro_batch_size: 4\n  max_steps: 12\n"
                     "optim:\n  lr: 0.002\n  weight_decay: 0.1\n"
                     "schedule:\n  kind: cosine\n  warmup_steps: 1\n"
                     "eval:\n  max_batches: 1\n"
                     "checkpoint:\n  every: 5\n  keep_last: 0\n"
                     "output_dir: " +
                     out + "\nthreads: 2\nseed: 3\n";
  return load_recipe_text(yaml, "guard.yaml", kSrc, extra);
}

TrainOptions quiet() {
  TrainOptions o;
  o.quiet = true;
  return o;
}

// Sets a test hook for one scope.
class EnvHook {
 public:
  EnvHook(const char* name, int64_t step) : name_(name) {
    setenv(name, std::to_string(step).c_str(), 1);
  }
  ~EnvHook() { unsetenv(name_); }
  EnvHook(const EnvHook&) = delete;
  EnvHook& operator=(const EnvHook&) = delete;

 private:
  const char* name_;
};

std::vector<nlohmann::json> metrics_lines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(read_file(out + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

std::vector<nlohmann::json> guard_events(const std::string& out) {
  std::vector<nlohmann::json> ev;
  for (const auto& j : metrics_lines(out))
    if (j.contains("guard")) ev.push_back(j);
  return ev;
}

// The uninterrupted run every policy is compared with (12 steps, checkpoints at 5 and 10).
struct CleanRun {
  std::string dir;
  TrainResult result;
};
const CleanRun& clean() {
  static const CleanRun r = [] {
    CleanRun c;
    c.dir = testing::make_temp_dir("clean");
    c.result = run_training(small_recipe(c.dir), quiet());
    return c;
  }();
  return r;
}
const TrainResult& clean_run() {
  return clean().result;
}

std::string ckpt(const std::string& out, int step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "/checkpoints/step-%08d", step);
  return out + buf;
}

nlohmann::json state_json(const std::string& dir) {
  return nlohmann::json::parse(read_file(dir + "/state.json"));
}

TEST(Guard, NonFiniteStopsByDefaultWithTheLastCheckpointIntact) {
  const std::string out = testing::make_temp_dir("nan-stop");
  EnvHook nan("FTUNE_TEST_NAN_AT_STEP", 7);
  testing::expect_error(
      [&] { run_training(small_recipe(out), quiet()); },
      {"non-finite loss or gradient at step 7", "gradient norm nan", "lower optim.lr",
       "intact for --resume", "(guard.nonfinite: skip or rollback carries a run past such steps)"});
  EXPECT_EQ(read_file(out + "/checkpoints/latest"), "step-00000005\n");
  EXPECT_TRUE(guard_events(out).empty()) << "stop writes no event: the run ends with the error";
}

// skip: the update is not applied (weights and moments as before the step), the data position
// still advances, and the step is on record.
TEST(Guard, NonFiniteSkipLeavesWeightsAndOptimizerStateUntouched) {
  const std::string out = testing::make_temp_dir("nan-skip");
  TrainResult r;
  {
    EnvHook nan("FTUNE_TEST_NAN_AT_STEP", 4);
    r = run_training(small_recipe(out, {"guard.nonfinite=skip", "checkpoint.every=1"}), quiet());
  }
  ASSERT_EQ(r.losses.size(), 12u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(r.losses[i], clean_run().losses[i]) << "step " << i + 1;
  EXPECT_TRUE(std::isnan(r.grad_norms[3]));
  EXPECT_TRUE(std::isfinite(r.losses.back()));
  for (const char* f : {"/model.safetensors", "/optimizer.safetensors"})
    EXPECT_EQ(read_file(ckpt(out, 3) + f), read_file(ckpt(out, 4) + f)) << f << " changed";
  EXPECT_NE(read_file(ckpt(out, 4) + "/model.safetensors"),
            read_file(ckpt(out, 5) + "/model.safetensors"));
  // The skipped step's batch was consumed: from step 5 on the data is the clean run's.
  EXPECT_NE(state_json(ckpt(out, 4))["data"], state_json(ckpt(out, 3))["data"]);
  for (const char* k : {"data", "tokens_seen"})
    EXPECT_EQ(state_json(ckpt(out, 5))[k], state_json(ckpt(clean().dir, 5))[k]) << k;
  const auto ev = guard_events(out);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0]["step"], 4);
  EXPECT_EQ(ev[0]["guard"], "nonfinite");
  EXPECT_EQ(ev[0]["action"], "skip");
  // The step's own line says it was skipped and carries no NaN (JSON has none).
  for (const auto& j : metrics_lines(out))
    if (j["step"] == 4 && !j.contains("guard")) {
      EXPECT_EQ(j["skipped"], true);
      EXPECT_FALSE(j.contains("grad_norm"));
    }
}

// rollback: back to checkpoint 5, learning rate x0.5 from then on, persisted so a resume keeps
// it; metrics.jsonl keeps one line per step.
TEST(Guard, NonFiniteRollbackReloadsTheLastCheckpointAndBacksOffTheLr) {
  const std::string out = testing::make_temp_dir("nan-rb");
  const std::vector<std::string> o = {"guard.nonfinite=rollback", "guard.lr_backoff=0.5"};
  TrainResult r;
  {
    EnvHook nan("FTUNE_TEST_NAN_AT_STEP", 8);
    r = run_training(small_recipe(out, o), quiet());
  }
  const TrainResult& clean = clean_run();
  ASSERT_EQ(r.first_step, 1);
  ASSERT_EQ(r.losses.size(), 12u);
  // Step 6 is replayed from checkpoint 5's weights: the clean run's loss, bit for bit; the
  // halved learning rate shows from step 7 on.
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(r.losses[i], clean.losses[i]) << "step " << i + 1;
  EXPECT_NE(r.losses[6], clean.losses[6]);
  const auto ev = guard_events(out);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0]["action"], "rollback");
  EXPECT_EQ(ev[0]["step"], 5);
  EXPECT_EQ(ev[0]["at_step"], 8);
  EXPECT_EQ(ev[0]["lr_scale"], 0.5);
  std::map<int64_t, int> per_step;
  for (const auto& j : metrics_lines(out))
    if (!j.contains("guard")) ++per_step[j["step"].get<int64_t>()];
  EXPECT_EQ(per_step.size(), 12u);
  for (const auto& [step, n] : per_step) EXPECT_EQ(n, 1) << "step " << step;
  const auto st = state_json(ckpt(out, 10));
  EXPECT_EQ(st["guard"]["lr_scale"], 0.5);
  EXPECT_EQ(st["guard"]["rollbacks"], 1);
  EXPECT_EQ(state_json(ckpt(out, 5))["guard"]["lr_scale"], 1.0);

  // Stopped after the rollback and resumed: the factor comes back from state.json and the run
  // ends on the same weights as the uninterrupted one.
  const std::string part = testing::make_temp_dir("nan-rb-part");
  {
    EnvHook nan("FTUNE_TEST_NAN_AT_STEP", 8);
    TrainOptions stop = quiet();
    stop.stop_after_step = 10;
    ASSERT_TRUE(run_training(small_recipe(part, o), stop).interrupted);
  }
  TrainOptions resume = quiet();
  resume.resume = true;
  TrainResult rest = run_training(small_recipe(part, o), resume);
  ASSERT_EQ(rest.first_step, 11);
  EXPECT_EQ(rest.losses[0], r.losses[10]);
  EXPECT_EQ(rest.losses[1], r.losses[11]);
  EXPECT_EQ(read_file(part + "/model/model.safetensors"),
            read_file(out + "/model/model.safetensors"));
}

TEST(Guard, RollbackLrIsTheScheduleTimesTheFactor) {
  const std::string out = testing::make_temp_dir("nan-lr");
  {
    EnvHook nan("FTUNE_TEST_NAN_AT_STEP", 8);
    run_training(small_recipe(out, {"guard.nonfinite=rollback", "guard.lr_backoff=0.25"}), quiet());
  }
  const std::string ref = testing::make_temp_dir("nan-lr-ref");
  run_training(small_recipe(ref), quiet());
  std::map<int64_t, double> a, b;
  for (const auto& j : metrics_lines(out))
    if (!j.contains("guard")) a[j["step"]] = j["lr"];
  for (const auto& j : metrics_lines(ref)) b[j["step"]] = j["lr"];
  for (int64_t s = 1; s <= 12; ++s) {
    // Scaling by a power of two is exact, in double and in float alike.
    EXPECT_EQ(a[s], s <= 5 ? b[s] : b[s] * 0.25) << "step " << s;
  }
}

// With no checkpoint to return to, a rollback restarts from the initial weights and data.
TEST(Guard, RollbackWithoutACheckpointRestartsFromTheInitialState) {
  const std::string out = testing::make_temp_dir("nan-rb0");
  TrainResult r;
  {
    EnvHook nan("FTUNE_TEST_NAN_AT_STEP", 3);
    r = run_training(
        small_recipe(out, {"guard.nonfinite=rollback", "checkpoint.every=0", "train.max_steps=6"}),
        quiet());
  }
  ASSERT_EQ(r.first_step, 1);
  ASSERT_EQ(r.losses.size(), 6u);
  EXPECT_EQ(r.losses[0], clean_run().losses[0]);  // same weights, same first batch
  EXPECT_NE(r.losses[1], clean_run().losses[1]);  // the halved learning rate
  const auto ev = guard_events(out);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0]["step"], 0);
  EXPECT_EQ(ev[0]["at_step"], 3);
  EXPECT_EQ(state_json(ckpt(out, 6))["guard"]["rollbacks"], 1);
}

TEST(Guard, RollbacksAreCapped) {
  const std::string out = testing::make_temp_dir("nan-cap");
  EnvHook nan("FTUNE_TEST_NAN_AT_STEP", 7);
  testing::expect_error(
      [&] {
        run_training(small_recipe(out, {"guard.nonfinite=rollback", "guard.max_rollbacks=0"}),
                     quiet());
      },
      {"non-finite loss or gradient at step 7", "after 0 rollbacks (guard.max_rollbacks 0"});
}

// The spike detector: quiet on the ordinary run, catches a loss 1000x its usual size, and takes
// the same policies.
TEST(Guard, SpikeDetector) {
  const std::vector<std::string> on = {"guard.spike_zscore=6", "guard.spike_window=5",
                                       "checkpoint.every=1"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> o = on;
    o.insert(o.end(), extra.begin(), extra.end());
    return o;
  };
  {
    const std::string out = testing::make_temp_dir("spike-none");
    TrainResult r = run_training(small_recipe(out, with({"guard.spike=stop"})), quiet());
    EXPECT_EQ(r.losses.size(), 12u);
    EXPECT_TRUE(guard_events(out).empty()) << "no spike in an ordinary run";
    // A full window is kept in checkpoints, so a resumed run judges the next step alike.
    EXPECT_EQ(state_json(ckpt(out, 12))["guard"]["loss_window"].size(), 5u);
  }
  EnvHook spike("FTUNE_TEST_SPIKE_AT_STEP", 9);
  {
    const std::string out = testing::make_temp_dir("spike-off");
    TrainResult r = run_training(small_recipe(out, {"checkpoint.every=1"}), quiet());
    EXPECT_GT(r.losses[8], 100 * r.losses[7]) << "the hook spikes the loss";
    EXPECT_TRUE(guard_events(out).empty()) << "guard.spike_zscore 0: detection off";
  }
  {
    const std::string out = testing::make_temp_dir("spike-stop");
    testing::expect_error(
        [&] { run_training(small_recipe(out, with({"guard.spike=stop"})), quiet()); },
        {"loss spike at step 9", "standard deviations above the mean of the last 5 steps",
         "(guard.spike: skip or rollback carries a run past such steps)"});
  }
  {
    const std::string out = testing::make_temp_dir("spike-skip");
    run_training(small_recipe(out, with({"guard.spike=skip"})), quiet());
    const auto ev = guard_events(out);
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_EQ(ev[0]["guard"], "spike");
    EXPECT_EQ(ev[0]["action"], "skip");
    EXPECT_EQ(ev[0]["step"], 9);
    EXPECT_GT(ev[0]["zscore"].get<double>(), 6.0);
    EXPECT_EQ(read_file(ckpt(out, 8) + "/model.safetensors"),
              read_file(ckpt(out, 9) + "/model.safetensors"));
  }
  {
    const std::string out = testing::make_temp_dir("spike-rb");
    TrainResult r = run_training(small_recipe(out, with({"guard.spike=rollback"})), quiet());
    EXPECT_EQ(r.losses.size(), 12u);
    const auto ev = guard_events(out);
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_EQ(ev[0]["action"], "rollback");
    EXPECT_EQ(ev[0]["step"], 8);
    EXPECT_EQ(ev[0]["at_step"], 9);
    EXPECT_EQ(state_json(ckpt(out, 12))["guard"]["lr_scale"], 0.5);
  }
}

// Two ZeRO-2 ranks, the NaN in rank 0's gradient shard only: the all-reduced norm carries it to
// both ranks, which take the same action and finish (or stop) together.
TEST(Guard, TwoZero2RanksAgree) {
#ifndef FTUNE_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#else
  auto args = [&](const std::string& out, const std::string& policy) {
    return "launch -n 2 train " + kSrc + "/recipes/quickstart-base.yaml output_dir=" + out +
           " data.train=" + kSrc + "/data/quickstart/train.jsonl data.cache=false " +
           "train.seq_len=32 train.micro_batch_size=2 train.max_steps=8 eval.max_batches=1 " +
           "schedule.warmup_steps=1 checkpoint.every=3 checkpoint.keep_last=0 threads=1 " +
           "sharding=zero2 data.packing=pack " + "dist.timeout=60 guard.nonfinite=" + policy;
  };
  for (const std::string policy : {"skip", "rollback"}) {
    const std::string out = testing::make_temp_dir("z2-" + policy) + "/run";
    testing::CliRun r = testing::ftune(args(out, policy), "FTUNE_TEST_NAN_AT_STEP=5");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("non-finite loss or gradient at step 5"), std::string::npos) << r.out;
    const auto ev = guard_events(out);
    ASSERT_EQ(ev.size(), 1u) << policy;
    EXPECT_EQ(ev[0]["action"], policy);
    EXPECT_TRUE(path_exists(out + "/model/model.safetensors"));
  }
  const std::string out = testing::make_temp_dir("z2-stop") + "/run";
  testing::CliRun r = testing::ftune(args(out, "stop"), "FTUNE_TEST_NAN_AT_STEP=5");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("non-finite loss or gradient at step 5"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("MPI_ABORT"), std::string::npos) << "both ranks stop together\n" << r.out;
  EXPECT_EQ(read_file(out + "/checkpoints/latest"), "step-00000003\n");
#endif
}

}  // namespace
}  // namespace ftune
