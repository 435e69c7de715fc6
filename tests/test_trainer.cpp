// End-to-end properties of the training loop on a small random-init model and the quickstart
// data: accumulation equivalence, bit-exact resume, output_dir safety.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/formats/safetensors.h"
#include "engine/model/peft_adapter.h"
#include "engine/recipe/recipe.h"
#include "engine/tools/inspect.h"
#include "engine/train/checkpoint.h"
#include "engine/train/trainer.h"
#include "engine/trust/encryption.h"
#include "engine/trust/manifest.h"
#include "engine/trust/signing.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace ftune {
namespace {

const std::string kSrc = FTUNE_SOURCE_DIR;

// Every run of a test uses this recipe's fixed `threads`, so runs that are compared bit for bit
// (resume, rollback replay) make the same GEMM calls on the same OpenBLAS thread count: bitwise by
// construction on any CPU, though not across CPUs (docs/reliability.md).
Recipe small_recipe(const std::string& out, std::vector<std::string> extra = {}) {
  std::string yaml =
      "model:\n  path: " + kSrc +
      "/configs/models/quickstart-base\n  init: random\n"
      "data:\n  train: " +
      kSrc +
      "/data/quickstart/train.jsonl\n  val_fraction: 0.02\n"
      "train:\n  seq_len: 32\n  micro_batch_size: 4\n  grad_accum: 1\n  max_steps: 20\n"
      "optim:\n  lr: 0.002\n  weight_decay: 0.1\n"
      "schedule:\n  kind: cosine\n  warmup_steps: 1\n"
      "eval:\n  max_batches: 2\n"
      "checkpoint:\n  every: 10\n  keep_last: 0\n"
      "output_dir: " +
      out + "\nthreads: 2\nseed: 3\n";
  return load_recipe_text(yaml, "test.yaml", kSrc, extra);
}

TrainOptions quiet() {
  TrainOptions o;
  o.quiet = true;
  return o;
}

TEST(Trainer, GradAccumulationEqualsBigBatch) {
  std::string d1 = testing::make_temp_dir("acc1"), d2 = testing::make_temp_dir("acc2");
  TrainResult big = run_training(
      small_recipe(d1, {"train.micro_batch_size=4", "train.grad_accum=1", "train.max_steps=3"}),
      quiet());
  TrainResult acc = run_training(
      small_recipe(d2, {"train.micro_batch_size=1", "train.grad_accum=4", "train.max_steps=3"}),
      quiet());
  ASSERT_EQ(big.losses.size(), 3u);
  ASSERT_EQ(acc.losses.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(acc.losses[i], big.losses[i], 1e-6 * big.losses[i]) << "step " << i + 1;
    EXPECT_NEAR(acc.grad_norms[i], big.grad_norms[i], 1e-5 * big.grad_norms[i]) << "step " << i + 1;
  }
}

TEST(Trainer, ResumeReproducesLossesBitForBit) {
  std::string full = testing::make_temp_dir("full"), part = testing::make_temp_dir("part");
  TrainResult a = run_training(small_recipe(full), quiet());
  ASSERT_EQ(a.losses.size(), 20u);
  EXPECT_LT(a.losses.back(), a.losses.front());

  TrainOptions stop = quiet();
  stop.stop_after_step = 10;
  TrainResult first = run_training(small_recipe(part), stop);
  ASSERT_TRUE(first.interrupted);
  ASSERT_EQ(first.losses.size(), 10u);
  TrainOptions resume = quiet();
  resume.resume = true;
  TrainResult rest = run_training(small_recipe(part), resume);
  ASSERT_EQ(rest.first_step, 11);
  ASSERT_EQ(rest.losses.size(), 10u);
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(first.losses[i], a.losses[i]) << "step " << i + 1;
    EXPECT_EQ(rest.losses[i], a.losses[10 + i]) << "step " << 11 + i;  // bitwise
  }
  // Same final weights too.
  auto wa = WeightStore::open_dir(full + "/model"), wb = WeightStore::open_dir(part + "/model");
  for (const auto& name : wa.names()) {
    const TensorInfo* t = wa.find(name);
    std::vector<float> x(size_t(t->numel())), y(size_t(t->numel()));
    wa.read_as(name, DType::F32, x.data());
    wb.read_as(name, DType::F32, y.data());
    ASSERT_EQ(x, y) << name;
  }
  // metrics.jsonl reads like one run: one line per step.
  std::string metrics = read_file(part + "/metrics.jsonl");
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 20);
}

