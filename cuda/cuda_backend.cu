// The CUDA backend: binds the GPU ops (one file per op family, declared in cuda/cuda_ops.h) to the
// Backend interface of engine/backend/backend.h, and owns the device state they share: the stream,
// the cuBLASLt plans and workspace, growable scratch buffers and a pinned read-back area.
//
// Streams: an op runs on ExecContext::stream when it is set, else on the backend's own stream.
// Memory calls (upload, download, copy, zero, alloc's zero fill) are queued on the stream of the
// most recent op, behind everything queued there, and wait for it: when they return, the copy is
// complete, as on the CPU backend. Ops that return a value to the host (sum_squares,
// lm_head_loss) or must refuse bad input before touching outputs (embedding ids, loss targets)
// wait for their stream too. Scratch is shared by the ops, so one stream at a time uses a backend.
// A caller passing its own stream calls synchronize() with it before destroying it.
//
// bf16 mixed precision (set_bf16_compute): linear layers, the LM head and attention (head_dim 64
// or 128) convert their fp32 operands to bf16 in scratch, or take weights from the bf16 copy of
// the registered weight buffer (set_weight_mirror), and run on the tensor cores with fp32
// accumulation into fp32 outputs. Every other op and every buffer the model owns stays fp32.
// The copy is refreshed by adamw_step in the same pass; every op writing into the registered
// range marks it stale, and a stale copy is re-made from the fp32 weights at its next use.
//
// Errors: every CUDA and cuBLAS call is checked; a failure is an ftune::Error naming the call and
// the backend op. Kernels run asynchronously, so a fault inside one surfaces at the next call that
// waits for the stream.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda/attention.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_ops.h"
#include "cuda/gemm.h"
#include "engine/base/error.h"

