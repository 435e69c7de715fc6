// CPU attention: the scalar reference against analytic cases and finite differences, then the
// fast fp32 kernel against the reference in double, document isolation and determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cpu/reference_attention.h"
#include "engine/base/error.h"
#include "tests/attention_cases.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

using testing::Case;
using testing::Inputs;
using testing::Outputs;
using testing::random_vec;
using testing::rel_error;
using testing::shape_of;
using testing::to_double;

const float kNaN = std::numeric_limits<float>::quiet_NaN();

Outputs run_fast(const AttentionShape& s, const Inputs& in, int threads) {
  const size_t nq = size_t(s.tokens * s.q_heads * s.head_dim);
  const size_t nkv = size_t(s.tokens * s.kv_heads * s.head_dim);
  Outputs o{std::vector<float>(nq, kNaN), std::vector<float>(size_t(s.tokens * s.q_heads), kNaN),
            std::vector<float>(nq, kNaN), std::vector<float>(nkv, kNaN),
            std::vector<float>(nkv, kNaN)};
  cpu::attention_forward(threads, s, in.q.data(), in.k.data(), in.v.data(), o.out.data(),
                         o.lse.data());
  cpu::attention_backward(threads, s, in.dout.data(), in.q.data(), in.k.data(), in.v.data(),
                          o.out.data(), o.lse.data(), o.dq.data(), o.dk.data(), o.dv.data());
  return o;
}

// sum(out * R) as a function of the inputs, for finite differences.
double weighted_output(const AttentionShape& s, const std::vector<double>& q,
                       const std::vector<double>& k, const std::vector<double>& v,
                       const std::vector<double>& r) {
  std::vector<double> out(q.size()), lse(size_t(s.tokens * s.q_heads));
  ref::attention_forward(s, q.data(), k.data(), v.data(), out.data(), lse.data());
  double acc = 0;
  for (size_t i = 0; i < out.size(); ++i) acc += out[i] * r[i];
  return acc;
}

// Central differences of sum(out * R) with respect to every element of *x.
std::vector<double> numeric_grad(const AttentionShape& s, std::vector<double>* x,
                                 const std::vector<double>& q, const std::vector<double>& k,
                                 const std::vector<double>& v, const std::vector<double>& r) {
  const double h = 1e-5;
  std::vector<double> g(x->size());
  for (size_t i = 0; i < x->size(); ++i) {
    const double keep = (*x)[i];
    (*x)[i] = keep + h;
    const double plus = weighted_output(s, q, k, v, r);
    (*x)[i] = keep - h;
    const double minus = weighted_output(s, q, k, v, r);
    (*x)[i] = keep;
    g[i] = (plus - minus) / (2 * h);
  }
  return g;
}

TEST(ReferenceAttention, AnalyticCases) {
  // Zero queries give uniform weights over the visible prefix: out_i = mean(v_0..v_i) and
  // lse_i = log(i + 1). Two documents check that the prefix restarts.
  const Case c{{0, 3, 5}, 2, 1, 3};
  const AttentionShape s = shape_of(c);
  std::vector<double> q(5 * 2 * 3, 0.0), k = to_double(random_vec(5 * 3, 1));
  std::vector<double> v = to_double(random_vec(5 * 3, 2));
  std::vector<double> out(q.size()), lse(10);
  ref::attention_forward(s, q.data(), k.data(), v.data(), out.data(), lse.data());
  const int starts[5] = {0, 0, 0, 3, 3};
  for (int i = 0; i < 5; ++i) {
    for (int h = 0; h < 2; ++h) {
      const int visible = i - starts[i] + 1;
      EXPECT_NEAR(lse[i * 2 + h], std::log(double(visible)), 1e-14);
      for (int d = 0; d < 3; ++d) {
        double mean = 0;
        for (int j = starts[i]; j <= i; ++j) mean += v[j * 3 + d] / visible;
        EXPECT_NEAR(out[(i * 2 + h) * 3 + d], mean, 1e-14);
      }
    }
  }
  // A document of one token attends only to itself: out = v, lse = scale * q.k.
  const Case one{{0, 1}, 1, 1, 4};
  const AttentionShape s1 = shape_of(one);
  std::vector<double> q1 = to_double(random_vec(4, 3)), k1 = to_double(random_vec(4, 4));
  std::vector<double> v1 = to_double(random_vec(4, 5)), out1(4), lse1(1);
  ref::attention_forward(s1, q1.data(), k1.data(), v1.data(), out1.data(), lse1.data());
  double dot = 0;
  for (int d = 0; d < 4; ++d) dot += q1[d] * k1[d];
  EXPECT_NEAR(lse1[0], double(s1.scale) * dot, 1e-14);
  for (int d = 0; d < 4; ++d) EXPECT_NEAR(out1[d], v1[d], 1e-14);
}

TEST(ReferenceAttention, BackwardMatchesFiniteDifferences) {
  const Case cases[] = {
      {{0, 3, 4, 9}, 4, 2, 5},  // GQA, uneven documents (one of length 1), odd head_dim
      {{0, 7}, 3, 1, 4},        // three q heads share one kv head
      {{0, 1, 2, 6}, 2, 2, 3},  // plain multi-head
  };
  uint64_t seed = 10;
  for (const Case& c : cases) {
    const AttentionShape s = shape_of(c);
    const Inputs in(s, seed += 10);
    std::vector<double> q = to_double(in.q), k = to_double(in.k), v = to_double(in.v);
    const std::vector<double> r = to_double(in.dout);
    std::vector<double> out(q.size()), lse(size_t(s.tokens * s.q_heads));
    ref::attention_forward(s, q.data(), k.data(), v.data(), out.data(), lse.data());
    std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
    ref::attention_backward(s, r.data(), q.data(), k.data(), v.data(), out.data(), lse.data(),
                            dq.data(), dk.data(), dv.data());
    EXPECT_LE(rel_error(dq, numeric_grad(s, &q, q, k, v, r)), 1e-6) << "hq=" << c.hq;
    EXPECT_LE(rel_error(dk, numeric_grad(s, &k, q, k, v, r)), 1e-6) << "hq=" << c.hq;
    EXPECT_LE(rel_error(dv, numeric_grad(s, &v, q, k, v, r)), 1e-6) << "hq=" << c.hq;
  }
}

