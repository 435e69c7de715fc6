// Elementwise ops, reductions, embedding lookup and SwiGLU for the CPU backend. Every hot loop is
// an `omp simd` loop over contiguous memory so it vectorises at -O2 (GCC's default -O2 cost model
// skips most loops that lack the pragma).
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cpu/parallel.h"
#include "engine/backend/cpu/reference_ops.h"
#include "engine/base/error.h"

namespace ftune::cpu {
namespace {

// sum_squares adds fixed-size chunks, each in double, then adds the chunk sums in index order.
// Chunk boundaries do not depend on the thread count, so neither does the result.
constexpr size_t kSumChunk = 4096;

// One compiled copy (never inlined into two differently vectorised call sites) so every chunk of
// every call is reduced by the same instruction sequence.
[[gnu::noinline]] double chunk_sum_squares(const float* x, size_t n) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (size_t i = 0; i < n; ++i) acc += double(x[i]) * double(x[i]);
  return acc;
}

// exp(x) for the sigmoid, written so GCC vectorises it without -ffast-math (libm's expf is a call
// it cannot vectorise, and float compares or selects block if-conversion under the default
// -ftrapping-math). x = k*ln2 + r with |r| <= ln2/2; exp(r) by its degree-7 Taylor polynomial
// (truncation below 1e-8 relative); 2^k assembled in the exponent bits. k outside the normal range
// saturates to 0 or +inf through integer masks. Max error about 1 ulp where the result is a
// normal float. A NaN x gives 0 or inf, which the callers still turn into NaN via the factor g.
inline float exp_for_sigmoid(float x) {
  // Adding 1.5 * 2^23 rounds x / ln2 to an integer held in the low mantissa bits.
  constexpr float kRound = 12582912.f;
  constexpr float kLog2e = 1.44269504088896341f;
  // ln2 split so k * kLn2Hi is exact for |k| < 2^15 (kLn2Hi has 9 significant bits).
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440054690583e-4f;
  const float t = x * kLog2e + kRound;
  const float k = t - kRound;
  const float r = (x - k * kLn2Hi) - k * kLn2Lo;
  float p = 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  int32_t ki = static_cast<int32_t>(std::bit_cast<uint32_t>(t) - std::bit_cast<uint32_t>(kRound));
  // All-ones when 2^k is not a normal float: then the polynomial (possibly garbage for huge |x|)
  // is replaced by 1 and the scale alone (0 or inf) is the answer.
  const uint32_t saturated = 0u - static_cast<uint32_t>((ki < -127) | (ki > 128));
  ki = ki < -127 ? -127 : ki;
  ki = ki > 128 ? 128 : ki;
  const uint32_t p_bits =
      (std::bit_cast<uint32_t>(p) & ~saturated) | (std::bit_cast<uint32_t>(1.f) & saturated);
  const float scale = std::bit_cast<float>(static_cast<uint32_t>(ki + 127) << 23);
  return std::bit_cast<float>(p_bits) * scale;
}

// 1 / (1 + exp(-g)): exp(-g) saturates to +inf or 0 for large |g|, giving exactly 0 or 1.
inline float sigmoid(float g) {
  return 1.f / (1.f + exp_for_sigmoid(-g));
}

// 1 - sigmoid(g), given e = exp(-g) and s = sigmoid(g). For g >= 0, 1 - s would cancel
// (s is near 1) but e * s = e / (1 + e) is exact to an ulp; for g < 0, e may be inf (e * s =
// NaN) but s < 1/2 so 1 - s is accurate. The choice is made on g's sign bit with integer masks,
// which vectorise where a float select would not.
inline float one_minus_sigmoid(float g, float e, float s) {
  const uint32_t negative =
      static_cast<uint32_t>(static_cast<int32_t>(std::bit_cast<uint32_t>(g)) >> 31);
  const uint32_t bits =
      (std::bit_cast<uint32_t>(1.f - s) & negative) | (std::bit_cast<uint32_t>(e * s) & ~negative);
  return std::bit_cast<float>(bits);
}

std::string id_message(const char* op, int32_t id, int64_t pos) {
  return std::string(op) + ": token id " + std::to_string(id) + " at position " +
         std::to_string(pos);
}

}  // namespace

void add_inplace(int threads, float* y, const float* x, size_t n) {
  const int t = team(threads, n);
#pragma omp parallel for simd schedule(static) num_threads(t) if (t > 1)
  for (size_t i = 0; i < n; ++i) y[i] += x[i];
}

