// Fused LM head + cross-entropy on the CPU: tokens go through in chunks so at most one chunk of
// logits ([chunk, V]) exists at a time. Per chunk: one GEMM for the logits, then each row turns
// into its loss and, in place, its dlogits; then the dhidden and dW GEMMs consume that buffer.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cpu/simd.h"
#include "engine/base/error.h"

namespace ftune::cpu {
namespace {

// Target size of the logits chunk: 16 MiB. Large enough that the dW update (rank-chunk) stays
// compute-bound, small enough to stay far below N x V for long batches and big vocabularies.
constexpr int64_t kChunkFloats = int64_t(1) << 22;

using simd::exp_lanes;
using simd::kLanes;
using simd::load;
using simd::row_max;
using simd::splat;
using simd::store;
using simd::VF;

// Sum of e^(x[j] - shift) over j < n, in double so long vocabularies lose nothing. With store,
// x[j] is replaced by e^(x[j] - shift). Vector lanes are flushed to double every kFlush vectors
// (a partial sum of at most kFlush terms <= 1 each keeps full float precision).
double exp_shift_sum(float* x, int64_t n, float shift, bool store_exp) {
  constexpr int kFlush = 64;
  const VF sv = splat(shift);
  double lanes[kLanes] = {};
  VF part = VF{};
  int pending = 0;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const VF e = exp_lanes(load(x + j) - sv);
    if (store_exp) store(x + j, e);
    part += e;
    if (++pending == kFlush) {
      for (int l = 0; l < kLanes; ++l) lanes[l] += double(part[l]);
      part = VF{};
      pending = 0;
    }
  }
  if (j < n) {
    float tail[kLanes];
    for (int l = 0; l < kLanes; ++l) tail[l] = j + l < n ? x[j + l] : -INFINITY;
    const VF e = exp_lanes(load(tail) - sv);
    if (store_exp) {
      store(tail, e);
      for (int64_t l = 0; j + l < n; ++l) x[j + l] = tail[l];
    }
    part += e;  // lanes past n hold exp(-inf) == 0
  }
  double sum = 0.0;
  for (int l = 0; l < kLanes; ++l) sum += lanes[l] + double(part[l]);
  return sum;
}

// Loss of one logits row; with grad, the row is overwritten by its dlogits (zeros if ignored).
double row_loss(float* row, int64_t vocab, int32_t target, float grad_scale, bool grad) {
  if (target == kIgnoreIndex) {
    if (grad) std::fill(row, row + vocab, 0.f);
    return 0.0;
  }
  const float target_logit = row[target];
  const float mx = row_max(row, vocab);
  const double sum = exp_shift_sum(row, vocab, mx, grad);
  const double lse = double(mx) + std::log(sum);
  if (grad) {
    const VF mul = splat(float(double(grad_scale) / sum));
    int64_t j = 0;
    for (; j + kLanes <= vocab; j += kLanes) store(row + j, load(row + j) * mul);
    for (; j < vocab; ++j) row[j] *= mul[0];
    row[target] -= grad_scale;
  }
  return lse - double(target_logit);
}

}  // namespace

LossSum lm_head_loss(int threads, const float* hidden, const float* W, const int32_t* targets,
                     int64_t n, int64_t d, int64_t vocab, float grad_scale, float* dhidden,
                     float* dW, int64_t chunk_tokens) {
  FTUNE_CHECK(n >= 0 && d > 0 && vocab > 0, "lm_head_loss needs n >= 0, d > 0 and vocab > 0");
  // Check every target before touching any output, so a bad batch leaves dW as it was.
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = targets[i];
    if (t != kIgnoreIndex && (t < 0 || t >= vocab)) {
      throw Error("lm_head_loss: token " + std::to_string(i) + " has target id " +
                  std::to_string(t) + ", outside the vocabulary [0, " + std::to_string(vocab) +
                  "); targets must be token ids of the model's vocabulary or " +
                  std::to_string(kIgnoreIndex) +
                  " to ignore the token (was the data tokenized with this model's tokenizer?)");
    }
  }
  if (n == 0) return {};
  threads = std::max(threads, 1);
  const bool grad = dhidden != nullptr;
  const int64_t chunk = chunk_tokens > 0 ? std::min(chunk_tokens, n)
                                         : std::clamp<int64_t>(kChunkFloats / vocab, 1, n);
  // Every element is written by the logits GEMM before it is read, so skip zero-filling it.
  std::unique_ptr<float[]> logits(new float[size_t(chunk * vocab)]);
  std::vector<double> losses(static_cast<size_t>(chunk));
  LossSum total;
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t rows = std::min(chunk, n - c0);
    const float* h = hidden + c0 * d;
    // The logits' rounding depends on `rows` (cpu_gemm.cpp), so another chunking is not bitwise;
    // everything after it is per row and does not look at the chunk.
    gemm(threads, false, true, rows, vocab, d, 1.f, h, d, W, d, 0.f, logits.get(), vocab);
#pragma omp parallel for num_threads(threads) schedule(static) if (rows > 1)
    for (int64_t r = 0; r < rows; ++r) {
      losses[size_t(r)] =
          row_loss(logits.get() + r * vocab, vocab, targets[c0 + r], grad_scale, grad);
    }
    // Summed in token order whatever the thread count. Forward-only (grad false) does the same
    // arithmetic, only without storing the exps: with the same chunks, the same loss bit for bit.
    for (int64_t r = 0; r < rows; ++r) {
      if (targets[c0 + r] == kIgnoreIndex) continue;
      total.loss += losses[size_t(r)];
      ++total.tokens;
    }
    if (!grad) continue;
    gemm(threads, false, false, rows, d, vocab, 1.f, logits.get(), vocab, W, d, 0.f,
         dhidden + c0 * d, d);
    if (dW) gemm(threads, true, false, vocab, d, rows, 1.f, logits.get(), vocab, h, d, 1.f, dW, d);
  }
  return total;
}

LossSum lm_head_loss(int threads, const float* hidden, const float* W, const int32_t* targets,
                     int64_t n, int64_t d, int64_t vocab, float grad_scale, float* dhidden,
                     float* dW) {
  return lm_head_loss(threads, hidden, W, targets, n, d, vocab, grad_scale, dhidden, dW, 0);
}

}  // namespace ftune::cpu
