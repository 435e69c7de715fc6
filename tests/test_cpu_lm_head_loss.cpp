// Fused LM head + cross-entropy: the scalar reference against analytic values and finite
// differences, then the chunked fp32 op against the reference in double.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cpu/reference_lm_head_loss.h"
#include "engine/base/error.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

using testing::kF32Unit;
using testing::random_vec;
using testing::rel_error;
using testing::to_double;

const float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Problem {
  int64_t n, d, vocab;
  std::vector<float> hidden, W;
  std::vector<int32_t> targets;
  float grad_scale;
};

// Every fourth token ignored; hidden spread wide enough that the softmax rows are peaked.
Problem make_problem(int64_t n, int64_t d, int64_t vocab, uint64_t seed, float spread = 3.f) {
  Problem p;
  p.n = n;
  p.d = d;
  p.vocab = vocab;
  p.hidden = random_vec(size_t(n * d), seed, -spread, spread);
  p.W = random_vec(size_t(vocab * d), seed + 1);
  p.targets.resize(size_t(n));
  p.grad_scale = 0.37f;
  for (int64_t i = 0; i < n; ++i) {
    p.targets[size_t(i)] = i % 4 == 2 ? kIgnoreIndex : int32_t((i * 7919 + seed) % vocab);
  }
  return p;
}

struct Result {
  LossSum loss;
  std::vector<float> dhidden, dW;
};

// The fast op with dhidden poisoned and dW starting from dw_init (to check +=).
Result run_fast(const Problem& p, int threads, int64_t chunk, const std::vector<float>& dw_init) {
  Result r{{}, std::vector<float>(size_t(p.n * p.d), kNaN), dw_init};
  r.loss = cpu::lm_head_loss(threads, p.hidden.data(), p.W.data(), p.targets.data(), p.n, p.d,
                             p.vocab, p.grad_scale, r.dhidden.data(), r.dW.data(), chunk);
  return r;
}

// How far two fp32 runs may drift apart when their logits GEMMs differ in rounding (other row
// counts per GEMM, another thread count or OpenBLAS core: not bitwise, see docs/reliability.md).
// Per token i let S_i = max_j sum_k |h_ik W_jk| and R_i the range of its logits. An fp32 logit is
// within d*u*S_i of exact in any order, so two runs' logits differ by <= 2*d*u*S_i and the token's
// lse(z) - z_t by twice that; each run's softmax sum (vector exp ~1 ulp, the shift x - max
// rounded relative to R_i, fp32 partials of <= 64 terms) adds (2 + R_i + 64) u.
struct Drift {
  double loss = 0;     // absolute, on LossSum::loss
  double dlogits = 0;  // relative, on any token's dlogits row (one more rounding: the 1/sum scale)
  // Relative (norm) bound on a gradient that a GEMM of reduction length K forms from dlogits:
  // K*u per run on top of the dlogits' own drift.
  double grad(int64_t K) const { return dlogits + 2.0 * double(K) * kF32Unit; }
};

Drift drift_bound(const Problem& p) {
  Drift b;
  for (int64_t i = 0; i < p.n; ++i) {
    if (p.targets[size_t(i)] == kIgnoreIndex) continue;
    double s = 0, lo = INFINITY, hi = -INFINITY;
    for (int64_t j = 0; j < p.vocab; ++j) {
      double z = 0, a = 0;
      for (int64_t k = 0; k < p.d; ++k) {
        const double t = double(p.hidden[size_t(i * p.d + k)]) * double(p.W[size_t(j * p.d + k)]);
        z += t;
        a += std::fabs(t);
      }
      s = std::max(s, a);
      lo = std::min(lo, z);
      hi = std::max(hi, z);
    }
    const double token = 4.0 * double(p.d) * s + 2.0 * (2.0 + (hi - lo) + 64.0);
    b.loss += token * kF32Unit;
    b.dlogits = std::max(b.dlogits, (token + 2.0) * kF32Unit);
  }
  return b;
}

