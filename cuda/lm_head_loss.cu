// Fused LM head + cross-entropy for the CUDA backend, chunked over tokens so at most one chunk
// of logits ([chunk, V], about kLmHeadChunkFloats floats) exists at a time. Per chunk: the logits
// GEMM; one kernel that turns each row into its loss and, in place, its dlogits; the dhidden
// GEMM (=) and the dW GEMM (+=) reading that buffer. Per-token losses go to a buffer summed in a
// fixed order at the end, so the returned loss is bitwise reproducible, as is everything else
// (the GEMMs reuse one cached algorithm per shape).
#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/cuda_ops.h"
#include "cuda/gemm.h"
#include "engine/base/error.h"

namespace ftune::cuda {
namespace {

constexpr int kRowThreads = 256;
constexpr int kTotalThreads = 512;

__device__ __forceinline__ float block_max(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float t = lane < warps ? shared[lane] : -INFINITY;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_down_sync(0xffffffffu, t, o));
    if (lane == 0) shared[0] = t;
  }
  __syncthreads();
  return shared[0];
}

// One block per logits row. Blocks run last row first: the rows the logits GEMM wrote last are
// the likeliest to still be in L2. Each thread keeps an online (max, sum of exp) over its strided
// elements, the sum in double; the block combines them with a fixed tree.
__global__ void __launch_bounds__(kRowThreads)
    lm_head_rows_kernel(float* __restrict__ logits, const int32_t* __restrict__ targets,
                        int64_t rows, int64_t vocab, float grad_scale, bool grad,
                        double* __restrict__ losses) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  const int64_t r = rows - 1 - int64_t(blockIdx.x);
  float* row = logits + r * vocab;
  const int32_t target = targets[r];
  if (target == kIgnoreIndex) {
    if (grad)
      for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) row[j] = 0.f;
    if (threadIdx.x == 0) losses[r] = 0.0;
    return;
  }
  const float target_logit = row[target];  // read before any thread overwrites the row
  float m = -INFINITY;
  double sum = 0.0;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float x = row[j];
    if (x > m) {
      sum = sum * double(expf(m - x)) + 1.0;
      m = x;
    } else {
      sum += double(expf(x - m));
    }
  }
  const float mx = block_max(m, shf);
  // Threads that saw no element (m = -inf, sum = 0) contribute 0 * exp(-inf) = 0.
  const double scaled = sum == 0.0 ? 0.0 : sum * double(expf(m - mx));
  const double total = block_sum(scaled, shd);
  const double lse = double(mx) + log(total);
  if (threadIdx.x == 0) losses[r] = lse - double(target_logit);
  if (!grad) return;
  const float mul = float(double(grad_scale) / total);
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    float g = expf(row[j] - mx) * mul;
    if (j == target) g -= grad_scale;
    row[j] = g;
  }
}

__global__ void __launch_bounds__(kTotalThreads)
    lm_head_total_kernel(const double* __restrict__ losses, const int32_t* __restrict__ targets,
                         int64_t n, double* loss_out, long long* count_out) {
  __shared__ double shd[32];
  __shared__ long long shl[32];
  double acc = 0.0;
  long long cnt = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    acc += losses[i];
    cnt += targets[i] != kIgnoreIndex;
  }
  acc = block_sum(acc, shd);
  cnt = block_sum(cnt, shl);
  if (threadIdx.x == 0) {
    *loss_out = acc;
    *count_out = cnt;
  }
}

}  // namespace

int64_t lm_head_chunk_rows(int64_t n, int64_t vocab) {
  int64_t rows = kLmHeadChunkFloats / vocab;
  if (rows < 1) rows = 1;
  return rows < n ? rows : n;
}

