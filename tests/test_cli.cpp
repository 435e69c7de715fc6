// The ftune binary as a user meets it: help, recipe errors with locations, exit codes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/base/fs_util.h"
#include "engine/formats/safetensors.h"
#include "engine/model/model.h"
#include "engine/trust/manifest.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

const std::string kSrc = FTUNE_SOURCE_DIR;

using testing::CliRun;
using testing::ftune;

std::string recipe_file(const std::string& body) {
  std::string dir = testing::make_temp_dir("cli");
  std::string path = dir + "/recipe.yaml";
  std::ofstream(path) << body;
  return path;
}

const std::string kGood = "model:\n  path: " + kSrc +
                          "/configs/models/quickstart-base\n  init: random\n"
                          "data:\n  train: " +
                          kSrc +
                          "/data/quickstart/train.jsonl\n"
                          "output_dir: out\n";

TEST(Cli, HelpListsCommandsWithExamples) {
  CliRun r = ftune("--help");
  EXPECT_EQ(r.code, 0);
  for (const char* cmd : {"train", "eval", "generate", "inspect", "bench", "Examples"})
    EXPECT_NE(r.out.find(cmd), std::string::npos) << cmd;
  for (const char* cmd : {"train", "eval", "generate", "inspect", "bench"}) {
    CliRun h = ftune(std::string(cmd) + " --help");
    EXPECT_EQ(h.code, 0) << cmd;
    EXPECT_NE(h.out.find("Example"), std::string::npos) << cmd << " help lacks examples";
  }
}

