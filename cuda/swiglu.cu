// SwiGLU for the CUDA backend: h = silu(gate) * up, elementwise, and its backward. The formulas
// follow the CPU backend's (engine/backend/cpu/cpu_elementwise.cpp), including its
// cancellation-free 1 - sigmoid(g).
#include "cuda/cuda_ops.h"

namespace ftune::cuda {
namespace {

constexpr unsigned kBlock = 256;

template <class T>
__global__ void swiglu_forward_kernel(const T* gate, const T* up, T* h, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float g = float(gate[i]);
    const float s = 1.f / (1.f + expf(-g));  // exp overflows to inf for g << 0: s = 0 exactly
    h[i] = T(g * s * float(up[i]));
  }
}

// d silu(g)/dg = s * (1 + g * (1 - s)). 1 - s is taken as e * s = e / (1 + e) for g >= 0, where
// s is near 1 and 1 - s would cancel, and as 1 - s for g < 0, where e may be inf.
// All inputs of element i are read before its outputs are written, so the outputs may alias the
// inputs element for element.
template <class T>
__global__ void swiglu_backward_kernel(const T* dh, const T* gate, const T* up, T* dgate, T* dup,
                                       size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float g = float(gate[i]), u = float(up[i]), d = float(dh[i]);
    const float e = expf(-g);
    const float s = 1.f / (1.f + e);
    const float one_minus_s = g < 0.f ? 1.f - s : e * s;
    dgate[i] = T(d * u * s * (1.f + g * one_minus_s));
    dup[i] = T(d * (g * s));
  }
}

}  // namespace

void swiglu_forward(cudaStream_t s, const float* gate, const float* up, float* h, size_t n) {
  if (n == 0) return;
  swiglu_forward_kernel<float><<<grid_for(n, kBlock), kBlock, 0, s>>>(gate, up, h, n);
  check_launch("swiglu_forward_kernel", "swiglu_forward");
}

void swiglu_backward(cudaStream_t s, const float* dh, const float* gate, const float* up,
                     float* dgate, float* dup, size_t n) {
  if (n == 0) return;
  swiglu_backward_kernel<float><<<grid_for(n, kBlock), kBlock, 0, s>>>(dh, gate, up, dgate, dup, n);
  check_launch("swiglu_backward_kernel", "swiglu_backward");
}

}  // namespace ftune::cuda
