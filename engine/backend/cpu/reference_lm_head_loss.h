// Plain scalar statement of the fused LM head + cross-entropy op: the ground truth the chunked
// CPU kernel (cpu_lm_head_loss.cpp) is tested against, templated so tests can run it in double.
// One token at a time, one logits row held; for tests only.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/base/error.h"

namespace ftune::ref {

// logits_i = W hidden_i; loss_i = logsumexp(logits_i) - logits_i[target_i] for targets other
// than kIgnoreIndex. With dhidden: dlogits_i = grad_scale * (softmax(logits_i) - onehot), zero
// for ignored tokens; dhidden = dlogits W (=), dW += dlogits^T hidden when dW is not null.
template <class T>
LossSum lm_head_loss(const T* hidden, const T* W, const int32_t* targets, int64_t n, int64_t d,
                     int64_t vocab, T grad_scale, T* dhidden, T* dW) {
  LossSum total;
  std::vector<T> logits(size_t(vocab), T(0));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = targets[i];
    T* dh = dhidden ? dhidden + i * d : nullptr;
    if (dh) std::fill(dh, dh + d, T(0));
    if (t == kIgnoreIndex) continue;
    if (t < 0 || t >= vocab) {
      throw Error("reference lm_head_loss: token " + std::to_string(i) + " has target " +
                  std::to_string(t) + " outside [0, " + std::to_string(vocab) + ")");
    }
    const T* h = hidden + i * d;
    T m = -INFINITY;
    for (int64_t c = 0; c < vocab; ++c) {
      T acc = 0;
      for (int64_t k = 0; k < d; ++k) acc += h[k] * W[c * d + k];
      logits[c] = acc;
      m = std::max(m, acc);
    }
    T sum = 0;
    for (int64_t c = 0; c < vocab; ++c) sum += std::exp(logits[c] - m);
    const T lse = m + std::log(sum);
    total.loss += double(lse - logits[t]);
    ++total.tokens;
    if (!dh) continue;
    for (int64_t c = 0; c < vocab; ++c) {
      const T g = grad_scale * (std::exp(logits[c] - lse) - (c == t ? T(1) : T(0)));
      for (int64_t k = 0; k < d; ++k) {
        dh[k] += g * W[c * d + k];
        if (dW) dW[c * d + k] += g * h[k];
      }
    }
  }
  return total;
}

}  // namespace ftune::ref
