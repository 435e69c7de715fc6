#include "engine/backend/adamw_coeffs.h"

#include <cmath>

#include "engine/base/error.h"

namespace ftune {

AdamWCoeffs adamw_coeffs(const AdamWHyper& h) {
  FTUNE_CHECK(h.step >= 1, "adamw_step: step is 1-based");
  AdamWCoeffs k;
  const double bc1 = 1.0 - std::pow(double(h.beta1), double(h.step));
  const double bc2 = 1.0 - std::pow(double(h.beta2), double(h.step));
  k.step_size = float(double(h.lr) / bc1);
  k.bc2_sqrt = float(std::sqrt(bc2));
  k.w1 = float(1.0 - double(h.beta1));
  k.b2 = h.beta2;
  k.w2 = float(1.0 - double(h.beta2));
  k.eps = h.eps;
  k.gs = h.grad_scale;
  k.lerp_from_m = std::abs(k.w1) < 0.5f ? 1 : 0;
  return k;
}

float adamw_decay(const AdamWHyper& h, float weight_decay) {
  return float(1.0 - double(h.lr) * double(weight_decay));
}

}  // namespace ftune