TEST(Cli, MalformedYamlNamesLine) {
  CliRun r = ftune("train " + recipe_file("model:\n  path: [unclosed\n"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("recipe.yaml:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("YAML"), std::string::npos) << r.out;
}

TEST(Cli, UnknownKeySuggests) {
  CliRun r = ftune("train " + recipe_file(kGood + "train:\n  seq_lenght: 64\n"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("recipe.yaml:8:3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("train.seq_len"), std::string::npos) << r.out;
}

TEST(Cli, WrongTypeNamesKey) {
  CliRun r = ftune("train " + recipe_file(kGood + "train:\n  seq_len: lots\n"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("train.seq_len"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("recipe.yaml:8:12"), std::string::npos) << r.out;
  CliRun o = ftune("train " + recipe_file(kGood) + " optim.lr=fast");
  EXPECT_NE(o.code, 0);
  EXPECT_NE(o.out.find("optim.lr"), std::string::npos) << o.out;
}

TEST(Cli, MissingModelDirIsNamed) {
  std::string body = kGood;
  body.replace(body.find(kSrc + "/configs"), kSrc.size() + 8, "/nonexistent/model");
  CliRun r = ftune("train " + recipe_file(body));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("/nonexistent/model"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model.path"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("terminate"), std::string::npos) << "crashed: " << r.out;
}

TEST(Cli, PrintConfigShowsResolvedValues) {
  CliRun r = ftune("train " + recipe_file(kGood) + " train.max_steps=7 --print-config");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("max_steps: 7"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("seq_len: 256"), std::string::npos) << "defaults shown: " << r.out;
}

TEST(Cli, InspectSummarisesAModel) {
  CliRun r = ftune("inspect " + testing::fixtures_dir() + "/parity/qwen2");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("model.layers.1.self_attn.q_proj.bias"), std::string::npos) << r.out;
  CliRun bad = ftune("inspect /nonexistent/file.safetensors");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("/nonexistent/file.safetensors"), std::string::npos) << bad.out;
}

TEST(Cli, DataPreviewShowsTrainedText) {
  CliRun r = ftune("data preview " + kSrc + "/recipes/quickstart.yaml model.path=" + kSrc +
                   "/configs/models/quickstart-base -n 2");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("[[Plant:"), std::string::npos)
      << "text format trains every token but the first: " << r.out;
  EXPECT_NE(r.out.find("--- record 2:"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("--- record 3:"), std::string::npos) << r.out;
}

TEST(Cli, DataPrepareFillsTheCache) {
  std::string cache = testing::make_temp_dir("prep");
  const std::string args = "data prepare " + kSrc + "/recipes/quickstart.yaml model.path=" + kSrc +
                           "/configs/models/quickstart-base data.cache_dir=" + cache;
  CliRun r = ftune(args);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("batches per epoch"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("from cache"), std::string::npos) << r.out;
  EXPECT_FALSE(std::filesystem::is_empty(cache));
  CliRun again = ftune(args);
  EXPECT_NE(again.out.find("from cache"), std::string::npos) << again.out;
}

// `ftune merge` on an adapter PEFT wrote: the merged directory gives PEFT's merged logits and
// carries a manifest that verifies.
TEST(Cli, MergeWritesPeftsMergedModel) {
  const std::string fx = testing::fixtures_dir();
  const std::string out = testing::make_temp_dir("merge") + "/merged";
  CliRun r = ftune("merge " + fx + "/parity/llama " + fx + "/peft/llama_all " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(verify_output(out, "").ok);
  auto be = make_cpu_backend();
  SafetensorsReader ref = SafetensorsReader::open(fx + "/peft/llama_all/reference.safetensors");
  const TensorInfo* ids_t = ref.find("input_ids");
  ASSERT_NE(ids_t, nullptr);
  std::vector<int64_t> ids64(size_t(ids_t->numel()));
  ref.read_raw(*ids_t, ids64.data());
  const int64_t B = ids_t->shape[0], T = ids_t->shape[1];
  Model m(be.get(), load_model_config(out), B * T, false);
  m.load_weights(WeightStore::open_dir(out));
  Batch b = Batch::from_rows(B, T, std::vector<int32_t>(ids64.begin(), ids64.end()),
                             std::vector<int32_t>(size_t(B * T), kIgnoreIndex));
  std::vector<float> want(size_t(ref.find("logits_merged")->numel()));
  ref.read_as(*ref.find("logits_merged"), DType::F32, want.data());
  ExecContext ctx;
  EXPECT_LT(testing::rel_error(m.logits(ctx, b), want), 1e-5);
  CliRun again = ftune("merge " + fx + "/parity/llama " + fx + "/peft/llama_all " + out);
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.out.find("--force"), std::string::npos) << again.out;
  CliRun wrong = ftune("merge " + fx + "/peft/llama_all " + fx + "/peft/llama_all " + out + "2");
  EXPECT_NE(wrong.code, 0);
  EXPECT_NE(wrong.out.find("is a LoRA adapter, not a model"), std::string::npos) << wrong.out;
}

// A stop signal makes `ftune train` checkpoint, say how to resume and exit 75 (EX_TEMPFAIL), so
// schedulers and scripts can tell "resumable" from "failed".
TEST(Cli, SignalStopExitsResumable) {
  const std::string out = testing::make_temp_dir("sig") + "/run";
  CliRun r = ftune("train " + recipe_file(kGood) + " output_dir=" + out +
                       " train.seq_len=32 train.max_steps=10 schedule.warmup_steps=1",
                   "FTUNE_TEST_SIGNAL_AT_STEP=4");
  EXPECT_EQ(r.code, 75) << r.out;
  EXPECT_NE(r.out.find("at step 4; resume with --resume"), std::string::npos) << r.out;
  CliRun rest = ftune("train " + recipe_file(kGood) + " output_dir=" + out +
                      " train.seq_len=32 train.max_steps=10 schedule.warmup_steps=1 --resume");
  EXPECT_EQ(rest.code, 0) << rest.out;
  EXPECT_NE(rest.out.find("resumed from"), std::string::npos) << rest.out;
}

// `ftune submit --dry-run` renders the sbatch script into output_dir (unset fields leave no
// line), and that output_dir still takes a fresh run, which --auto-resume then continues.
TEST(Cli, SubmitRendersAScriptAndAutoResumeContinues) {
  const std::string out = testing::make_temp_dir("submit") + "/run";
  const std::string recipe = recipe_file(kGood);
  const std::string args =
      recipe + " output_dir=" + out + " train.seq_len=32 train.max_steps=6 schedule.warmup_steps=1";
  CliRun r = ftune("submit " + args + " --nodes 2 --tasks-per-node 3 --partition cpu --dry-run");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string script = read_file(out + "/submit.sbatch");
  for (const char* want :
       {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=3", "#SBATCH --partition=cpu",
        "#SBATCH --signal=USR1@120", "--auto-resume", "'train.max_steps=6'", "#SBATCH --requeue"})
    EXPECT_NE(script.find(want), std::string::npos) << want << "\n" << script;
  EXPECT_EQ(script.find("--account"), std::string::npos) << "an unset field leaves no line";
  EXPECT_EQ(script.find("{{"), std::string::npos);
  CliRun bad = ftune("submit " + recipe + " train.nope=1 --dry-run");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("train.nope"), std::string::npos) << bad.out;
  // The job's own command: a fresh start first, then (requeued) a resume.
  CliRun first = ftune("train " + args + " --auto-resume");
  EXPECT_EQ(first.code, 0) << first.out;
  CliRun again = ftune("train " + args + " --auto-resume");
  EXPECT_EQ(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("resumed from"), std::string::npos) << again.out;
  EXPECT_TRUE(path_exists(out + "/submit.sbatch")) << "a run never deletes the job script";
  CliRun st = ftune("status " + out);
  EXPECT_EQ(st.code, 0) << st.out;
  for (const char* want : {"step:       6 of 6", "finished", "step-00000006", "slurm:"})
    EXPECT_NE(st.out.find(want), std::string::npos) << want << "\n" << st.out;
  // A guard or checkpoint event after the last step line (no loss) does not hide that step.
  {
    std::ofstream m(out + "/metrics.jsonl", std::ios::app);
    m << R"({"step":6,"guard":"nonfinite","action":"skip","detail":"x"})"
      << "\n";
  }
  CliRun st2 = ftune("status " + out);
  EXPECT_NE(st2.out.find("step:       6 of 6"), std::string::npos) << st2.out;
  EXPECT_EQ(st2.out.find("train loss: 0.0000"), std::string::npos) << st2.out;
}

TEST(Cli, CudaWithoutGpuIsRefusedCleanly) {
  CliRun r = ftune("train " + recipe_file(kGood) + " device=cuda");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("device"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("terminate"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace ftune
