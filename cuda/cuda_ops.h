// Internal interface of the CUDA backend: error checking, the growable scratch buffers ops
// borrow, the host-side launchers each op file (elementwise.cu, embedding.cu, rmsnorm.cu,
// rope.cu, swiglu.cu, adamw.cu, lm_head_loss.cu) provides to cuda_backend.cu, and a few device
// helpers (deterministic block reductions, a column-sum template) shared between those files.
// Included only by .cu files. Semantics of every op: engine/backend/backend.h.
//
// Kernels are templated on the element type of their activations where a later bf16 step will
// need it; only float is instantiated today.
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/backend/adamw_coeffs.h"
#include "engine/backend/backend.h"
#include "engine/base/dtype.h"

namespace ftune::cuda {

// ---- errors: every CUDA / cuBLAS failure becomes an ftune::Error naming the call and the op ----
[[noreturn]] void throw_cuda_error(cudaError_t e, const char* call, const char* op);
[[noreturn]] void throw_cublas_error(cublasStatus_t s, const char* call, const char* op);
inline void check_cuda(cudaError_t e, const char* call, const char* op) {
  if (e != cudaSuccess) throw_cuda_error(e, call, op);
}
inline void check_cublas(cublasStatus_t s, const char* call, const char* op) {
  if (s != CUBLAS_STATUS_SUCCESS) throw_cublas_error(s, call, op);
}
// Checks that the kernel launch just made was accepted (bad configuration, missing image, ...).
inline void check_launch(const char* kernel, const char* op) {
  check_cuda(cudaGetLastError(), kernel, op);
}
#define FTUNE_CUDA(call, op) ::ftune::cuda::check_cuda((call), #call, (op))
#define FTUNE_CUBLAS(call, op) ::ftune::cuda::check_cublas((call), #call, (op))

// A device buffer kept across calls and grown on demand (never shrunk). Growing waits for the
// device to go idle before the old buffer is freed, since work already queued may still read it.
// One stream at a time uses a backend's scratch, as one thread at a time uses the backend.
class Scratch {
 public:
  Scratch() = default;
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  // At least `bytes` bytes, 256-byte aligned; contents undefined.
  void* get(size_t bytes, const char* op);
  template <class T>
  T* get_as(size_t count, const char* op) {
    return static_cast<T*>(get(count * sizeof(T), op));
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

inline unsigned grid_for(size_t n, unsigned block, unsigned cap = 1u << 16) {
  size_t g = (n + block - 1) / block;
  if (g < 1) g = 1;
  return unsigned(g < cap ? g : cap);
}

// ---- elementwise.cu ----
void add_inplace(cudaStream_t s, float* y, const float* x, size_t n);
void scale_inplace(cudaStream_t s, float* x, float scale, size_t n);
void dropout(cudaStream_t s, const float* x, float* y, size_t n, float p, uint64_t seed,
             bool accumulate);
// Partials (doubles) sum_squares needs for n elements.
size_t sum_squares_partials(size_t n);
// Writes the sum into *result (device). Fixed chunking: the result depends on n only.
void sum_squares(cudaStream_t s, const float* x, size_t n, double* partials, double* result);
// F32 / BF16 / F16 in any combination, bit for bit what engine/base/dtype.h's convert() gives.
void cast(cudaStream_t s, const void* src, DType src_t, void* dst, DType dst_t, size_t n);
// *first_bad (device, preset to ULLONG_MAX by this call) = smallest i with ids[i] outside
// [lo, hi) that is not `allowed` (pass an in-range value to allow none).
void find_first_out_of_range(cudaStream_t s, const int32_t* ids, int64_t n, int64_t lo, int64_t hi,
                             int32_t allowed, unsigned long long* first_bad);
// C[m, c] = beta * C[m, c] (beta == 0 overwrites, NaN included) + (bias ? bias[c] : 0).
void scale_rows_add_bias(cudaStream_t s, float* C, int64_t rows, int64_t cols, int64_t ldc,
                         float beta, const float* bias);
// out[c] = float(double(out[c]) + sum over k < chunks of partial[k * cols + c]), k in order.
void column_finish(cudaStream_t s, const double* partial, int64_t chunks, int64_t cols, float* out);

// ---- embedding.cu ----
void embedding_forward(cudaStream_t s, const int32_t* ids, const float* table, float* out,
                       int64_t n, int64_t dim);
// Scratch needed by embedding_backward for n tokens (keys, values, sort temp storage).
size_t embedding_backward_scratch_bytes(int64_t n, int64_t vocab);
// ids already validated to lie in [0, vocab). Deterministic: every table row receives its
// additions in token order (the CPU backend's order), by a stable sort of token ids.
void embedding_backward(cudaStream_t s, const int32_t* ids, const float* dout, float* dtable,
                        int64_t n, int64_t dim, int64_t vocab, void* scratch, size_t bytes);

// ---- rmsnorm.cu ----
void rmsnorm_forward(cudaStream_t s, const float* x, const float* w, float* y, float* rstd,
                     int64_t rows, int64_t dim, float eps);
// Doubles of scratch rmsnorm_backward needs for its dw partials.
size_t rmsnorm_dw_partials(int64_t rows, int64_t dim);
void rmsnorm_backward(cudaStream_t s, const float* dy, const float* x, const float* w,
                      const float* rstd, float* dx, float* dw, int64_t rows, int64_t dim,
                      double* partials);

// ---- gemm.cu: dbias += column sums of dy[n, out] (deterministic) ----
size_t column_sum_partials(int64_t rows, int64_t cols);
void column_sums_add(cudaStream_t s, const float* dy, float* dbias, int64_t rows, int64_t cols,
                     double* partials);

// ---- rope.cu ----
// sign +1 rotates forward, -1 applies the inverse (backward).
void rope_rotate(cudaStream_t s, float* x, const int32_t* positions, const float* inv_freq,
                 int64_t n, int heads, int head_dim, int sign);

// ---- swiglu.cu ----
void swiglu_forward(cudaStream_t s, const float* gate, const float* up, float* h, size_t n);
void swiglu_backward(cudaStream_t s, const float* dh, const float* gate, const float* up,
                     float* dgate, float* dup, size_t n);

// ---- adamw.cu ----
// One span as the kernel reads it: its element range, the flat offset, and its decay factor.
struct DeviceSpan {
  unsigned long long start;   // first element of this span in the concatenation of all spans
  unsigned long long offset;  // into the flat buffers
  float decay;                // 1 - lr * weight_decay, formed in double and rounded once
  float pad_ = 0.f;
};
// k: the step's scalars, adamw_coeffs() (engine/backend/adamw_coeffs.h, shared with the CPU).
// spans (device) hold n_spans entries sorted by start; total = elements over all spans.
// With `p16` (the bf16 copy of p, same offsets) each updated weight is also written there,
// rounded to nearest even: the compute copy of bf16 mixed precision, in the same pass.
void adamw_step(cudaStream_t s, float* p, const float* g, float* m, float* v,
                const DeviceSpan* spans, int n_spans, unsigned long long total,
                const AdamWCoeffs& k, __nv_bfloat16* p16 = nullptr);

// ---- lm_head_loss.cu ----
class Gemm;
// Device and pinned host scalars an op reads back (error flags, loss totals); the backend owns
// one of each, kSmallBytes long.
constexpr size_t kSmallBytes = 256;
struct Small {
  unsigned long long first_bad;  // id checks: smallest bad position, ULLONG_MAX if none
  double loss;
  long long count;
  int32_t value;  // the offending id, read back for the message
};
static_assert(sizeof(Small) <= kSmallBytes);
static_assert(offsetof(Small, count) == offsetof(Small, loss) + sizeof(double),
              "lm_head_loss reads loss and count back with one copy");
// Runs find_first_out_of_range into dev->first_bad and waits for it: returns the first bad
// position (and its id in *bad_id), or -1 when every id is in range.
int64_t first_out_of_range(cudaStream_t s, const int32_t* ids, int64_t n, int64_t lo, int64_t hi,
                           int32_t allowed, Small* dev, Small* host, int32_t* bad_id,
                           const char* op);
// Tokens per logits chunk for a vocabulary (the chunk holds about kLmHeadChunkFloats logits).
constexpr int64_t kLmHeadChunkFloats = int64_t(1) << 25;
int64_t lm_head_chunk_rows(int64_t n, int64_t vocab);
// Backend::lm_head_loss (engine/backend/backend.h): targets validated first (an ftune::Error names
// the first bad one, outputs untouched); per chunk a logits GEMM, one kernel turning each row into
// its loss and, with dhidden, its dlogits in place, then the dhidden and dW GEMMs; the per-token
// losses are summed in a fixed order at the end. Waits for the stream before returning.
// bf16 operands for lm_head_loss (bf16 mixed precision): hidden and W already in bf16, and a
// buffer for one chunk of dlogits in bf16. Logits, the loss and every output stay fp32.
struct LmHeadBf16 {
  const __nv_bfloat16* hidden = nullptr;  // [n, d]
  const __nv_bfloat16* W = nullptr;       // [vocab, d]
  Scratch* dlogits = nullptr;
};
LossSum lm_head_loss(cudaStream_t s, Gemm& gemm, const float* hidden, const float* W,
                     const int32_t* targets, int64_t n, int64_t d, int64_t vocab, float grad_scale,
                     float* dhidden, float* dW, Scratch& logits, Scratch& losses, Small* dev_small,
                     Small* host_small, const LmHeadBf16* bf16 = nullptr);

#ifdef __CUDACC__
// ---- device helpers ----
// Deterministic block-wide sum: a fixed shuffle tree in each warp, then warp 0 over the warp sums.
// Every thread of the block must call it; the result is valid in all threads. `shared` holds at
// least 32 values.
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}
template <class T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T t = lane < warps ? shared[lane] : T(0);
    t = warp_sum(t);
    if (lane == 0) shared[0] = t;
  }
  __syncthreads();
  return shared[0];
}