// Run settings (logging, checkpoint cadence, guards, evaluation size) may change on --resume and
// the training continues bit for bit; a training setting may not, and the refusal names it.
TEST(Trainer, ResumeMayChangeRunSettingsOnly) {
  std::string full = testing::make_temp_dir("rs-full"), part = testing::make_temp_dir("rs-part");
  TrainResult a = run_training(small_recipe(full), quiet());
  TrainOptions stop = quiet();
  stop.stop_after_step = 10;
  ASSERT_TRUE(run_training(small_recipe(part), stop).interrupted);

  TrainOptions resume = quiet();
  resume.resume = true;
  try {
    run_training(small_recipe(part, {"optim.lr=0.003"}), resume);
    ADD_FAILURE() << "resumed with another learning rate";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("optim.lr: 0.002 -> 0.003"), std::string::npos) << m;
    EXPECT_NE(m.find("Only run settings"), std::string::npos) << m;
  }
  const std::vector<std::string> settings = {"log.every=3", "guard.nonfinite=skip",
                                             "checkpoint.keep_last=1", "eval.max_batches=1",
                                             "report.every=5"};
  TrainResult rest = run_training(small_recipe(part, settings), resume);
  ASSERT_EQ(rest.first_step, 11);
  ASSERT_EQ(rest.losses.size(), 10u);
  for (size_t i = 0; i < 10; ++i)
    EXPECT_EQ(rest.losses[i], a.losses[10 + i]) << "step " << 11 + i;  // bitwise
  // recipe.yaml now holds the settings the run finished with.
  const RecipeConfig now = load_recipe(part + "/recipe.yaml").cfg;
  EXPECT_EQ(now.log_every, 3);
  EXPECT_EQ(now.guard_nonfinite, GuardPolicy::Skip);
}