double scaled_loss(const Problem& p, const std::vector<double>& hidden,
                   const std::vector<double>& W) {
  const LossSum l = ref::lm_head_loss<double>(hidden.data(), W.data(), p.targets.data(), p.n, p.d,
                                              p.vocab, p.grad_scale, nullptr, nullptr);
  return l.loss * p.grad_scale;
}

std::vector<double> numeric_grad(const Problem& p, std::vector<double>* x,
                                 const std::vector<double>& hidden, const std::vector<double>& W) {
  const double h = 1e-5;
  std::vector<double> g(x->size());
  for (size_t i = 0; i < x->size(); ++i) {
    const double keep = (*x)[i];
    (*x)[i] = keep + h;
    const double plus = scaled_loss(p, hidden, W);
    (*x)[i] = keep - h;
    const double minus = scaled_loss(p, hidden, W);
    (*x)[i] = keep;
    g[i] = (plus - minus) / (2 * h);
  }
  return g;
}

TEST(ReferenceLmHeadLoss, AnalyticCases) {
  // A zero head gives uniform logits: every counted token costs log(V) and its dlogits are
  // grad_scale * (1/V - onehot), so dhidden = 0 and dW row c = sum over tokens of that times h.
  const int64_t n = 3, d = 2, vocab = 5;
  const std::vector<double> hidden = {1, 2, 3, 4, 5, 6};
  const std::vector<double> W(size_t(vocab * d), 0.0);
  const std::vector<int32_t> targets = {4, kIgnoreIndex, 0};
  std::vector<double> dhidden(size_t(n * d), 7.0), dW(size_t(vocab * d), 1.0);
  const LossSum l = ref::lm_head_loss<double>(hidden.data(), W.data(), targets.data(), n, d, vocab,
                                              2.0, dhidden.data(), dW.data());
  EXPECT_EQ(l.tokens, 2);
  EXPECT_NEAR(l.loss, 2 * std::log(5.0), 1e-14);
  for (double x : dhidden) EXPECT_EQ(x, 0.0);
  for (int64_t c = 0; c < vocab; ++c) {
    for (int64_t k = 0; k < d; ++k) {
      double expect = 1.0;  // the += base
      for (int64_t i : {0, 2}) {
        expect += 2.0 * (0.2 - (c == targets[size_t(i)] ? 1.0 : 0.0)) * hidden[size_t(i * d + k)];
      }
      EXPECT_NEAR(dW[size_t(c * d + k)], expect, 1e-14) << c << "," << k;
    }
  }
  // Two classes, d = 1: logits (h*w0, h*w1), loss = log(1 + e^(l1 - l0)) for target 0.
  const std::vector<double> h1 = {1.5}, w1 = {0.4, -1.2};
  const std::vector<int32_t> t1 = {0};
  const LossSum l1 =
      ref::lm_head_loss<double>(h1.data(), w1.data(), t1.data(), 1, 1, 2, 1.0, nullptr, nullptr);
  EXPECT_NEAR(l1.loss, std::log1p(std::exp(1.5 * (-1.2 - 0.4))), 1e-14);
}

TEST(ReferenceLmHeadLoss, GradientsMatchFiniteDifferences) {
  Problem p = make_problem(7, 5, 11, 3, 1.f);
  std::vector<double> hidden = to_double(p.hidden), W = to_double(p.W);
  std::vector<double> dhidden(hidden.size()), dW(W.size(), 0.0);
  ref::lm_head_loss<double>(hidden.data(), W.data(), p.targets.data(), p.n, p.d, p.vocab,
                            p.grad_scale, dhidden.data(), dW.data());
  EXPECT_LE(rel_error(dhidden, numeric_grad(p, &hidden, hidden, W)), 1e-6);
  EXPECT_LE(rel_error(dW, numeric_grad(p, &W, hidden, W)), 1e-6);
}

