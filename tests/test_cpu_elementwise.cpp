// CPU elementwise ops, sum of squares, embedding and SwiGLU: reference backward vs finite
// differences, fp32 kernels vs the double reference, and determinism of the reductions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cpu/reference_ops.h"
#include "engine/base/error.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

using testing::bitwise_equal;
using testing::dot;
using testing::numeric_grad;
using testing::random_ids;
using testing::random_vec;
using testing::rel_error;
using testing::to_double;

// 1001 exercises the vector tails; 100003 the multi-threaded path.
const size_t kSizes[] = {1, 1001, 100003};

TEST(CpuElementwise, AddAndScaleMatchReference) {
  for (size_t n : kSizes) {
    SCOPED_TRACE(n);
    const auto x = random_vec(n, 1), y0 = random_vec(n, 2);
    auto y = y0;
    cpu::add_inplace(2, y.data(), x.data(), n);
    auto ry = to_double(y0);
    ref::add_inplace(ry.data(), to_double(x).data(), n);
    EXPECT_LE(rel_error(to_double(y), ry), 1e-7);

    cpu::scale_inplace(2, y.data(), -0.37f, n);
    ref::scale_inplace(ry.data(), double(-0.37f), n);
    EXPECT_LE(rel_error(to_double(y), ry), 1e-6);
  }
}

// Dropout: the fast kernel draws the reference's mask exactly (backward recomputes it), keeps
// about 1 - p of the elements, and scales survivors by 1 / (1 - p); accumulate adds.
TEST(CpuDropout, MatchesReferenceMaskAndRate) {
  for (size_t n : kSizes) {
    std::vector<float> x = random_vec(n, 3);
    std::vector<double> xd = to_double(x);
    for (int threads : {1, 2}) {
      std::vector<float> y(n, std::numeric_limits<float>::quiet_NaN());  // poisoned
      cpu::dropout(threads, x.data(), y.data(), n, 0.25f, 99, false);
      std::vector<double> ref(n);
      ref::dropout(xd.data(), ref.data(), n, 0.25f, 99, false);
      EXPECT_LT(rel_error(to_double(y), ref), 1e-7) << n;
      std::vector<float> acc(n, 1.f);
      cpu::dropout(threads, x.data(), acc.data(), n, 0.25f, 99, true);
      for (size_t i = 0; i < n; ++i) ASSERT_NEAR(acc[i], 1.f + y[i], 1e-6) << i;  // may fuse
    }
    if (n < 100000) continue;
    size_t kept = 0;
    for (size_t i = 0; i < n; ++i) kept += ref::dropout_keep(99, i, 0.25f);
    EXPECT_NEAR(double(kept) / double(n), 0.75, 0.01);
    std::vector<float> y(n), z(n);
    cpu::dropout(2, x.data(), y.data(), n, 0.25f, 99, false);
    cpu::dropout(2, x.data(), z.data(), n, 0.25f, 100, false);
    EXPECT_NE(y, z) << "another seed draws another mask";
    for (size_t i = 0; i < n; ++i) {
      if (y[i] != 0.f) {
        ASSERT_FLOAT_EQ(y[i], x[i] / 0.75f);
      }
    }
  }
}

TEST(CpuSumSquares, MatchesReference) {
  EXPECT_EQ(cpu::sum_squares(2, nullptr, 0), 0.0);
  for (size_t n : {size_t(1), size_t(37), size_t(4096), size_t(4097), size_t(1000003)}) {
    const auto x = random_vec(n, 3, -3.f, 3.f);
    const double want = ref::sum_squares(x.data(), n);
    EXPECT_NEAR(cpu::sum_squares(2, x.data(), n), want, 1e-12 * want) << n;
  }
}

