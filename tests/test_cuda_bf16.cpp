// bf16 mixed precision in the CUDA backend (Backend::set_bf16_compute, set_weight_mirror): linear
// layers, the LM head and attention with bf16 operands and fp32 accumulation against the CPU
// backend's fp32, on fresh random inputs with odd sizes, outputs poisoned with NaN first,
// ||gpu - cpu|| / ||cpu|| <= 1e-2. Also: head dims without a bf16 kernel fall back to fp32 exactly;
// the bf16 weight copy follows every write (upload, AdamW's fused refresh) and is forgotten with
// its buffer; a tiny Llama with head_dim 64 gives the CPU's loss and gradients to bf16 accuracy,
// bitwise reproducibly. Every test skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/model/model.h"
#include "engine/model/model_config.h"
#include "tests/cuda_vs_cpu.h"
#include "tests/linear_cases.h"
#include "tests/test_util.h"
#ifdef FTUNE_HAVE_CUDA
#include "cuda/cuda_backend.h"
#include "cuda/cuda_device.h"
#endif

namespace ftune {
namespace {

#ifdef FTUNE_HAVE_CUDA

using testing::bitwise_equal;
using testing::get;
using testing::nan_vec;
using testing::put;
using testing::random_ids;
using testing::random_vec;
using testing::rel_error;

// bf16 keeps 8 significant bits: each operand is off by up to 2^-9 relatively, and fp32
// accumulation adds nothing that matters, so products land around 3e-3 of their norm.
constexpr double kBf16Tol = 1e-2;
constexpr double kFp32Tol = 1e-5;

// The GPU in bf16 against the CPU in fp32 (tests/cuda_vs_cpu.h).
class CudaBf16 : public testing::CudaVsCpu<true> {};

using Lin = testing::LinearShape;
const std::vector<Lin> kLinears = {
    {1, 1, 1}, {7, 33, 65}, {130, 257, 129}, {64, 512, 384}, {300, 96, 1001}};

TEST_F(CudaBf16, LinearForwardWithAndWithoutBias) {
  testing::check_linear_forward(
      ctx_, kLinears, kBf16Tol,
      [&](auto run, double tol, const std::string& what) { compare(run, tol, what); });
}

TEST_F(CudaBf16, LinearBackwardEveryNullAndAccumulateCombination) {
  testing::check_linear_backward(
      ctx_, kLinears, kBf16Tol, testing::DwStart::kZero,
      [&](auto run, double tol, const std::string& what) { compare(run, tol, what); },
      [](auto&&...) {});
}

TEST_F(CudaBf16, LinearIsBitwiseReproducible) {
  const Lin l{130, 257, 129};
  const auto x = random_vec(size_t(l.n * l.in), 1), W = random_vec(size_t(l.out * l.in), 2);
  auto run = [&] {
    auto dx = put(gpu(), x), dW = put(gpu(), W);
    auto y = put(gpu(), nan_vec(size_t(l.n * l.out)));
    gpu()->linear_forward(ctx_, dx.get(), dW.get(), nullptr, y.get(), l.n, l.in, l.out);
    return get(gpu(), y);
  };
  const auto a = run();
  EXPECT_TRUE(bitwise_equal(a, run()));
  // And it really is bf16: the exact fp32 product differs by far more than fp32 rounding.
  std::vector<float> y = nan_vec(size_t(l.n * l.out));
  auto dx = put(cpu(), x), dW = put(cpu(), W), dy = put(cpu(), y);
  cpu()->linear_forward(ctx_, dx.get(), dW.get(), nullptr, dy.get(), l.n, l.in, l.out);
  EXPECT_GT(rel_error(a, get(cpu(), dy)), 1e-4);
}

// ---- LM head ----

struct HeadCase {
  int64_t n, d, vocab;
};
// The last one needs several chunks at bf16's chunk size (4 x 2^25 logits).
const HeadCase kHeads[] = {{1, 8, 5}, {37, 33, 1001}, {300, 64, 3001}, {2700, 24, 50021}};

TEST_F(CudaBf16, LmHeadLossAndGradients) {
  uint64_t seed = 50;
  for (const HeadCase& c : kHeads) {
    const auto hidden = random_vec(size_t(c.n * c.d), ++seed, -2.f, 2.f);
    const auto W = random_vec(size_t(c.vocab * c.d), ++seed);
    auto targets = random_ids(size_t(c.n), int32_t(c.vocab), ++seed);
    for (size_t i = 3; i < targets.size(); i += 10) targets[i] = kIgnoreIndex;
    for (bool with_dW : {true, false}) {
      double loss[2] = {0, 0};
      int64_t tokens[2] = {0, 0};
      auto run = [&](Backend* be) {
        auto h = put(be, hidden), w = put(be, W);
        auto t = put(be, targets);
        auto dh = put(be, nan_vec(hidden.size()));
        auto dw = put(be, std::vector<float>(W.size(), 0.f));
        const LossSum ls = be->lm_head_loss(ctx_, h.get(), w.get(), t.get(), c.n, c.d, c.vocab,
                                            0.37f, dh.get(), with_dW ? dw.get() : nullptr);
        loss[be == gpu()] = ls.loss;
        tokens[be == gpu()] = ls.tokens;
        std::vector<float> r = get(be, dh);
        if (with_dW) {
          const auto g = get(be, dw);
          r.insert(r.end(), g.begin(), g.end());
        }
        return r;
      };
      const std::string what = "lm_head n=" + std::to_string(c.n) + " d=" + std::to_string(c.d) +
                               " V=" + std::to_string(c.vocab) + " dW=" + std::to_string(with_dW);
      compare(run, kBf16Tol, what);
      EXPECT_EQ(tokens[1], tokens[0]) << what;
      EXPECT_NEAR(loss[1], loss[0], kBf16Tol * std::fabs(loss[0])) << what;
    }
  }
}

// ---- attention ----

TEST_F(CudaBf16, AttentionThroughTheBackend) {
  struct AttnCase {
    int hq, hkv, d;
    std::vector<int32_t> docs;
    double tol;  // head dims without a bf16 kernel run the fp32 one: fp32 accuracy
  };
  std::vector<int32_t> many = {0};
  for (int i = 1; i <= 30; ++i) many.push_back(many.back() + 1 + (i * 7) % 11);
  const AttnCase cases[] = {{4, 2, 64, {0, 5, 20, 37}, kBf16Tol},
                            {2, 1, 128, {0, 37}, kBf16Tol},
                            {8, 1, 64, many, kBf16Tol},
                            {4, 4, 128, {0, 70, 71, 200}, kBf16Tol},
                            {3, 3, 32, {0, 9, 30}, kFp32Tol}};
  uint64_t seed = 90;
  for (const AttnCase& ac : cases) {
    AttentionShape s;
    s.tokens = ac.docs.back();
    s.q_heads = ac.hq;
    s.kv_heads = ac.hkv;
    s.head_dim = ac.d;
    s.doc_offsets = ac.docs.data();
    s.n_docs = int(ac.docs.size()) - 1;
    s.scale = float(1.0 / std::sqrt(double(ac.d)));
    const size_t nq = size_t(s.tokens * ac.hq * ac.d), nkv = size_t(s.tokens * ac.hkv * ac.d);
    const auto q = random_vec(nq, ++seed), k = random_vec(nkv, ++seed), v = random_vec(nkv, ++seed);
    const auto dout = random_vec(nq, ++seed);
    const std::string what = "attention hq=" + std::to_string(ac.hq) +
                             " hkv=" + std::to_string(ac.hkv) + " d=" + std::to_string(ac.d) +
                             " docs=" + std::to_string(s.n_docs);
    compare(
        [&](Backend* be) {
          auto dq_ = put(be, q), dk_ = put(be, k), dv_ = put(be, v), ddo = put(be, dout);
          auto out = put(be, nan_vec(nq));
          auto lse = put(be, nan_vec(size_t(s.tokens * ac.hq)));
          be->attention_forward(ctx_, s, dq_.get(), dk_.get(), dv_.get(), out.get(), lse.get());
          auto dq = put(be, nan_vec(nq)), dk = put(be, nan_vec(nkv)), dv = put(be, nan_vec(nkv));
          be->attention_backward(ctx_, s, ddo.get(), dq_.get(), dk_.get(), dv_.get(), out.get(),
                                 lse.get(), dq.get(), dk.get(), dv.get());
          std::vector<float> r;
          for (const auto& t : {get(be, out), get(be, lse), get(be, dq), get(be, dk), get(be, dv)})
            r.insert(r.end(), t.begin(), t.end());
          return r;
        },
        ac.tol, what);
  }
}

// ---- the bf16 weight copy ----

// y = x W^T on a registered weight buffer, after the weights changed in each way the backend can
// see: the products must use the new weights every time.
TEST_F(CudaBf16, WeightCopyFollowsEveryWrite) {
  const Lin l{33, 64, 48};
  const size_t nw = size_t(l.out * l.in);
  // The weights sit inside a larger registered buffer, at an offset, as in the flat layout.
  const size_t offset = 40, total = offset + nw + 24;
  auto w0 = random_vec(total, 7);
  const auto x = random_vec(size_t(l.n * l.in), 8);
  auto buf = put(gpu(), w0);
  gpu()->set_weight_mirror(buf.get(), total);
  auto dx = put(gpu(), x);
  auto y = put(gpu(), nan_vec(size_t(l.n * l.out)));
  auto expect_uses = [&](const std::vector<float>& w, const std::string& what) {
    gpu()->linear_forward(ctx_, dx.get(), buf.get() + offset, nullptr, y.get(), l.n, l.in, l.out);
    const std::vector<float> wt(w.begin() + ptrdiff_t(offset), w.begin() + ptrdiff_t(offset + nw));
    auto cx = put(cpu(), x), cw = put(cpu(), wt);
    auto cy = put(cpu(), nan_vec(size_t(l.n * l.out)));
    cpu()->linear_forward(ctx_, cx.get(), cw.get(), nullptr, cy.get(), l.n, l.in, l.out);
    const double e = rel_error(get(gpu(), y), get(cpu(), cy));
    EXPECT_LE(e, kBf16Tol) << what;
    std::printf("  %-60s rel error %.2e\n", what.c_str(), e);
  };
  expect_uses(w0, "first use");

  // An upload into the middle of the buffer (a checkpoint load, a rollback).
  auto w1 = w0;
  for (size_t i = offset; i < offset + nw; ++i) w1[i] = -2.f * w0[i];
  gpu()->upload(buf.get() + offset, w1.data() + offset, nw * sizeof(float));
  expect_uses(w1, "after upload");

  // AdamW over the whole buffer refreshes the copy in the same pass: a big step so stale weights
  // would be far off.
  const auto g = random_vec(total, 9);
  auto dg = put(gpu(), g);
  DeviceBuffer<float> m(gpu(), total), v(gpu(), total);
  ParamSpan span{0, total, 0.f};
  AdamWHyper h;
  h.lr = 0.5f;
  gpu()->adamw_step(ctx_, buf.get(), dg.get(), m.get(), v.get(), &span, 1, h);
  expect_uses(get(gpu(), buf), "after adamw_step");

  // A kernel writing into the range (scale_inplace here) marks the copy stale too.
  gpu()->scale_inplace(ctx_, buf.get() + offset, 3.f, nw);
  expect_uses(get(gpu(), buf), "after scale_inplace");

  // Forgetting it (and freeing the buffer with it registered) leaves the backend usable.
  gpu()->set_weight_mirror(nullptr, 0);
  expect_uses(get(gpu(), buf), "after forgetting the copy");
  gpu()->set_weight_mirror(buf.get(), total);
  buf.reset();
  auto other = put(gpu(), w0);
  gpu()->linear_forward(ctx_, dx.get(), other.get() + offset, nullptr, y.get(), l.n, l.in, l.out);
  for (float f : get(gpu(), y)) ASSERT_TRUE(std::isfinite(f));
}

// AdamW with the copy registered updates the fp32 master weights exactly as without it.
TEST_F(CudaBf16, AdamWWithTheCopyMatchesTheCpu) {
  const size_t n = 1003;
  const auto p0 = random_vec(n, 11), g = random_vec(n, 12);
  auto run = [&](Backend* be) {
    auto p = put(be, p0), dg = put(be, g);
    DeviceBuffer<float> m(be, n), v(be, n);
    be->set_weight_mirror(p.get(), n);
    const ParamSpan spans[] = {{0, 500, 0.1f}, {600, 403, 0.f}};
    AdamWHyper h;
    h.lr = 1e-2f;
    for (int64_t s = 1; s <= 3; ++s) {
      h.step = s;
      be->adamw_step(ctx_, p.get(), dg.get(), m.get(), v.get(), spans, 2, h);
    }
    auto r = get(be, p);
    be->set_weight_mirror(nullptr, 0);
    return r;
  };
  compare(run, kFp32Tol, "adamw fp32 masters with the bf16 copy");
}

// ---- a whole model ----

ModelConfig bf16_model_config() {
  nlohmann::json j = {
      {"model_type", "llama"},        {"vocab_size", 97},         {"hidden_size", 128},
      {"intermediate_size", 176},     {"num_hidden_layers", 2},   {"num_attention_heads", 2},
      {"num_key_value_heads", 1},     {"head_dim", 64},           {"max_position_embeddings", 64},
      {"rms_norm_eps", 1e-5},         {"rope_theta", 10000.0},    {"attention_bias", true},
      {"tie_word_embeddings", false}, {"initializer_range", 0.05}};
  return parse_model_config(j, "bf16-test");
}

TEST_F(CudaBf16, TinyLlamaMatchesCpuAndIsReproducible) {
  const ModelConfig mcfg = bf16_model_config();
  Batch b;
  b.rows = 2;
  b.seq = 29;
  b.ids = random_ids(58, 97, 3);
  b.targets = random_ids(58, 97, 4);
  for (size_t i = 5; i < b.targets.size(); i += 9) b.targets[i] = kIgnoreIndex;
  b = Batch::from_rows(b.rows, b.seq, b.ids, b.targets);
  Model mc(cpu(), mcfg, 58, true);
  Model mg(gpu(), mcfg, 58, true);
  mc.init_random(5);
  mg.params_from_host(mc.params_to_host());
  gpu()->set_weight_mirror(mg.params(), mg.num_params());

  const float scale = 1.f / float(b.target_count());
  cpu()->zero(mc.grads(), mc.num_params() * sizeof(float));
  gpu()->zero(mg.grads(), mg.num_params() * sizeof(float));
  const LossSum lc = mc.forward_backward(ctx_, b, scale);
  const LossSum lg = mg.forward_backward(ctx_, b, scale);
  EXPECT_EQ(lg.tokens, lc.tokens);
  EXPECT_NEAR(lg.loss, lc.loss, kBf16Tol * std::fabs(lc.loss));
  std::printf("  loss cpu fp32 %.6f, gpu bf16 %.6f\n", lc.loss / double(lc.tokens),
              lg.loss / double(lg.tokens));
  std::vector<float> gc(mc.num_params()), gg(mg.num_params());
  cpu()->download(gc.data(), mc.grads(), gc.size() * sizeof(float));
  gpu()->download(gg.data(), mg.grads(), gg.size() * sizeof(float));
  // Gradients pass back through every layer's bf16 products: a few times one product's error.
  const double e = rel_error(gg, gc);
  std::printf("  all gradients rel error %.2e\n", e);
  EXPECT_LE(e, 3e-2);

  gpu()->zero(mg.grads(), mg.num_params() * sizeof(float));
  const LossSum again = mg.forward_backward(ctx_, b, scale);
  EXPECT_EQ(std::memcmp(&again.loss, &lg.loss, sizeof(double)), 0);
  std::vector<float> gg2(gg.size());
  gpu()->download(gg2.data(), mg.grads(), gg2.size() * sizeof(float));
  EXPECT_TRUE(bitwise_equal(gg2, gg));
  gpu()->set_weight_mirror(nullptr, 0);
}

#endif  // FTUNE_HAVE_CUDA

}  // namespace
}  // namespace ftune