TEST(CpuLmHeadLoss, MatchesReference) {
  struct Size {
    int64_t n, d, vocab;
  };
  for (const Size sz : {Size{37, 10, 101}, Size{5, 3, 7}, Size{50, 64, 5003}, Size{1, 1, 2}}) {
    const Problem p = make_problem(sz.n, sz.d, sz.vocab, uint64_t(sz.vocab));
    const std::vector<float> dw_init = random_vec(size_t(p.vocab * p.d), 77, -0.1f, 0.1f);
    std::vector<double> dhidden(size_t(p.n * p.d)), dW = to_double(dw_init);
    const LossSum expect = ref::lm_head_loss<double>(
        to_double(p.hidden).data(), to_double(p.W).data(), p.targets.data(), p.n, p.d, p.vocab,
        p.grad_scale, dhidden.data(), dW.data());
    for (int threads : {1, 2}) {
      for (int64_t chunk : {int64_t(0), int64_t(1), int64_t(3), p.n}) {
        const std::string what = "n=" + std::to_string(p.n) + " V=" + std::to_string(p.vocab) +
                                 " threads=" + std::to_string(threads) +
                                 " chunk=" + std::to_string(chunk);
        const Result r = run_fast(p, threads, chunk, dw_init);
        EXPECT_EQ(r.loss.tokens, expect.tokens) << what;
        EXPECT_LE(std::fabs(r.loss.loss - expect.loss), 1e-5 * std::fabs(expect.loss)) << what;
        EXPECT_LE(rel_error(to_double(r.dhidden), dhidden), 1e-5) << what;
        EXPECT_LE(rel_error(to_double(r.dW), dW), 1e-5) << what;
      }
    }
  }
}

// Other chunkings pass other row counts to OpenBLAS, whose rounding depends on them: within the
// fp32 drift bound, not bitwise. dhidden reduces over the vocabulary, dW over the tokens.
TEST(CpuLmHeadLoss, ChunkSizesAgree) {
  const Problem p = make_problem(37, 10, 101, 5);
  const Drift bound = drift_bound(p);
  const std::vector<float> dw_init(size_t(p.vocab * p.d), 0.f);
  const Result whole = run_fast(p, 2, p.n, dw_init);
  for (int64_t chunk : {int64_t(1), int64_t(3), int64_t(0)}) {
    const Result r = run_fast(p, 2, chunk, dw_init);
    EXPECT_EQ(r.loss.tokens, whole.loss.tokens);
    EXPECT_LE(std::fabs(r.loss.loss - whole.loss.loss), bound.loss) << chunk;
    EXPECT_LE(rel_error(r.dhidden, whole.dhidden), bound.grad(p.vocab)) << chunk;
    EXPECT_LE(rel_error(r.dW, whole.dW), bound.grad(p.n)) << chunk;
  }
}

TEST(CpuLmHeadLoss, AccumulatesIntoDw) {
  // Two calls on halves of the batch add up to one call on the whole batch.
  const Problem p = make_problem(20, 6, 31, 9);
  const std::vector<float> zeros(size_t(p.vocab * p.d), 0.f);
  const Result whole = run_fast(p, 1, 0, zeros);
  Problem first = p, second = p;
  first.n = second.n = 10;
  first.hidden.resize(size_t(10 * p.d));
  first.targets.resize(10);
  second.hidden.assign(p.hidden.begin() + 10 * p.d, p.hidden.end());
  second.targets.assign(p.targets.begin() + 10, p.targets.end());
  const Result r1 = run_fast(first, 1, 0, zeros);
  const Result r2 = run_fast(second, 1, 0, r1.dW);
  // Halves are GEMMs of 10 rows, the whole one of 20: the fp32 drift bound, not bitwise.
  const Drift bound = drift_bound(p);
  EXPECT_LE(rel_error(r2.dW, whole.dW), bound.grad(p.n));
  EXPECT_NEAR(r1.loss.loss + r2.loss.loss, whole.loss.loss, bound.loss);
  EXPECT_EQ(r1.loss.tokens + r2.loss.tokens, whole.loss.tokens);
}