TEST(CpuSumSquares, BitwiseDeterministicAcrossRunsAndThreadCounts) {
  const size_t n = 1000003;
  const auto x = random_vec(n, 4, -5.f, 5.f);
  const double first = cpu::sum_squares(2, x.data(), n);
  for (int rep = 0; rep < 5; ++rep) {
    const double again = cpu::sum_squares(2, x.data(), n);
    EXPECT_EQ(std::memcmp(&first, &again, sizeof(double)), 0) << "repeat " << rep;
  }
  const double one_thread = cpu::sum_squares(1, x.data(), n);
  EXPECT_EQ(std::memcmp(&first, &one_thread, sizeof(double)), 0);
}

TEST(CpuEmbedding, ForwardGathersRows) {
  const int64_t vocab = 50, dim = 37, n = 101;
  const auto table = random_vec(vocab * dim, 5);
  const auto ids = random_ids(n, vocab, 6);
  std::vector<float> out(n * dim, NAN);
  cpu::embedding_forward(2, ids.data(), table.data(), out.data(), n, dim);
  std::vector<float> want(n * dim);
  ref::embedding_forward(ids.data(), table.data(), want.data(), n, dim);
  EXPECT_TRUE(bitwise_equal(out, want));
}

TEST(CpuEmbedding, ForwardRejectsNegativeId) {
  const auto table = random_vec(4 * 3, 7);
  std::vector<int32_t> ids = {1, -2};
  std::vector<float> out(2 * 3);
  try {
    cpu::embedding_forward(2, ids.data(), table.data(), out.data(), 2, 3);
    FAIL() << "expected ftune::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("-2"), std::string::npos) << e.what();
  }
}

TEST(CpuEmbedding, BackwardMatchesReferenceAndAccumulates) {
  // Few distinct ids so that many tokens hit the same row; n * dim takes the parallel path.
  const int64_t vocab = 13, dim = 37, n = 1001;
  const auto ids = random_ids(n, vocab, 8);
  const auto dout = random_vec(n * dim, 9);
  const auto dtable0 = random_vec(vocab * dim, 10);
  auto dtable = dtable0;
  cpu::embedding_backward(2, ids.data(), dout.data(), dtable.data(), n, dim, vocab);
  std::vector<double> inc(vocab * dim, 0.0);
  ref::embedding_backward(ids.data(), to_double(dout).data(), inc.data(), n, dim, vocab);
  std::vector<double> want(vocab * dim);
  for (size_t i = 0; i < want.size(); ++i) want[i] = dtable0[i] + inc[i];
  EXPECT_LE(rel_error(to_double(dtable), want), 1e-6);

  cpu::embedding_backward(2, ids.data(), dout.data(), dtable.data(), n, dim, vocab);
  for (size_t i = 0; i < want.size(); ++i) want[i] += inc[i];
  EXPECT_LE(rel_error(to_double(dtable), want), 1e-6);
}

TEST(CpuEmbedding, RefBackwardMatchesFiniteDifferences) {
  const int64_t vocab = 6, dim = 4, n = 9;
  const auto ids = random_ids(n, vocab, 11);
  auto table = to_double(random_vec(vocab * dim, 12));
  const auto R = to_double(random_vec(n * dim, 13));
  auto loss = [&] {
    std::vector<double> out(n * dim);
    ref::embedding_forward(ids.data(), table.data(), out.data(), n, dim);
    return dot(out, R);
  };
  std::vector<double> grad(vocab * dim, 0.0);
  ref::embedding_backward(ids.data(), R.data(), grad.data(), n, dim, vocab);
  EXPECT_LE(rel_error(grad, numeric_grad(table, loss)), 1e-6);
}

TEST(CpuEmbedding, BackwardBitwiseDeterministicAcrossRunsAndThreadCounts) {
  const int64_t vocab = 7, dim = 130, n = 4001;
  const auto ids = random_ids(n, vocab, 14);
  const auto dout = random_vec(n * dim, 15, -100.f, 100.f);
  std::vector<float> first(vocab * dim, 0.f);
  cpu::embedding_backward(2, ids.data(), dout.data(), first.data(), n, dim, vocab);
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<float> again(vocab * dim, 0.f);
    cpu::embedding_backward(2, ids.data(), dout.data(), again.data(), n, dim, vocab);
    EXPECT_TRUE(bitwise_equal(first, again)) << "repeat " << rep;
  }
  std::vector<float> one_thread(vocab * dim, 0.f);
  cpu::embedding_backward(1, ids.data(), dout.data(), one_thread.data(), n, dim, vocab);
  EXPECT_TRUE(bitwise_equal(first, one_thread));
}

