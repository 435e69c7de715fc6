// LoRA in the model: adapter gradients against finite differences (dropout on, so its mask is
// checked too), the frozen base, merging, and the settings parser.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "engine/base/error.h"
#include "engine/model/lora.h"
#include "engine/model/model.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

LoraConfig lora_all(double dropout) {
  LoraConfig lc;
  lc.rank = 3;
  lc.alpha = 5;
  lc.dropout = dropout;
  lc.targets = parse_lora_targets({"all-linear"}, "lora.targets");
  return lc;
}

// B away from zero so every path through the adapters carries gradient.
void randomize_adapters(Model& m, uint64_t seed) {
  std::vector<float> a = m.lora_to_host();
  std::mt19937 rng{uint32_t(seed)};
  std::normal_distribution<float> nd(0.f, 0.3f);
  for (auto& x : a) x = nd(rng);
  m.lora_from_host(a);
}

class LoraGrad : public ::testing::TestWithParam<double> {};

TEST_P(LoraGrad, AdapterGradientsMatchFiniteDifferences) {
  auto be = make_cpu_backend();
  const LoraConfig lc = lora_all(GetParam());
  Model model(be.get(), testing::tiny_model_config(false), 14, true, &lc);
  model.init_random(11);
  model.init_lora(4);
  randomize_adapters(model, 9);
  EXPECT_EQ(model.grads(), nullptr) << "a frozen base has no gradient buffer";
  const std::vector<float> p = model.lora_to_host();

  Batch b = testing::tiny_packed_batch();
  ExecContext ctx;
  ctx.threads = 1;
  ctx.seed = 77;  // the dropout stream: the same for every evaluation below
  const float scale = 1.f / float(b.target_count());
  be->zero(model.lora_grads(), model.num_train_params() * sizeof(float));
  model.forward_backward(ctx, b, scale);
  std::vector<float> g(model.num_train_params());
  be->download(g.data(), model.lora_grads(), g.size() * sizeof(float));

  // The training-mode loss (dropout applied) at adapter values q; gradients from these calls
  // accumulate into a buffer nobody reads afterwards.
  auto loss_at = [&](const std::vector<float>& q) {
    model.lora_from_host(q);
    return model.forward_backward(ctx, b, scale).loss * double(scale);
  };
  auto fd = [&](const std::vector<float>& dir, double h) {
    auto shifted = [&](double t) {
      std::vector<float> q = p;
      for (size_t i = 0; i < q.size(); ++i) q[i] = float(double(p[i]) + t * double(dir[i]));
      return loss_at(q);
    };
    return (-shifted(2 * h) + 8 * shifted(h) - 8 * shifted(-h) + shifted(-2 * h)) / (12 * h);
  };
  int checked = 0;
  for (const auto& e : model.lora_layout().entries()) {
    const size_t i = e.offset + (e.count * 5 / 11);
    std::vector<float> dir(p.size(), 0.f);
    dir[i] = 1.f;
    const double num = fd(dir, 1e-2);
    EXPECT_NEAR(g[i], num, 1e-3 * std::fabs(num) + 1e-4) << e.name;
    ++checked;
  }
  EXPECT_EQ(checked, 2 * 7 * 2);  // A and B of 7 linears in 2 layers
  std::vector<float> dir = testing::random_vec(p.size(), 17);
  double ana = 0;
  for (size_t i = 0; i < p.size(); ++i) ana += double(g[i]) * dir[i];
  // The direction moves every adapter value at once: a smaller step keeps it in the linear range.
  EXPECT_NEAR(ana, fd(dir, 2e-3), 1e-3 * std::fabs(ana)) << "directional derivative";
}

INSTANTIATE_TEST_SUITE_P(NoDropoutAndDropout, LoraGrad, ::testing::Values(0.0, 0.3));

TEST(Lora, FreshAdaptersLeaveTheModelAsTheBase) {
  auto be = make_cpu_backend();
  const LoraConfig lc = lora_all(0.0);
  Model base(be.get(), testing::tiny_model_config(false), 14, false);
  Model lora(be.get(), testing::tiny_model_config(false), 14, false, &lc);
  base.init_random(11);
  lora.init_random(11);
  lora.init_lora(4);  // B = 0
  ExecContext ctx;
  Batch b = testing::tiny_packed_batch();
  EXPECT_EQ(base.logits(ctx, b), lora.logits(ctx, b));
  // A is Kaiming-uniform: bound 1/sqrt(fan_in), not all zero.
  const std::vector<float> a = lora.lora_to_host();
  const ParamEntry* qa =
      lora.lora_layout().find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  ASSERT_NE(qa, nullptr);
  EXPECT_EQ(qa->shape, (std::vector<int64_t>{3, 12}));
  float lo = 0, hi = 0;
  for (size_t i = 0; i < qa->count; ++i) {
    lo = std::min(lo, a[qa->offset + i]);
    hi = std::max(hi, a[qa->offset + i]);
  }
  EXPECT_LE(hi, 1.f / std::sqrt(12.f));
  EXPECT_GT(hi - lo, 0.2f);
}

