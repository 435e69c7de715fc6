// CPU AdamW: the fp32 kernel against the double reference over several steps and spans, plus
// closed-form properties that do not depend on either implementation.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cpu/reference_ops.h"
#include "engine/base/error.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

using testing::random_vec;
using testing::rel_error;
using testing::to_double;

// Runs `steps` steps of both implementations from the same fp32 start and the same fp32 grads.
void expect_matches_reference(const std::vector<ParamSpan>& spans, size_t total, AdamWHyper h,
                              int steps, uint64_t seed) {
  auto p = random_vec(total, seed);
  std::vector<float> m(total, 0.f), v(total, 0.f);
  auto rp = to_double(p);
  std::vector<double> rm(total, 0.0), rv(total, 0.0);
  for (int s = 1; s <= steps; ++s) {
    SCOPED_TRACE(::testing::Message() << "step " << s);
    h.step = s;
    const auto g = random_vec(total, seed * 100 + s, -2.f, 2.f);
    cpu::adamw_step(2, p.data(), g.data(), m.data(), v.data(), spans.data(), int(spans.size()), h);
    ref::adamw_step(rp.data(), to_double(g).data(), rm.data(), rv.data(), spans.data(),
                    int(spans.size()), h);
    EXPECT_LE(rel_error(to_double(p), rp), 1e-5);
    EXPECT_LE(rel_error(to_double(m), rm), 1e-5);
    EXPECT_LE(rel_error(to_double(v), rv), 1e-5);
  }
}

TEST(CpuAdamW, MatchesReferenceOverStepsAndSpans) {
  // Three spans with different decay, a gap that belongs to no span, and a tail past the last
  // span; the large span takes the parallel path.
  const std::vector<ParamSpan> spans = {{0, 37, 0.f}, {37, 100003, 0.1f}, {100050, 1001, 0.01f}};
  const size_t total = 100050 + 1001 + 13;
  AdamWHyper h;
  h.lr = 1e-2f;
  h.grad_scale = 0.5f;
  expect_matches_reference(spans, total, h, 5, 1);
}

TEST(CpuAdamW, MatchesReferenceWithSmallBeta1) {
  // beta1 < 0.5 takes the other branch of PyTorch's lerp formula.
  const std::vector<ParamSpan> spans = {{0, 1001, 0.05f}};
  AdamWHyper h;
  h.lr = 3e-3f;
  h.beta1 = 0.3f;
  h.beta2 = 0.95f;
  h.eps = 1e-6f;
  expect_matches_reference(spans, 1001, h, 4, 2);
}

TEST(CpuAdamW, ElementsOutsideSpansAreUntouched) {
  const size_t total = 50;
  const std::vector<ParamSpan> spans = {{5, 10, 0.1f}, {30, 7, 0.f}};
  auto p = random_vec(total, 3);
  const auto p0 = p;
  const auto g = random_vec(total, 4);
  std::vector<float> m(total, 0.f), v(total, 0.f);
  AdamWHyper h;
  h.lr = 0.1f;
  cpu::adamw_step(1, p.data(), g.data(), m.data(), v.data(), spans.data(), 2, h);
  for (size_t i = 0; i < total; ++i) {
    const bool inside = (i >= 5 && i < 15) || (i >= 30 && i < 37);
    if (inside) {
      EXPECT_NE(p[i], p0[i]) << i;
    } else {
      EXPECT_EQ(p[i], p0[i]) << i;
      EXPECT_EQ(m[i], 0.f) << i;
      EXPECT_EQ(v[i], 0.f) << i;
    }
  }
}

TEST(CpuAdamW, FirstStepMovesEachParameterByLrAgainstItsGradient) {
  // At step 1 bias correction makes mhat = g and vhat = g^2, so without decay the update is
  // lr * g / (|g| + eps): a step of lr against the sign of g, whatever g's magnitude.
  const size_t n = 1001;
  const std::vector<ParamSpan> spans = {{0, n, 0.f}};
  auto p = random_vec(n, 5);
  const auto p0 = p;
  auto g = random_vec(n, 6, 0.01f, 100.f);
  for (size_t i = 0; i < n; i += 2) g[i] = -g[i];
  std::vector<float> m(n, 0.f), v(n, 0.f);
  AdamWHyper h;
  h.lr = 1e-3f;
  h.grad_scale = 3.f;  // scale-invariant as well
  cpu::adamw_step(2, p.data(), g.data(), m.data(), v.data(), spans.data(), 1, h);
  for (size_t i = 0; i < n; ++i) {
    const double want = p0[i] - (g[i] > 0 ? 1e-3 : -1e-3);
    EXPECT_NEAR(p[i], want, 2e-7) << i;
  }
}

TEST(CpuAdamW, ZeroGradientOnlyDecays) {
  const size_t n = 1001;
  const std::vector<ParamSpan> spans = {{0, n, 0.25f}};
  auto p = random_vec(n, 7);
  const auto p0 = p;
  const std::vector<float> g(n, 0.f);
  std::vector<float> m(n, 0.f), v(n, 0.f);
  AdamWHyper h;
  h.lr = 0.1f;
  h.step = 3;
  cpu::adamw_step(2, p.data(), g.data(), m.data(), v.data(), spans.data(), 1, h);
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(p[i], p0[i] * (1.0 - 0.1 * 0.25), 1e-7) << i;
}

TEST(CpuAdamW, ThreadCountsGiveIdenticalResults) {
  const size_t n = 200003;
  const std::vector<ParamSpan> spans = {{0, 70001, 0.1f}, {70001, n - 70001, 0.f}};
  const auto p0 = random_vec(n, 8), g = random_vec(n, 9), m0 = random_vec(n, 10);
  const auto v0 = random_vec(n, 11, 0.f, 1.f);
  AdamWHyper h;
  h.lr = 1e-3f;
  h.step = 7;
  auto p1 = p0, m1 = m0, v1 = v0, p2 = p0, m2 = m0, v2 = v0;
  cpu::adamw_step(1, p1.data(), g.data(), m1.data(), v1.data(), spans.data(), 2, h);
  cpu::adamw_step(2, p2.data(), g.data(), m2.data(), v2.data(), spans.data(), 2, h);
  EXPECT_EQ(p1, p2);
  EXPECT_EQ(m1, m2);
  EXPECT_EQ(v1, v2);
}

TEST(CpuAdamW, RejectsStepZero) {
  std::vector<float> p(4), g(4), m(4), v(4);
  const ParamSpan span{0, 4, 0.f};
  AdamWHyper h;
  h.step = 0;  // bias correction would divide by zero
  EXPECT_THROW(cpu::adamw_step(1, p.data(), g.data(), m.data(), v.data(), &span, 1, h), Error);
}

}  // namespace
}  // namespace ftune
