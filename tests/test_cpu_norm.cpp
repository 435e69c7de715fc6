// CPU RMSNorm: reference backward vs finite differences, fp32 kernels vs the double reference,
// accumulation of dw, aliasing, and independence from the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cpu/reference_ops.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

using testing::bitwise_equal;
using testing::dot;
using testing::numeric_grad;
using testing::random_vec;
using testing::rel_error;
using testing::to_double;

// (rows, dim): odd sizes with vector tails; 33 x 1001 takes the parallel path and dim 4099 spans
// several dw column blocks. (dim 1 is left out: there dx is the difference of two nearly equal
// terms, ill-conditioned in any fp32 evaluation.)
const std::pair<int64_t, int64_t> kShapes[] = {{1, 5}, {7, 37}, {33, 1001}, {5, 4099}};

TEST(RefRMSNorm, BackwardMatchesFiniteDifferences) {
  const int64_t rows = 3, dim = 7;
  const double eps = 1e-2;  // large enough that a mishandled eps term would show
  auto x = to_double(random_vec(rows * dim, 1)), w = to_double(random_vec(dim, 2, 0.5f, 1.5f));
  const auto R = to_double(random_vec(rows * dim, 3));
  auto loss = [&] {
    std::vector<double> y(rows * dim), rstd(rows);
    ref::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, dim, eps);
    return dot(y, R);
  };
  std::vector<double> y(rows * dim), rstd(rows), dx(rows * dim), dw(dim, 0.0);
  ref::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, dim, eps);
  ref::rmsnorm_backward(R.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data(), rows, dim);
  EXPECT_LE(rel_error(dx, numeric_grad(x, loss)), 1e-6);
  EXPECT_LE(rel_error(dw, numeric_grad(w, loss)), 1e-6);
}

TEST(CpuRMSNorm, ForwardMatchesReference) {
  uint64_t seed = 10;
  for (auto [rows, dim] : kShapes) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << dim);
    const auto x = random_vec(rows * dim, ++seed, -3.f, 3.f);
    const auto w = random_vec(dim, ++seed, 0.5f, 1.5f);
    std::vector<float> y(rows * dim, NAN), rstd(rows, NAN);
    cpu::rmsnorm_forward(2, x.data(), w.data(), y.data(), rstd.data(), rows, dim, 1e-5f);
    std::vector<double> ry(rows * dim), rrstd(rows);
    ref::rmsnorm_forward(to_double(x).data(), to_double(w).data(), ry.data(), rrstd.data(), rows,
                         dim, double(1e-5f));
    EXPECT_LE(rel_error(to_double(y), ry), 1e-5);
    EXPECT_LE(rel_error(to_double(rstd), rrstd), 1e-6);
  }
}

TEST(CpuRMSNorm, BackwardMatchesReferenceAndAccumulatesDw) {
  uint64_t seed = 20;
  for (auto [rows, dim] : kShapes) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << dim);
    const auto x = random_vec(rows * dim, ++seed, -3.f, 3.f);
    const auto w = random_vec(dim, ++seed, 0.5f, 1.5f);
    const auto dy = random_vec(rows * dim, ++seed);
    const auto dw0 = random_vec(dim, ++seed);
    std::vector<float> y(rows * dim), rstd(rows);
    cpu::rmsnorm_forward(2, x.data(), w.data(), y.data(), rstd.data(), rows, dim, 1e-5f);

    std::vector<double> rdx(rows * dim), rdw(dim, 0.0);
    ref::rmsnorm_backward(to_double(dy).data(), to_double(x).data(), to_double(w).data(),
                          to_double(rstd).data(), rdx.data(), rdw.data(), rows, dim);
    std::vector<float> dx(rows * dim, NAN), dw = dw0;
    cpu::rmsnorm_backward(2, dy.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data(), rows,
                          dim);
    std::vector<double> want_dw(dim);
    for (int64_t c = 0; c < dim; ++c) want_dw[c] = dw0[c] + rdw[c];
    EXPECT_LE(rel_error(to_double(dx), rdx), 1e-5);
    EXPECT_LE(rel_error(to_double(dw), want_dw), 1e-5);

    // dx is overwritten (same value again), dw gains a second increment.
    cpu::rmsnorm_backward(2, dy.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data(), rows,
                          dim);
    for (int64_t c = 0; c < dim; ++c) want_dw[c] += rdw[c];
    EXPECT_LE(rel_error(to_double(dx), rdx), 1e-5);
    EXPECT_LE(rel_error(to_double(dw), want_dw), 1e-5);

    // A frozen norm (LoRA) passes no dw: dx alone, the same values.
    std::vector<float> dx2(rows * dim, NAN);
    cpu::rmsnorm_backward(2, dy.data(), x.data(), w.data(), rstd.data(), dx2.data(), nullptr, rows,
                          dim);
    EXPECT_EQ(dx2, dx);
  }
}

