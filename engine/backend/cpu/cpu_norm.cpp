// RMSNorm forward and backward for the CPU backend. Row reductions are accumulated in double
// (vectorised), which keeps rstd accurate for wide rows at little cost in a memory-bound op.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cpu/parallel.h"

namespace ftune::cpu {
namespace {

// Columns per dw block: each block's double accumulators stay in L1 while all rows stream past.
constexpr int64_t kDwBlock = 256;

}  // namespace

void rmsnorm_forward(int threads, const float* x, const float* w, float* y, float* rstd,
                     int64_t rows, int64_t dim, float eps) {
  const int t = team(threads, rows * dim);
  // Rows are independent, so the result is the same for every thread count; y may alias x.
#pragma omp parallel for schedule(static) num_threads(t) if (t > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < dim; ++c) ss += double(xr[c]) * double(xr[c]);
    const float rs = float(1.0 / std::sqrt(ss / double(dim) + double(eps)));
    rstd[r] = rs;
#pragma omp simd
    for (int64_t c = 0; c < dim; ++c) yr[c] = xr[c] * rs * w[c];
  }
}

// dx = rstd * dy * w - x * rstd^3 * mean(dy * w * x)   (row-wise)
// dw += sum over rows of dy * x * rstd
void rmsnorm_backward(int threads, const float* dy, const float* x, const float* w,
                      const float* rstd, float* dx, float* dw, int64_t rows, int64_t dim) {
  const int t = team(threads, rows * dim);
  const int64_t blocks = (dim + kDwBlock - 1) / kDwBlock;
#pragma omp parallel num_threads(t) if (t > 1)
  {
    // dw first, so that dx may alias dy. Each column block belongs to one thread and sums rows in
    // order, so dw is bitwise the same for every thread count.
#pragma omp for schedule(static)
    for (int64_t b = 0; b < (dw ? blocks : 0); ++b) {
      const int64_t c0 = b * kDwBlock;
      const int64_t width = std::min(kDwBlock, dim - c0);
      double acc[kDwBlock] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const float* dyr = dy + r * dim + c0;
        const float* xr = x + r * dim + c0;
        const double rs = rstd[r];
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) acc[c] += double(dyr[c] * xr[c]) * rs;
      }
      for (int64_t c = 0; c < width; ++c) dw[c0 + c] = float(double(dw[c0 + c]) + acc[c]);
    }
    // The implicit barrier above orders every read of dy before any write of dx.
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* dyr = dy + r * dim;
      const float* xr = x + r * dim;
      float* dxr = dx + r * dim;
      double dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t c = 0; c < dim; ++c) dot += double(dyr[c] * w[c]) * double(xr[c]);
      const double rs = rstd[r];
      const float coef = float(rs * rs * rs * dot / double(dim));
      const float rsf = rstd[r];
#pragma omp simd
      for (int64_t c = 0; c < dim; ++c) dxr[c] = rsf * (dyr[c] * w[c]) - xr[c] * coef;
    }
  }
}

}  // namespace ftune::cpu