namespace ftune {
namespace cuda {

void throw_cuda_error(cudaError_t e, const char* call, const char* op) {
  // Clear a non-sticky error so the next launch check does not report it again.
  (void)cudaGetLastError();
  throw Error(std::string("CUDA error in ") + op + ": " + call + " failed: " + cudaGetErrorName(e) +
              " (" + cudaGetErrorString(e) + ")");
}

void throw_cublas_error(cublasStatus_t s, const char* call, const char* op) {
  (void)cudaGetLastError();
  throw Error(std::string("cuBLAS error in ") + op + ": " + call +
              " failed: " + cublasLtGetStatusName(s) + " (" + cublasLtGetStatusString(s) + ")");
}

Scratch::~Scratch() {
  if (ptr_) cudaFree(ptr_);
}

void* Scratch::get(size_t bytes, const char* op) {
  if (ptr_ && bytes <= bytes_) return ptr_;
  if (ptr_) {
    // Work already queued may still use the old buffer.
    FTUNE_CUDA(cudaDeviceSynchronize(), op);
    FTUNE_CUDA(cudaFree(ptr_), op);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  // Round up to 1 MiB (at least 256 bytes) so slowly growing requests do not reallocate each time.
  size_t want = bytes < 256 ? 256 : bytes;
  if (want > (size_t(1) << 20)) want = (want + (size_t(1) << 20) - 1) >> 20 << 20;
  FTUNE_CUDA(cudaMalloc(&ptr_, want), op);
  bytes_ = want;
  return ptr_;
}

}  // namespace cuda

namespace {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    try {
      FTUNE_CUDA(cudaSetDevice(device_), "init");
      // A blocking stream (not cudaStreamNonBlocking): it also orders against the legacy default
      // stream, which other code in the process may use.
      FTUNE_CUDA(cudaStreamCreate(&stream_), "init");
      cur_ = stream_;
      gemm_ = std::make_unique<cuda::Gemm>();
      FTUNE_CUDA(cudaMalloc(reinterpret_cast<void**>(&dev_small_), cuda::kSmallBytes), "init");
      FTUNE_CUDA(cudaMallocHost(reinterpret_cast<void**>(&host_small_), cuda::kSmallBytes), "init");
      int major = 0;
      FTUNE_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_),
                 "init");
      bf16_capable_ = major >= 8;  // bf16 tensor cores (mma.sync m16n8k16 bf16): Ampere and later
      const char* prof = std::getenv("FTUNE_PROFILE");
      profiling_ = prof && *prof && std::string(prof) != "0";
    } catch (...) {
      release();
      throw;
    }
  }
  ~CudaBackend() override { release(); }

  std::string name() const override { return "cuda"; }

  // ---- compute precision ----
  bool set_bf16_compute(bool on) override {
    if (on && !bf16_capable_) return false;
    bf16_ = on;
    return true;
  }
  void set_weight_mirror(const float* params, size_t count) override {
    activate();
    drop_mirror();
    if (!params || count == 0) return;
    void* p = alloc(count * sizeof(__nv_bfloat16));  // counted with the model's buffers
    mirror_ = static_cast<__nv_bfloat16*>(p);
    mirror_base_ = params;
    mirror_count_ = count;
    mirror_stale_ = true;
  }
  size_t peak_allocated_bytes() const override { return peak_bytes_; }
  void* native_stream() const override { return stream_; }
  bool memory_info(size_t* free_bytes, size_t* total_bytes) const override {
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
    const bool ok = cudaSetDevice(device_) == cudaSuccess &&
                    cudaMemGetInfo(free_bytes, total_bytes) == cudaSuccess;
    if (prev >= 0 && prev != device_) (void)cudaSetDevice(prev);
    (void)cudaGetLastError();
    return ok;
  }

  // ---- memory ----
  void* alloc(size_t bytes) override {
    activate();
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      const bool info = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
      (void)cudaGetLastError();
      throw Error("CUDA error in alloc: cudaMalloc of " + std::to_string(bytes) +
                  " bytes failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")" +
                  (info ? "; " + std::to_string(free_b >> 20) + " MiB of " +
                              std::to_string(total_b >> 20) + " MiB free on the device"
                        : std::string()));
    }
    try {
      if (bytes) FTUNE_CUDA(cudaMemsetAsync(p, 0, bytes, cur_), "alloc");
      FTUNE_CUDA(cudaStreamSynchronize(cur_), "alloc");
      allocs_.emplace(p, bytes);
      live_bytes_ += bytes;
      peak_bytes_ = std::max(peak_bytes_, live_bytes_);
    } catch (...) {
      cudaFree(p);
      throw;
    }
    return p;
  }
  // Called from destructors (DeviceBuffer), so it reports rather than throws.
  void free(void* p) override {
    if (!p) return;
    activate_nothrow();
    auto it = allocs_.find(p);
    if (it == allocs_.end()) {
      std::fprintf(stderr, "ftune: cuda backend: free of a pointer it did not allocate (%p)\n", p);
      return;
    }
    if (p == mirror_base_) drop_mirror();  // the weights it copies are going away
    live_bytes_ -= it->second;
    allocs_.erase(it);
    const cudaError_t e = cudaFree(p);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      std::fprintf(stderr, "ftune: cuda backend: cudaFree failed: %s\n", cudaGetErrorString(e));
    }
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    written(dst, bytes);
    memcpy_sync(dst, src, bytes, cudaMemcpyHostToDevice, "upload");
  }
  void download(void* dst, const void* src, size_t bytes) override {
    memcpy_sync(dst, src, bytes, cudaMemcpyDeviceToHost, "download");
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    ProfScope prof_scope(this, nullptr, "copy");
    written(dst, bytes);
    memcpy_sync(dst, src, bytes, cudaMemcpyDeviceToDevice, "copy");
  }
  void zero(void* p, size_t bytes) override {
    ProfScope prof_scope(this, nullptr, "zero");
    if (bytes == 0) return;
    activate();
    written(p, bytes);
    FTUNE_CUDA(cudaMemsetAsync(p, 0, bytes, cur_), "zero");
    FTUNE_CUDA(cudaStreamSynchronize(cur_), "zero");
  }
  // After this the caller's stream may be destroyed: memory calls go back to the own stream.
  void synchronize(const ExecContext& c) override {
    FTUNE_CUDA(cudaStreamSynchronize(stream(c)), "synchronize");
    cur_ = stream_;
  }

  // ---- linear algebra ----
  void gemm(const ExecContext& c, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
            const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
            int64_t ldc) override {
    ProfScope prof_scope(this, &c, "gemm");
    // Stays fp32 in bf16 mode too: it serves LoRA's rank-r products, which are small.
    if (M > 0) written(C, size_t((M - 1) * ldc + N) * sizeof(float));
    gemm_->run(stream(c), ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nullptr, "gemm");
  }
  void linear_forward(const ExecContext& c, const float* x, const float* W, const float* bias,
                      float* y, int64_t n, int64_t in, int64_t out) override {
    ProfScope prof_scope(this, &c, "linear_forward");
    const cudaStream_t s = stream(c);
    if (n == 0 || out == 0) return;
    written(y, size_t(n * out) * sizeof(float));
    // y[n,out] = x[n,in] W[out,in]^T + bias: bias through cuBLASLt's epilogue.
    if (bf16_) {
      const char* op = "linear_forward";
      const bf16* x16 = to_bf16(s, x, size_t(n * in), c16_[0], op);
      const bf16* W16 = weight_bf16(s, W, size_t(out * in), c16_[1], op);
      gemm_->run_bf16(s, false, true, n, out, in, 1.f, x16, in, W16, in, 0.f, y, out, bias, op);
      return;
    }
    gemm_->run(s, false, true, n, out, in, 1.f, x, in, W, in, 0.f, y, out, bias, "linear_forward");
  }
  void linear_backward(const ExecContext& c, const float* dy, const float* x, const float* W,
                       float* dx, float* dW, float* dbias, int64_t n, int64_t in, int64_t out,
                       bool acc) override {
    ProfScope prof_scope(this, &c, "linear_backward");
    const cudaStream_t s = stream(c);
    const char* op = "linear_backward";
    if (dx) written(dx, size_t(n * in) * sizeof(float));
    if (dW) written(dW, size_t(out * in) * sizeof(float));
    if (dbias) written(dbias, size_t(out) * sizeof(float));
    if (bf16_ && n > 0 && in > 0 && out > 0 && (dx || dW)) {
      const bf16* dy16 = to_bf16(s, dy, size_t(n * out), c16_[0], op);
      if (dx) {
        const bf16* W16 = weight_bf16(s, W, size_t(out * in), c16_[1], op);
        gemm_->run_bf16(s, false, false, n, in, out, 1.f, dy16, out, W16, in, acc ? 1.f : 0.f, dx,
                        in, nullptr, op);
      }
      if (dW) {
        const bf16* x16 = to_bf16(s, x, size_t(n * in), c16_[2], op);
        gemm_->run_bf16(s, true, false, out, in, n, 1.f, dy16, out, x16, in, 1.f, dW, in, nullptr,
                        op);
      }
    } else {
      // dx[n,in] (= or +=) dy[n,out] W[out,in]
      if (dx)
        gemm_->run(s, false, false, n, in, out, 1.f, dy, out, W, in, acc ? 1.f : 0.f, dx, in,
                   nullptr, op);
      // dW[out,in] += dy^T x
      if (dW) gemm_->run(s, true, false, out, in, n, 1.f, dy, out, x, in, 1.f, dW, in, nullptr, op);
    }
    if (dbias && n > 0 && out > 0) {
      double* partials = reduce_.get_as<double>(cuda::column_sum_partials(n, out), op);
      cuda::column_sums_add(s, dy, dbias, n, out, partials);
    }
  }

  // ---- elementwise / reductions ----
  void add_inplace(const ExecContext& c, float* y, const float* x, size_t n) override {
    ProfScope prof_scope(this, &c, "add_inplace");
    written(y, n * sizeof(float));
    cuda::add_inplace(stream(c), y, x, n);
  }
  void scale_inplace(const ExecContext& c, float* x, float s, size_t n) override {
    ProfScope prof_scope(this, &c, "scale_inplace");
    written(x, n * sizeof(float));
    cuda::scale_inplace(stream(c), x, s, n);
  }
  void dropout(const ExecContext& c, const float* x, float* y, size_t n, float p, uint64_t seed,
               bool accumulate) override {
    ProfScope prof_scope(this, &c, "dropout");
    written(y, n * sizeof(float));
    cuda::dropout(stream(c), x, y, n, p, seed, accumulate);
  }
  double sum_squares(const ExecContext& c, const float* x, size_t n) override {
    ProfScope prof_scope(this, &c, "sum_squares");
    const cudaStream_t s = stream(c);
    const char* op = "sum_squares";
    if (n == 0) return 0.0;
    double* partials = reduce_.get_as<double>(cuda::sum_squares_partials(n), op);
    cuda::sum_squares(s, x, n, partials, &dev_small_->loss);
    FTUNE_CUDA(cudaMemcpyAsync(&host_small_->loss, &dev_small_->loss, sizeof(double),
                               cudaMemcpyDeviceToHost, s),
               op);
    FTUNE_CUDA(cudaStreamSynchronize(s), op);
    return host_small_->loss;
  }
  void cast(const ExecContext& c, const void* src, DType st, void* dst, DType dt,
            size_t n) override {
    ProfScope prof_scope(this, &c, "cast");
    written(dst, n * dtype_size(dt));
    cuda::cast(stream(c), src, st, dst, dt, n);
  }

  // ---- embedding ----
  void embedding_forward(const ExecContext& c, const int32_t* ids, const float* table, float* out,
                         int64_t n, int64_t dim) override {
    ProfScope prof_scope(this, &c, "embedding_forward");
    const cudaStream_t s = stream(c);
    // The vocabulary size is not passed here, so only the sign can be checked (as on the CPU).
    int32_t bad = 0;
    const int64_t pos = cuda::first_out_of_range(s, ids, n, 0, int64_t(1) << 32, 0, dev_small_,
                                                 host_small_, &bad, "embedding_forward");
    if (pos >= 0)
      throw Error("embedding_forward: token id " + std::to_string(bad) + " at position " +
                  std::to_string(pos) +
                  " is negative; the tokenized data is corrupt, re-tokenize the dataset");
    written(out, size_t(n * dim) * sizeof(float));
    cuda::embedding_forward(s, ids, table, out, n, dim);
  }
  void embedding_backward(const ExecContext& c, const int32_t* ids, const float* dout,
                          float* dtable, int64_t n, int64_t dim, int64_t vocab) override {
    ProfScope prof_scope(this, &c, "embedding_backward");
    const cudaStream_t s = stream(c);
    const char* op = "embedding_backward";
    // Validate every id before touching dtable, so a bad id leaves the gradient unchanged.
    int32_t bad = 0;
    const int64_t pos =
        cuda::first_out_of_range(s, ids, n, 0, vocab, 0, dev_small_, host_small_, &bad, op);
    if (pos >= 0)
      throw Error("embedding_backward: token id " + std::to_string(bad) + " at position " +
                  std::to_string(pos) + " is outside the embedding table (vocab size " +
                  std::to_string(vocab) +
                  "); the dataset was tokenized with a different tokenizer than this model's");
    if (n <= 0 || dim <= 0) return;
    written(dtable, size_t(vocab * dim) * sizeof(float));
    const size_t bytes = cuda::embedding_backward_scratch_bytes(n, vocab);
    void* scratch = sort_.get(bytes, op);
    cuda::embedding_backward(s, ids, dout, dtable, n, dim, vocab, scratch, bytes);
  }

  // ---- RMSNorm ----
  void rmsnorm_forward(const ExecContext& c, const float* x, const float* w, float* y, float* rstd,
                       int64_t rows, int64_t dim, float eps) override {
    ProfScope prof_scope(this, &c, "rmsnorm_forward");
    written(y, size_t(rows * dim) * sizeof(float));
    written(rstd, size_t(rows) * sizeof(float));
    cuda::rmsnorm_forward(stream(c), x, w, y, rstd, rows, dim, eps);
  }
  void rmsnorm_backward(const ExecContext& c, const float* dy, const float* x, const float* w,
                        const float* rstd, float* dx, float* dw, int64_t rows,
                        int64_t dim) override {
    ProfScope prof_scope(this, &c, "rmsnorm_backward");
    const cudaStream_t s = stream(c);
    written(dx, size_t(rows * dim) * sizeof(float));
    if (dw) written(dw, size_t(dim) * sizeof(float));
    double* partials = nullptr;
    if (dw && rows > 0 && dim > 0)
      partials = reduce_.get_as<double>(cuda::rmsnorm_dw_partials(rows, dim), "rmsnorm_backward");
    cuda::rmsnorm_backward(s, dy, x, w, rstd, dx, dw, rows, dim, partials);
  }

  // ---- RoPE ----
  void rope_forward(const ExecContext& c, float* x, const int32_t* pos, const float* inv_freq,
                    int64_t n, int heads, int head_dim) override {
    ProfScope prof_scope(this, &c, "rope_forward");
    written(x, size_t(n * heads * head_dim) * sizeof(float));
    cuda::rope_rotate(stream(c), x, pos, inv_freq, n, heads, head_dim, 1);
  }
  void rope_backward(const ExecContext& c, float* dx, const int32_t* pos, const float* inv_freq,
                     int64_t n, int heads, int head_dim) override {
    ProfScope prof_scope(this, &c, "rope_backward");
    written(dx, size_t(n * heads * head_dim) * sizeof(float));
    cuda::rope_rotate(stream(c), dx, pos, inv_freq, n, heads, head_dim, -1);
  }

  // ---- SwiGLU ----
  void swiglu_forward(const ExecContext& c, const float* g, const float* u, float* h,
                      size_t n) override {
    ProfScope prof_scope(this, &c, "swiglu_forward");
    written(h, n * sizeof(float));
    cuda::swiglu_forward(stream(c), g, u, h, n);
  }
  void swiglu_backward(const ExecContext& c, const float* dh, const float* g, const float* u,
                       float* dg, float* du, size_t n) override {
    ProfScope prof_scope(this, &c, "swiglu_backward");
    written(dg, n * sizeof(float));
    written(du, n * sizeof(float));
    cuda::swiglu_backward(stream(c), dh, g, u, dg, du, n);
  }

  // ---- attention (cuda/attention.cu) ----
  void attention_forward(const ExecContext& c, const AttentionShape& sh, const float* q,
                         const float* k, const float* v, float* out, float* lse) override {
    ProfScope prof_scope(this, &c, "attention_forward");
    const cudaStream_t s = stream(c);
    const char* op = "attention_forward";
    const cuda::AttentionArgs a = attention_args(s, sh, op);
    if (a.tokens == 0) return;
    const size_t nq = size_t(a.tokens) * size_t(a.q_heads) * size_t(a.head_dim);
    const size_t nkv = size_t(a.tokens) * size_t(a.kv_heads) * size_t(a.head_dim);
    written(out, nq * sizeof(float));
    written(lse, size_t(a.tokens) * size_t(a.q_heads) * sizeof(float));
    if (bf16_attention(a)) {
      // q16 | k16 | v16 | o16, each a multiple of 8 elements (16 bytes) long.
      bf16* q16 = attn16_.get_as<bf16>(2 * nq + 2 * nkv, op);
      bf16* k16 = q16 + nq;
      bf16* v16 = k16 + nkv;
      bf16* o16 = v16 + nkv;
      cuda::cast(s, q, DType::F32, q16, DType::BF16, nq);
      cuda::cast(s, k, DType::F32, k16, DType::BF16, nkv);
      cuda::cast(s, v, DType::F32, v16, DType::BF16, nkv);
      cuda::attention_forward_bf16(s, a, q16, k16, v16, o16, lse);
      cuda::check_launch("attention_forward_bf16", op);
      cuda::cast(s, o16, DType::BF16, out, DType::F32, nq);
      return;
    }
    cuda::attention_forward(s, a, q, k, v, out, lse);
    cuda::check_launch("attention_forward", "attention_forward");
  }
  void attention_backward(const ExecContext& c, const AttentionShape& sh, const float* dout,
                          const float* q, const float* k, const float* v, const float* out,
                          const float* lse, float* dq, float* dk, float* dv) override {
    ProfScope prof_scope(this, &c, "attention_backward");
    const cudaStream_t s = stream(c);
    const char* op = "attention_backward";
    const cuda::AttentionArgs a = attention_args(s, sh, op);
    if (a.tokens == 0) return;
    const size_t nq = size_t(a.tokens) * size_t(a.q_heads) * size_t(a.head_dim);
    const size_t nkv = size_t(a.tokens) * size_t(a.kv_heads) * size_t(a.head_dim);
    written(dq, nq * sizeof(float));
    written(dk, nkv * sizeof(float));
    written(dv, nkv * sizeof(float));
    if (bf16_attention(a)) {
      // q16 | k16 | v16 | o16 | do16 | dq16 | dk16 | dv16
      bf16* q16 = attn16_.get_as<bf16>(4 * nq + 4 * nkv, op);
      bf16* k16 = q16 + nq;
      bf16* v16 = k16 + nkv;
      bf16* o16 = v16 + nkv;
      bf16* do16 = o16 + nq;
      bf16* dq16 = do16 + nq;
      bf16* dk16 = dq16 + nq;
      bf16* dv16 = dk16 + nkv;
      cuda::cast(s, q, DType::F32, q16, DType::BF16, nq);
      cuda::cast(s, k, DType::F32, k16, DType::BF16, nkv);
      cuda::cast(s, v, DType::F32, v16, DType::BF16, nkv);
      // out came from a bf16 forward, so this gives back exactly what the forward produced.
      cuda::cast(s, out, DType::F32, o16, DType::BF16, nq);
      cuda::cast(s, dout, DType::F32, do16, DType::BF16, nq);
      void* ws = attn_ws_.get(cuda::attention_bf16_workspace_bytes(a), op);
      cuda::attention_backward_bf16(s, a, do16, q16, k16, v16, o16, lse, dq16, dk16, dv16, ws);
      cuda::check_launch("attention_backward_bf16", op);
      cuda::cast(s, dq16, DType::BF16, dq, DType::F32, nq);
      cuda::cast(s, dk16, DType::BF16, dk, DType::F32, nkv);
      cuda::cast(s, dv16, DType::BF16, dv, DType::F32, nkv);
      return;
    }
    const size_t bytes = cuda::attention_workspace_bytes(a);
    void* ws = attn_ws_.get(bytes, op);
    cuda::attention_backward(s, a, dout, q, k, v, out, lse, dq, dk, dv, ws);
    cuda::check_launch("attention_backward", op);
  }

  // ---- LM head + loss ----
  LossSum lm_head_loss(const ExecContext& c, const float* hidden, const float* W,
                       const int32_t* targets, int64_t n, int64_t d, int64_t vocab,
                       float grad_scale, float* dhidden, float* dW) override {
    ProfScope prof_scope(this, &c, "lm_head_loss");
    const cudaStream_t s = stream(c);
    if (dhidden) written(dhidden, size_t(n * d) * sizeof(float));
    if (dW) written(dW, size_t(vocab * d) * sizeof(float));
    if (bf16_ && n > 0 && d > 0 && vocab > 0) {
      const char* op = "lm_head_loss";
      cuda::LmHeadBf16 b;
      b.hidden = to_bf16(s, hidden, size_t(n * d), c16_[2], op);
      b.W = weight_bf16(s, W, size_t(vocab * d), c16_[1], op);
      b.dlogits = &dlogits16_;
      return cuda::lm_head_loss(s, *gemm_, hidden, W, targets, n, d, vocab, grad_scale, dhidden, dW,
                                logits_, losses_, dev_small_, host_small_, &b);
    }
    return cuda::lm_head_loss(s, *gemm_, hidden, W, targets, n, d, vocab, grad_scale, dhidden, dW,
                              logits_, losses_, dev_small_, host_small_);
  }

  // ---- AdamW ----
  void adamw_step(const ExecContext& c, float* p, const float* g, float* m, float* v,
                  const ParamSpan* spans, int n_spans, const AdamWHyper& h) override {
    ProfScope prof_scope(this, &c, "adamw_step");
    const cudaStream_t s = stream(c);
    const char* op = "adamw_step";
    const AdamWCoeffs k = adamw_coeffs(h);
    if (n_spans <= 0) return;
    host_spans_.resize(size_t(n_spans));
    unsigned long long total = 0;
    for (int i = 0; i < n_spans; ++i) {
      cuda::DeviceSpan& d = host_spans_[size_t(i)];
      d.start = total;
      d.offset = spans[i].offset;
      d.decay = adamw_decay(h, spans[i].weight_decay);
      total += spans[i].count;
    }
    if (total == 0) return;
    auto* dspans = spans_.get_as<cuda::DeviceSpan>(size_t(n_spans), op);
    // From pageable memory: the call returns once host_spans_ has been staged, so it may change.
    FTUNE_CUDA(
        cudaMemcpyAsync(dspans, host_spans_.data(), size_t(n_spans) * sizeof(cuda::DeviceSpan),
                        cudaMemcpyHostToDevice, s),
        op);
    // Weights inside the registered buffer get their bf16 copy written in the same pass; any
    // other parameter buffer is just marked written.
    bf16* p16 = nullptr;
    if (mirror_ && p >= mirror_base_ && p < mirror_base_ + mirror_count_) {
      size_t end = 0;
      for (int i = 0; i < n_spans; ++i) end = std::max(end, spans[i].offset + spans[i].count);
      FTUNE_CHECK(size_t(p - mirror_base_) + end <= mirror_count_,
                  "adamw_step: spans run past the registered weight buffer");
      p16 = mirror_ + (p - mirror_base_);
    } else {
      size_t end = 0;
      for (int i = 0; i < n_spans; ++i) end = std::max(end, spans[i].offset + spans[i].count);
      written(p, end * sizeof(float));
    }
    cuda::adamw_step(s, p, g, m, v, dspans, n_spans, total, k, p16);
  }

 private:
  using bf16 = __nv_bfloat16;

  // FTUNE_PROFILE=1: a pair of CUDA events around every op, read and summed per op name by
  // take_op_profile (or every few thousand ops, so the events never pile up).
  struct ProfEvent {
    const char* op;
    cudaEvent_t begin, end;
  };
  class ProfScope {
   public:
    ProfScope(CudaBackend* be, const ExecContext* c, const char* op) {
      if (!be->profiling_) return;
      be_ = be;
      s_ = c && c->stream ? static_cast<cudaStream_t>(c->stream) : c ? be->stream_ : be->cur_;
      index_ = be->prof_begin(op, s_);
    }
    ~ProfScope() {
      if (be_ && index_ < be_->prof_.size()) cudaEventRecord(be_->prof_[index_].end, s_);
    }
    ProfScope(const ProfScope&) = delete;
    ProfScope& operator=(const ProfScope&) = delete;

   private:
    CudaBackend* be_ = nullptr;
    cudaStream_t s_ = nullptr;
    size_t index_ = 0;
  };
  size_t prof_begin(const char* op, cudaStream_t s) {
    if (prof_.size() >= 4096) prof_fold();
    ProfEvent e{op, nullptr, nullptr};
    for (cudaEvent_t* ev : {&e.begin, &e.end}) {
      if (!event_pool_.empty()) {
        *ev = event_pool_.back();
        event_pool_.pop_back();
      } else {
        FTUNE_CUDA(cudaEventCreate(ev), "profile");
      }
    }
    FTUNE_CUDA(cudaEventRecord(e.begin, s), "profile");
    prof_.push_back(e);
    return prof_.size() - 1;
  }
  // Reads every recorded pair into prof_totals_ and returns the events to the pool.
  void prof_fold() {
    FTUNE_CUDA(cudaDeviceSynchronize(), "profile");
    for (const ProfEvent& e : prof_) {
      float ms = 0.f;
      if (cudaEventElapsedTime(&ms, e.begin, e.end) == cudaSuccess) {
        auto& t = prof_totals_[e.op];
        t.first += 1;
        t.second += double(ms);
      }
      (void)cudaGetLastError();
      event_pool_.push_back(e.begin);
      event_pool_.push_back(e.end);
    }
    prof_.clear();
  }

 public:
  std::vector<OpTime> take_op_profile() override {
    if (!profiling_) return {};
    activate();
    prof_fold();
    std::vector<OpTime> out;
    for (const auto& [op, t] : prof_totals_) out.push_back({op, t.first, t.second});
    prof_totals_.clear();
    std::sort(out.begin(), out.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
    return out;
  }

 private:
  // A write of [p, p + bytes) through this backend: the bf16 weight copy is stale if it overlaps.
  void written(const void* p, size_t bytes) {
    if (!mirror_ || !p || bytes == 0) return;
    const auto a = reinterpret_cast<uintptr_t>(p);
    const auto lo = reinterpret_cast<uintptr_t>(mirror_base_);
    const uintptr_t hi = lo + mirror_count_ * sizeof(float);
    if (a < hi && a + bytes > lo) mirror_stale_ = true;
  }
  void drop_mirror() {
    void* m = mirror_;
    mirror_ = nullptr;
    mirror_base_ = nullptr;
    mirror_count_ = 0;
    if (m) free(m);
  }
  // fp32 x[n] converted into `slot`.
  const bf16* to_bf16(cudaStream_t s, const float* x, size_t n, cuda::Scratch& slot,
                      const char* op) {
    bf16* d = slot.get_as<bf16>(n, op);
    cuda::cast(s, x, DType::F32, d, DType::BF16, n);
    return d;
  }
  // A weight's bf16 values: from the registered copy when W lies inside it (re-made first when
  // stale), else converted into `slot`.
  const bf16* weight_bf16(cudaStream_t s, const float* W, size_t n, cuda::Scratch& slot,
                          const char* op) {
    if (mirror_ && W >= mirror_base_ && W + n <= mirror_base_ + mirror_count_) {
      if (mirror_stale_) {
        cuda::cast(s, mirror_base_, DType::F32, mirror_, DType::BF16, mirror_count_);
        mirror_stale_ = false;
      }
      return mirror_ + (W - mirror_base_);
    }
    return to_bf16(s, W, n, slot, op);
  }
  bool bf16_attention(const cuda::AttentionArgs& a) const {
    return bf16_ && (a.head_dim == 64 || a.head_dim == 128);
  }

  void activate() {
    int cur = -1;
    FTUNE_CUDA(cudaGetDevice(&cur), "cudaGetDevice");
    if (cur != device_) FTUNE_CUDA(cudaSetDevice(device_), "cudaSetDevice");
  }
  void activate_nothrow() {
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != device_) cudaSetDevice(device_);
    (void)cudaGetLastError();
  }
  // The stream an op runs on; memory calls follow it.
  cudaStream_t stream(const ExecContext& c) {
    activate();
    cur_ = c.stream ? static_cast<cudaStream_t>(c.stream) : stream_;
    return cur_;
  }
  void memcpy_sync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* op) {
    if (bytes == 0) return;
    activate();
    FTUNE_CUDA(cudaMemcpyAsync(dst, src, bytes, kind, cur_), op);
    FTUNE_CUDA(cudaStreamSynchronize(cur_), op);
  }

  // Checks the shape as the CPU backend does, uploads the host doc_offsets and finds the longest
  // document.
  cuda::AttentionArgs attention_args(cudaStream_t s, const AttentionShape& sh, const char* op) {
    FTUNE_CHECK(sh.tokens >= 0 && sh.q_heads > 0 && sh.kv_heads > 0 && sh.head_dim > 0,
                "attention shape needs tokens >= 0 and positive head counts and head_dim");
    FTUNE_CHECK(sh.q_heads % sh.kv_heads == 0, "attention q_heads " + std::to_string(sh.q_heads) +
                                                   " is not a multiple of kv_heads " +
                                                   std::to_string(sh.kv_heads));
    FTUNE_CHECK(sh.n_docs >= 0 && (sh.n_docs == 0 || sh.doc_offsets != nullptr),
                "attention needs doc_offsets for its documents");
    cuda::AttentionArgs a;
    a.tokens = sh.tokens;
    a.q_heads = sh.q_heads;
    a.kv_heads = sh.kv_heads;
    a.head_dim = sh.head_dim;
    a.n_docs = sh.n_docs;
    a.scale = sh.scale;
    if (sh.n_docs == 0) {
      FTUNE_CHECK(sh.tokens == 0, "attention over tokens without documents");
      return a;
    }
    FTUNE_CHECK(sh.doc_offsets[0] == 0, "attention doc_offsets must start at 0");
    int max_len = 0;
    for (int d = 0; d < sh.n_docs; ++d) {
      const int len = sh.doc_offsets[d + 1] - sh.doc_offsets[d];
      FTUNE_CHECK(len > 0, "attention doc_offsets must be strictly increasing (document " +
                               std::to_string(d) + ")");
      max_len = len > max_len ? len : max_len;
    }
    FTUNE_CHECK(sh.doc_offsets[sh.n_docs] == sh.tokens,
                "attention doc_offsets end at " + std::to_string(sh.doc_offsets[sh.n_docs]) +
                    " but there are " + std::to_string(sh.tokens) + " tokens");
    a.max_doc_len = max_len;
    const size_t count = size_t(sh.n_docs) + 1;
    auto* offsets = doc_offsets_.get_as<int32_t>(count, op);
    // Queued behind earlier attention calls that read the previous offsets; pageable source, so
    // the call returns once the host array has been staged.
    FTUNE_CUDA(cudaMemcpyAsync(offsets, sh.doc_offsets, count * sizeof(int32_t),
                               cudaMemcpyHostToDevice, s),
               op);
    a.doc_offsets = offsets;
    return a;
  }

  void release() noexcept {
    if (device_ >= 0) {
      activate_nothrow();
      cudaDeviceSynchronize();
    }
    for (const ProfEvent& e : prof_) {
      cudaEventDestroy(e.begin);
      cudaEventDestroy(e.end);
    }
    for (cudaEvent_t e : event_pool_) cudaEventDestroy(e);
    prof_.clear();
    event_pool_.clear();
    mirror_ = nullptr;  // freed with allocs_ below
    mirror_base_ = nullptr;
    mirror_count_ = 0;
    for (auto& [p, bytes] : allocs_) cudaFree(p);
    allocs_.clear();
    gemm_.reset();
    if (dev_small_) cudaFree(dev_small_);
    if (host_small_) cudaFreeHost(host_small_);
    if (stream_) cudaStreamDestroy(stream_);
    dev_small_ = nullptr;
    host_small_ = nullptr;
    stream_ = nullptr;
    (void)cudaGetLastError();
  }

  int device_ = -1;
  cudaStream_t stream_ = nullptr;
  cudaStream_t cur_ = nullptr;  // stream of the most recent op; memory calls queue behind it
  std::unique_ptr<cuda::Gemm> gemm_;
  cuda::Small* dev_small_ = nullptr;
  cuda::Small* host_small_ = nullptr;  // pinned
  // Scratch per purpose, so ops that need two at once never share one.
  cuda::Scratch reduce_, sort_, logits_, losses_, attn_ws_, doc_offsets_, spans_;
  // bf16 mixed precision: operand conversions (gemm A, B and a third for linear_backward), the
  // attention tensors and one chunk of bf16 dlogits.
  cuda::Scratch c16_[3], attn16_, dlogits16_;
  bool bf16_capable_ = false, bf16_ = false;
  bf16* mirror_ = nullptr;  // bf16 copy of [mirror_base_, mirror_base_ + mirror_count_)
  const float* mirror_base_ = nullptr;
  size_t mirror_count_ = 0;
  bool mirror_stale_ = true;
  bool profiling_ = false;
  std::vector<ProfEvent> prof_;
  std::vector<cudaEvent_t> event_pool_;
  std::map<std::string, std::pair<int64_t, double>> prof_totals_;
  std::vector<cuda::DeviceSpan> host_spans_;
  std::unordered_map<void*, size_t> allocs_;
  size_t live_bytes_ = 0, peak_bytes_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    throw Error(std::string("CUDA backend: no usable GPU (") + cudaGetErrorString(e) + ")");
  }
  if (device < 0 || device >= count)
    throw Error("CUDA backend: device " + std::to_string(device) + " does not exist (" +
                std::to_string(count) + " CUDA device" + (count == 1 ? "" : "s") + " visible)");
  return std::make_unique<CudaBackend>(device);
}

}  // namespace ftune