TEST(Trainer, OutputDirIsProtected) {
  std::string out = testing::make_temp_dir("prot");
  run_training(small_recipe(out, {"train.max_steps=2"}), quiet());
  auto message = [&](const TrainOptions& o, std::vector<std::string> extra) {
    try {
      run_training(small_recipe(out, extra), o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message(quiet(), {"train.max_steps=2"}).find("already holds a run of this recipe"),
            std::string::npos);
  EXPECT_NE(message(quiet(), {"train.max_steps=3"}).find("is not empty"), std::string::npos);
  TrainOptions resume = quiet();
  resume.resume = true;
  EXPECT_NE(message(resume, {"train.max_steps=3"}).find("recipe differs"), std::string::npos);
  // A file ftune did not write is never deleted, even with --force.
  std::ofstream(out + "/notes.txt") << "mine";
  TrainOptions force = quiet();
  force.force = true;
  EXPECT_NE(message(force, {"train.max_steps=2"}).find("did not write (notes.txt)"),
            std::string::npos);
  EXPECT_TRUE(path_exists(out + "/notes.txt"));
  fs::remove(out + "/notes.txt");
  EXPECT_EQ(message(force, {"train.max_steps=2"}), "");
}

TEST(Trainer, ExportsLoadableModelInRequestedDtype) {
  std::string out = testing::make_temp_dir("export");
  run_training(small_recipe(out, {"train.max_steps=2", "export.dtype=bf16"}), quiet());
  auto store = WeightStore::open_dir(out + "/model");
  const TensorInfo* t = store.find("model.layers.0.mlp.up_proj.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::BF16);
  EXPECT_TRUE(path_exists(out + "/model/tokenizer.json"));
  EXPECT_TRUE(path_exists(out + "/model/config.json"));
  EXPECT_NE(read_file(out + "/model/config.json").find("bfloat16"), std::string::npos);
}

// A base model on disk to adapt: the quickstart architecture after two full steps.
const std::string& lora_base() {
  static const std::string dir = [] {
    std::string out = testing::make_temp_dir("lora-base");
    run_training(small_recipe(out, {"train.max_steps=2", "export.dtype=f32"}), quiet());
    return out + "/model";
  }();
  return dir;
}

Recipe lora_recipe(const std::string& out, std::vector<std::string> extra = {}) {
  std::vector<std::string> o = {"model.path=" + lora_base(),
                                "model.init=pretrained",
                                "method=lora",
                                "lora.rank=4",
                                "lora.alpha=8",
                                "lora.targets=q_proj,v_proj,down_proj",
                                "optim.lr=0.01",
                                "export.dtype=f32"};
  o.insert(o.end(), extra.begin(), extra.end());
  return small_recipe(out, o);
}

TEST(TrainerLora, TrainsOnlyAdaptersAndMergesExactly) {
  const std::string out = testing::make_temp_dir("lora");
  TrainResult r = run_training(
      lora_recipe(out, {"lora.dropout=0.1", "export.merge=true", "train.max_steps=12"}), quiet());
  ASSERT_EQ(r.losses.size(), 12u);
  EXPECT_LT(r.val_after.loss, r.val_before.loss);
  EXPECT_EQ(r.adapter_dir, out + "/adapter");
  EXPECT_TRUE(path_exists(out + "/adapter/adapter_config.json"));
  // Checkpoints hold the adapters and their moments only, never a copy of the base.
  for (const char* step : {"step-00000010", "step-00000012"}) {
    const std::string ck = out + "/checkpoints/" + step;
    EXPECT_TRUE(path_exists(ck + "/adapter_model.safetensors")) << ck;
    EXPECT_FALSE(path_exists(ck + "/model.safetensors")) << ck;
  }

  // The merged model: untargeted tensors are the base bit for bit, targeted ones differ.
  WeightStore base = WeightStore::open_dir(lora_base());
  WeightStore merged = WeightStore::open_dir(out + "/model");
  int same = 0, changed = 0;
  for (const std::string& name : base.names()) {
    const TensorInfo* t = base.find(name);
    std::vector<float> a(size_t(t->numel())), b(size_t(t->numel()));
    base.read_as(name, DType::F32, a.data());
    merged.read_as(name, DType::F32, b.data());
    const bool targeted = name.find("q_proj.weight") != std::string::npos ||
                          name.find("v_proj.weight") != std::string::npos ||
                          name.find("down_proj.weight") != std::string::npos;
    if (targeted) {
      EXPECT_NE(a, b) << name;
      ++changed;
    } else {
      EXPECT_EQ(a, b) << name << " changed although the base is frozen";
      ++same;
    }
  }
  EXPECT_GT(same, 5);
  EXPECT_EQ(changed, 3 * load_model_config(lora_base()).num_layers);  // 3 targets per layer

  // Base + adapter, unmerged, gives the merged model's logits.
  auto be = make_cpu_backend();
  const LoraConfig lc = read_adapter_config(out + "/adapter");
  ModelConfig mc = load_model_config(lora_base());
  Model unmerged(be.get(), mc, 32, false, &lc);
  unmerged.load_weights(base);
  load_adapter(unmerged, out + "/adapter");
  Model m(be.get(), mc, 32, false);
  m.load_weights(merged);
  std::vector<int32_t> ids(32);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 37) % 1000);
  Batch b = Batch::from_rows(1, 32, ids, std::vector<int32_t>(32, kIgnoreIndex));
  ExecContext ctx;
  EXPECT_LT(testing::rel_error(unmerged.logits(ctx, b), m.logits(ctx, b)), 1e-5);
}

TEST(TrainerLora, ResumeIsBitExactWithDropout) {
  std::string full = testing::make_temp_dir("lfull"), part = testing::make_temp_dir("lpart");
  auto rec = [](const std::string& o) {
    return lora_recipe(o, {"lora.dropout=0.2", "train.max_steps=10", "checkpoint.every=5"});
  };
  TrainResult a = run_training(rec(full), quiet());
  TrainOptions stop = quiet();
  stop.stop_after_step = 5;
  run_training(rec(part), stop);
  TrainOptions resume = quiet();
  resume.resume = true;
  TrainResult rest = run_training(rec(part), resume);
  ASSERT_EQ(rest.losses.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(rest.losses[i], a.losses[5 + i]) << "step " << 6 + i;
  EXPECT_EQ(read_file(full + "/adapter/adapter_model.safetensors"),
            read_file(part + "/adapter/adapter_model.safetensors"));
  EXPECT_FALSE(path_exists(full + "/model")) << "no merged model unless export.merge";
}

TEST(TrainerLora, GradAccumulationEqualsBigBatch) {
  std::string d1 = testing::make_temp_dir("lacc1"), d2 = testing::make_temp_dir("lacc2");
  TrainResult big = run_training(
      lora_recipe(d1, {"train.micro_batch_size=4", "train.grad_accum=1", "train.max_steps=3"}),
      quiet());
  TrainResult acc = run_training(
      lora_recipe(d2, {"train.micro_batch_size=1", "train.grad_accum=4", "train.max_steps=3"}),
      quiet());
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(acc.losses[i], big.losses[i], 1e-6 * big.losses[i]) << "step " << i + 1;
    EXPECT_NEAR(acc.grad_norms[i], big.grad_norms[i], 1e-5 * big.grad_norms[i]) << "step " << i + 1;
  }
  EXPECT_GT(big.grad_norms[0], 0.0);
}

TEST(TrainerLora, BadTargetsAreAClearError) {
  testing::expect_error(
      [] {
        run_training(lora_recipe(testing::make_temp_dir("lbad"), {"lora.targets=qproj"}), quiet());
      },
      {"lora.targets", "qproj"});
}

// Every output carries a provenance manifest; with export.sign_key it is signed, `verify`
// passes with the public key and catches a one-byte change.
TEST(TrainerOutputs, SignedManifestInEachOutput) {
  const std::string keys = testing::make_temp_dir("keys");
  generate_signing_keypair(keys + "/k.pem", keys + "/k.pub.pem");
  const std::string out = testing::make_temp_dir("signed");
  run_training(lora_recipe(out, {"train.max_steps=2", "export.merge=true",
                                 "export.sign_key=" + keys + "/k.pem"}),
               quiet());
  for (const char* sub : {"/adapter", "/model"}) {
    const std::string dir = out + sub;
    VerifyReport ok = verify_output(dir, keys + "/k.pub.pem");
    EXPECT_TRUE(ok.ok && ok.signature_ok) << dir;
    const auto m = nlohmann::json::parse(read_file(dir + "/ftune-manifest.json"));
    EXPECT_EQ(m["method"], "lora");
    EXPECT_EQ(m["steps"], 2);
    EXPECT_FALSE(m["base_model"]["files"].empty());
    EXPECT_EQ(m["recipe"]["sha256"], sha256_hex(m["recipe"]["text"].get<std::string>()));
    EXPECT_FALSE(m["data"].empty());
  }
  std::string w = read_file(out + "/adapter/adapter_model.safetensors");
  w[w.size() / 2] ^= 1;
  write_file_atomic(out + "/adapter/adapter_model.safetensors", w);
  EXPECT_FALSE(verify_output(out + "/adapter", keys + "/k.pub.pem").ok);
  testing::expect_error(
      [&] {
        run_training(lora_recipe(testing::make_temp_dir("badkey"),
                                 {"export.sign_key=" + keys + "/k.pub.pem"}),
                     quiet());
      },
      {"k.pub.pem"});
}

// export.encrypt: every weight file the run writes (checkpoints, adapter, merged model) is
// AES-256-GCM ciphertext; resume and reuse as a base work with the key, nothing works without
// it, and the key never appears in what the run writes.
TEST(TrainerOutputs, EncryptedRunLeavesNoPlaintextWeights) {
  const std::string keys = testing::make_temp_dir("aes");
  const std::string hex = new_key_hex();
  write_file_atomic(keys + "/k.key", hex + "\n");
  const std::string out = testing::make_temp_dir("enc");
  auto rec = [&](const std::string& o, std::vector<std::string> extra = {}) {
    std::vector<std::string> x = {"export.encrypt.key_file=" + keys + "/k.key", "export.merge=true",
                                  "train.max_steps=4", "checkpoint.every=2"};
    x.insert(x.end(), extra.begin(), extra.end());
    return lora_recipe(o, x);
  };
  TrainOptions stop = quiet();
  stop.stop_after_step = 2;
  run_training(rec(out), stop);
  TrainOptions resume = quiet();
  resume.resume = true;
  TrainResult r = run_training(rec(out), resume);
  ASSERT_EQ(r.losses.size(), 2u);
  int weights = 0;
  for (const auto& e : fs::recursive_directory_iterator(out)) {
    if (!e.is_regular_file()) continue;
    const std::string path = e.path().string();
    if (e.path().extension() == ".safetensors") {
      EXPECT_TRUE(is_encrypted_file(path)) << path << " is plaintext";
      ++weights;
    }
    EXPECT_EQ(read_file(path).find(hex), std::string::npos) << path << " holds the key";
  }
  EXPECT_GE(weights, 2 + 2 * 2);  // adapter, model, 2 checkpoints x (adapter + moments)
  const auto m = nlohmann::json::parse(read_file(out + "/model/ftune-manifest.json"));
  EXPECT_EQ(m["encryption"]["key_id"], key_id(load_key_file(keys + "/k.key")));
  EXPECT_TRUE(verify_output(out + "/model", "").ok);
  for (const char* sub : {"/model", "/adapter", "/model/model.safetensors"})
    EXPECT_NE(inspect_path(out + sub).find("encrypted (AES-256-GCM, key id " +
                                           key_id(load_key_file(keys + "/k.key"))),
              std::string::npos)
        << sub;

  auto be = make_cpu_backend();
  testing::expect_error(
      [&] { open_inference_model(be.get(), lora_base(), out + "/adapter", 32, false); },
      {"is encrypted"});
  const WeightKey key = load_key_file(keys + "/k.key");
  auto unmerged =
      open_inference_model(be.get(), lora_base(), out + "/adapter", 32, false, nullptr, &key);
  auto merged = open_inference_model(be.get(), out + "/model", "", 32, false, nullptr, &key);
  std::vector<int32_t> ids(32);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 53) % 1000);
  Batch b = Batch::from_rows(1, 32, ids, std::vector<int32_t>(32, kIgnoreIndex));
  ExecContext ctx;
  EXPECT_LT(testing::rel_error(unmerged->logits(ctx, b), merged->logits(ctx, b)), 1e-5);

  // The encrypted merged model as the base of another run: its key via model.key_file.
  const std::string again = testing::make_temp_dir("enc2");
  TrainResult r2 =
      run_training(small_recipe(again, {"model.path=" + out + "/model", "model.init=pretrained",
                                        "model.key_file=" + keys + "/k.key", "train.max_steps=2"}),
                   quiet());
  EXPECT_EQ(r2.losses.size(), 2u);
  testing::expect_error(
      [&] {
        run_training(small_recipe(testing::make_temp_dir("enc3"),
                                  {"model.path=" + out + "/model", "model.init=pretrained",
                                   "train.max_steps=2"}),
                     quiet());
      },
      {"is encrypted"});
}

