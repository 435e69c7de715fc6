// config.json keys: each one ftune meets is implemented, refused with its name, or known to leave
// the math alone; sliding windows ftune's attention cannot honour are refused wherever a run could
// span them (training, eval, generation).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/model/model_config.h"
#include "engine/recipe/recipe.h"
#include "engine/train/trainer.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace ftune {
namespace {

using nlohmann::json;
using testing::expect_error;

const std::string kSrc = FTUNE_SOURCE_DIR;

json base(const std::string& type = "llama") {
  return {{"model_type", type},       {"vocab_size", 100},      {"hidden_size", 64},
          {"intermediate_size", 128}, {"num_hidden_layers", 4}, {"num_attention_heads", 4}};
}

std::vector<std::string> names(ConfigKeyUse use) {
  std::vector<std::string> out;
  for (const ConfigKey& k : config_keys())
    if (k.use == use) out.push_back(k.name);
  return out;
}

// Spelled out so that reading or refusing another key shows up here as a test change.
TEST(ConfigKeys, ReadAndRefusedListsAreThese) {
  const std::vector<std::string> read = {"model_type",
                                         "vocab_size",
                                         "hidden_size",
                                         "intermediate_size",
                                         "num_hidden_layers",
                                         "num_attention_heads",
                                         "num_key_value_heads",
                                         "head_dim",
                                         "hidden_act",
                                         "rms_norm_eps",
                                         "max_position_embeddings",
                                         "rope_theta",
                                         "rope_scaling",
                                         "rope_parameters",
                                         "original_max_position_embeddings",
                                         "tie_word_embeddings",
                                         "attention_bias",
                                         "mlp_bias",
                                         "sliding_window",
                                         "use_sliding_window",
                                         "max_window_layers",
                                         "layer_types",
                                         "attention_dropout",
                                         "initializer_range",
                                         "bos_token_id",
                                         "eos_token_id",
                                         "torch_dtype",
                                         "dtype"};
  const std::vector<std::string> refused = {"quantization_config",
                                            "partial_rotary_factor",
                                            "attn_logit_softcapping",
                                            "final_logit_softcapping",
                                            "query_pre_attn_scalar",
                                            "attention_multiplier",
                                            "embedding_multiplier",
                                            "residual_multiplier",
                                            "logits_scaling",
                                            "use_qk_norm",
                                            "qk_layernorm",
                                            "is_causal",
                                            "use_bidirectional_attention",
                                            "attention_chunk_size",
                                            "num_local_experts",
                                            "num_experts",
                                            "hidden_activation"};
  EXPECT_EQ(names(ConfigKeyUse::Read), read);
  EXPECT_EQ(names(ConfigKeyUse::Refused), refused);
  std::map<std::string, int> seen;
  for (const ConfigKey& k : config_keys())
    EXPECT_EQ(++seen[k.name], 1) << k.name << " listed twice";
}

// Every key transformers writes for a supported family is classified, in exactly one list; the
// other recorded families are refused by model_type.
TEST(ConfigKeys, EveryTransformersKeyOfTheSupportedFamiliesIsClassified) {
  const std::string path = testing::fixtures_dir() + "/config_keys.json";
  const json fx = json::parse(read_file(path));
  std::map<std::string, int> lists;
  for (const ConfigKey& k : config_keys()) ++lists[k.name];
  int supported = 0;
  for (const auto& [type, fam] : fx.at("families").items()) {
    if (!fam.at("supported").get<bool>()) {
      expect_error([&] { parse_model_config(base(type), "cfg.json"); },
                   {"model_type '" + type + "' is not supported"});
      continue;
    }
    ++supported;
    for (const auto& key : fam.at("keys"))
      EXPECT_EQ(lists[key.get<std::string>()], 1)
          << type << " key " << key << " (transformers " << fx.at("transformers_version")
          << ") is in no list of engine/model/model_config.cpp";
  }
  EXPECT_EQ(supported, 3) << "llama, mistral and qwen2 expected in " << path;
}

// A value for a Refused key other than its accepted one is an error naming the key; the accepted
// value and null pass.
TEST(ConfigKeys, RefusedKeysNameTheKey) {
  for (const ConfigKey& k : config_keys()) {
    if (k.use != ConfigKeyUse::Refused) continue;
    json accepted = *k.accepted ? json::parse(k.accepted) : json(nullptr);
    json other = accepted.is_boolean()  ? json(!accepted.get<bool>())
                 : accepted.is_string() ? json("gelu")
                 : std::string(k.name) == "quantization_config"
                     ? json{{"quant_method", "gptq"}, {"bits", 4}}
                     : json(0.5);
    json j = base();
    j[k.name] = other;
    expect_error([&] { parse_model_config(j, "cfg.json"); },
                 {std::string("cfg.json: ") + k.name + " " + other.dump(), "is not supported"});
    j[k.name] = accepted;
    EXPECT_NO_THROW(parse_model_config(j, "cfg.json")) << k.name;
    j[k.name] = nullptr;
    EXPECT_NO_THROW(parse_model_config(j, "cfg.json")) << k.name;
  }
}

TEST(ConfigKeys, MistralWindowBindsOnlyLongerRuns) {
  json j = base("mistral");
  j["sliding_window"] = 64;
  ModelConfig c = parse_model_config(j, "cfg.json");
  EXPECT_EQ(c.sliding_window, 64);
  EXPECT_EQ(c.sliding_layers, (std::vector<int64_t>{0, 1, 2, 3}));
  expect_error([&] { check_attention_window(c, 128, "train.seq_len"); },
               {"config.json sliding_window (64", "shorter than train.seq_len (128)",
                "no sliding window", "lower train.seq_len to 64 or less"});
  EXPECT_NO_THROW(check_attention_window(c, 64, "train.seq_len"));
  j["sliding_window"] = nullptr;
  EXPECT_EQ(parse_model_config(j, "cfg.json").sliding_window, 0);
  j["sliding_window"] = 0;
  expect_error([&] { parse_model_config(j, "cfg.json"); }, {"sliding_window must be positive"});
  // transformers' Llama has no window and Mistral no biases: both keys are ignored there.
  j = base("llama");
  j["sliding_window"] = 16;
  EXPECT_NO_THROW(check_attention_window(parse_model_config(j, "cfg.json"), 128, "x"));
  j = base("mistral");
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  c = parse_model_config(j, "cfg.json");
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias);
}

