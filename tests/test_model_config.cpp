#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "engine/base/error.h"
#include "engine/model/model_config.h"
#include "engine/model/param_layout.h"

namespace ftune {
namespace {

nlohmann::json base() {
  return {{"model_type", "llama"},    {"vocab_size", 100},      {"hidden_size", 64},
          {"intermediate_size", 128}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}};
}

std::string error_of(const nlohmann::json& j) {
  try {
    parse_model_config(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, Defaults) {
  ModelConfig c = parse_model_config(base(), "cfg.json");
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_scaling.type, "default");
}

TEST(ModelConfig, Qwen2HasQkvBias) {
  auto j = base();
  j["model_type"] = "qwen2";
  ModelConfig c = parse_model_config(j, "cfg.json");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  ParamLayout lay(c);
  EXPECT_NE(lay.find("model.layers.1.self_attn.k_proj.bias"), nullptr);
  EXPECT_EQ(lay.find("model.layers.1.self_attn.o_proj.bias"), nullptr);
}

TEST(ModelConfig, ErrorsNameTheProblem) {
  auto j = base();
  j["model_type"] = "gpt2";
  EXPECT_NE(error_of(j).find("model_type 'gpt2' is not supported"), std::string::npos);
  j = base();
  j.erase("hidden_size");
  EXPECT_NE(error_of(j).find("missing required key 'hidden_size'"), std::string::npos);
  j = base();
  j["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(j).find("multiple of num_key_value_heads"), std::string::npos);
  j = base();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(error_of(j).find("'yarn' is not supported"), std::string::npos);
  j = base();
  j["hidden_act"] = "gelu";
  EXPECT_NE(error_of(j).find("hidden_act 'gelu'"), std::string::npos);
}

TEST(ModelConfig, Llama3RopeScalingBands) {
  auto j = base();
  j["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 10000.0},
                          {"factor", 8.0},           {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 32}};
  ModelConfig c = parse_model_config(j, "cfg.json");
  auto scaled = rope_inv_freq(c);
  c.rope_scaling.type = "default";
  auto plain = rope_inv_freq(c);
  ASSERT_EQ(scaled.size(), 8u);
  int kept = 0, divided = 0, blended = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    double wavelen = 2 * std::numbers::pi / plain[i];
    if (wavelen < 32.0 / 4) {
      EXPECT_FLOAT_EQ(scaled[i], plain[i]);
      ++kept;
    } else if (wavelen > 32.0 / 1) {
      EXPECT_FLOAT_EQ(scaled[i], plain[i] / 8);
      ++divided;
    } else {
      EXPECT_LT(scaled[i], plain[i]);
      EXPECT_GT(scaled[i], plain[i] / 8);
      ++blended;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
}

TEST(ParamLayout, LayersAreContiguousAndAligned) {
  ModelConfig c = parse_model_config(base(), "cfg.json");
  ParamLayout lay(c);
  size_t prev_end = 0;
  for (int l = 0; l < lay.num_layers(); ++l) {
    EXPECT_GE(lay.layer(l).begin, prev_end);
    for (const auto& e : lay.entries()) {
      EXPECT_EQ(e.offset % 16, 0u) << e.name;
      if (e.layer == l) {
        EXPECT_GE(e.offset, lay.layer(l).begin);
        EXPECT_LE(e.offset + e.count, lay.layer(l).end);
      }
    }
    prev_end = lay.layer(l).end;
  }
  EXPECT_NE(lay.head(), lay.embed());  // untied
}

}  // namespace
}  // namespace ftune