// SIGTERM (or SIGUSR1 / Ctrl-C) mid-run: the step finishes, a checkpoint is written, the run
// returns as interrupted, and --resume continues exactly as if nothing had happened.
TEST(Trainer, StopSignalCheckpointsAndResumesExactly) {
  std::string full = testing::make_temp_dir("sigfull"), part = testing::make_temp_dir("sigpart");
  TrainResult a = run_training(small_recipe(full), quiet());
  setenv("FTUNE_TEST_SIGNAL_AT_STEP", "7", 1);
  TrainResult stopped = run_training(small_recipe(part), quiet());
  unsetenv("FTUNE_TEST_SIGNAL_AT_STEP");
  EXPECT_TRUE(stopped.interrupted);
  EXPECT_EQ(stopped.stop_signal, SIGTERM);
  ASSERT_EQ(stopped.losses.size(), 7u);
  EXPECT_TRUE(path_exists(part + "/checkpoints/step-00000007/state.json"));
  EXPECT_FALSE(path_exists(part + "/model")) << "no export from an interrupted run";
  TrainOptions resume = quiet();
  resume.resume = true;
  TrainResult rest = run_training(small_recipe(part), resume);
  ASSERT_EQ(rest.first_step, 8);
  ASSERT_EQ(rest.losses.size(), 13u);
  for (size_t i = 0; i < 13; ++i) EXPECT_EQ(rest.losses[i], a.losses[7 + i]) << "step " << 8 + i;
  // The handlers are the run's only: afterwards SIGTERM's disposition is what it was.
  struct sigaction now {};
  sigaction(SIGTERM, nullptr, &now);
  EXPECT_EQ(now.sa_handler, SIG_DFL);
}