TEST(CpuLmHeadLoss, ForwardOnlyAndFrozenHead) {
  const Problem p = make_problem(37, 10, 101, 11);
  const std::vector<float> zeros(size_t(p.vocab * p.d), 0.f);
  const Result full = run_fast(p, 2, 3, zeros);
  // dhidden == nullptr: loss only, dW untouched even when given. With the same chunks the logits
  // GEMMs are the same calls, so the loss is bitwise that of the full op.
  std::vector<float> dW(zeros.size(), 0.5f);
  const LossSum fwd = cpu::lm_head_loss(2, p.hidden.data(), p.W.data(), p.targets.data(), p.n, p.d,
                                        p.vocab, p.grad_scale, nullptr, dW.data(), 3);
  EXPECT_EQ(fwd.loss, full.loss.loss);
  EXPECT_EQ(fwd.tokens, full.loss.tokens);
  for (float x : dW) ASSERT_EQ(x, 0.5f);
  // The default chunk (all 37 tokens in one GEMM) rounds otherwise: the fp32 drift bound.
  const LossSum fwd_default =
      cpu::lm_head_loss(2, p.hidden.data(), p.W.data(), p.targets.data(), p.n, p.d, p.vocab,
                        p.grad_scale, nullptr, dW.data());
  EXPECT_NEAR(fwd_default.loss, full.loss.loss, drift_bound(p).loss);
  EXPECT_EQ(fwd_default.tokens, full.loss.tokens);
  for (float x : dW) ASSERT_EQ(x, 0.5f);
  // dW == nullptr: the same chunks, so the same dhidden bit for bit; nothing else written.
  std::vector<float> dhidden(size_t(p.n * p.d), kNaN);
  const LossSum frozen = cpu::lm_head_loss(2, p.hidden.data(), p.W.data(), p.targets.data(), p.n,
                                           p.d, p.vocab, p.grad_scale, dhidden.data(), nullptr, 3);
  EXPECT_EQ(frozen.loss, full.loss.loss);
  EXPECT_EQ(dhidden, full.dhidden);
}

TEST(CpuLmHeadLoss, IgnoredTokens) {
  Problem p = make_problem(9, 4, 13, 2);
  for (int32_t& t : p.targets) t = kIgnoreIndex;
  const std::vector<float> dw_init = random_vec(size_t(p.vocab * p.d), 4);
  const Result r = run_fast(p, 2, 0, dw_init);
  EXPECT_EQ(r.loss.tokens, 0);
  EXPECT_EQ(r.loss.loss, 0.0);
  for (float x : r.dhidden) ASSERT_EQ(x, 0.f);
  EXPECT_EQ(r.dW, dw_init);
  // An ignored token's row of dhidden is zero while its neighbours are not.
  p.targets = {1, kIgnoreIndex, 2, 3, 4, 5, 6, 7, 8};
  const Result mixed = run_fast(p, 2, 2, dw_init);
  for (int64_t k = 0; k < p.d; ++k) {
    EXPECT_EQ(mixed.dhidden[size_t(p.d + k)], 0.f);
    EXPECT_NE(mixed.dhidden[size_t(k)], 0.f);
  }
}

TEST(CpuLmHeadLoss, RejectsTargetsOutsideVocabulary) {
  const Problem base = make_problem(6, 4, 13, 2);
  for (int32_t bad : {13, -1, 1000000}) {
    Problem p = base;
    p.targets[4] = bad;
    std::vector<float> dhidden(size_t(p.n * p.d)), dW(size_t(p.vocab * p.d), 0.25f);
    try {
      cpu::lm_head_loss(1, p.hidden.data(), p.W.data(), p.targets.data(), p.n, p.d, p.vocab,
                        p.grad_scale, dhidden.data(), dW.data());
      ADD_FAILURE() << "target " << bad << " was accepted";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("token 4"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
    }
    for (float x : dW) ASSERT_EQ(x, 0.25f);  // checked before any update
  }
}

TEST(CpuLmHeadLoss, Deterministic) {
  const Problem p = make_problem(64, 32, 1001, 21);
  const std::vector<float> dw_init = random_vec(size_t(p.vocab * p.d), 8);
  const Result first = run_fast(p, 2, 5, dw_init);
  for (int rep = 0; rep < 3; ++rep) {
    const Result r = run_fast(p, 2, 5, dw_init);
    EXPECT_EQ(r.loss.loss, first.loss.loss);
    EXPECT_EQ(r.dhidden, first.dhidden);
    EXPECT_EQ(r.dW, first.dW);
  }
}

}  // namespace
}  // namespace ftune