TEST(CpuAttention, MatchesReference) {
  // Odd sizes, head_dim 1 and non-multiples of the vector width, and documents longer than one
  // query tile (64 rows) with ragged edges.
  const Case cases[] = {
      {{0, 37}, 4, 2, 10},      {{0, 3, 4, 9}, 3, 1, 5},        {{0, 5, 6, 20}, 6, 3, 17},
      {{0, 11, 30}, 2, 1, 1},   {{0, 150, 153, 290}, 4, 1, 64}, {{0, 70, 201}, 2, 2, 128},
      {{0, 65, 130}, 8, 4, 24},
  };
  uint64_t seed = 100;
  for (const Case& c : cases) {
    const AttentionShape s = shape_of(c);
    const Inputs in(s, seed += 10);
    std::vector<double> q = to_double(in.q), k = to_double(in.k), v = to_double(in.v);
    std::vector<double> dout = to_double(in.dout);
    std::vector<double> out(q.size()), lse(size_t(s.tokens * s.q_heads));
    std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
    ref::attention_forward(s, q.data(), k.data(), v.data(), out.data(), lse.data());
    ref::attention_backward(s, dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(),
                            dq.data(), dk.data(), dv.data());
    for (int threads : {1, 2}) {
      const Outputs o = run_fast(s, in, threads);
      const std::string what = "N=" + std::to_string(s.tokens) + " D=" + std::to_string(c.dim) +
                               " threads=" + std::to_string(threads);
      EXPECT_LE(rel_error(to_double(o.out), out), 1e-5) << what;
      EXPECT_LE(rel_error(to_double(o.lse), lse), 1e-5) << what;
      EXPECT_LE(rel_error(to_double(o.dq), dq), 1e-5) << what;
      EXPECT_LE(rel_error(to_double(o.dk), dk), 1e-5) << what;
      EXPECT_LE(rel_error(to_double(o.dv), dv), 1e-5) << what;
    }
  }
}

TEST(CpuAttention, LargeScoresStayFinite) {
  // Scores of several hundred: a softmax without the max shift would overflow.
  const Case c{{0, 40, 90}, 2, 1, 16};
  const AttentionShape s = shape_of(c);
  Inputs in(s, 7);
  for (float& x : in.q) x *= 100.f;
  const Outputs o = run_fast(s, in, 2);
  std::vector<double> q = to_double(in.q), k = to_double(in.k), v = to_double(in.v);
  std::vector<double> out(q.size()), lse(size_t(s.tokens * s.q_heads));
  ref::attention_forward(s, q.data(), k.data(), v.data(), out.data(), lse.data());
  EXPECT_LE(rel_error(to_double(o.out), out), 1e-5);
  EXPECT_LE(rel_error(to_double(o.lse), lse), 1e-5);
  for (float x : o.dq) ASSERT_TRUE(std::isfinite(x));
  for (float x : o.dk) ASSERT_TRUE(std::isfinite(x));
}

TEST(CpuAttention, DocumentsAreIndependent) {
  testing::expect_documents_independent(
      [](const AttentionShape& s, const Inputs& in) { return run_fast(s, in, 2); }, {16, 24}, 3,
      99);
}

TEST(CpuAttention, DeterministicAcrossRunsAndThreadCounts) {
  // Work items never share an output, so even the thread count leaves the bits unchanged.
  const Case c{{0, 100, 101, 230, 300}, 4, 2, 24};
  const AttentionShape s = shape_of(c);
  const Inputs in(s, 5);
  const Outputs first = run_fast(s, in, 2);
  for (int threads : {2, 1, 3}) {
    const Outputs o = run_fast(s, in, threads);
    EXPECT_EQ(o.out, first.out) << threads;
    EXPECT_EQ(o.lse, first.lse) << threads;
    EXPECT_EQ(o.dq, first.dq) << threads;
    EXPECT_EQ(o.dk, first.dk) << threads;
    EXPECT_EQ(o.dv, first.dv) << threads;
  }
}

TEST(CpuAttention, RejectsInconsistentShapes) {
  Case c{{0, 4, 9}, 4, 3, 8};  // 4 q heads cannot share 3 kv heads
  std::vector<float> buf(9 * 4 * 8), lse(9 * 4);
  EXPECT_THROW(cpu::attention_forward(1, shape_of(c), buf.data(), buf.data(), buf.data(),
                                      buf.data(), lse.data()),
               Error);
  c = {{0, 4, 9}, 4, 2, 8};
  AttentionShape s = shape_of(c);
  s.tokens = 10;  // offsets end at 9
  EXPECT_THROW(
      cpu::attention_forward(1, s, buf.data(), buf.data(), buf.data(), buf.data(), lse.data()),
      Error);
  c = {{0, 4, 4, 9}, 4, 2, 8};  // empty document
  EXPECT_THROW(
      cpu::attention_backward(1, shape_of(c), buf.data(), buf.data(), buf.data(), buf.data(),
                              buf.data(), lse.data(), buf.data(), buf.data(), buf.data()),
      Error);
}

}  // namespace
}  // namespace ftune
