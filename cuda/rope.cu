// Rotary position embedding (HF "rotate_half" layout) for the CUDA backend, in place on
// x[N, heads, head_dim]: pair i of a head is (x[i], x[i + head_dim/2]), rotated by
// positions[t] * inv_freq[i]; backward rotates by the negative angle (the transpose).
// One block per token: its cos/sin table (head_dim/2 entries) is computed once into shared memory
// and used by every head. As on the CPU, the angle is reduced to [-pi, pi] in double first: at
// long context it reaches ~1e5 rad, of which float keeps only ~1e-2 rad.
#include <climits>
#include <string>

#include "cuda/cuda_ops.h"
#include "engine/base/error.h"

namespace ftune::cuda {
namespace {

constexpr int kThreads = 128;
constexpr double kTwoPi = 6.283185307179586476925286766559;

template <class T>
__global__ void __launch_bounds__(kThreads)
    rope_kernel(T* __restrict__ x, const int32_t* __restrict__ positions,
                const float* __restrict__ inv_freq, int heads, int head_dim, float sign) {
  extern __shared__ float table[];  // cos[half], then sign * sin[half]
  const int half = head_dim / 2;
  const int64_t t = blockIdx.x;
  const double pos = positions[t];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const double angle = pos * double(inv_freq[i]);
    const float a = float(angle - kTwoPi * rint(angle / kTwoPi));
    table[i] = cosf(a);
    table[half + i] = sign * sinf(a);
  }
  __syncthreads();
  T* xt = x + t * int64_t(heads) * head_dim;
  const int pairs = heads * half;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int h = p / half, i = p - h * half;
    T* x1 = xt + int64_t(h) * head_dim + i;
    T* x2 = x1 + half;
    const float a = float(*x1), b = float(*x2);
    const float c = table[i], s = table[half + i];
    *x1 = T(a * c - b * s);
    *x2 = T(b * c + a * s);
  }
}

}  // namespace

void rope_rotate(cudaStream_t s, float* x, const int32_t* positions, const float* inv_freq,
                 int64_t n, int heads, int head_dim, int sign) {
  FTUNE_CHECK(head_dim > 0 && head_dim % 2 == 0, "RoPE needs an even head_dim");
  if (n <= 0 || heads <= 0) return;
  FTUNE_CHECK(n <= INT_MAX, "rope: too many tokens");
  const size_t shared = size_t(head_dim) * sizeof(float);
  FTUNE_CHECK(shared <= 48 * 1024, "rope: head_dim " + std::to_string(head_dim) + " too large");
  rope_kernel<float>
      <<<unsigned(n), kThreads, shared, s>>>(x, positions, inv_freq, heads, head_dim, float(sign));
  check_launch("rope_kernel", sign > 0 ? "rope_forward" : "rope_backward");
}

}  // namespace ftune::cuda
