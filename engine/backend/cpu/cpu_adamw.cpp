// AdamW for the CPU backend, over spans of the flat parameter buffer.
//
// The update follows torch.optim.AdamW (single-tensor path) operation for operation, so that a
// run here tracks a PyTorch run as closely as fp32 allows:
//   p *= 1 - lr * wd                       decoupled decay, applied to the pre-step parameter
//   m  = m + (1 - b1) * (g - m)            torch's lerp_ (its form for weights below 0.5)
//   v  = v * b2 + (1 - b2) * g * g         torch's mul_ then addcmul_
//   p += (-(lr / bc1) * m) / (sqrt(v) / sqrt(bc2) + eps)   torch's addcdiv_
// with bc = 1 - beta^step evaluated in double like PyTorch's Python scalars. ATen's vectorised
// CPU kernels fuse the lerp and addcmul into FMAs, so we do too; given the same fp32
// hyper-parameters a step agrees with PyTorch's to about an ulp. Mathematically this is
// p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p) (see ref::adamw_step).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine/backend/adamw_coeffs.h"
#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cpu/parallel.h"
#include "engine/base/error.h"

namespace ftune::cpu {
namespace {

// torch's lerp switches formula at weight 0.5; the choice is a template parameter so the loop
// body has no branch (a float select would block vectorisation under -ftrapping-math). The loop
// vectorises when built with -fno-math-errno; otherwise GCC keeps sqrt scalar for errno's sake.
template <bool kLerpFromM>
void adamw_span(float* p, const float* g, float* m, float* v, size_t count, const AdamWCoeffs& k,
                float decay) {
  // Static schedule; the implicit barrier keeps overlapping spans (a caller bug) race-free.
  // Element i reads only element i (no reduction), so any thread split gives the same bits.
#pragma omp for simd schedule(static)
  for (size_t i = 0; i < count; ++i) {
    const float gi = g[i] * k.gs;
    const float mi =
        kLerpFromM ? std::fma(k.w1, gi - m[i], m[i]) : std::fma(-(gi - m[i]), 1.f - k.w1, gi);
    const float vi = std::fma(k.w2 * gi, gi, v[i] * k.b2);
    const float denom = std::sqrt(vi) / k.bc2_sqrt + k.eps;
    p[i] = p[i] * decay + -k.step_size * mi / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

void adamw_step(int threads, float* params, const float* grads, float* m, float* v,
                const ParamSpan* spans, int n_spans, const AdamWHyper& h) {
  const AdamWCoeffs k = adamw_coeffs(h);  // the scalars every backend uses (adamw_coeffs.h)
  size_t total = 0;
  for (int s = 0; s < n_spans; ++s) total += spans[s].count;
  const int t = team(threads, int64_t(total));
#pragma omp parallel num_threads(t) if (t > 1)
  for (int s = 0; s < n_spans; ++s) {
    const ParamSpan& sp = spans[s];
    const float decay = adamw_decay(h, sp.weight_decay);
    if (k.lerp_from_m) {
      adamw_span<true>(params + sp.offset, grads + sp.offset, m + sp.offset, v + sp.offset,
                       sp.count, k, decay);
    } else {
      adamw_span<false>(params + sp.offset, grads + sp.offset, m + sp.offset, v + sp.offset,
                        sp.count, k, decay);
    }
  }
}

}  // namespace ftune::cpu
