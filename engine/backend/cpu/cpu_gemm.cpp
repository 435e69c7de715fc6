// Matrix products for the CPU backend: a row-major wrapper over OpenBLAS sgemm (or, in portable
// builds without OpenBLAS, a plain blocked GEMM), and nn.Linear's forward and backward on it.
#ifndef FTUNE_NO_BLAS
#include <cblas.h>
#endif

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/base/error.h"

namespace ftune::cpu {
namespace {

#ifndef FTUNE_NO_BLAS
// openblas_set_num_threads takes a lock and may resize OpenBLAS's pool, so only call it when the
// requested count changes. Every GEMM in the CPU backend goes through gemm() below, so this cache
// is the only writer of OpenBLAS's thread count.
std::atomic<int> g_blas_threads{0};

void set_blas_threads(int threads) {
  const int t = std::max(threads, 1);
  if (g_blas_threads.load(std::memory_order_relaxed) != t) {
    openblas_set_num_threads(t);
    g_blas_threads.store(t, std::memory_order_relaxed);
  }
}
#endif

}  // namespace

// Portable builds (FTUNE_PORTABLE) carry no BLAS: C = alpha op(A) op(B) + beta C in i-k-j order,
// rows of C split across threads, the inner loop contiguous in B and C so it vectorises. op(B)
// is transposed into a scratch copy first when needed. Correct and deterministic, not fast: it
// serves machines that run the GPU checks, where the CPU is only the reference.
void gemm_portable(int threads, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                   float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                   float beta, float* C, int64_t ldc) {
  std::vector<float> bt;
  const float* Bk = B;  // row k of op(B) starts at Bk + k * ldbk
  int64_t ldbk = ldb;
  if (trans_b) {
    bt.resize(size_t(K * N));
    for (int64_t j = 0; j < N; ++j)
      for (int64_t k = 0; k < K; ++k) bt[size_t(k * N + j)] = B[j * ldb + k];
    Bk = bt.data();
    ldbk = N;
  }
#pragma omp parallel for schedule(static) \
    num_threads(std::max(threads, 1)) if (threads > 1 && M > 1)
  for (int64_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (beta == 0.f) {
      std::memset(c, 0, size_t(N) * sizeof(float));
    } else if (beta != 1.f) {
      for (int64_t j = 0; j < N; ++j) c[j] *= beta;
    }
    for (int64_t k = 0; k < K; ++k) {
      const float a = alpha * (trans_a ? A[k * lda + i] : A[i * lda + k]);
      const float* b = Bk + k * ldbk;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) c[j] += a * b[j];
    }
  }
}

namespace {

void check_blas_dim(int64_t v, const char* what) {
  FTUNE_CHECK(v >= 0 && v <= INT_MAX,
              std::string("gemm ") + what + " = " + std::to_string(v) + " is outside [0, INT_MAX]");
}

// dbias[o] += sum_i dy[i, o]. Columns are split into blocks owned by one thread each, and every
// block walks the rows in order, so the result does not depend on the thread count.
void column_sums(int threads, const float* dy, float* dbias, int64_t n, int64_t out) {
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (out + kBlock - 1) / kBlock;
  const bool parallel = threads > 1 && blocks > 1 && n * out >= (int64_t(1) << 16);
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * kBlock;
    const int64_t width = std::min(kBlock, out - c0);
    double acc[kBlock] = {};
    for (int64_t i = 0; i < n; ++i) {
      const float* row = dy + i * out + c0;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) acc[c] += double(row[c]);
    }
    for (int64_t c = 0; c < width; ++c) dbias[c0 + c] = float(double(dbias[c0 + c]) + acc[c]);
  }
}

}  // namespace

void gemm(int threads, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc) {
  check_blas_dim(M, "M");
  check_blas_dim(N, "N");
  check_blas_dim(K, "K");
  if (M == 0 || N == 0) return;
  // Row-major leading dimensions are the stored row lengths; cblas would only print a complaint.
  FTUNE_CHECK(lda >= std::max<int64_t>(1, trans_a ? M : K) && lda <= INT_MAX, "gemm lda too small");
  FTUNE_CHECK(ldb >= std::max<int64_t>(1, trans_b ? K : N) && ldb <= INT_MAX, "gemm ldb too small");
  FTUNE_CHECK(ldc >= N && ldc <= INT_MAX, "gemm ldc too small");
  if (K == 0) {
    if (beta == 1.f) return;
    // No products to add: C = beta * C, with beta == 0 overwriting whatever C held (even NaN).
    for (int64_t i = 0; i < M; ++i) {
      float* row = C + i * ldc;
      if (beta == 0.f) {
        std::memset(row, 0, size_t(N) * sizeof(float));
      } else {
        for (int64_t j = 0; j < N; ++j) row[j] *= beta;
      }
    }
    return;
  }
#ifdef FTUNE_NO_BLAS
  gemm_portable(threads, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
  // Bitwise only call for call: for one (M, N, K, transposes, thread count) on one OpenBLAS core,
  // each element's K-sum runs in a fixed order whatever the values (so rows whose inputs did not
  // change repeat exactly). Another M (other chunking), thread count or core (another CPU,
  // OPENBLAS_CORETYPE) may round differently: tests compare those within K * 2^-24.
  set_blas_threads(threads);
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, int(M), int(N), int(K), alpha, A, int(lda), B,
              int(ldb), beta, C, int(ldc));
#endif
}

void linear_forward(int threads, const float* x, const float* W, const float* bias, float* y,
                    int64_t n, int64_t in, int64_t out) {
  if (n == 0 || out == 0) return;
  threads = std::max(threads, 1);
  if (bias) {
    // Seed y with the bias and let the GEMM accumulate onto it (beta = 1): no second pass.
    for (int64_t i = 0; i < n; ++i) std::memcpy(y + i * out, bias, size_t(out) * sizeof(float));
  }
  gemm(threads, false, true, n, out, in, 1.f, x, in, W, in, bias ? 1.f : 0.f, y, out);
}

void linear_backward(int threads, const float* dy, const float* x, const float* W, float* dx,
                     float* dW, float* dbias, int64_t n, int64_t in, int64_t out,
                     bool accumulate_dx) {
  threads = std::max(threads, 1);
  // dx[n,in] = dy[n,out] * W[out,in]
  if (dx)
    gemm(threads, false, false, n, in, out, 1.f, dy, out, W, in, accumulate_dx ? 1.f : 0.f, dx, in);
  // dW[out,in] += dy^T[out,n] * x[n,in]
  if (dW) gemm(threads, true, false, out, in, n, 1.f, dy, out, x, in, 1.f, dW, in);
  if (dbias) column_sums(threads, dy, dbias, n, out);
}

}  // namespace ftune::cpu