LossSum lm_head_loss(cudaStream_t s, Gemm& gemm, const float* hidden, const float* W,
                     const int32_t* targets, int64_t n, int64_t d, int64_t vocab, float grad_scale,
                     float* dhidden, float* dW, Scratch& logits_buf, Scratch& losses_buf,
                     Small* dev_small, Small* host_small, const LmHeadBf16* bf16) {
  const char* op = "lm_head_loss";
  FTUNE_CHECK(n >= 0 && d > 0 && vocab > 0, "lm_head_loss needs n >= 0, d > 0 and vocab > 0");
  FTUNE_CHECK(vocab <= INT32_MAX, "lm_head_loss: vocabulary too large");
  // Check every target before touching any output, so a bad batch leaves dW as it was.
  int32_t bad = 0;
  const int64_t pos =
      first_out_of_range(s, targets, n, 0, vocab, kIgnoreIndex, dev_small, host_small, &bad, op);
  if (pos >= 0) {
    throw Error("lm_head_loss: token " + std::to_string(pos) + " has target id " +
                std::to_string(bad) + ", outside the vocabulary [0, " + std::to_string(vocab) +
                "); targets must be token ids of the model's vocabulary or " +
                std::to_string(kIgnoreIndex) +
                " to ignore the token (was the data tokenized with this model's tokenizer?)");
  }
  if (n == 0) return {};
  const bool grad = dhidden != nullptr;
  // bf16: four times the chunk, as every chunk re-reads and re-writes the whole fp32 dW.
  const int64_t chunk =
      bf16 ? std::min<int64_t>(n, 4 * lm_head_chunk_rows(n, vocab)) : lm_head_chunk_rows(n, vocab);
  FTUNE_CHECK(chunk <= INT32_MAX, "lm_head_loss: chunk too large");
  float* logits = logits_buf.get_as<float>(size_t(chunk * vocab), op);
  double* losses = losses_buf.get_as<double>(size_t(n), op);
  __nv_bfloat16* dl16 = nullptr;
  if (bf16 && grad) dl16 = bf16->dlogits->get_as<__nv_bfloat16>(size_t(chunk * vocab), op);
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t rows = chunk < n - c0 ? chunk : n - c0;
    const float* h = hidden + c0 * d;
    if (bf16) {
      gemm.run_bf16(s, false, true, rows, vocab, d, 1.f, bf16->hidden + c0 * d, d, bf16->W, d, 0.f,
                    logits, vocab, nullptr, op);
    } else {
      gemm.run(s, false, true, rows, vocab, d, 1.f, h, d, W, d, 0.f, logits, vocab, nullptr, op);
    }
    lm_head_rows_kernel<<<unsigned(rows), kRowThreads, 0, s>>>(logits, targets + c0, rows, vocab,
                                                               grad_scale, grad, losses + c0);
    check_launch("lm_head_rows_kernel", op);
    if (!grad) continue;
    if (bf16) {
      cast(s, logits, DType::F32, dl16, DType::BF16, size_t(rows * vocab));
      gemm.run_bf16(s, false, false, rows, d, vocab, 1.f, dl16, vocab, bf16->W, d, 0.f,
                    dhidden + c0 * d, d, nullptr, op);
      if (dW)
        gemm.run_bf16(s, true, false, vocab, d, rows, 1.f, dl16, vocab, bf16->hidden + c0 * d, d,
                      1.f, dW, d, nullptr, op);
      continue;
    }
    gemm.run(s, false, false, rows, d, vocab, 1.f, logits, vocab, W, d, 0.f, dhidden + c0 * d, d,
             nullptr, op);
    if (dW)
      gemm.run(s, true, false, vocab, d, rows, 1.f, logits, vocab, h, d, 1.f, dW, d, nullptr, op);
  }
  lm_head_total_kernel<<<1, kTotalThreads, 0, s>>>(losses, targets, n, &dev_small->loss,
                                                   &dev_small->count);
  check_launch("lm_head_total_kernel", op);
  FTUNE_CUDA(cudaMemcpyAsync(&host_small->loss, &dev_small->loss, 2 * sizeof(double),
                             cudaMemcpyDeviceToHost, s),
             op);
  FTUNE_CUDA(cudaStreamSynchronize(s), op);
  LossSum out;
  out.loss = host_small->loss;
  out.tokens = int64_t(host_small->count);
  return out;
}

}  // namespace ftune::cuda