void scale_inplace(int threads, float* x, float s, size_t n) {
  const int t = team(threads, n);
#pragma omp parallel for simd schedule(static) num_threads(t) if (t > 1)
  for (size_t i = 0; i < n; ++i) x[i] *= s;
}

void dropout(int threads, const float* x, float* y, size_t n, float p, uint64_t seed,
             bool accumulate) {
  const float s = 1.f / (1.f - p);
  const int t = team(threads, n);
#pragma omp parallel for schedule(static) num_threads(t) if (t > 1)
  for (size_t i = 0; i < n; ++i) {
    const float v = ref::dropout_keep(seed, i, p) ? x[i] * s : 0.f;
    y[i] = accumulate ? y[i] + v : v;
  }
}

double sum_squares(int threads, const float* x, size_t n) {
  const size_t chunks = (n + kSumChunk - 1) / kSumChunk;
  if (chunks <= 1) return chunk_sum_squares(x, n);
  std::vector<double> partial(chunks);
  const int t = team(threads, n);
#pragma omp parallel for schedule(static) num_threads(t) if (t > 1)
  for (size_t c = 0; c < chunks; ++c) {
    const size_t begin = c * kSumChunk;
    partial[c] = chunk_sum_squares(x + begin, std::min(kSumChunk, n - begin));
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

void embedding_forward(int threads, const int32_t* ids, const float* table, float* out, int64_t n,
                       int64_t dim) {
  // The vocabulary size is not passed here, so only the sign can be checked; embedding_backward
  // and the data loader check the upper bound.
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0)
      throw Error(id_message("embedding_forward", ids[i], i) +
                  " is negative; the tokenized data is corrupt, re-tokenize the dataset");
  const int t = team(threads, size_t(n) * size_t(dim));
#pragma omp parallel for schedule(static) num_threads(t) if (t > 1)
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(out + i * dim, table + int64_t(ids[i]) * dim, size_t(dim) * sizeof(float));
}

void embedding_backward(int threads, const int32_t* ids, const float* dout, float* dtable,
                        int64_t n, int64_t dim, int64_t vocab) {
  // Validate everything before touching dtable, so a bad id leaves the gradient unchanged.
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      throw Error(id_message("embedding_backward", ids[i], i) +
                  " is outside the embedding table (vocab size " + std::to_string(vocab) +
                  "); the dataset was tokenized with a different tokenizer than this model's");
  // Repeated ids make row-parallel accumulation racy. Instead each thread owns a slice of the
  // embedding dimension (whole 64-byte lines, so no false sharing) and walks all tokens in order:
  // every element receives its additions in token order, whatever the thread count.
  constexpr int64_t kLine = 16;
  const int64_t lines = (dim + kLine - 1) / kLine;
  const int t = int(std::min<int64_t>(team(threads, size_t(n) * size_t(dim)), lines));
#pragma omp parallel num_threads(t) if (t > 1)
  {
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t d0 = std::min(dim, lines * tid / nt * kLine);
    const int64_t d1 = std::min(dim, lines * (tid + 1) / nt * kLine);
    for (int64_t i = 0; i < n; ++i) {
      float* dst = dtable + int64_t(ids[i]) * dim;
      const float* src = dout + i * dim;
#pragma omp simd
      for (int64_t d = d0; d < d1; ++d) dst[d] += src[d];
    }
  }
}

void swiglu_forward(int threads, const float* gate, const float* up, float* h, size_t n) {
  const int t = team(threads, n);
#pragma omp parallel for simd schedule(static) num_threads(t) if (t > 1)
  for (size_t i = 0; i < n; ++i) {
    const float g = gate[i];
    h[i] = g * sigmoid(g) * up[i];
  }
}

void swiglu_backward(int threads, const float* dh, const float* gate, const float* up, float* dgate,
                     float* dup, size_t n) {
  const int t = team(threads, n);
  // All inputs of element i are read before its outputs are written, so dgate/dup may alias
  // dh/gate/up element for element.
#pragma omp parallel for simd schedule(static) num_threads(t) if (t > 1)
  for (size_t i = 0; i < n; ++i) {
    const float g = gate[i], u = up[i], d = dh[i];
    const float e = exp_for_sigmoid(-g);
    const float s = 1.f / (1.f + e);
    dgate[i] = d * u * s * (1.f + g * one_minus_sigmoid(g, e, s));
    dup[i] = d * (g * s);
  }
}

}  // namespace ftune::cpu