// ---- checkpoint write failures (checkpoint.on_error) ----
// Through the CLI: a file-size limit or a mount covers the whole process. Tests run as root
// here and root writes through permission bits (chmod 0555 stops nothing), so an unwritable
// directory is a read-only bind mount and a full disk a small tmpfs, each inside `unshare -rm`
// (a user + mount namespace: no privileges needed where user namespaces are enabled; the tests
// skip where they are not). RLIMIT_FSIZE (`ulimit -f`) needs neither, but breaks MPI's
// shared-memory files, so the two-rank case uses the read-only mount.

// threads=1 in every run: the resumed and the clean run compare bytes, so their GEMMs must split
// the same way (OpenBLAS rounding depends on the thread count).
std::string cli_train(const std::string& out, const std::string& extra = "") {
  return "train " + kSrc + "/recipes/quickstart-base.yaml output_dir=" + out +
         " data.train=" + kSrc + "/data/quickstart/train.jsonl data.cache=false " +
         "data.packing=pack train.seq_len=32 train.micro_batch_size=2 train.max_steps=10 " +
         "schedule.warmup_steps=1 eval.max_batches=1 checkpoint.every=5 checkpoint.keep_last=0 " +
         "threads=1 " + extra;
}

// `sh -c '<prefix> <ftune args>'`: a limit or a mount set up just for this ftune.
testing::CliRun ftune_under(const std::string& prefix, const std::string& args) {
  testing::CliRun r;
  r.code = testing::run_command(
      "sh -c '" + prefix + " " + testing::ftune_binary() + " " + args + "; exit $?'", &r.out);
  return r;
}

