// Rotary position embedding (HF Llama "rotate_half" layout) for the CPU backend, in place on
// x[N, heads, head_dim]. Pair i of a head is (x[i], x[i + head_dim/2]), rotated by
// positions[t] * inv_freq[i]; the backward pass rotates by the negative angle (the transpose).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/base/error.h"

namespace ftune::cpu {
namespace {

constexpr int64_t kParallelMin = int64_t(1) << 14;
constexpr double kTwoPi = 6.283185307179586476925286766559;

// sign = +1 forward, -1 backward.
void rope_rotate(int threads, float* x, const int32_t* positions, const float* inv_freq, int64_t n,
                 int heads, int head_dim, float sign) {
  FTUNE_CHECK(head_dim > 0 && head_dim % 2 == 0, "RoPE needs an even head_dim");
  const int half = head_dim / 2;
  const int64_t work = n * heads * head_dim;
  const int t = work >= kParallelMin ? std::max(threads, 1) : 1;
#pragma omp parallel num_threads(t) if (t > 1)
  {
    // One cos/sin table per token, shared by all heads: trig costs half calls per token rather
    // than per head. Allocated once per thread, outside the token loop.
    std::vector<float> cos_t(half), sin_t(half);
#pragma omp for schedule(static)
    for (int64_t tok = 0; tok < n; ++tok) {
      const double pos = positions[tok];
      for (int i = 0; i < half; ++i) {
        // The angle reaches ~1e5 rad at long context; float would keep only ~1e-2 rad of it.
        // Reduce to [-pi, pi] in double, then float trig is accurate to an ulp.
        const double angle = pos * double(inv_freq[i]);
        const float a = float(angle - kTwoPi * std::nearbyint(angle / kTwoPi));
        cos_t[i] = std::cos(a);
        sin_t[i] = sign * std::sin(a);
      }
      const float* c = cos_t.data();
      const float* s = sin_t.data();
      for (int h = 0; h < heads; ++h) {
        float* x1 = x + (tok * heads + h) * head_dim;
        float* x2 = x1 + half;
#pragma omp simd
        for (int i = 0; i < half; ++i) {
          const float a = x1[i], b = x2[i];
          x1[i] = a * c[i] - b * s[i];
          x2[i] = b * c[i] + a * s[i];
        }
      }
    }
  }
}

}  // namespace

void rope_forward(int threads, float* x, const int32_t* positions, const float* inv_freq, int64_t n,
                  int heads, int head_dim) {
  rope_rotate(threads, x, positions, inv_freq, n, heads, head_dim, 1.f);
}

void rope_backward(int threads, float* dx, const int32_t* positions, const float* inv_freq,
                   int64_t n, int heads, int head_dim) {
  rope_rotate(threads, dx, positions, inv_freq, n, heads, head_dim, -1.f);
}

}  // namespace ftune::cpu
