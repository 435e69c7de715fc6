// RMSNorm forward and backward for the CUDA backend. One block per row; row reductions in double
// (as the CPU backend) through a fixed reduction tree. The weight gradient is a column sum over
// rows done in two fixed-order passes (per-chunk partials, then chunks in order), so it is
// bitwise reproducible; no atomics.
#include <climits>

#include "cuda/cuda_ops.h"
#include "engine/base/error.h"

namespace ftune::cuda {
namespace {

constexpr int kThreads = 256;

// y may alias x: every element is read and then written by the same thread.
template <class T>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_forward_kernel(const T* x, const T* __restrict__ w, T* y, float* __restrict__ rstd,
                           int64_t dim, float eps) {
  __shared__ double sh[32];
  const int64_t r = blockIdx.x;
  const T* xr = x + r * dim;
  T* yr = y + r * dim;
  double ss = 0.0;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    const double v = double(xr[c]);
    ss += v * v;
  }
  ss = block_sum(ss, sh);
  const float rs = float(1.0 / sqrt(ss / double(dim) + double(eps)));
  if (threadIdx.x == 0) rstd[r] = rs;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x)
    yr[c] = T(float(xr[c]) * rs * float(w[c]));
}

// dx = rstd * dy * w - x * rstd^3 * mean(dy * w * x). dx may alias dy: the block reads its whole
// dy row (the dot) before the barrier in block_sum, then each thread writes only what it reads.
template <class T>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_dx_kernel(const T* dy, const T* __restrict__ x, const T* __restrict__ w,
                      const float* __restrict__ rstd, T* dx, int64_t dim) {
  __shared__ double sh[32];
  const int64_t r = blockIdx.x;
  const T* dyr = dy + r * dim;
  const T* xr = x + r * dim;
  T* dxr = dx + r * dim;
  double dot = 0.0;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x)
    dot += double(float(dyr[c]) * float(w[c])) * double(xr[c]);
  dot = block_sum(dot, sh);
  const double rs = rstd[r];
  const float coef = float(rs * rs * rs * dot / double(dim));
  const float rsf = rstd[r];
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x)
    dxr[c] = T(rsf * (float(dyr[c]) * float(w[c])) - float(xr[c]) * coef);
}

template <class T>
struct DwTerm {
  const T* dy;
  const T* x;
  const float* rstd;
  int64_t dim;
  __device__ double operator()(int64_t r, int64_t c) const {
    const int64_t i = r * dim + c;
    return double(float(dy[i]) * float(x[i])) * double(rstd[r]);
  }
};

}  // namespace

void rmsnorm_forward(cudaStream_t s, const float* x, const float* w, float* y, float* rstd,
                     int64_t rows, int64_t dim, float eps) {
  if (rows <= 0 || dim <= 0) return;
  FTUNE_CHECK(rows <= INT_MAX, "rmsnorm_forward: too many rows");
  rmsnorm_forward_kernel<float><<<unsigned(rows), kThreads, 0, s>>>(x, w, y, rstd, dim, eps);
  check_launch("rmsnorm_forward_kernel", "rmsnorm_forward");
}

size_t rmsnorm_dw_partials(int64_t rows, int64_t dim) {
  return column_sum_partials(rows, dim);
}

void rmsnorm_backward(cudaStream_t s, const float* dy, const float* x, const float* w,
                      const float* rstd, float* dx, float* dw, int64_t rows, int64_t dim,
                      double* partials) {
  if (rows <= 0 || dim <= 0) return;
  FTUNE_CHECK(rows <= INT_MAX, "rmsnorm_backward: too many rows");
  // dw first, so that dx may alias dy.
  if (dw) {
    launch_column_partials(s, DwTerm<float>{dy, x, rstd, dim}, rows, dim, partials,
                           "rmsnorm_backward");
    column_finish(s, partials, column_chunks(rows), dim, dw);
  }
  rmsnorm_dx_kernel<float><<<unsigned(rows), kThreads, 0, s>>>(dy, x, w, rstd, dx, dim);
  check_launch("rmsnorm_dx_kernel", "rmsnorm_backward");
}

}  // namespace ftune::cuda