TEST(CpuRMSNorm, ThreadCountsAgree) {
  const int64_t rows = 64, dim = 1001;
  const auto x = random_vec(rows * dim, 30, -3.f, 3.f), w = random_vec(dim, 31, 0.5f, 1.5f);
  const auto dy = random_vec(rows * dim, 32);
  std::vector<float> y1(rows * dim), r1(rows), y2(rows * dim), r2(rows);
  cpu::rmsnorm_forward(1, x.data(), w.data(), y1.data(), r1.data(), rows, dim, 1e-6f);
  cpu::rmsnorm_forward(2, x.data(), w.data(), y2.data(), r2.data(), rows, dim, 1e-6f);
  EXPECT_LE(rel_error(y2, y1), 1e-6);
  EXPECT_LE(rel_error(r2, r1), 1e-6);

  // dw is summed over rows in a fixed order per column: bitwise equal for any thread count.
  std::vector<float> dx1(rows * dim), dw1(dim, 0.f), dx2(rows * dim), dw2(dim, 0.f);
  cpu::rmsnorm_backward(1, dy.data(), x.data(), w.data(), r1.data(), dx1.data(), dw1.data(), rows,
                        dim);
  cpu::rmsnorm_backward(2, dy.data(), x.data(), w.data(), r1.data(), dx2.data(), dw2.data(), rows,
                        dim);
  EXPECT_TRUE(bitwise_equal(dw1, dw2));
  EXPECT_LE(rel_error(dx2, dx1), 1e-6);
}

TEST(CpuRMSNorm, InPlaceMatchesOutOfPlace) {
  const int64_t rows = 40, dim = 1001;
  const auto x = random_vec(rows * dim, 40, -3.f, 3.f), w = random_vec(dim, 41, 0.5f, 1.5f);
  const auto dy = random_vec(rows * dim, 42);
  std::vector<float> y(rows * dim), rstd(rows), dx(rows * dim), dw(dim, 0.f);
  cpu::rmsnorm_forward(2, x.data(), w.data(), y.data(), rstd.data(), rows, dim, 1e-5f);
  cpu::rmsnorm_backward(2, dy.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data(), rows,
                        dim);

  auto y_in_place = x;
  std::vector<float> rstd2(rows);
  cpu::rmsnorm_forward(2, y_in_place.data(), w.data(), y_in_place.data(), rstd2.data(), rows, dim,
                       1e-5f);
  EXPECT_TRUE(bitwise_equal(y_in_place, y));

  // dx written over dy: dw must still see the original dy.
  auto grad = dy;
  std::vector<float> dw2(dim, 0.f);
  cpu::rmsnorm_backward(2, grad.data(), x.data(), w.data(), rstd.data(), grad.data(), dw2.data(),
                        rows, dim);
  EXPECT_TRUE(bitwise_equal(grad, dx));
  EXPECT_TRUE(bitwise_equal(dw2, dw));
}

TEST(CpuRMSNorm, ZeroRowIsFiniteThanksToEps) {
  const int64_t dim = 37;
  std::vector<float> x(dim, 0.f), w(dim, 1.f), y(dim, NAN), rstd(1, NAN);
  cpu::rmsnorm_forward(1, x.data(), w.data(), y.data(), rstd.data(), 1, dim, 1e-6f);
  EXPECT_NEAR(rstd[0], 1000.f, 1e-2f);
  for (float v : y) EXPECT_EQ(v, 0.f);
}

}  // namespace
}  // namespace ftune