bool have_unshare() {
  std::string out;
  return testing::run_command("unshare -rm sh -c 'mount -t tmpfs tmpfs /mnt'", &out) == 0;
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> names;
  if (!fs::is_directory(dir)) return names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

const std::vector<std::string> kOnlyStep5 = {"latest", "step-00000005"};

// The run every failure case must end on, weights bit for bit.
const std::string& clean_cli_run() {
  static const std::string dir = [] {
    const std::string d = testing::make_temp_dir("ckerr-clean") + "/run";
    testing::CliRun r = testing::ftune(cli_train(d));
    EXPECT_EQ(r.code, 0) << r.out;
    return d;
  }();
  return dir;
}

void expect_needles(const std::string& text, std::initializer_list<std::string> needles) {
  for (const auto& n : needles) EXPECT_NE(text.find(n), std::string::npos) << n << "\n" << text;
}

// 5 MB (prlimit counts bytes; the shell's `ulimit -f` counts 512- or 1024-byte blocks by
// shell): the weights (3.5 MB) fit, the AdamW moments (7 MB) do not.
const char* const kFsizeLimit = "prlimit --fsize=5000000";

// Over the file-size limit (EFBIG): the run stops with an error naming the file, the step-5
// checkpoint and `latest` are untouched, nothing half-written is left, and --resume (limit gone)
// ends on the clean run's weights.
TEST(CheckpointErrors, FileSizeLimitStopsAndKeepsThePreviousCheckpoint) {
  const std::string out = testing::make_temp_dir("efbig") + "/run";
  testing::CliRun first = testing::ftune(cli_train(out), "FTUNE_TEST_SIGNAL_AT_STEP=5");
  ASSERT_EQ(first.code, 75) << first.out;
  testing::CliRun limited = ftune_under(kFsizeLimit, cli_train(out) + " --resume");
  EXPECT_EQ(limited.code, 1) << limited.out;
  expect_needles(limited.out,
                 {"ftune: error: checkpoint at step 10 was not written: cannot write '" + out +
                      "/checkpoints/step-00000010.tmp.",
                  "/optimizer.safetensors': over the process's file-size limit (File too large)",
                  "checkpoints/latest still names step-00000005", "with --resume",
                  "(checkpoint.on_error: continue keeps a run training"});
  EXPECT_EQ(names_in(out + "/checkpoints"), kOnlyStep5);
  EXPECT_EQ(read_file(out + "/checkpoints/latest"), "step-00000005\n");
  EXPECT_FALSE(fs::exists(out + "/model"));
  testing::CliRun rest = testing::ftune(cli_train(out) + " --resume");
  ASSERT_EQ(rest.code, 0) << rest.out;
  EXPECT_EQ(read_file(out + "/model/model.safetensors"),
            read_file(clean_cli_run() + "/model/model.safetensors"));
}

// checkpoint.on_error: continue: each failed checkpoint is logged and on record, training goes
// on unchanged, and every later checkpoint is tried again.
TEST(CheckpointErrors, ContinueKeepsTrainingAndTriesEachCheckpoint) {
  const std::string out = testing::make_temp_dir("efbig-cont") + "/run";
  testing::CliRun r = ftune_under(kFsizeLimit, cli_train(out, "checkpoint.on_error=continue"));
  ASSERT_EQ(r.code, 0) << r.out;
  size_t logged = 0;
  for (size_t p = 0; (p = r.out.find("training continues (checkpoint.on_error: continue)", p)) !=
                     std::string::npos;
       ++p)
    ++logged;
  EXPECT_EQ(logged, 2u) << r.out;
  expect_needles(r.out, {"checkpoint at step 5 was not written", "there is no earlier checkpoint",
                         "checkpoint at step 10 was not written"});
  std::vector<int64_t> failed;
  std::istringstream in(read_file(out + "/metrics.jsonl"));
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("checkpoint")) {
      EXPECT_EQ(j["checkpoint"], "failed");
      EXPECT_EQ(j["action"], "continue");
      EXPECT_NE(j["error"].get<std::string>().find("File too large"), std::string::npos) << j;
      failed.push_back(j["step"]);
    }
  }
  EXPECT_EQ(failed, (std::vector<int64_t>{5, 10}));
  EXPECT_EQ(names_in(out + "/checkpoints"), std::vector<std::string>{});
  EXPECT_EQ(read_file(out + "/model/model.safetensors"),
            read_file(clean_cli_run() + "/model/model.safetensors"));
}

