// Elementwise ops and reductions of the CUDA backend: add, scale, dropout (the CPU backend's
// counter-based mask, bit for bit), sum of squares (two fixed-order passes in double), dtype casts
// (bit-exact with engine/base/dtype.cpp), id range checks, and two small matrix helpers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <string>

#include "cuda/cuda_ops.h"
#include "engine/backend/dropout_mask.h"
#include "engine/base/error.h"

namespace ftune::cuda {
namespace {

constexpr unsigned kBlock = 256;

template <class T>
__global__ void add_kernel(T* __restrict__ y, const T* __restrict__ x, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    y[i] = y[i] + x[i];
}

template <class T>
__global__ void scale_kernel(T* __restrict__ x, float s, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    x[i] = x[i] * s;
}

// The mask is engine/backend/dropout_mask.h's, shared with the CPU: an integer threshold test,
// so the device does no double arithmetic.
__global__ void dropout_kernel(const float* x, float* y, size_t n, uint64_t seed,
                               uint64_t threshold, float scale, bool accumulate) {
  // x and y may be the same buffer: each element is read before it is written, by one thread.
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float v = dropout_hash(seed, i) >= threshold ? x[i] * scale : 0.f;
    y[i] = accumulate ? y[i] + v : v;
  }
}

// sum_squares: block b sums elements [b * kSumChunk, (b + 1) * kSumChunk) in double with a fixed
// per-thread stride and a fixed reduction tree; a single block then adds the partials.
constexpr size_t kSumChunk = 8192;

__global__ void __launch_bounds__(kBlock)
    sum_squares_partial_kernel(const float* __restrict__ x, size_t n, double* partial) {
  __shared__ double sh[32];
  const size_t begin = size_t(blockIdx.x) * kSumChunk;
  const size_t end = begin + kSumChunk < n ? begin + kSumChunk : n;
  double acc = 0.0;
  for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const double v = x[i];
    acc += v * v;
  }
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kBlock)
    sum_partials_kernel(const double* __restrict__ partial, size_t count, double* out) {
  __shared__ double sh[32];
  double acc = 0.0;
  for (size_t i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) *out = acc;
}

// ---- casts, bit-exact with engine/dtype.{h,cpp} ----
__device__ __forceinline__ float bits_to_float(uint32_t u) {
  return __uint_as_float(u);
}

struct F32Io {
  using Storage = float;
  static __device__ float load(float v) { return v; }
  static __device__ float store(float f) { return f; }
};

struct Bf16Io {
  using Storage = uint16_t;
  static __device__ float load(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }
  // Round to nearest even; NaN keeps its top payload bits with the quiet bit set (f32_to_bf16).
  static __device__ uint16_t store(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
  }
};

struct F16Io {
  using Storage = uint16_t;
  // As f16_to_f32: subnormals are exact in float (mant * 2^-24), NaN payloads are kept.
  static __device__ float load(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
      const float mag = float(mant) * 0x1.0p-24f;
      return bits_to_float(sign | __float_as_uint(mag));
    }
    if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));
    return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
  }
  // Round to nearest even (the hardware conversion is IEEE for every non-NaN input, as is
  // f32_to_f16); NaN becomes the quiet NaN of its sign, as f32_to_f16 makes it.
  static __device__ uint16_t store(float f) {
    const uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t(((u >> 16) & 0x8000u) | 0x7e00u);
    return __half_as_ushort(__float2half_rn(f));
  }
};

template <class In, class Out>
__global__ void cast_kernel(const typename In::Storage* __restrict__ src,
                            typename Out::Storage* __restrict__ dst, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    dst[i] = Out::store(In::load(src[i]));
}

template <class In>
void cast_from(cudaStream_t s, const void* src, void* dst, DType dst_t, size_t n) {
  const auto* in = static_cast<const typename In::Storage*>(src);
  const unsigned grid = grid_for(n, kBlock);
  switch (dst_t) {
    case DType::F32:
      cast_kernel<In, F32Io><<<grid, kBlock, 0, s>>>(in, static_cast<float*>(dst), n);
      break;
    case DType::BF16:
      cast_kernel<In, Bf16Io><<<grid, kBlock, 0, s>>>(in, static_cast<uint16_t*>(dst), n);
      break;
    case DType::F16:
      cast_kernel<In, F16Io><<<grid, kBlock, 0, s>>>(in, static_cast<uint16_t*>(dst), n);
      break;
    default:
      throw Error(
          std::string("cast: the CUDA backend converts between F32, BF16 and F16, not to ") +
          dtype_name(dst_t));
  }
  check_launch("cast_kernel", "cast");
}

__global__ void find_bad_kernel(const int32_t* __restrict__ ids, int64_t n, int64_t lo, int64_t hi,
                                int32_t allowed, unsigned long long* first_bad) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t id = ids[i];
    if (id != allowed && (id < lo || id >= hi)) atomicMin(first_bad, (unsigned long long)i);
  }
}

__global__ void scale_rows_kernel(float* C, int64_t rows, int64_t cols, int64_t ldc, float beta,
                                  const float* bias) {
  const int64_t total = rows * cols;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = t / cols, c = t - r * cols;
    float& v = C[r * ldc + c];
    const float b = bias ? bias[c] : 0.f;
    v = (beta == 0.f ? 0.f : beta * v) + b;
  }
}

__global__ void column_finish_kernel(const double* __restrict__ partial, int64_t chunks,
                                     int64_t cols, float* out) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  double acc = 0.0;
  for (int64_t k = 0; k < chunks; ++k) acc += partial[k * cols + c];
  out[c] = float(double(out[c]) + acc);
}

}  // namespace