// The memory report: a frozen base holds no gradient buffer, only the adapters' gradients.
TEST(Lora, MemoryHasNoBaseGradients) {
  auto be = make_cpu_backend();
  const LoraConfig lc = lora_all(0.0);
  Model full(be.get(), testing::tiny_model_config(false), 14, true);
  Model lora(be.get(), testing::tiny_model_config(false), 14, true, &lc);
  const ModelMemory f = full.memory(), l = lora.memory();
  EXPECT_EQ(f.gradients, full.num_params() * sizeof(float));
  EXPECT_EQ(l.gradients, lora.num_train_params() * sizeof(float));
  EXPECT_EQ(lora.grads(), nullptr);
  EXPECT_GT(l.activations, f.activations) << "the adapters' saved x·Aᵀ";
  EXPECT_GT(f.scratch, 0u);
}

TEST(Lora, MergedGivesTheSameLogits) {
  for (bool rslora : {false, true}) {
    auto be = make_cpu_backend();
    LoraConfig lc = lora_all(0.1);  // dropout must not act outside training
    lc.rslora = rslora;
    Model m(be.get(), testing::tiny_model_config(false), 14, false, &lc);
    m.init_random(11);
    randomize_adapters(m, 2);
    ExecContext ctx;
    Batch b = testing::tiny_packed_batch();
    const std::vector<float> unmerged = m.logits(ctx, b);
    m.merge_lora();
    EXPECT_FALSE(m.has_lora());
    const std::vector<float> merged = m.logits(ctx, b);
    // Only rounding differs (x(W + sBA) against xW + s(xA)B): fp32's 1e-5, which a wrong merge
    // (a scale off, a transpose) misses by orders of magnitude. 1.4e-6 was seen at -O1 (sanitizer
    // builds), under 1e-6 at -O3.
    EXPECT_LT(testing::rel_error(merged, unmerged), 1e-5) << "rslora " << rslora;
    Model plain(be.get(), testing::tiny_model_config(false), 14, false);
    plain.init_random(11);
    EXPECT_GT(testing::rel_error(plain.logits(ctx, b), unmerged), 1e-3) << "adapters mattered";
  }
}

TEST(Lora, ScaleAndTargets) {
  LoraConfig lc;
  lc.rank = 16;
  lc.alpha = 32;
  EXPECT_FLOAT_EQ(lc.scale(), 2.f);
  lc.rslora = true;
  EXPECT_FLOAT_EQ(lc.scale(), 8.f);
  auto t = parse_lora_targets({"q_proj", "down_proj"}, "lora.targets");
  EXPECT_EQ(lora_target_names(t), (std::vector<std::string>{"q_proj", "down_proj"}));
  testing::expect_error([] { parse_lora_targets({"qproj"}, "lora.targets"); },
                        {"lora.targets", "qproj", "q_proj", "all-linear"});
  testing::expect_error([] { parse_lora_targets({}, "lora.targets"); }, {"lora.targets"});
}

TEST(Lora, PeftConfigRoundTripAndRefusals) {
  LoraConfig lc = lora_all(0.05);
  lc.rslora = true;
  nlohmann::json j = peft_adapter_config(lc, "base");
  LoraConfig back = lora_config_from_peft(j, "a.json");
  EXPECT_EQ(back.rank, lc.rank);
  EXPECT_EQ(back.alpha, lc.alpha);
  EXPECT_EQ(back.rslora, true);
  EXPECT_EQ(back.targets, lc.targets);
  for (auto [key, value] :
       std::vector<std::pair<std::string, nlohmann::json>>{{"use_dora", true},
                                                           {"bias", "all"},
                                                           {"rank_pattern", {{"q_proj", 4}}},
                                                           {"modules_to_save", {"lm_head"}},
                                                           {"target_modules", ".*proj"},
                                                           {"target_modules", {"embed_tokens"}},
                                                           {"peft_type", "IA3"}}) {
    nlohmann::json bad = j;
    bad[key] = value;
    testing::expect_error([&] { lora_config_from_peft(bad, "a.json"); }, {"a.json"});
  }
}

}  // namespace
}  // namespace ftune
