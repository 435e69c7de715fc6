// The whole decoder's backward against finite differences of its forward, on a tiny model with
// every optional piece switched on (GQA, q/k/v/o and MLP biases, untied head, llama3 RoPE,
// several documents per row).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "engine/base/error.h"
#include "engine/model/model.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

class ModelGrad : public ::testing::TestWithParam<bool> {};

TEST_P(ModelGrad, BackwardMatchesFiniteDifferences) {
  auto be = make_cpu_backend();
  Model model(be.get(), testing::tiny_model_config(GetParam()), 14, true);
  model.init_random(11);
  // Norm weights and biases away from their 1/0 init so their gradients are exercised.
  std::vector<float> p = model.params_to_host();
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 0.2f);
  for (const auto& e : model.layout().entries())
    if (e.kind == ParamKind::Norm || e.kind == ParamKind::Bias)
      for (size_t i = 0; i < e.count; ++i) p[e.offset + i] += nd(rng);
  model.params_from_host(p);

  Batch b = testing::tiny_packed_batch();
  ExecContext ctx;
  ctx.threads = 1;
  const float scale = 1.f / float(b.target_count());
  be->zero(model.grads(), model.num_params() * sizeof(float));
  LossSum ls = model.forward_backward(ctx, b, scale);
  ASSERT_TRUE(std::isfinite(ls.loss));
  std::vector<float> g(model.num_params());
  be->download(g.data(), model.grads(), g.size() * sizeof(float));

  auto loss_at = [&](const std::vector<float>& params) {
    model.params_from_host(params);
    return model.forward_loss(ctx, b).loss * double(scale);
  };
  // Fourth-order central difference keeps truncation error far below fp32 forward noise.
  auto fd = [&](const std::vector<float>& dir, double h) {
    auto shifted = [&](double t) {
      std::vector<float> q = p;
      for (size_t i = 0; i < q.size(); ++i) q[i] = float(double(p[i]) + t * double(dir[i]));
      return loss_at(q);
    };
    return (-shifted(2 * h) + 8 * shifted(h) - 8 * shifted(-h) + shifted(-2 * h)) / (12 * h);
  };

  // One coordinate from every tensor.
  int checked = 0;
  for (const auto& e : model.layout().entries()) {
    size_t i = e.offset + (e.count * 7 / 13);
    std::vector<float> dir(p.size(), 0.f);
    dir[i] = 1.f;
    double num = fd(dir, 1e-2);
    double ana = g[i];
    EXPECT_NEAR(ana, num, 1e-3 * std::fabs(num) + 1e-4) << e.name << " index " << i - e.offset;
    ++checked;
  }
  EXPECT_GE(checked, 20);

  // A random direction over all parameters: the directional derivative g·u.
  std::vector<float> dir = testing::random_vec(p.size(), 17);
  double ana = 0;
  for (size_t i = 0; i < p.size(); ++i) ana += double(g[i]) * dir[i];
  double num = fd(dir, 1e-2);
  EXPECT_NEAR(ana, num, 1e-3 * std::fabs(num)) << "directional derivative";
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, ModelGrad, ::testing::Values(false, true));

TEST(Model, DocumentsAreIndependent) {
  auto be = make_cpu_backend();
  Model model(be.get(), testing::tiny_model_config(false), 14, false);
  model.init_random(2);
  ExecContext ctx;
  Batch b = testing::tiny_packed_batch();
  std::vector<float> a = model.logits(ctx, b);
  b.ids[4] = (b.ids[4] + 1) % 23;  // inside row 0's second document
  std::vector<float> c = model.logits(ctx, b);
  const size_t V = 23;
  for (size_t i = 0; i < 3 * V; ++i) ASSERT_EQ(a[i], c[i]) << "first document changed";
  for (size_t i = 7 * V; i < 14 * V; ++i) ASSERT_EQ(a[i], c[i]) << "other row changed";
  double diff = 0;
  for (size_t i = 4 * V; i < 7 * V; ++i) diff += std::fabs(a[i] - c[i]);
  EXPECT_GT(diff, 0.0);
}

TEST(Model, GradientsAccumulateAcrossCalls) {
  auto be = make_cpu_backend();
  Model model(be.get(), testing::tiny_model_config(true), 14, true);
  model.init_random(4);
  ExecContext ctx;
  Batch b = testing::tiny_packed_batch();
  be->zero(model.grads(), model.num_params() * sizeof(float));
  model.forward_backward(ctx, b, 0.5f);
  std::vector<float> once(model.num_params());
  be->download(once.data(), model.grads(), once.size() * 4);
  model.forward_backward(ctx, b, 0.5f);
  std::vector<float> twice(model.num_params());
  be->download(twice.data(), model.grads(), twice.size() * 4);
  for (auto& x : once) x *= 2;
  EXPECT_LT(testing::rel_error(twice, once), 1e-6);
}

TEST(Model, RejectsOutOfVocabularyTokens) {
  auto be = make_cpu_backend();
  Model model(be.get(), testing::tiny_model_config(true), 14, false);
  Batch b = testing::tiny_packed_batch();
  b.ids[3] = 23;
  ExecContext ctx;
  try {
    model.forward_loss(ctx, b);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 23"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ftune

namespace ftune {
namespace {

// Recomputation changes what is kept, never the arithmetic: gradients are bitwise those of a
// model that keeps everything (also with LoRA and dropout, whose mask is recomputed), and the
// saved activations shrink.
TEST(ModelRecompute, GradientsAreBitwiseIdentical) {
  for (bool with_lora : {false, true}) {
    LoraConfig lc;
    lc.rank = 2;
    lc.dropout = 0.2;
    lc.targets = parse_lora_targets({"all-linear"}, "t");
    auto be = make_cpu_backend();
    std::vector<float> ref_grads;
    size_t ref_acts = 0;
    for (Recompute rc : {Recompute::None, Recompute::Mlp, Recompute::Full}) {
      SCOPED_TRACE(::testing::Message() << "lora " << with_lora << " recompute " << int(rc));
      Model m(be.get(), testing::tiny_model_config(false), 14, true, with_lora ? &lc : nullptr, rc);
      m.init_random(11);
      if (with_lora) {
        m.init_lora(3);
        std::vector<float> ad = m.lora_to_host();
        for (size_t i = 0; i < ad.size(); ++i) ad[i] += 0.01f * float(i % 7);
        m.lora_from_host(ad);
      }
      ExecContext ctx;
      ctx.seed = 5;
      Batch b = testing::tiny_packed_batch();
      be->zero(m.train_grads(), m.num_train_params() * sizeof(float));
      m.forward_backward(ctx, b, 0.1f);
      std::vector<float> g(m.num_train_params());
      be->download(g.data(), m.train_grads(), g.size() * sizeof(float));
      if (rc == Recompute::None) {
        ref_grads = g;
        ref_acts = m.memory().activations;
      } else {
        EXPECT_TRUE(testing::bitwise_equal(g, ref_grads));
        EXPECT_LT(m.memory().activations, ref_acts);
      }
    }
  }
  EXPECT_THROW(parse_recompute("some"), Error);
}

}  // namespace
}  // namespace ftune
