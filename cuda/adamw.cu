// AdamW for the CUDA backend: one launch over every span of the flat buffers. The spans (with
// each span's decay factor) live on the device, sorted by their start in the concatenation of
// all spans; each thread finds its span by binary search. The update is the CPU backend's
// (engine/backend/cpu/cpu_adamw.cpp, torch.optim.AdamW's single-tensor path) operation for
// operation: explicit fma where it has std::fma and _rn arithmetic elsewhere (nvcc may not contract
// them), so a step agrees with the CPU's to about an ulp.
#include "cuda/cuda_ops.h"
#include "engine/base/error.h"

namespace ftune::cuda {
namespace {

constexpr unsigned kBlock = 256;

__device__ __forceinline__ int find_span(const DeviceSpan* spans, int n_spans,
                                         unsigned long long t) {
  // Last span whose start <= t (spans of zero elements share a start with the next one and are
  // skipped by taking the last).
  int lo = 0, hi = n_spans - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (spans[mid].start <= t) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g,
                             float* __restrict__ m, float* __restrict__ v,
                             const DeviceSpan* __restrict__ spans, int n_spans,
                             unsigned long long total, AdamWCoeffs k,
                             __nv_bfloat16* __restrict__ p16) {
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (unsigned long long)gridDim.x * blockDim.x) {
    const DeviceSpan sp = spans[find_span(spans, n_spans, t)];
    const size_t i = size_t(sp.offset + (t - sp.start));
    const float gi = __fmul_rn(g[i], k.gs);
    const float mo = m[i];
    const float diff = __fsub_rn(gi, mo);
    const float mi = k.lerp_from_m ? fmaf(k.w1, diff, mo) : fmaf(-diff, __fsub_rn(1.f, k.w1), gi);
    const float vi = fmaf(__fmul_rn(k.w2, gi), gi, __fmul_rn(v[i], k.b2));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), k.bc2_sqrt), k.eps);
    const float upd = __fdiv_rn(__fmul_rn(-k.step_size, mi), denom);
    const float pi = __fadd_rn(__fmul_rn(p[i], sp.decay), upd);
    p[i] = pi;
    if (p16) p16[i] = __float2bfloat16_rn(pi);
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

void adamw_step(cudaStream_t s, float* p, const float* g, float* m, float* v,
                const DeviceSpan* spans, int n_spans, unsigned long long total,
                const AdamWCoeffs& k, __nv_bfloat16* p16) {
  if (n_spans <= 0 || total == 0) return;
  adamw_kernel<<<grid_for(size_t(total), kBlock, 8192), kBlock, 0, s>>>(p, g, m, v, spans, n_spans,
                                                                        total, k, p16);
  check_launch("adamw_kernel", "adamw_step");
}

}  // namespace ftune::cuda