// Column sums in a fixed order: rows are cut into chunks of `chunk_rows` (a function of the row
// count only); thread (chunk, column) sums its rows in order into partial[chunk * cols + col];
// column_finish then adds the chunk partials in chunk order. f(r, c) gives the double addend.
constexpr int kColumnThreads = 128;
inline int64_t column_chunk_rows(int64_t rows) {
  const int64_t per = (rows + 255) / 256;
  return per < 32 ? 32 : per;
}
inline int64_t column_chunks(int64_t rows) {
  const int64_t cr = column_chunk_rows(rows);
  return (rows + cr - 1) / cr;
}
template <class F>
__global__ void __launch_bounds__(kColumnThreads)
    column_partials_kernel(F f, int64_t rows, int64_t cols, int64_t chunk_rows, double* partial) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = int64_t(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  double acc = 0.0;
  for (int64_t r = r0; r < r1; ++r) acc += f(r, c);
  partial[int64_t(blockIdx.y) * cols + c] = acc;
}
template <class F>
void launch_column_partials(cudaStream_t s, F f, int64_t rows, int64_t cols, double* partial,
                            const char* op) {
  const int64_t cr = column_chunk_rows(rows);
  const dim3 grid(unsigned((cols + kColumnThreads - 1) / kColumnThreads),
                  unsigned(column_chunks(rows)));
  column_partials_kernel<<<grid, kColumnThreads, 0, s>>>(f, rows, cols, cr, partial);
  check_launch("column_partials_kernel", op);
}
#endif  // __CUDACC__

}  // namespace ftune::cuda