void add_inplace(cudaStream_t s, float* y, const float* x, size_t n) {
  if (n == 0) return;
  add_kernel<float><<<grid_for(n, kBlock), kBlock, 0, s>>>(y, x, n);
  check_launch("add_kernel", "add_inplace");
}

void scale_inplace(cudaStream_t s, float* x, float scale, size_t n) {
  if (n == 0) return;
  scale_kernel<float><<<grid_for(n, kBlock), kBlock, 0, s>>>(x, scale, n);
  check_launch("scale_kernel", "scale_inplace");
}

void dropout(cudaStream_t s, const float* x, float* y, size_t n, float p, uint64_t seed,
             bool accumulate) {
  if (n == 0) return;
  const float scale = 1.f / (1.f - p);  // as the CPU backend: x * (1 / (1 - p)) in float
  dropout_kernel<<<grid_for(n, kBlock), kBlock, 0, s>>>(x, y, n, seed, dropout_threshold(p), scale,
                                                        accumulate);
  check_launch("dropout_kernel", "dropout");
}

size_t sum_squares_partials(size_t n) {
  return (n + kSumChunk - 1) / kSumChunk;
}

void sum_squares(cudaStream_t s, const float* x, size_t n, double* partials, double* result) {
  const size_t blocks = sum_squares_partials(n);
  if (blocks == 0) {
    FTUNE_CUDA(cudaMemsetAsync(result, 0, sizeof(double), s), "sum_squares");
    return;
  }
  FTUNE_CHECK(blocks <= size_t(INT_MAX), "sum_squares: too many elements");
  sum_squares_partial_kernel<<<unsigned(blocks), kBlock, 0, s>>>(x, n, partials);
  check_launch("sum_squares_partial_kernel", "sum_squares");
  sum_partials_kernel<<<1, kBlock, 0, s>>>(partials, blocks, result);
  check_launch("sum_partials_kernel", "sum_squares");
}

void cast(cudaStream_t s, const void* src, DType src_t, void* dst, DType dst_t, size_t n) {
  const auto supported = [](DType t) {
    return t == DType::F32 || t == DType::BF16 || t == DType::F16;
  };
  if (!supported(src_t) || !supported(dst_t))
    throw Error(std::string("cast: the CUDA backend converts between F32, BF16 and F16, not ") +
                dtype_name(src_t) + " to " + dtype_name(dst_t));
  if (n == 0) return;
  if (src_t == dst_t) {
    FTUNE_CUDA(cudaMemcpyAsync(dst, src, n * dtype_size(src_t), cudaMemcpyDeviceToDevice, s),
               "cast");
    return;
  }
  switch (src_t) {
    case DType::F32:
      return cast_from<F32Io>(s, src, dst, dst_t, n);
    case DType::BF16:
      return cast_from<Bf16Io>(s, src, dst, dst_t, n);
    default:
      return cast_from<F16Io>(s, src, dst, dst_t, n);
  }
}

void find_first_out_of_range(cudaStream_t s, const int32_t* ids, int64_t n, int64_t lo, int64_t hi,
                             int32_t allowed, unsigned long long* first_bad) {
  FTUNE_CUDA(cudaMemsetAsync(first_bad, 0xff, sizeof(unsigned long long), s), "id check");
  if (n <= 0) return;
  find_bad_kernel<<<grid_for(size_t(n), kBlock, 4096), kBlock, 0, s>>>(ids, n, lo, hi, allowed,
                                                                       first_bad);
  check_launch("find_bad_kernel", "id check");
}

int64_t first_out_of_range(cudaStream_t s, const int32_t* ids, int64_t n, int64_t lo, int64_t hi,
                           int32_t allowed, Small* dev, Small* host, int32_t* bad_id,
                           const char* op) {
  if (n <= 0) return -1;
  find_first_out_of_range(s, ids, n, lo, hi, allowed, &dev->first_bad);
  FTUNE_CUDA(cudaMemcpyAsync(&host->first_bad, &dev->first_bad, sizeof(host->first_bad),
                             cudaMemcpyDeviceToHost, s),
             op);
  FTUNE_CUDA(cudaStreamSynchronize(s), op);
  const unsigned long long pos = host->first_bad;
  if (pos == ~0ull) return -1;
  FTUNE_CUDA(cudaMemcpyAsync(&host->value, ids + pos, sizeof(int32_t), cudaMemcpyDeviceToHost, s),
             op);
  FTUNE_CUDA(cudaStreamSynchronize(s), op);
  *bad_id = host->value;
  return int64_t(pos);
}

void scale_rows_add_bias(cudaStream_t s, float* C, int64_t rows, int64_t cols, int64_t ldc,
                         float beta, const float* bias) {
  if (rows <= 0 || cols <= 0) return;
  scale_rows_kernel<<<grid_for(size_t(rows * cols), kBlock), kBlock, 0, s>>>(C, rows, cols, ldc,
                                                                             beta, bias);
  check_launch("scale_rows_kernel", "gemm");
}

void column_finish(cudaStream_t s, const double* partial, int64_t chunks, int64_t cols,
                   float* out) {
  if (cols <= 0) return;
  column_finish_kernel<<<unsigned((cols + kBlock - 1) / kBlock), kBlock, 0, s>>>(partial, chunks,
                                                                                 cols, out);
  check_launch("column_finish_kernel", "column sums");
}

}  // namespace ftune::cuda
