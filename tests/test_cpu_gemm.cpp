// CPU GEMM and nn.Linear kernels: the reference backward against finite differences, and the
// OpenBLAS-backed fp32 kernels against the reference evaluated in double.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cpu/reference_ops.h"
#include "engine/base/error.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

using testing::dot;
using testing::kF32Unit;
using testing::numeric_grad;
using testing::random_vec;
using testing::rel_error;
using testing::to_double;

std::vector<double> random_dvec(size_t n, uint64_t seed) {
  return to_double(random_vec(n, seed));
}

// Central differences of loss() with respect to every element of p.
TEST(RefLinear, BackwardMatchesFiniteDifferences) {
  const int64_t n = 3, in = 5, out = 4;
  auto x = random_dvec(n * in, 1), W = random_dvec(out * in, 2), b = random_dvec(out, 3);
  const auto R = random_dvec(n * out, 4);  // L = sum(y * R), so dL/dy = R
  auto loss = [&] {
    std::vector<double> y(n * out);
    ref::linear_forward(x.data(), W.data(), b.data(), y.data(), n, in, out);
    return dot(y, R);
  };
  std::vector<double> dx(n * in), dW(out * in), db(out);
  ref::linear_backward(R.data(), x.data(), W.data(), dx.data(), dW.data(), db.data(), n, in, out,
                       false);
  EXPECT_LE(rel_error(dx, numeric_grad(x, loss)), 1e-6);
  EXPECT_LE(rel_error(dW, numeric_grad(W, loss)), 1e-6);
  EXPECT_LE(rel_error(db, numeric_grad(b, loss)), 1e-6);
}

// Both CPU GEMMs: the BLAS one and the portable one (what FTUNE_PORTABLE builds use).
class CpuGemmImpl : public ::testing::TestWithParam<bool> {};

TEST_P(CpuGemmImpl, AllTransposesWithPaddedStridesMatchReference) {
  const bool portable = GetParam();
  const int64_t M = 7, N = 37, K = 1001, pad = 3;
  uint64_t seed = 10;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "trans_a=" << ta << " trans_b=" << tb);
      const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
      const auto A = random_vec((ta ? K : M) * lda, ++seed);
      const auto B = random_vec((tb ? N : K) * ldb, ++seed);
      for (float beta : {0.f, 0.5f}) {
        // beta == 0 must overwrite C without reading it, so start from NaN there.
        auto C = beta == 0.f ? std::vector<float>(M * ldc, NAN) : random_vec(M * ldc, ++seed);
        const float sentinel = 12345.f;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = N; j < ldc; ++j) C[i * ldc + j] = sentinel;
        auto ref_c = to_double(C);
        ref::gemm<double>(ta, tb, M, N, K, 0.75, to_double(A).data(), lda, to_double(B).data(), ldb,
                          beta, ref_c.data(), ldc);
        (portable ? cpu::gemm_portable : cpu::gemm)(2, ta, tb, M, N, K, 0.75f, A.data(), lda,
                                                    B.data(), ldb, beta, C.data(), ldc);
        std::vector<double> got, want;
        for (int64_t i = 0; i < M; ++i) {
          for (int64_t j = 0; j < N; ++j) {
            got.push_back(C[i * ldc + j]);
            want.push_back(ref_c[i * ldc + j]);
          }
          for (int64_t j = N; j < ldc; ++j) EXPECT_EQ(C[i * ldc + j], sentinel);
        }
        EXPECT_LE(rel_error(got, want), 1e-5) << "beta=" << beta;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(BlasAndPortable, CpuGemmImpl, ::testing::Values(false, true));

TEST(CpuGemm, EmptyInnerDimensionScalesOrClearsC) {
  std::vector<float> C(6, NAN);
  cpu::gemm(2, false, false, 2, 3, 0, 1.f, nullptr, 1, nullptr, 3, 0.f, C.data(), 3);
  for (float c : C) EXPECT_EQ(c, 0.f);
  C = {1, 2, 3, 4, 5, 6};
  cpu::gemm(2, false, false, 2, 3, 0, 1.f, nullptr, 1, nullptr, 3, 2.f, C.data(), 3);
  EXPECT_EQ(C, (std::vector<float>{2, 4, 6, 8, 10, 12}));
}

TEST(CpuGemm, RejectsLeadingDimensionShorterThanRow) {
  std::vector<float> A(12), B(12), C(12);
  EXPECT_THROW(cpu::gemm(1, false, false, 3, 4, 3, 1.f, A.data(), 2, B.data(), 4, 0.f, C.data(), 4),
               Error);
}

TEST(CpuGemm, ThreadCountsAgree) {
  const int64_t M = 129, N = 257, K = 65;
  const auto A = random_vec(M * K, 20), B = random_vec(K * N, 21);
  std::vector<float> c1(M * N), c2(M * N), c3(M * N);
  cpu::gemm(1, false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, c1.data(), N);
  cpu::gemm(2, false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, c2.data(), N);
  cpu::gemm(1, false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, c3.data(), N);
  // OpenBLAS may round another thread split differently: each run's length-K sums are within K*u.
  EXPECT_LE(rel_error(c2, c1), 2.0 * double(K) * kF32Unit);
  EXPECT_EQ(c3, c1);  // the same call again
}