// A full disk (ENOSPC): output_dir on a 12 MB tmpfs holds the step-5 checkpoint (10.5 MB) but
// not the step-10 one.
TEST(CheckpointErrors, DiskFullKeepsThePreviousCheckpoint) {
  if (!have_unshare()) GTEST_SKIP() << "no user and mount namespaces here (unshare -rm)";
  const std::string out = testing::make_temp_dir("enospc") + "/run";
  fs::create_directories(out);
  testing::CliRun r = ftune_under("unshare -rm sh -c \"mount -t tmpfs -o size=12m tmpfs " + out +
                                      " && " + testing::ftune_binary() + " " + cli_train(out) +
                                      "; echo exit=\\$?; echo listing: \\$(ls " + out +
                                      "/checkpoints) \\$(cat " + out + "/checkpoints/latest)\" #",
                                  "");
  expect_needles(
      r.out, {"checkpoint at step 10 was not written: cannot write '" + out +
                  "/checkpoints/step-00000010.tmp.",
              "disk full (No space left on device)", "checkpoints/latest still names step-00000005",
              "exit=1", "listing: latest step-00000005 step-00000005\n"});
}

// A read-only checkpoints directory (EROFS: unwritable even for root), on one rank and on two
// ZeRO-2 ranks, which must agree: both stop, or both continue, and neither is aborted.
TEST(CheckpointErrors, UnwritableDirectoryOnOneAndTwoRanks) {
  if (!have_unshare()) GTEST_SKIP() << "no user and mount namespaces here (unshare -rm)";
  auto ro = [](const std::string& dir) {
    return "unshare -rm sh -c \"mount --bind " + dir + " " + dir + " && mount -o remount,bind,ro " +
           dir + " && ";
  };
  struct Case {
    std::string launch, policy;
    int code;
  };
  const std::vector<Case> cases = {{"", "stop", 1}, {"", "continue", 0}};
  std::vector<Case> all = cases;
#ifdef FTUNE_HAVE_MPI
  all.push_back({"launch -n 2 ", "stop", 1});
  all.push_back({"launch -n 2 ", "continue", 0});
#endif
  for (const Case& c : all) {
    SCOPED_TRACE(c.launch + c.policy);
    const std::string out = testing::make_temp_dir("erofs") + "/run";
    const std::string args = cli_train(
        out, "checkpoint.on_error=" + c.policy + (c.launch.empty() ? "" : " sharding=zero2"));
    testing::CliRun first = testing::ftune(c.launch + args, "FTUNE_TEST_SIGNAL_AT_STEP=5");
    ASSERT_EQ(first.code, 75) << first.out;
    testing::CliRun r = ftune_under(ro(out + "/checkpoints") + testing::ftune_binary() + " " +
                                        c.launch + args + " --resume; exit \\$?\" #",
                                    "");
    EXPECT_EQ(r.code, c.code) << r.out;
    expect_needles(r.out,
                   {"checkpoint at step 10 was not written: cannot create directories '" + out +
                        "/checkpoints/step-00000010.tmp.",
                    "Read-only file system", "checkpoints/latest still names step-00000005"});
    EXPECT_EQ(r.out.find("MPI_ABORT"), std::string::npos) << r.out;
    EXPECT_EQ(names_in(out + "/checkpoints"), kOnlyStep5);
    EXPECT_EQ(fs::exists(out + "/model"), c.code == 0);
  }
}

