// Recipe loading: values and defaults, overrides, every error message, path resolution,
// print-config round trip, and that the schema, the header and docs/recipes.md agree.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <sstream>

#include "engine/base/error.h"
#include "engine/recipe/recipe.h"
#include "engine/recipe/recipe_schema.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;

::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << part << "' not found in:\n" << text;
}

std::string recipes_dir() {
  return ftune::testing::fixtures_dir() + "/recipes";
}

// The required keys, so each test only spells out what it is about.
const char kRequired[] = "model: {path: /m}\ndata: {train: /d/train.jsonl}\noutput_dir: /out\n";

// The ftune::Error message `fn` throws; fails the test when it throws nothing.
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an ftune::Error";
  return "";
}

std::string text_error(const std::string& yaml, const std::vector<std::string>& ov = {}) {
  return error_of([&] { load_recipe_text(yaml, "r.yaml", "/base", ov); });
}

RecipeConfig load_text(const std::string& yaml, const std::vector<std::string>& ov = {}) {
  return load_recipe_text(yaml, "r.yaml", "/base", ov).cfg;
}

// Field-by-field equality through the schema bindings (the schema's coverage of every field is
// checked by SchemaCoversEveryHeaderField).
void expect_same_config(const RecipeConfig& a, const RecipeConfig& b) {
  for (const recipe::KeySpec& k : recipe::schema()) {
    if (std::holds_alternative<recipe::EnumField>(k.field)) {
      EXPECT_EQ(recipe::value_text(k, a), recipe::value_text(k, b)) << k.key;
      continue;
    }
    std::visit(
        [&](auto m) {
          if constexpr (!std::is_same_v<decltype(m), recipe::EnumField>) {
            EXPECT_EQ(a.*m, b.*m) << k.key;
          }
        },
        k.field);
  }
}

class CwdGuard {
 public:
  explicit CwdGuard(const fs::path& dir) : old_(fs::current_path()) { fs::current_path(dir); }
  ~CwdGuard() { fs::current_path(old_); }

 private:
  fs::path old_;
};

// ---------------------------------------------------------------- values and defaults

