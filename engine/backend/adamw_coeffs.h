// The scalars of one AdamW step, shared by every backend: the CPU update
// (backend/cpu/cpu_adamw.cpp) and the CUDA kernel (cuda/adamw.cu) read the same numbers, formed
// in double and rounded once, as PyTorch forms them from its Python floats.
#pragma once
#include "engine/backend/backend.h"

namespace ftune {

struct AdamWCoeffs {
  float w1 = 0;  // 1 - beta1: the lerp weight of m toward the gradient
  float b2 = 0;  // beta2
  float w2 = 0;  // 1 - beta2
  float eps = 0;
  float gs = 1;         // gradient scale (clipping folded in)
  float step_size = 0;  // lr / (1 - beta1^step)
  float bc2_sqrt = 0;   // sqrt(1 - beta2^step)
  int lerp_from_m = 1;  // torch's lerp_ formula: from m when |w1| < 0.5, else from g
};

// Throws for step < 1 (the step is 1-based for bias correction).
AdamWCoeffs adamw_coeffs(const AdamWHyper& h);
// A span's decoupled decay factor, 1 - lr * weight_decay.
float adamw_decay(const AdamWHyper& h, float weight_decay);

}  // namespace ftune