TEST(CpuEmbedding, BackwardRejectsOutOfRangeIdWithoutWriting) {
  const int64_t vocab = 5, dim = 3;
  const auto dout = random_vec(3 * dim, 16);
  for (int32_t bad : {5, 70000, -1}) {
    std::vector<int32_t> ids = {0, bad, 2};
    std::vector<float> dtable(vocab * dim, 1.f);
    try {
      cpu::embedding_backward(2, ids.data(), dout.data(), dtable.data(), 3, dim, vocab);
      FAIL() << "expected ftune::Error for id " << bad;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find("vocab size 5"), std::string::npos) << msg;
    }
    EXPECT_EQ(dtable, std::vector<float>(vocab * dim, 1.f));
  }
}

TEST(RefSwiGLU, BackwardMatchesFiniteDifferences) {
  const size_t n = 23;
  auto g = to_double(random_vec(n, 17, -6.f, 6.f)), u = to_double(random_vec(n, 18, -2.f, 2.f));
  const auto R = to_double(random_vec(n, 19));
  auto loss = [&] {
    std::vector<double> h(n);
    ref::swiglu_forward(g.data(), u.data(), h.data(), n);
    return dot(h, R);
  };
  std::vector<double> dg(n), du(n);
  ref::swiglu_backward(R.data(), g.data(), u.data(), dg.data(), du.data(), n);
  EXPECT_LE(rel_error(dg, numeric_grad(g, loss)), 1e-6);
  EXPECT_LE(rel_error(du, numeric_grad(u, loss)), 1e-6);
}

TEST(CpuSwiGLU, ForwardAndBackwardMatchReference) {
  for (size_t n : kSizes) {
    SCOPED_TRACE(n);
    const auto g = random_vec(n, 20, -12.f, 12.f), u = random_vec(n, 21, -2.f, 2.f);
    const auto dh = random_vec(n, 22);
    std::vector<float> h(n, NAN), dg(n, NAN), du(n, NAN);
    cpu::swiglu_forward(2, g.data(), u.data(), h.data(), n);
    cpu::swiglu_backward(2, dh.data(), g.data(), u.data(), dg.data(), du.data(), n);
    std::vector<double> rh(n), rdg(n), rdu(n);
    const auto gd = to_double(g), ud = to_double(u);
    ref::swiglu_forward(gd.data(), ud.data(), rh.data(), n);
    ref::swiglu_backward(to_double(dh).data(), gd.data(), ud.data(), rdg.data(), rdu.data(), n);
    EXPECT_LE(rel_error(to_double(h), rh), 1e-5);
    EXPECT_LE(rel_error(to_double(dg), rdg), 1e-5);
    EXPECT_LE(rel_error(to_double(du), rdu), 1e-5);
  }
}

TEST(CpuSwiGLU, ElementwiseAccurateAcrossTheWholeRange) {
  // Dense sweep through the sigmoid's range, including where exp(-g) under/overflows.
  const size_t n = 200001;
  std::vector<float> g(n), u(n, 1.f), dh(n, 1.f), h(n), dg(n), du(n);
  for (size_t i = 0; i < n; ++i) g[i] = -100.f + 200.f * float(i) / float(n - 1);
  cpu::swiglu_forward(2, g.data(), u.data(), h.data(), n);
  cpu::swiglu_backward(2, dh.data(), g.data(), u.data(), dg.data(), du.data(), n);
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const double gd = g[i], s = 1.0 / (1.0 + std::exp(-gd));
    const double want_h = gd * s, want_dg = s * (1.0 + gd * (1.0 - s));
    // A few ulp of the terms' magnitude (dg crosses zero near g = -1.28, so relative to the
    // terms, not the result), plus an absolute floor far below anything a gradient could notice.
    const double dg_scale = s * (1.0 + std::fabs(gd) * (1.0 - s));
    if (std::fabs(h[i] - want_h) > 5e-7 * std::fabs(want_h) + 1e-35) ++bad;
    if (std::fabs(dg[i] - want_dg) > 5e-7 * dg_scale + 1e-35) ++bad;
    if (du[i] != h[i]) ++bad;
  }
  EXPECT_EQ(bad, 0u);
}