// transformers 5's Qwen2: the window counts only with use_sliding_window, on layers from
// max_window_layers (default 28) or those layer_types marks sliding_attention.
TEST(ConfigKeys, Qwen2WindowFollowsMaxWindowLayersAndLayerTypes) {
  auto cfg = [](json extra) {
    json j = base("qwen2");
    j["sliding_window"] = 64;
    j.update(extra);
    return parse_model_config(j, "cfg.json");
  };
  auto binds = [](const ModelConfig& c) {
    try {
      check_attention_window(c, 128, "--seq-len");
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("use_sliding_window true"), std::string::npos);
      return true;
    }
    return false;
  };
  EXPECT_FALSE(binds(cfg({{"use_sliding_window", false}, {"max_window_layers", 0}})));
  EXPECT_FALSE(binds(cfg({{"use_sliding_window", true}})));  // 28 >= 4 layers
  EXPECT_FALSE(binds(cfg({{"use_sliding_window", true}, {"max_window_layers", 4}})));
  ModelConfig c = cfg({{"use_sliding_window", true}, {"max_window_layers", 3}});
  EXPECT_EQ(c.sliding_layers, std::vector<int64_t>{3});
  EXPECT_TRUE(binds(c));
  expect_error([&] { check_attention_window(c, 65, "--seq-len"); },
               {"1 of 4 layers (from layer 3)", "--seq-len (65)", "to 64 or less"});
  EXPECT_NO_THROW(check_attention_window(c, 64, "--seq-len"));
  EXPECT_TRUE(binds(cfg({{"use_sliding_window", true}, {"max_window_layers", 0}})));

  // Explicit layer_types win over max_window_layers.
  const json full = "full_attention", slide = "sliding_attention";
  c = cfg({{"use_sliding_window", true},
           {"max_window_layers", 0},
           {"layer_types", {full, full, full, full}}});
  EXPECT_FALSE(binds(c));
  c = cfg({{"use_sliding_window", true},
           {"max_window_layers", 28},
           {"layer_types", {full, slide, full, slide}}});
  EXPECT_EQ(c.sliding_layers, (std::vector<int64_t>{1, 3}));
  EXPECT_TRUE(binds(c));
  expect_error(
      [&] {
        cfg({{"use_sliding_window", false}, {"layer_types", {full, slide, full, full}}});
      },
      {"layer_types marks layer 1 sliding_attention"});
  expect_error(
      [&] {
        cfg({{"layer_types", {full, "chunked_attention", full, full}}});
      },
      {"layer_types entry \"chunked_attention\" (layer 1) is not supported"});
  expect_error([&] { cfg({{"layer_types", {full}}}); }, {"one attention kind per layer (4)"});
}

TEST(ConfigKeys, AttentionDropoutRefusedForTrainingOnly) {
  json j = base();
  j["attention_dropout"] = 0.1;
  ModelConfig c = parse_model_config(j, "cfg.json");
  expect_error([&] { check_trainable(c); }, {"attention_dropout (0.1)", "in training"});
  j["attention_dropout"] = 0.0;
  EXPECT_NO_THROW(check_trainable(parse_model_config(j, "cfg.json")));
}