TEST(CpuLinear, ForwardMatchesReference) {
  const int64_t n = 7, in = 37, out = 1001;
  const auto x = random_vec(n * in, 30), W = random_vec(out * in, 31), b = random_vec(out, 32);
  for (bool with_bias : {false, true}) {
    SCOPED_TRACE(with_bias ? "bias" : "no bias");
    std::vector<float> y(n * out, NAN);
    cpu::linear_forward(2, x.data(), W.data(), with_bias ? b.data() : nullptr, y.data(), n, in,
                        out);
    std::vector<double> ref_y(n * out);
    const auto bd = to_double(b);
    ref::linear_forward(to_double(x).data(), to_double(W).data(), with_bias ? bd.data() : nullptr,
                        ref_y.data(), n, in, out);
    EXPECT_LE(rel_error(to_double(y), ref_y), 1e-5);
  }
}

TEST(CpuLinear, BackwardMatchesReferenceAndAccumulates) {
  const int64_t n = 7, in = 37, out = 101;
  const auto dy = random_vec(n * out, 40), x = random_vec(n * in, 41), W = random_vec(out * in, 42);
  const auto dW0 = random_vec(out * in, 43), db0 = random_vec(out, 44);
  std::vector<double> rdx(n * in), rdW(out * in, 0.0), rdb(out, 0.0);
  ref::linear_backward(to_double(dy).data(), to_double(x).data(), to_double(W).data(), rdx.data(),
                       rdW.data(), rdb.data(), n, in, out, false);

  std::vector<float> dx(n * in, NAN), dW = dW0, db = db0;
  cpu::linear_backward(2, dy.data(), x.data(), W.data(), dx.data(), dW.data(), db.data(), n, in,
                       out, false);
  std::vector<double> want_dW(out * in), want_db(out);
  for (size_t i = 0; i < want_dW.size(); ++i) want_dW[i] = dW0[i] + rdW[i];
  for (size_t i = 0; i < want_db.size(); ++i) want_db[i] = db0[i] + rdb[i];
  EXPECT_LE(rel_error(to_double(dx), rdx), 1e-5);
  EXPECT_LE(rel_error(to_double(dW), want_dW), 1e-5);
  EXPECT_LE(rel_error(to_double(db), want_db), 1e-5);

  // Second call with accumulate_dx: every accumulated output gains the same increment again.
  cpu::linear_backward(2, dy.data(), x.data(), W.data(), dx.data(), dW.data(), db.data(), n, in,
                       out, true);
  for (size_t i = 0; i < rdx.size(); ++i) rdx[i] *= 2;
  for (size_t i = 0; i < want_dW.size(); ++i) want_dW[i] += rdW[i];
  for (size_t i = 0; i < want_db.size(); ++i) want_db[i] += rdb[i];
  EXPECT_LE(rel_error(to_double(dx), rdx), 1e-5);
  EXPECT_LE(rel_error(to_double(dW), want_dW), 1e-5);
  EXPECT_LE(rel_error(to_double(db), want_db), 1e-5);
}

TEST(CpuLinear, NullOutputsAreSkipped) {
  const int64_t n = 5, in = 6, out = 7;
  const auto dy = random_vec(n * out, 50), x = random_vec(n * in, 51), W = random_vec(out * in, 52);
  std::vector<double> rdx(n * in), rdW(out * in, 0.0), rdb(out, 0.0);
  ref::linear_backward(to_double(dy).data(), to_double(x).data(), to_double(W).data(), rdx.data(),
                       rdW.data(), rdb.data(), n, in, out, false);

  std::vector<float> dx(n * in, NAN);
  cpu::linear_backward(2, dy.data(), x.data(), W.data(), dx.data(), nullptr, nullptr, n, in, out,
                       false);
  EXPECT_LE(rel_error(to_double(dx), rdx), 1e-5);

  std::vector<float> dW(out * in, 0.f);
  cpu::linear_backward(2, dy.data(), x.data(), W.data(), nullptr, dW.data(), nullptr, n, in, out,
                       false);
  EXPECT_LE(rel_error(to_double(dW), rdW), 1e-5);

  std::vector<float> db(out, 0.f);
  cpu::linear_backward(2, dy.data(), x.data(), W.data(), nullptr, nullptr, db.data(), n, in, out,
                       false);
  EXPECT_LE(rel_error(to_double(db), rdb), 1e-5);
}

TEST(CpuLinear, BiasGradientIsBitwiseIndependentOfThreads) {
  // Large enough to take the parallel path.
  const int64_t n = 1000, in = 3, out = 301;
  const auto dy = random_vec(n * out, 60), x = random_vec(n * in, 61), W = random_vec(out * in, 62);
  std::vector<float> db1(out, 0.f), db2(out, 0.f), db3(out, 0.f);
  cpu::linear_backward(1, dy.data(), x.data(), W.data(), nullptr, nullptr, db1.data(), n, in, out,
                       false);
  cpu::linear_backward(2, dy.data(), x.data(), W.data(), nullptr, nullptr, db2.data(), n, in, out,
                       false);
  cpu::linear_backward(2, dy.data(), x.data(), W.data(), nullptr, nullptr, db3.data(), n, in, out,
                       false);
  EXPECT_EQ(0, std::memcmp(db1.data(), db2.data(), out * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(db2.data(), db3.data(), out * sizeof(float)));
  std::vector<double> rdb(out, 0.0);
  ref::linear_backward<double>(to_double(dy).data(), nullptr, nullptr, nullptr, nullptr, rdb.data(),
                               n, in, out, false);
  EXPECT_LE(rel_error(to_double(db1), rdb), 1e-6);
}

}  // namespace
}  // namespace ftune
