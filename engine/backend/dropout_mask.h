// The dropout mask every backend draws: a counter-based hash of (seed, element), so backward
// recomputes the mask instead of storing it, any thread order agrees, and the CPU and CUDA
// backends keep the same elements (tests compare their masks bit for bit).
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define FTUNE_HOST_DEVICE __host__ __device__
#else
#define FTUNE_HOST_DEVICE
#endif

namespace ftune {

// splitmix64's finaliser over seed + golden-ratio increments, top 53 bits.
FTUNE_HOST_DEVICE inline uint64_t dropout_hash(uint64_t seed, uint64_t i) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (i + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return z >> 11;
}

// Element i survives dropout with probability p when dropout_hash(seed, i) >= this. It is the
// test (hash * 2^-53 >= p) in integers: hash < 2^53 is exact in double, so that comparison holds
// exactly when hash >= ceil(p * 2^53). NaN keeps nothing, as the double comparison would.
inline uint64_t dropout_threshold(float p) {
  constexpr uint64_t kNone = uint64_t(1) << 53;  // above every hash: nothing survives
  if (std::isnan(p)) return kNone;
  if (p <= 0.f) return 0;
  const double t = std::ceil(double(p) * 0x1.0p53);
  return t >= 0x1.0p53 ? kNone : uint64_t(t);
}

}  // namespace ftune