TEST(Recipe, FullRecipeLoadsEveryValue) {
  const std::string file = recipes_dir() + "/full.yaml";
  Recipe r = load_recipe(file);
  const fs::path dir = fs::path(recipes_dir()).lexically_normal();
  const RecipeConfig& c = r.cfg;
  EXPECT_EQ(r.source, fs::path(file).lexically_normal().string());
  EXPECT_EQ(c.output_dir, (dir / "runs/full").string());
  EXPECT_EQ(c.seed, 7);
  EXPECT_EQ(c.device, DeviceSetting::Cpu);
  EXPECT_EQ(c.threads, 3);
  EXPECT_EQ(c.model_path, (dir.parent_path() / "models/tiny-llama").string());
  EXPECT_EQ(c.model_init, ModelInit::Random);
  EXPECT_EQ(c.data_train, (dir / "data/train.jsonl").string());
  EXPECT_EQ(c.data_validation, (dir / "data/valid.jsonl").string());
  EXPECT_DOUBLE_EQ(c.data_val_fraction, 0.1);
  EXPECT_EQ(c.data_text_field, "content");
  EXPECT_FALSE(c.data_shuffle);
  EXPECT_EQ(c.seq_len, 512);
  EXPECT_EQ(c.micro_batch_size, 2);
  EXPECT_EQ(c.grad_accum, 8);
  EXPECT_EQ(c.max_steps, 100);
  EXPECT_DOUBLE_EQ(c.epochs, 2.5);
  EXPECT_DOUBLE_EQ(c.lr, 1e-4);
  EXPECT_DOUBLE_EQ(c.beta1, 0.85);
  EXPECT_DOUBLE_EQ(c.beta2, 0.999);
  EXPECT_DOUBLE_EQ(c.eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(c.clip, 0.5);
  EXPECT_TRUE(c.decay_norms_and_biases);
  EXPECT_TRUE(c.decay_embeddings);
  EXPECT_EQ(c.schedule_kind, ScheduleKind::Linear);
  EXPECT_EQ(c.warmup_steps, 10);
  EXPECT_DOUBLE_EQ(c.min_lr_ratio, 0.1);
  EXPECT_EQ(c.eval_every, 25);
  EXPECT_EQ(c.eval_max_batches, 4);
  EXPECT_EQ(c.checkpoint_every, 50);
  EXPECT_EQ(c.checkpoint_keep_last, 3);
  EXPECT_EQ(c.export_dtype, ExportDtype::Bf16);
  EXPECT_EQ(c.export_max_shard_mb, 2000);
  EXPECT_EQ(c.generate_prompt, "Once upon a time");
  EXPECT_EQ(c.generate_max_new_tokens, 32);
  EXPECT_DOUBLE_EQ(c.generate_temperature, 0.7);
  EXPECT_DOUBLE_EQ(c.generate_top_p, 0.9);
  EXPECT_EQ(c.log_every, 5);
}

TEST(Recipe, MinimalRecipeTakesDefaults) {
  Recipe r = load_recipe(recipes_dir() + "/minimal.yaml");
  const RecipeConfig& c = r.cfg;
  const fs::path dir = fs::path(recipes_dir()).lexically_normal();
  EXPECT_EQ(c.model_path, (dir / "model").string());
  EXPECT_EQ(c.data_train, (dir / "train.jsonl").string());
  EXPECT_EQ(c.output_dir, (dir / "out").string());
  EXPECT_EQ(c.model_init, ModelInit::Pretrained);
  EXPECT_EQ(c.data_validation, "");
  EXPECT_DOUBLE_EQ(c.data_val_fraction, 0.05);
  EXPECT_EQ(c.data_text_field, "text");
  EXPECT_TRUE(c.data_shuffle);
  EXPECT_EQ(c.seq_len, 256);
  EXPECT_EQ(c.micro_batch_size, 4);
  EXPECT_EQ(c.grad_accum, 1);
  EXPECT_EQ(c.max_steps, 0);
  EXPECT_DOUBLE_EQ(c.epochs, 1.0);
  EXPECT_DOUBLE_EQ(c.lr, 3e-4);
  EXPECT_DOUBLE_EQ(c.beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.eps, 1e-8);
  EXPECT_DOUBLE_EQ(c.clip, 1.0);
  EXPECT_EQ(c.schedule_kind, ScheduleKind::Cosine);
  EXPECT_EQ(c.checkpoint_keep_last, 2);
  EXPECT_EQ(c.export_dtype, ExportDtype::Auto);
  EXPECT_EQ(c.export_max_shard_mb, 5000);
  EXPECT_EQ(c.generate_prompt, "");
  EXPECT_EQ(c.generate_max_new_tokens, 48);
  EXPECT_EQ(c.seed, 42);
  EXPECT_EQ(c.device, DeviceSetting::Auto);
  EXPECT_EQ(c.threads, 0);
  EXPECT_EQ(c.log_every, 10);
}

TEST(Recipe, DottedKeysEqualNestedMaps) {
  RecipeConfig nested = load_text(std::string(kRequired) +
                                  "train:\n  seq_len: 64\n"
                                  "optim: {lr: 0.002}\n");
  RecipeConfig dotted = load_text(std::string(kRequired) + "train.seq_len: 64\noptim.lr: 0.002\n");
  EXPECT_EQ(nested.seq_len, 64);
  EXPECT_DOUBLE_EQ(nested.lr, 0.002);
  expect_same_config(nested, dotted);
}

// Three-level keys (export.encrypt.key_env) nest as maps at every level, mixed with dots too.
TEST(Recipe, ThreeLevelKeysNestAtEveryLevel) {
  const std::string req(kRequired);
  RecipeConfig flow = load_text(req + "export: {encrypt: {key_env: K1}}\n");
  RecipeConfig block = load_text(req + "export:\n  encrypt:\n    key_env: K1\n");
  RecipeConfig mixed = load_text(req + "export:\n  encrypt.key_env: K1\n");
  RecipeConfig half = load_text(req + "export.encrypt:\n  key_env: K1\n");
  RecipeConfig dotted = load_text(req + "export.encrypt.key_env: K1\n");
  EXPECT_EQ(flow.export_encrypt_key_env, "K1");
  for (const RecipeConfig* c : {&block, &mixed, &half, &dotted}) expect_same_config(flow, *c);
  EXPECT_TRUE(Contains(text_error(req + "export: {encrypt: 3}\n"), "expected a map"));
  EXPECT_TRUE(Contains(text_error(req + "export: {encrypt: {key_enc: K}}\n"),
                       "unknown key 'export.encrypt.key_enc'"));
  EXPECT_TRUE(Contains(text_error(req, {"export.encrypt=K"}), "is a section, not a key"));
}

TEST(Recipe, ScalarSpellings) {
  RecipeConfig c = load_text(std::string(kRequired) +
                             "train: {max_steps: +20, epochs: 3}\n"
                             "optim: {lr: .5e-3, weight_decay: 0}\n"
                             "data: {shuffle: off, val_fraction: \"0.25\"}\n"
                             "generate: {prompt: 123}\n");
  EXPECT_EQ(c.max_steps, 20);
  EXPECT_DOUBLE_EQ(c.epochs, 3.0);
  EXPECT_DOUBLE_EQ(c.lr, 0.5e-3);
  EXPECT_FALSE(c.data_shuffle);
  EXPECT_DOUBLE_EQ(c.data_val_fraction, 0.25);
  EXPECT_EQ(c.generate_prompt, "123");
}

TEST(Recipe, EmptySectionAndNullStringMeanDefaults) {
  RecipeConfig c = load_text(std::string(kRequired) + "eval:\ngenerate:\n  prompt:\n");
  EXPECT_EQ(c.eval_every, 0);
  EXPECT_EQ(c.generate_prompt, "");
}

TEST(Recipe, EmptyDocumentOnlyMissesRequiredKeys) {
  EXPECT_EQ(text_error(""),
            "r.yaml: missing required key 'output_dir' (the directory for checkpoints, metrics, "
            "the resolved recipe and the exported model)");
  // Required keys may come from overrides alone.
  RecipeConfig c =
      load_text("# nothing here\n", {"model.path=/m", "data.train=/t", "output_dir=/o"});
  EXPECT_EQ(c.model_path, "/m");
  EXPECT_EQ(c.data_train, "/t");
  EXPECT_EQ(c.output_dir, "/o");
}

// ---------------------------------------------------------------- overrides

TEST(Recipe, OverridesOfEveryType) {
  RecipeConfig c = load_text(
      std::string(kRequired) + "train: {max_steps: 5}\n",
      {"train.max_steps=20", "optim.lr=1e-4", "data.shuffle=false", "schedule.kind=constant",
       "generate.prompt=Hello, world = 1", "data.val_fraction=0", "generate.prompt=Once"});
  EXPECT_EQ(c.max_steps, 20);
  EXPECT_DOUBLE_EQ(c.lr, 1e-4);
  EXPECT_FALSE(c.data_shuffle);
  EXPECT_EQ(c.schedule_kind, ScheduleKind::Constant);
  EXPECT_DOUBLE_EQ(c.data_val_fraction, 0.0);
  // The last override of a key wins; values keep everything after the first '='.
  EXPECT_EQ(c.generate_prompt, "Once");
  RecipeConfig d = load_text(kRequired, {"generate.prompt=a=b", " seed = 9"});
  EXPECT_EQ(d.generate_prompt, "a=b");
  EXPECT_EQ(d.seed, 9);
}

TEST(Recipe, OverrideErrors) {
  EXPECT_EQ(text_error(kRequired, {"train.max_steps"}),
            "command line override 'train.max_steps': expected key=value, for example "
            "train.max_steps=20");
  EXPECT_EQ(text_error(kRequired, {"train.seq_lenght=5"}),
            "command line override 'train.seq_lenght=5': unknown key 'train.seq_lenght'; "
            "did you mean 'train.seq_len'?");
  EXPECT_EQ(text_error(kRequired, {"train.max_steps=abc"}),
            "command line override 'train.max_steps=abc': train.max_steps: expected an integer, "
            "got 'abc'");
  EXPECT_EQ(text_error(kRequired, {"data.shuffle=maybe"}),
            "command line override 'data.shuffle=maybe': data.shuffle: expected true or false, "
            "got 'maybe'");
  EXPECT_EQ(text_error(kRequired, {"optim.lr=0"}),
            "command line override 'optim.lr=0': optim.lr: 0 is out of range; it must be > 0");
  EXPECT_TRUE(Contains(text_error(kRequired, {"train=5"}),
                       "command line override 'train=5': 'train' is a section, not a key"));
  EXPECT_TRUE(Contains(text_error(kRequired, {"=5"}), "the key before '=' is empty"));
}

// ---------------------------------------------------------------- error messages

TEST(Recipe, SyntaxErrorHasLineAndColumn) {
  EXPECT_EQ(text_error("model:\n  path: [a, b\ndata: 1\n"),
            "r.yaml:3:5: YAML syntax error: end of sequence flow not found");
  EXPECT_TRUE(Contains(text_error("train:\n  seq_len: 1\n bad: 2\n"), "r.yaml:3:"));
  EXPECT_TRUE(Contains(text_error("train:\n  seq_len: 1\n bad: 2\n"), ": YAML syntax error: "));
}

TEST(Recipe, UnknownKeySuggestsTheClosestKey) {
  EXPECT_EQ(text_error(std::string(kRequired) + "train:\n  seq_lenght: 128\n"),
            "r.yaml:5:3: unknown key 'train.seq_lenght'; did you mean 'train.seq_len'?");
  // A key under the wrong section, or without one, is found by its last component.
  EXPECT_EQ(text_error(std::string(kRequired) + "train: {lr: 0.1}\n"),
            "r.yaml:4:9: unknown key 'train.lr'; did you mean 'optim.lr'?");
  EXPECT_EQ(text_error(std::string(kRequired) + "seq_len: 12\n"),
            "r.yaml:4:1: unknown key 'seq_len'; did you mean 'train.seq_len'?");
  // A misspelt section.
  EXPECT_EQ(text_error(std::string(kRequired) + "trian:\n  seq_len: 128\n"),
            "r.yaml:4:1: unknown key 'trian'; did you mean 'train'?");
  EXPECT_EQ(text_error(std::string(kRequired) + "sed: 1\n"),
            "r.yaml:4:1: unknown key 'sed'; did you mean 'seed'?");
  // Several equally close keys are all offered.
  EXPECT_EQ(text_error(std::string(kRequired) + "every: 3\n"),
            "r.yaml:4:1: unknown key 'every'; did you mean 'eval.every', 'checkpoint.every' or "
            "'log.every'?");
}

TEST(Recipe, UnknownKeyWithNothingCloseHasNoSuggestion) {
  EXPECT_EQ(text_error(std::string(kRequired) + "train:\n  banana: 1\n"),
            "r.yaml:5:3: unknown key 'train.banana'");
  EXPECT_EQ(text_error(std::string(kRequired) + "x: 1\n"), "r.yaml:4:1: unknown key 'x'");
}

TEST(Recipe, WrongTypeNamesKeyAndValue) {
  EXPECT_EQ(text_error(std::string(kRequired) + "train:\n  seq_len: abc\n"),
            "r.yaml:5:12: train.seq_len: expected an integer, got 'abc'");
  EXPECT_EQ(text_error(std::string(kRequired) + "train:\n  seq_len: 12.5\n"),
            "r.yaml:5:12: train.seq_len: expected an integer, got '12.5'");
  EXPECT_EQ(text_error(std::string(kRequired) + "optim: {lr: fast}\n"),
            "r.yaml:4:13: optim.lr: expected a number, got 'fast'");
  EXPECT_EQ(text_error(std::string(kRequired) + "optim: {lr: .inf}\n"),
            "r.yaml:4:13: optim.lr: expected a number, got '.inf'");
  EXPECT_EQ(text_error(std::string(kRequired) + "data: {shuffle: 2}\n"),
            "r.yaml:4:17: data.shuffle: expected true or false, got '2'");
  EXPECT_EQ(text_error(std::string(kRequired) + "train: {seq_len: }\n"),
            "r.yaml:4:9: train.seq_len: expected an integer, got an empty value");
  EXPECT_EQ(text_error(std::string(kRequired) + "seed: 99999999999999999999\n"),
            "r.yaml:4:7: seed: 99999999999999999999 is out of range; it must fit in a 64-bit "
            "integer");
}

TEST(Recipe, MapListAndScalarMismatches) {
  EXPECT_EQ(text_error(std::string(kRequired) + "train:\n  seq_len: {a: 1}\n"),
            "r.yaml:5:3: train.seq_len: expected an integer, got a map");
  EXPECT_EQ(text_error(std::string(kRequired) + "seed: [1, 2]\n"),
            "r.yaml:4:1: seed: expected an integer, got a list");
  EXPECT_EQ(text_error(std::string(kRequired) + "generate: {prompt: [a]}\n"),
            "r.yaml:4:12: generate.prompt: expected a string, got a list");
  EXPECT_EQ(text_error(std::string(kRequired) + "train: 256\n"),
            "r.yaml:4:1: train: expected a map of train.* keys (such as train.seq_len), got "
            "'256'");
  EXPECT_EQ(text_error("- a\n- b\n"),
            "r.yaml:1:1: expected a map of recipe keys (such as model.path, data.train, "
            "output_dir), got a list");
  EXPECT_EQ(text_error("{[a]: 1}\n"), "r.yaml:1:2: a recipe key must be a plain name, got a list");
}

TEST(Recipe, OutOfRangeNamesKeyValueAndRange) {
  EXPECT_EQ(text_error(std::string(kRequired) + "train:\n  seq_len: 0\n"),
            "r.yaml:5:12: train.seq_len: 0 is out of range; it must be >= 1");
  EXPECT_EQ(text_error(std::string(kRequired) + "data: {val_fraction: 1}\n"),
            "r.yaml:4:22: data.val_fraction: 1 is out of range; it must be in [0, 1)");
  EXPECT_EQ(text_error(std::string(kRequired) + "optim: {beta2: -0.5}\n"),
            "r.yaml:4:16: optim.beta2: -0.5 is out of range; it must be in [0, 1)");
  EXPECT_EQ(text_error(std::string(kRequired) + "generate: {top_p: 0}\n"),
            "r.yaml:4:19: generate.top_p: 0 is out of range; it must be in (0, 1]");
  EXPECT_EQ(text_error(std::string(kRequired) + "train: {grad_accum: -3}\n"),
            "r.yaml:4:21: train.grad_accum: -3 is out of range; it must be >= 1");
  // Boundaries that are allowed.
  RecipeConfig c = load_text(std::string(kRequired) +
                             "data: {val_fraction: 0}\noptim: {beta1: 0}\ngenerate: {top_p: 1}\n");
  EXPECT_DOUBLE_EQ(c.generate_top_p, 1.0);
}

TEST(Recipe, NotAnAllowedValueListsTheChoices) {
  EXPECT_EQ(text_error(std::string(kRequired) + "schedule:\n  kind: cosin\n"),
            "r.yaml:5:9: schedule.kind: 'cosin' is not one of constant, linear, cosine; "
            "did you mean 'cosine'?");
  EXPECT_EQ(text_error(std::string(kRequired) + "device: metal\n"),
            "r.yaml:4:9: device: 'metal' is not one of auto, cpu, cuda");
  // One letter away from a short choice is a different choice, not a typo; case is a typo.
  EXPECT_EQ(text_error(kRequired, {"device=gpu"}),
            "command line override 'device=gpu': device: 'gpu' is not one of auto, cpu, cuda");
  EXPECT_EQ(text_error(kRequired, {"device=CPU"}),
            "command line override 'device=CPU': device: 'CPU' is not one of auto, cpu, cuda; "
            "did you mean 'cpu'?");
  EXPECT_EQ(text_error(kRequired, {"export.dtype=BF16"}),
            "command line override 'export.dtype=BF16': export.dtype: 'BF16' is not one of "
            "auto, f32, bf16, f16; did you mean 'bf16'?");
  EXPECT_EQ(text_error(kRequired, {"model.init="}),
            "command line override 'model.init=': model.init: '' is not one of pretrained, "
            "random");
}

TEST(Recipe, MissingRequiredKeyNamesItAndSaysWhatItIs) {
  EXPECT_EQ(text_error("data: {train: t.jsonl}\noutput_dir: out\n"),
            "r.yaml: missing required key 'model.path' (the Hugging Face model directory to "
            "fine-tune)");
  EXPECT_EQ(text_error("model: {path: m}\noutput_dir: out\n"),
            "r.yaml: missing required key 'data.train' (the training set: a JSONL file with one "
            "document per line, or a list of weighted datasets)");
  EXPECT_EQ(text_error("model:\n  path: \"\"\ndata: {train: t}\noutput_dir: o\n"),
            "r.yaml:2:9: model.path is empty; it must name the Hugging Face model directory to "
            "fine-tune");
  EXPECT_EQ(text_error(kRequired, {"output_dir="}),
            "command line override 'output_dir=': output_dir is empty; it must name the "
            "directory for checkpoints, metrics, the resolved recipe and the exported model");
}

TEST(Recipe, WarmupMustBeShorterThanMaxSteps) {
  EXPECT_EQ(text_error(std::string(kRequired) +
                       "train: {max_steps: 50}\nschedule:\n  warmup_steps: 50\n"),
            "r.yaml:6:17: schedule.warmup_steps (50) must be less than train.max_steps (50); "
            "shorten the warmup or raise train.max_steps");
  // Checked after overrides: an override may fix or break it.
  EXPECT_EQ(load_text(std::string(kRequired) + "train: {max_steps: 50}\n"
                                               "schedule: {warmup_steps: 50}\n",
                      {"train.max_steps=51"})
                .warmup_steps,
            50);
  EXPECT_TRUE(Contains(
      text_error(std::string(kRequired) + "schedule: {warmup_steps: 10}\n", {"train.max_steps=5"}),
      "r.yaml:4:26: schedule.warmup_steps (10) must be less than "
      "train.max_steps (5)"));
  // max_steps 0 runs by epochs: any warmup length is accepted.
  EXPECT_EQ(load_text(std::string(kRequired) + "schedule: {warmup_steps: 1000}\n").warmup_steps,
            1000);
}

TEST(Recipe, DuplicateKeyIsAnError) {
  EXPECT_EQ(text_error(std::string(kRequired) + "train: {seq_len: 8}\ntrain.seq_len: 16\n"),
            "r.yaml:5:1: duplicate key 'train.seq_len' (already set at r.yaml:4:18); keep one "
            "of them");
}

TEST(Recipe, MultipleDocumentsAreAnError) {
  EXPECT_EQ(text_error(std::string(kRequired) + "---\nseed: 1\n"),
            "r.yaml: holds 2 YAML documents ('---' separators); a recipe is a single document");
}

TEST(Recipe, FileErrorsNameTheFile) {
  std::string dir = ftune::testing::make_temp_dir("recipe_files");
  EXPECT_TRUE(Contains(error_of([&] { load_recipe(dir + "/absent.yaml"); }),
                       "cannot open recipe file '" + dir + "/absent.yaml'"));
  EXPECT_TRUE(Contains(error_of([&] { load_recipe(dir); }), "is a directory"));
  // Messages from a real file carry its name as given.
  std::string bad = dir + "/bad.yaml";
  std::ofstream(bad) << kRequired << "train:\n  seq_lenght: 3\n";
  EXPECT_EQ(error_of([&] { load_recipe(bad); }),
            bad + ":5:3: unknown key 'train.seq_lenght'; did you mean 'train.seq_len'?");
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- paths

TEST(Recipe, PathsInFileResolveAgainstItsDirectory) {
  std::string dir = ftune::testing::make_temp_dir("recipe_paths");
  fs::create_directories(dir + "/conf");
  std::string file = dir + "/conf/r.yaml";
  std::ofstream(file) << "model: {path: ../models/m/}\n"
                         "data: {train: ./d/./t.jsonl, validation: /abs/v/../v.jsonl}\n"
                         "output_dir: out\n";
  // The CWD must not matter for paths written in the file.
  CwdGuard cwd(fs::temp_directory_path());
  RecipeConfig c = load_recipe(file).cfg;
  const fs::path base = fs::path(dir).lexically_normal();
  EXPECT_EQ(c.model_path, (base / "models/m").string());
  EXPECT_EQ(c.data_train, (base / "conf/d/t.jsonl").string());
  EXPECT_EQ(c.data_validation, "/abs/v.jsonl");
  EXPECT_EQ(c.output_dir, (base / "conf/out").string());
  fs::remove_all(dir);
}

TEST(Recipe, PathsInOverridesResolveAgainstTheWorkingDirectory) {
  std::string dir = ftune::testing::make_temp_dir("recipe_cwd");
  CwdGuard cwd(dir);
  const fs::path here = fs::current_path();
  RecipeConfig c = load_recipe_text(kRequired, "r.yaml", "/elsewhere",
                                    {"output_dir=runs/a/../b", "data.validation=v.jsonl",
                                     "model.path=/abs/model"})
                       .cfg;
  EXPECT_EQ(c.output_dir, (here / "runs/b").string());
  EXPECT_EQ(c.data_validation, (here / "v.jsonl").string());
  EXPECT_EQ(c.model_path, "/abs/model");
  // A path cleared by an override stays empty instead of becoming the CWD.
  RecipeConfig d = load_recipe_text(std::string(kRequired) + "data: {validation: v.jsonl}\n",
                                    "r.yaml", "/elsewhere", {"data.validation="})
                       .cfg;
  EXPECT_EQ(d.data_validation, "");
  fs::remove_all(dir);
}

TEST(Recipe, TextBaseDirResolvesFilePaths) {
  RecipeConfig c = load_recipe_text("model: {path: m}\ndata: {train: t.jsonl}\noutput_dir: o\n",
                                    "inline", "/srv/job/../recipes", {})
                       .cfg;
  EXPECT_EQ(c.model_path, "/srv/recipes/m");
  EXPECT_EQ(c.data_train, "/srv/recipes/t.jsonl");
  EXPECT_EQ(c.output_dir, "/srv/recipes/o");
}

// ---------------------------------------------------------------- print-config

TEST(Recipe, ResolvedYamlRoundTripsTheFullRecipe) {
  Recipe r = load_recipe(recipes_dir() + "/full.yaml", {"optim.lr=2.5e-5"});
  EXPECT_EQ(r.resolved_yaml, recipe_to_yaml(r.cfg));
  Recipe back = load_recipe_text(r.resolved_yaml, "resolved", "/somewhere/else");
  expect_same_config(r.cfg, back.cfg);
  EXPECT_DOUBLE_EQ(back.cfg.lr, 2.5e-5);
  EXPECT_EQ(back.resolved_yaml, r.resolved_yaml);
}

TEST(Recipe, ResolvedYamlGroupsSectionsInSchemaOrder) {
  std::string y = load_recipe_text(kRequired, "r.yaml", "/", {"train.seq_len=77"}).resolved_yaml;
  EXPECT_TRUE(Contains(y, "\ntrain:\n  seq_len: 77\n  micro_batch_size: 4\n"));
  EXPECT_TRUE(Contains(y, "\noptim:\n  lr: 0.0003\n"));
  EXPECT_TRUE(Contains(y, "\n  eps: 1e-8\n"));
  EXPECT_TRUE(Contains(y, "\n  shuffle: true\n"));
  // Every schema key appears exactly once, sections in the schema's order.
  size_t last_pos = 0;
  std::string_view last_section = "-";
  for (const recipe::KeySpec& k : recipe::schema()) {
    std::string_view sec = k.section();
    std::string needle = sec.empty() ? "\n" + std::string(k.key) + ": "
                                     : "\n  " + std::string(k.key.substr(sec.size() + 1)) + ": ";
    if (sec != last_section && !sec.empty()) {
      size_t at = y.find("\n" + std::string(sec) + ":\n");
      ASSERT_NE(at, std::string::npos) << sec;
      EXPECT_GE(at, last_pos) << sec;
      last_pos = at;
    }
    last_section = sec;
    if (k.key == "output_dir") needle = "output_dir: ";  // first line has no leading newline
    size_t at = y.find(needle, last_pos);
    ASSERT_NE(at, std::string::npos) << k.key;
    last_pos = at;
  }
}

TEST(Recipe, ToYamlRoundTripsNonDefaultAndAwkwardValues) {
  // Every key set through the schema to a value that differs from its default.
  RecipeConfig cfg;
  int i = 0;
  for (const recipe::KeySpec& k : recipe::schema()) {
    ++i;
    if (const recipe::EnumField* e = std::get_if<recipe::EnumField>(&k.field)) {
      // The last name, or the first when the last is the default's.
      const int last = int(k.allowed.size()) - 1;
      RecipeConfig probe;
      e->set(probe, last);
      e->set(cfg, e->index(probe) == e->index(cfg) ? 0 : last);
      continue;
    }
    std::visit(
        [&](auto m) {
          if constexpr (std::is_same_v<decltype(m), recipe::EnumField>) {
          } else {
            using T = std::decay_t<decltype(cfg.*m)>;
            if constexpr (std::is_same_v<T, std::string>) {
              if (!k.allowed.empty())
                cfg.*m = std::string(k.allowed.back()) == cfg.*m ? std::string(k.allowed.front())
                                                                 : std::string(k.allowed.back());
              else if (k.is_path)
                cfg.*m = "/dir with space/#p" + std::to_string(i);
              else
                cfg.*m = "value " + std::to_string(i);
            } else if constexpr (std::is_same_v<T, bool>) {
              cfg.*m = !(cfg.*m);
            } else if constexpr (std::is_same_v<T, double>) {
              cfg.*m = 0.1234567890123456789 / i;  // needs all 17 digits to round-trip
            } else {
              cfg.*m = 1000 + i;
            }
          }
        },
        k.field);
  }
  cfg.max_steps = 1'000'000;  // keeps warmup_steps valid
  const RecipeConfig defaults;
  for (const recipe::KeySpec& k : recipe::schema())
    EXPECT_NE(recipe::value_text(k, cfg), recipe::value_text(k, defaults)) << k.key;

  for (std::string awkward : {std::string(""),
                              std::string("yes"),
                              std::string("No"),
                              std::string("~"),
                              std::string("null"),
                              std::string("123"),
                              std::string("1e-4"),
                              std::string("0x1F"),
                              std::string("a: b # c"),
                              std::string("- item"),
                              std::string("[x]"),
                              std::string("  padded  "),
                              std::string("line1\nline2\ttab"),
                              std::string("quotes ' and \""),
                              std::string("unicode \xc3\xa9t\xc3\xa9"),
                              std::string("&anchor"),
                              std::string("*alias"),
                              std::string("%percent"),
                              std::string("@at"),
                              std::string("ends in cr\r"),
                              std::string("cr\rinside"),
                              std::string("\x01control"),
                              std::string("del\x7f")}) {
    cfg.generate_prompt = awkward;
    cfg.data_text_field = awkward.empty() ? "t" : awkward;
    std::string y = recipe_to_yaml(cfg);
    RecipeConfig back;
    try {
      back = load_recipe_text(y, "round-trip", "/").cfg;
    } catch (const Error& e) {
      ADD_FAILURE() << "'" << awkward << "': " << e.what() << "\n" << y;
      continue;
    }
    expect_same_config(cfg, back);
  }
}

// ---------------------------------------------------------------- data.train as a list

const char kMix[] =
    "model: {path: /m}\noutput_dir: /out\n"
    "data:\n"
    "  format: instruction\n"
    "  train:\n"
    "    - path: a.jsonl\n"
    "      weight: 2\n"
    "    - {path: /abs/b.jsonl, format: text, weight: 0.5, text_field: body, "
    "train_on_inputs: yes, system_prompt: Be brief.}\n";

TEST(RecipeDataMix, ListFormLoadsEntriesAndMergesSettings) {
  RecipeConfig c = load_text(kMix);
  EXPECT_EQ(c.data_train, "/base/a.jsonl");  // relative to the recipe's directory
  ASSERT_EQ(c.data_sources.size(), 2u);
  EXPECT_EQ(c.data_sources[0].path, "/base/a.jsonl");
  EXPECT_EQ(c.data_sources[0].weight, 2.0);
  EXPECT_FALSE(c.data_sources[0].has_overrides());
  const DataSource& b = c.data_sources[1];
  EXPECT_EQ(b.path, "/abs/b.jsonl");
  EXPECT_EQ(b.weight, 0.5);
  EXPECT_EQ(b.format, std::optional<DataFormat>(DataFormat::Text));
  EXPECT_EQ(b.text_field, std::optional<std::string>("body"));
  EXPECT_EQ(b.train_on_inputs, std::optional<bool>(true));
  EXPECT_EQ(b.system_prompt, std::optional<std::string>("Be brief."));
  EXPECT_FALSE(b.instruction_field.has_value());
  EXPECT_TRUE(b.has_overrides());
  EXPECT_EQ(recipe_data_sources(c), c.data_sources);

  // Unset entry keys take the recipe's data.* value, set ones replace it.
  RecipeConfig a_cfg = recipe_for_source(c, c.data_sources[0]);
  EXPECT_EQ(a_cfg.data_format, DataFormat::Instruction);
  EXPECT_EQ(a_cfg.data_text_field, "text");
  EXPECT_FALSE(a_cfg.data_train_on_inputs);
  RecipeConfig b_cfg = recipe_for_source(c, b);
  EXPECT_EQ(b_cfg.data_train, "/abs/b.jsonl");
  EXPECT_EQ(b_cfg.data_format, DataFormat::Text);
  EXPECT_EQ(b_cfg.data_text_field, "body");
  EXPECT_TRUE(b_cfg.data_train_on_inputs);
  EXPECT_EQ(b_cfg.data_system_prompt, "Be brief.");
  EXPECT_EQ(b_cfg.data_instruction_field, "instruction");
}

TEST(RecipeDataMix, PlainPathAndOverrideGiveOneSource) {
  RecipeConfig c = load_text(kRequired);
  ASSERT_EQ(c.data_sources.size(), 1u);
  EXPECT_EQ(c.data_sources[0].path, "/d/train.jsonl");
  EXPECT_EQ(c.data_sources[0].weight, 1.0);
  // A command-line path replaces the whole list.
  RecipeConfig o = load_text(kMix, {"data.train=/x/y.jsonl"});
  EXPECT_EQ(o.data_train, "/x/y.jsonl");
  ASSERT_EQ(o.data_sources.size(), 1u);
  EXPECT_EQ(o.data_sources[0].path, "/x/y.jsonl");
  // A config whose data_train was set in code reads as that one file.
  RecipeConfig m = load_text(kMix);
  m.data_train = "/other.jsonl";
  ASSERT_EQ(recipe_data_sources(m).size(), 1u);
  EXPECT_EQ(recipe_data_sources(m)[0].path, "/other.jsonl");
}

TEST(RecipeDataMix, EntryErrorsNameTheEntryAndItsPlace) {
  const std::string head = "model: {path: /m}\noutput_dir: /out\ndata:\n  train:\n";
  EXPECT_EQ(text_error(head + "    - path: a.jsonl\n    - path: b.jsonl\n      formt: text\n"),
            "r.yaml:7:7: unknown key 'data.train[1].formt'; a dataset entry takes 'path', "
            "'weight', 'text_field', 'format', 'train_on_inputs', 'instruction_field', "
            "'input_field', 'output_field', 'messages_field', 'role_field', 'content_field' or "
            "'system_prompt'; did you mean 'format'?");
  EXPECT_EQ(text_error(head + "    - path: a.jsonl\n    - {path: b.jsonl, weight: 0}\n"),
            "r.yaml:6:31: data.train[1].weight: 0 is out of range; it must be > 0 (leave the "
            "dataset out to skip it)");
  EXPECT_EQ(text_error(head + "    - {path: a.jsonl, weight: -1.5}\n"),
            "r.yaml:5:31: data.train[0].weight: -1.5 is out of range; it must be > 0 (leave the "
            "dataset out to skip it)");
  EXPECT_EQ(text_error(head + "    - {path: a.jsonl, weight: heavy}\n"),
            "r.yaml:5:31: data.train[0].weight: expected a number, got 'heavy'");
  EXPECT_EQ(text_error(head + "    - path: a.jsonl\n    - weight: 2\n"),
            "r.yaml:6:7: data.train[1]: missing required key 'path' (the dataset's JSONL file)");
  EXPECT_EQ(text_error(head + "    - {path: a.jsonl, format: chat}\n"),
            "r.yaml:5:31: data.train[0].format: 'chat' is not one of text, instruction, "
            "messages, preference");
  EXPECT_EQ(text_error(head + "    - {path: a.jsonl, train_on_inputs: maybe}\n"),
            "r.yaml:5:40: data.train[0].train_on_inputs: expected true or false, got 'maybe'");
  EXPECT_EQ(text_error(head + "    - a.jsonl\n"),
            "r.yaml:5:7: data.train[0]: expected a map such as {path: a.jsonl, weight: 2.0}, got "
            "'a.jsonl'");
  EXPECT_EQ(text_error(head + "    - {path: a.jsonl, path: b.jsonl}\n"),
            "r.yaml:5:23: duplicate key 'data.train[0].path' (already set at r.yaml:5:8); keep "
            "one of them");
  EXPECT_EQ(text_error("model: {path: /m}\noutput_dir: /out\ndata: {train: []}\n"),
            "r.yaml:3:8: data.train: the list is empty; name at least one dataset, for example "
            "- {path: train.jsonl}");
  EXPECT_EQ(text_error(head + "    - {path: a.jsonl, window: 3}\n"),
            "r.yaml:5:23: unknown key 'data.train[0].window'; a dataset entry takes 'path', "
            "'weight', 'text_field', 'format', 'train_on_inputs', 'instruction_field', "
            "'input_field', 'output_field', 'messages_field', 'role_field', 'content_field' or "
            "'system_prompt'");
  // A map where a path or a list belongs says both forms.
  EXPECT_EQ(text_error("model: {path: /m}\noutput_dir: /out\ndata: {train: {path: a}}\n"),
            "r.yaml:3:8: data.train: expected a string or a list of {path, weight, ...} entries, "
            "got a map");
}

TEST(RecipeDataMix, ResolvedYamlPrintsTheListAndRoundTrips) {
  Recipe r = load_recipe_text(kMix, "r.yaml", "/base");
  EXPECT_TRUE(Contains(r.resolved_yaml,
                       "\n  train:\n    - path: /base/a.jsonl\n      weight: 2.0\n"
                       "    - path: /abs/b.jsonl\n      weight: 0.5\n      text_field: body\n"
                       "      format: text\n      train_on_inputs: true\n"
                       "      system_prompt: Be brief.\n  validation:"));
  Recipe back = load_recipe_text(r.resolved_yaml, "resolved", "/somewhere/else");
  EXPECT_EQ(back.cfg.data_sources, r.cfg.data_sources);
  expect_same_config(r.cfg, back.cfg);
  EXPECT_EQ(back.resolved_yaml, r.resolved_yaml);

  // One source keeps the list form only when it carries a weight or an override.
  Recipe one = load_recipe_text(std::string(kRequired), "r.yaml", "/");
  EXPECT_TRUE(Contains(one.resolved_yaml, "\n  train: /d/train.jsonl\n"));
  Recipe weighted = load_recipe_text(
      "model: {path: /m}\noutput_dir: /out\ndata: {train: [{path: /a, weight: 3}]}\n", "r.yaml",
      "/");
  EXPECT_TRUE(Contains(weighted.resolved_yaml, "\n  train:\n    - path: /a\n      weight: 3.0\n"));
  EXPECT_EQ(load_recipe_text(weighted.resolved_yaml, "back", "/").cfg.data_sources,
            weighted.cfg.data_sources);

  // Awkward strings inside entries survive the trip too.
  RecipeConfig cfg = r.cfg;
  cfg.data_sources[1].system_prompt = "yes: no # [x]";
  cfg.data_sources[1].text_field = "123";
  cfg.data_sources[0].path = "/dir with space/#a";
  cfg.data_train = cfg.data_sources[0].path;
  RecipeConfig again = load_recipe_text(recipe_to_yaml(cfg), "again", "/").cfg;
  EXPECT_EQ(again.data_sources, cfg.data_sources);
}

// ---------------------------------------------------------------- schema, header, docs

TEST(RecipeSchema, CoversEveryHeaderField) {
  // The header comments name each field's key; parse them so a field added to RecipeConfig
  // without a schema entry (or the reverse) fails here.
  std::ifstream in(std::string(FTUNE_SOURCE_DIR) + "/engine/recipe/recipe.h");
  ASSERT_TRUE(in) << "cannot read engine/recipe/recipe.h";
  std::string line;
  bool inside = false;
  std::set<std::string> header_keys;
  size_t fields = 0;
  const std::regex field_re(
      R"(^\s*(std::string|int64_t|double|bool|[A-Z]\w+)\s+\w+\s*(=[^;]*)?;\s*//\s*([A-Za-z0-9_.]+))");
  while (std::getline(in, line)) {
    if (line.rfind("struct RecipeConfig", 0) == 0)
      inside = true;
    else if (inside && line.rfind("};", 0) == 0)
      break;
    std::smatch m;
    if (inside && std::regex_search(line, m, field_re)) {
      ++fields;
      header_keys.insert(m[3]);
    }
  }
  std::set<std::string> schema_keys;
  for (const recipe::KeySpec& k : recipe::schema()) schema_keys.insert(std::string(k.key));
  EXPECT_GT(fields, 30u);
  EXPECT_EQ(fields, recipe::schema().size());
  EXPECT_EQ(header_keys, schema_keys);
}

TEST(RecipeSchema, EntriesAreConsistent) {
  const RecipeConfig defaults;
  std::set<std::string_view> keys;
  std::vector<std::string_view> section_order;
  for (const recipe::KeySpec& k : recipe::schema()) {
    EXPECT_TRUE(keys.insert(k.key).second) << "duplicate key " << k.key;
    EXPECT_FALSE(k.doc.empty()) << k.key;
    if (k.required || k.is_path || !k.allowed.empty()) {
      EXPECT_TRUE(k.type() == recipe::ValueType::kString || k.type() == recipe::ValueType::kEnum)
          << k.key;
    }
    if (k.type() == recipe::ValueType::kEnum) {
      EXPECT_FALSE(k.allowed.empty()) << k.key;
    }
    if (k.min || k.max) {
      EXPECT_NE(k.type(), recipe::ValueType::kString) << k.key;
    }
    if (section_order.empty() || section_order.back() != k.section())
      section_order.push_back(k.section());
    // Every default must pass its own key's validation.
    if (k.required) continue;
    std::string def = recipe::value_text(k, defaults);
    EXPECT_NO_THROW(load_text(kRequired, {std::string(k.key) + "=" + def})) << k.key;
  }
  // Sections are contiguous and each has a docs entry, in the same order.
  ASSERT_EQ(section_order.size(), recipe::sections().size());
  for (size_t i = 0; i < section_order.size(); ++i)
    EXPECT_EQ(section_order[i], recipe::sections()[i].name);
  // Distinct keys are bound to distinct fields: setting one changes no other.
  for (const recipe::KeySpec& k : recipe::schema()) {
    RecipeConfig c;
    if (const recipe::EnumField* e = std::get_if<recipe::EnumField>(&k.field))
      e->set(c, e->index(c) == 0 ? 1 : 0);
    std::visit(
        [&](auto m) {
          if constexpr (std::is_same_v<decltype(m), recipe::EnumField>) {
            return;
          } else {
            using T = std::decay_t<decltype(c.*m)>;
            if constexpr (std::is_same_v<T, std::string>) {
              c.*m = "changed";
            } else if constexpr (std::is_same_v<T, bool>) {
              c.*m = !(c.*m);
            } else {
              c.*m = c.*m + 3;
            }
          }
        },
        k.field);
    for (const recipe::KeySpec& o : recipe::schema()) {
      if (&o == &k) continue;
      EXPECT_EQ(recipe::value_text(o, c), recipe::value_text(o, defaults))
          << k.key << " also changed " << o.key;
    }
  }
}

// Each choice's names map to the enum values the code switches on (an enum's value is the index
// of its name, so a reordered enum or name list fails here).
TEST(RecipeSchema, ChoiceNamesMapToTheirEnums) {
  auto load1 = [](const std::string& ov) { return load_text(kRequired, {ov}); };
  EXPECT_EQ(load1("method=lora").method, Method::Lora);
  EXPECT_EQ(load1("method=full").method, Method::Full);
  EXPECT_EQ(load1("model.init=random").model_init, ModelInit::Random);
  EXPECT_EQ(load1("lora.init=gaussian").lora_init, LoraInit::Gaussian);
  EXPECT_EQ(load1("data.packing=stream").data_packing, Packing::Stream);
  EXPECT_EQ(load1("data.packing=pack").data_packing, Packing::Pack);
  EXPECT_EQ(load1("data.packing=pad").data_packing, Packing::Pad);
  EXPECT_EQ(load1("data.packing=true").data_packing, Packing::Pack);
  EXPECT_EQ(load1("data.packing=false").data_packing, Packing::Pad);
  EXPECT_EQ(load1("data.overlong=drop").data_overlong, Overlong::Drop);
  EXPECT_EQ(load1("train.recompute=mlp").recompute, Recompute::Mlp);
  EXPECT_EQ(load1("train.recompute=full").recompute, Recompute::Full);
  EXPECT_EQ(load1("schedule.kind=constant").schedule_kind, ScheduleKind::Constant);
  EXPECT_EQ(load1("schedule.kind=linear").schedule_kind, ScheduleKind::Linear);
  EXPECT_EQ(load1("checkpoint.on_error=continue").checkpoint_on_error, OnCheckpointError::Continue);
  EXPECT_EQ(load1("guard.nonfinite=skip").guard_nonfinite, GuardPolicy::Skip);
  EXPECT_EQ(load1("guard.spike=rollback").guard_spike, GuardPolicy::Rollback);
  EXPECT_EQ(load1("export.dtype=bf16").export_dtype, ExportDtype::Bf16);
  EXPECT_EQ(load1("export.dtype=f16").export_dtype, ExportDtype::F16);
  EXPECT_EQ(load1("precision=bf16").precision, PrecisionSetting::Bf16);
  EXPECT_EQ(load1("sharding=zero3").sharding, Sharding::Zero3);
  EXPECT_EQ(load1("device=cpu").device, DeviceSetting::Cpu);
  EXPECT_EQ(load1("device=cuda").device, DeviceSetting::Cuda);
  EXPECT_EQ(load1("data.format=instruction").data_format, DataFormat::Instruction);
  EXPECT_EQ(load1("data.format=messages").data_format, DataFormat::Messages);
  EXPECT_EQ(load1("data.format=preference").data_format, DataFormat::Preference);
  EXPECT_EQ(load1("data.chat_template=chatml").data_chat_template, ChatTemplateChoice::Chatml);
  EXPECT_EQ(load1("data.chat_template=plain").data_chat_template, ChatTemplateChoice::Plain);
  EXPECT_EQ(load1("data.chat_template=llama2").data_chat_template, ChatTemplateChoice::Llama2);
  // Each name reads back as itself (the table chat_template_name keeps).
  for (const char* n : {"auto", "chatml", "llama3", "llama2", "mistral", "alpaca", "plain"})
    EXPECT_STREQ(
        chat_template_name(load1(std::string("data.chat_template=") + n).data_chat_template), n);
  // The resolved recipe writes the canonical name.
  EXPECT_TRUE(Contains(recipe_to_yaml(load1("data.packing=true")), "packing: pack"));
}

TEST(RecipeSchema, MarkdownDocumentsEveryKey) {
  std::string md = recipe_schema_markdown();
  EXPECT_EQ(md.rfind("# Recipe reference\n", 0), 0u);
  EXPECT_TRUE(Contains(md, "--print-config"));
  EXPECT_TRUE(Contains(md, "| key | type | default | allowed / range | description |"));
  for (const recipe::KeySpec& k : recipe::schema()) {
    std::string cell = "| `" + std::string(k.key) + "` |";
    size_t at = md.find(cell);
    EXPECT_NE(at, std::string::npos) << k.key;
    EXPECT_EQ(md.find(cell, at + 1), std::string::npos) << k.key << " documented twice";
  }
  EXPECT_TRUE(Contains(md, "| `train.seq_len` | int | `256` | >= 1 | "));
  EXPECT_TRUE(Contains(md,
                       "| `schedule.kind` | string | `cosine` | `constant`, `linear`, "
                       "`cosine` | "));
  EXPECT_TRUE(Contains(md,
                       "| `model.path` | path | *required* |  | the Hugging Face model "
                       "directory to fine-tune |"));
  EXPECT_TRUE(Contains(md, "| `data.val_fraction` | float | `0.05` | [0, 1) | "));
  EXPECT_TRUE(Contains(md, "| `data.train` | path or list | *required* |  | "));
  EXPECT_TRUE(Contains(md, "`data.train` may also be a list of datasets"));
  for (std::string_view name : recipe::source_entry_keys())
    EXPECT_TRUE(Contains(md, "`" + std::string(name) + "`")) << name;
}

TEST(RecipeSchema, DocsFileIsUpToDate) {
  const std::string path = std::string(FTUNE_SOURCE_DIR) + "/docs/recipes.md";
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in) << path
                  << " is missing; regenerate it with `ftune recipe-docs > docs/recipes.md`";
  std::ostringstream text;
  text << in.rdbuf();
  EXPECT_TRUE(text.str() == recipe_schema_markdown())
      << "docs/recipes.md is out of date with engine/recipe/recipe_schema.cpp; regenerate it with "
         "`ftune recipe-docs > docs/recipes.md`";
}

}  // namespace
}  // namespace ftune