TEST(CpuSwiGLU, ExtremeGatesStayFiniteAndNaNPropagates) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> g = {-1e30f, -1e4f, -88.7f, 88.7f, 1e4f, 1e30f, inf, NAN};
  const size_t n = g.size();
  std::vector<float> u(n, 2.f), dh(n, 1.f), h(n), dg(n), du(n);
  cpu::swiglu_forward(1, g.data(), u.data(), h.data(), n);
  cpu::swiglu_backward(1, dh.data(), g.data(), u.data(), dg.data(), du.data(), n);
  for (size_t i = 0; i + 2 < n; ++i) {
    SCOPED_TRACE(g[i]);
    EXPECT_TRUE(std::isfinite(h[i]) && std::isfinite(dg[i]) && std::isfinite(du[i]));
    if (g[i] > 0) {
      EXPECT_EQ(h[i], g[i] * 2.f);  // sigmoid saturates to exactly 1
      EXPECT_EQ(dg[i], 2.f);
    } else {
      EXPECT_LE(std::fabs(h[i]), 1e-30f);
      EXPECT_LE(std::fabs(dg[i]), 1e-30f);
    }
  }
  EXPECT_EQ(h[n - 2], inf);
  EXPECT_TRUE(std::isnan(h[n - 1]) && std::isnan(dg[n - 1]) && std::isnan(du[n - 1]));
}

TEST(CpuSwiGLU, OutputsMayAliasInputs) {
  const size_t n = 1001;
  const auto g = random_vec(n, 23, -8.f, 8.f), u = random_vec(n, 24), dh = random_vec(n, 25);
  std::vector<float> h(n), dg(n), du(n);
  cpu::swiglu_forward(2, g.data(), u.data(), h.data(), n);
  cpu::swiglu_backward(2, dh.data(), g.data(), u.data(), dg.data(), du.data(), n);
  auto h_in_place = g;
  cpu::swiglu_forward(2, h_in_place.data(), u.data(), h_in_place.data(), n);
  EXPECT_TRUE(bitwise_equal(h_in_place, h));
  auto gate = g, up = u;
  cpu::swiglu_backward(2, dh.data(), gate.data(), up.data(), gate.data(), up.data(), n);
  EXPECT_TRUE(bitwise_equal(gate, dg));
  EXPECT_TRUE(bitwise_equal(up, du));
}

// The integer threshold the CUDA kernel tests keeps exactly the elements the reference's double
// comparison keeps, at random hashes and at p placed exactly on a hash (the boundary).
TEST(DropoutMask, IntegerThresholdEqualsTheReferenceComparison) {
  const float kPs[] = {0.f, -0.5f, 1e-9f, 0.1f, 0.25f, 0.5f, 0.999999f, 1.f, 2.f, NAN};
  for (float p : kPs)
    for (size_t i = 0; i < 5000; ++i)
      ASSERT_EQ(dropout_hash(7, i) >= dropout_threshold(p), ref::dropout_keep(7, i, p))
          << p << " " << i;
  for (size_t i = 0; i < 5000; ++i) {
    const float p = float(double(dropout_hash(7, i)) * 0x1.0p-53);
    for (size_t j = i; j < i + 3; ++j)
      ASSERT_EQ(dropout_hash(7, j) >= dropout_threshold(p), ref::dropout_keep(7, j, p))
          << p << " " << j;
  }
}

}  // namespace
}  // namespace ftune