// Signals through the CLI: a second Ctrl-C exits at once (130) without corrupting anything;
// SIGUSR1 (as Slurm sends before the time limit) checkpoints at the step boundary and exits 75
// (EX_TEMPFAIL, so a batch script requeues; issue #7 asked for 0); --resume then ends on the
// uninterrupted run's weights.
TEST(Signals, SecondCtrlCAndStopLeaveAResumableRun) {
  const std::string out = testing::make_temp_dir("signals") + "/run";
  const std::string args = cli_train(out, "checkpoint.every=1");
  // Started in the background; the signals go once checkpoint `step` is written.
  auto run_and_signal = [&](const std::string& env, const std::string& flags, int step,
                            const std::string& signals) {
    char ckpt[32];
    std::snprintf(ckpt, sizeof ckpt, "step-%08d", step);
    std::string log;
    const int code = testing::run_command(
        "sh -c '" + env + " " + testing::ftune_binary() + " " + args + " " + flags +
            " & pid=$!; while [ ! -f " + out + "/checkpoints/" + ckpt +
            "/state.json ] && kill -0 $pid 2>/dev/null; do sleep 0.005; done; " + signals +
            " wait $pid; echo exit=$?'",
        &log);
    EXPECT_EQ(code, 0) << log;
    return log;
  };
  // FTUNE_TEST_HANG_RANK=0 holds the run at step 2, so the first Ctrl-C is surely being honoured
  // (the stop is due at the end of that step) when the second comes. The second is sent only
  // once the first was delivered (nothing pending in /proc/PID/status): two pending SIGINTs
  // would merge into one.
  const std::string kDelivered =
      "while [ \"$(grep -cE \"^(SigPnd|ShdPnd):[[:space:]]*0+$\" /proc/$pid/status)\" != 2 ] && "
      "kill -0 $pid 2>/dev/null; do sleep 0.005; done;";
  std::string log = run_and_signal("FTUNE_TEST_HANG_RANK=0", "", 1,
                                   "kill -INT $pid; " + kDelivered + " kill -INT $pid;");
  expect_needles(log, {"exit=130"});
  EXPECT_EQ(read_file(out + "/checkpoints/latest"), "step-00000001\n");
  ASSERT_TRUE(latest_checkpoint(out).has_value());
  log = run_and_signal("", "--resume", 3, "kill -USR1 $pid;");
  expect_needles(log, {"resumed from", "stopped by User defined signal 1 at step",
                       "resume with --resume", "exit=75"});
  const int64_t stopped = read_checkpoint_state(latest_checkpoint(out).value()).step;
  EXPECT_GE(stopped, 3);
  testing::CliRun rest = testing::ftune(args + " --resume");
  ASSERT_EQ(rest.code, 0) << rest.out;
  EXPECT_NE(rest.out.find("at step " + std::to_string(stopped)), std::string::npos) << rest.out;
  EXPECT_EQ(read_file(out + "/model/model.safetensors"),
            read_file(clean_cli_run() + "/model/model.safetensors"));
}

}  // namespace
}  // namespace ftune