TEST(ConfigKeys, RopeParametersOutsideTheImplementedOnesAreRefused) {
  json j = base();
  j["rope_parameters"] = {{"rope_type", "default"}, {"partial_rotary_factor", 0.5}};
  expect_error([&] { parse_model_config(j, "cfg.json"); }, {"partial_rotary_factor 0.5"});
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}}},
                          {"sliding_attention", {{"rope_type", "default"}}}};
  expect_error([&] { parse_model_config(j, "cfg.json"); }, {"rope parameters per layer type"});
  // llama3 without original_max_position_embeddings: transformers 5 takes
  // max_position_embeddings; a top-level value overrides the rope parameters'.
  j["max_position_embeddings"] = 4096;
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  EXPECT_EQ(parse_model_config(j, "cfg.json").rope_scaling.original_max_position_embeddings, 4096);
  j["rope_parameters"]["original_max_position_embeddings"] = 2048;
  EXPECT_EQ(parse_model_config(j, "cfg.json").rope_scaling.original_max_position_embeddings, 2048);
  j["original_max_position_embeddings"] = 1024;
  EXPECT_EQ(parse_model_config(j, "cfg.json").rope_scaling.original_max_position_embeddings, 1024);
}

// The quickstart base as a Mistral with `window`, in a fresh directory (tokenizer copied).
std::string mistral_dir(int64_t window) {
  const std::string dir = testing::make_temp_dir("mistral");
  const std::string qs = kSrc + "/configs/models/quickstart-base";
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(qs + "/" + f, dir + "/" + f);
  json j = json::parse(read_file(qs + "/config.json"));
  j["model_type"] = "mistral";
  j["architectures"] = {"MistralForCausalLM"};
  j["sliding_window"] = window;
  std::ofstream(dir + "/config.json") << j.dump(1);
  return dir;
}

Recipe recipe(const std::string& model, const std::string& out, int64_t seq) {
  const std::string yaml = "model:\n  path: " + model +
                           "\n  init: random\n"
                           "data:\n  train: " +
                           kSrc +
                           "/data/quickstart/train.jsonl\n"
                           "train:\n  seq_len: " +
                           std::to_string(seq) +
                           "\n  micro_batch_size: 1\n  max_steps: 1\n"
                           "eval:\n  max_batches: 1\n"
                           "output_dir: " +
                           out + "\nthreads: 2\n";
  return load_recipe_text(yaml, "test.yaml", kSrc, {});
}

// Mistral, sliding_window 64 vs 128-token runs: refused for training, eval and generation alike;
// a window as long as the run is accepted by each.
TEST(ConfigKeys, MistralWindowRefusedForTrainEvalAndGenerate) {
  TrainOptions quiet;
  quiet.quiet = true;
  expect_error(
      [&] {
        run_training(recipe(mistral_dir(64), testing::make_temp_dir("w64") + "/run", 128), quiet);
      },
      {"config.json sliding_window (64", "train.seq_len (128)", "lower train.seq_len to 64"});

  // A model with weights: one random-init step at the window's length, exported.
  const std::string run = testing::make_temp_dir("w128") + "/run";
  run_training(recipe(mistral_dir(128), run, 128), quiet);
  const std::string model = run + "/model";
  ASSERT_TRUE(fs::exists(model + "/config.json"));
  // The same weights, their config.json saying sliding_window 64.
  const std::string model64 = testing::make_temp_dir("w64m") + "/model";
  fs::copy(model, model64);
  json j = json::parse(read_file(model64 + "/config.json"));
  j["sliding_window"] = 64;
  std::ofstream(model64 + "/config.json", std::ios::trunc) << j.dump(1);

  const std::string val = " " + kSrc + "/data/quickstart/val.jsonl --seq-len 128 --threads 2";
  testing::CliRun r = testing::ftune("eval " + model + val);
  EXPECT_EQ(r.code, 0) << r.out;
  r = testing::ftune("eval " + model64 + val);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("sliding_window (64, on every layer) is shorter than --seq-len (128)"),
            std::string::npos)
      << r.out;

  const std::string prompt = " -p 'Plant: Tomato' --threads 2 ";
  r = testing::ftune("generate " + model + prompt + "-n 100");
  EXPECT_EQ(r.code, 0) << r.out;
  r = testing::ftune("generate " + model64 + prompt + "-n 8");
  EXPECT_EQ(r.code, 0) << r.out;
  // The context window caps what attention spans: 64 tokens fit the window however many are made.
  r = testing::ftune("generate " + model64 + prompt + "-n 100 --context 64");
  EXPECT_EQ(r.code, 0) << r.out;
  r = testing::ftune("generate " + model64 + prompt + "-n 100");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("sliding_window (64, on every layer) is shorter than the generation "
                       "context (prompt + max new tokens)"),
            std::string::npos)
      << r.out;
}

}  // namespace
}  // namespace ftune
