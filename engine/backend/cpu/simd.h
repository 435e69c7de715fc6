// Fixed-width float vectors for the CPU kernels that need a vector exp (softmax in attention and
// in the LM head loss). GCC vector extensions keep the code portable; with AVX2+FMA (the build's
// baseline) one VF is one ymm register. Everything here is inline: each kernel file gets the
// helpers compiled into its own loops with no call overhead.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace ftune::cpu::simd {

#if defined(__AVX__)
inline constexpr int kLanes = 8;
#else
inline constexpr int kLanes = 4;
#endif
using VF = float __attribute__((vector_size(kLanes * sizeof(float))));
using VI = int32_t __attribute__((vector_size(kLanes * sizeof(int32_t))));

// Unaligned; memcpy compiles to a single vector move.
inline VF load(const float* p) {
  VF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, VF v) {
  std::memcpy(p, &v, sizeof v);
}

inline VF splat(float x) {
#if defined(__AVX__)
  return _mm256_set1_ps(x);
#else
  return VF{x, x, x, x};
#endif
}

// ISO C++ mode turns off contraction of a*b+c, so ask for the fused instruction explicitly.
inline VF fmadd(VF a, VF b, VF c) {
#if defined(__AVX__) && defined(__FMA__)
  return _mm256_fmadd_ps(a, b, c);
#else
  return a * b + c;
#endif
}

// e^x in every lane, to about 1 ulp for the x <= ~0 that softmax feeds it; lanes below -87 give
// exactly 0 (e^-87 is at the bottom of the normal range) and lanes above 88 are clamped to 88.
// e^x = 2^n e^r with n = round(x/ln2), |r| <= ln2/2, and e^r from its degree-7 Taylor polynomial
// (truncation error < 6e-9).
inline VF exp_lanes(VF x) {
  const VF lo = splat(-87.f), hi = splat(88.f);
  const VI underflow = x < lo;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  // Adding 1.5 * 2^23 leaves round(x / ln2) in the low mantissa bits; subtracting it back gives
  // that integer as a float.
  const VF shifter = splat(0x1.8p23f);
  const VF n = fmadd(x, splat(1.44269504088896341f), shifter) - shifter;
  // ln2 split in two so that n * ln2_hi is exact for |n| <= 128.
  VF r = fmadd(n, splat(-0.693145751953125f), x);
  r = fmadd(n, splat(-1.42860682030941723e-6f), r);
  VF p = splat(1.f / 5040.f);
  p = fmadd(p, r, splat(1.f / 720.f));
  p = fmadd(p, r, splat(1.f / 120.f));
  p = fmadd(p, r, splat(1.f / 24.f));
  p = fmadd(p, r, splat(1.f / 6.f));
  p = fmadd(p, r, splat(0.5f));
  p = fmadd(p, r, splat(1.f));
  p = fmadd(p, r, splat(1.f));
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  VF pow2;
  std::memcpy(&pow2, &bits, sizeof pow2);
  const VF result = p * pow2;
  return underflow ? VF{} : result;
}

// Lanes added in lane order, so the result does not depend on how the compiler schedules it.
inline float lane_sum(VF v) {
  float s = 0.f;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

// max over x[0..n); -inf for n == 0.
inline float row_max(const float* x, int64_t n) {
  float m = -INFINITY;
  int64_t j = 0;
  if (n >= kLanes) {
    VF mv = load(x);
    for (j = kLanes; j + kLanes <= n; j += kLanes) {
      const VF v = load(x + j);
      mv = v > mv ? v : mv;
    }
    for (int l = 0; l < kLanes; ++l) m = std::max(m, mv[l]);
  }
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

}  // namespace ftune::cpu::simd
