// The narrow op interface every device implements. Ops are coarse (a whole layer's worth of
// work per call), take their execution context explicitly and read no hidden global state.
// Pointers are device pointers of the backend that allocated them. Layouts are row-major.
// The CPU backend (engine/backend/cpu) is fp32 and is the reference every other backend is tested
// against.
//
// Token layout: a micro-batch of B rows x T tokens is flattened to N = B*T tokens. Documents
// are contiguous token ranges described cu_seqlens-style: offsets[0]=0 < ... < offsets[n_docs]=N;
// a document never crosses a row boundary. Attention is causal within a document only.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/dtype.h"
#include "engine/base/targets.h"

namespace ftune {

struct ExecContext {
  void* stream = nullptr;  // cudaStream_t on CUDA; unused on CPU
  int threads = 1;         // CPU worker threads for this call
  uint64_t seed = 0;       // for ops that draw random numbers (stochastic rounding, dropout)
};

struct AttentionShape {
  int64_t tokens = 0;  // N
  int q_heads = 0;     // Hq
  int kv_heads = 0;    // Hkv (divides Hq): grouped-query attention without repeating K/V
  int head_dim = 0;    // D
  const int32_t* doc_offsets = nullptr;  // host array, n_docs+1 entries
  int n_docs = 0;
  float scale = 0.f;  // usually 1/sqrt(D)
};

// One contiguous range of the flat parameter buffer that shares a weight-decay setting.
struct ParamSpan {
  size_t offset = 0;
  size_t count = 0;
  float weight_decay = 0.f;
};

struct AdamWHyper {
  float lr = 0.f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  int64_t step = 1;        // 1-based, for bias correction
  float grad_scale = 1.f;  // multiplies every gradient first (clipping folded in)
};

struct LossSum {
  double loss = 0.0;   // sum of per-token cross-entropy over counted tokens
  int64_t tokens = 0;  // tokens whose target is not ignore_index
};

// Device time of one backend op name, summed over its calls (Backend::take_op_profile).
struct OpTime {
  std::string op;
  int64_t calls = 0;
  double ms = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // ---- memory ----
  virtual void* alloc(size_t bytes) = 0;  // zero-filled, 64-byte aligned
  virtual void free(void* p) = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void zero(void* p, size_t bytes) = 0;
  virtual void synchronize(const ExecContext& ctx) = 0;
  // High-water mark of bytes held through alloc() (buffers the model and trainer own; a
  // backend's private workspaces are not included). 0 when the backend does not track it.
  virtual size_t peak_allocated_bytes() const { return 0; }
  // The device stream ops run on without an ExecContext stream (cudaStream_t on CUDA; null on
  // the CPU), for a communicator to order its collectives against.
  virtual void* native_stream() const { return nullptr; }
  // What the device can still hand out and its size; false when unknown (the CPU's memory is the
  // operating system's to overcommit).
  virtual bool memory_info(size_t* free_bytes, size_t* total_bytes) const {
    (void)free_bytes, (void)total_bytes;
    return false;
  }

  // ---- linear algebra ----
  // C[M,N] = alpha * op(A) * op(B) + beta * C, row-major; op(A) is [M,K], op(B) is [K,N].
  virtual void gemm(const ExecContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N,
                    int64_t K, float alpha, const float* A, int64_t lda, const float* B,
                    int64_t ldb, float beta, float* C, int64_t ldc) = 0;
  // y[n,out] = x[n,in] * W[out,in]^T (+ bias[out]) — the HF nn.Linear convention.
  virtual void linear_forward(const ExecContext& ctx, const float* x, const float* W,
                              const float* bias, float* y, int64_t n, int64_t in, int64_t out) = 0;
  // dx[n,in] (= or +=, per accumulate_dx) dy*W; dW += dy^T x; dbias += colsum(dy).
  // Any of dx, dW, dbias may be null to skip it (frozen weights, first layer input).
  virtual void linear_backward(const ExecContext& ctx, const float* dy, const float* x,
                               const float* W, float* dx, float* dW, float* dbias, int64_t n,
                               int64_t in, int64_t out, bool accumulate_dx) = 0;

  // ---- elementwise / reductions ----
  virtual void add_inplace(const ExecContext& ctx, float* y, const float* x, size_t n) = 0;
  virtual void scale_inplace(const ExecContext& ctx, float* x, float s, size_t n) = 0;
  // y (= or +=, per accumulate) x * keep_i / (1 - p), keep_i a pure function of (seed, i) so
  // backward recomputes the mask (see ref::dropout_keep; every backend must draw the same one).
  virtual void dropout(const ExecContext& ctx, const float* x, float* y, size_t n, float p,
                       uint64_t seed, bool accumulate) = 0;
  virtual double sum_squares(const ExecContext& ctx, const float* x, size_t n) = 0;
  virtual void cast(const ExecContext& ctx, const void* src, DType src_t, void* dst, DType dst_t,
                    size_t n) = 0;

  // ---- embedding ----
  virtual void embedding_forward(const ExecContext& ctx, const int32_t* ids, const float* table,
                                 float* out, int64_t n, int64_t dim) = 0;
  // dtable[ids[i]] += dout[i], deterministic order. ids is a device pointer.
  virtual void embedding_backward(const ExecContext& ctx, const int32_t* ids, const float* dout,
                                  float* dtable, int64_t n, int64_t dim, int64_t vocab) = 0;

  // ---- RMSNorm: y = x * rstd * w, rstd = 1/sqrt(mean(x^2)+eps) saved per row ----
  virtual void rmsnorm_forward(const ExecContext& ctx, const float* x, const float* w, float* y,
                               float* rstd, int64_t rows, int64_t dim, float eps) = 0;
  // dx = (not +=) input gradient; dw += weight gradient (dw may be null for a frozen norm).
  virtual void rmsnorm_backward(const ExecContext& ctx, const float* dy, const float* x,
                                const float* w, const float* rstd, float* dx, float* dw,
                                int64_t rows, int64_t dim) = 0;

  // ---- RoPE, HF "rotate_half" convention, in place on x[N, heads, head_dim] ----
  // positions[N] (device) are positions inside each token's document; inv_freq[head_dim/2]
  // (device) already carries any rope_scaling. Backward applies the inverse rotation.
  virtual void rope_forward(const ExecContext& ctx, float* x, const int32_t* positions,
                            const float* inv_freq, int64_t n, int heads, int head_dim) = 0;
  virtual void rope_backward(const ExecContext& ctx, float* dx, const int32_t* positions,
                             const float* inv_freq, int64_t n, int heads, int head_dim) = 0;

  // ---- SwiGLU: h = silu(gate) * up, elementwise over n ----
  virtual void swiglu_forward(const ExecContext& ctx, const float* gate, const float* up, float* h,
                              size_t n) = 0;
  virtual void swiglu_backward(const ExecContext& ctx, const float* dh, const float* gate,
                               const float* up, float* dgate, float* dup, size_t n) = 0;

  // ---- attention: q[N,Hq,D], k,v[N,Hkv,D] -> out[N,Hq,D], lse[N,Hq] (log-sum-exp, saved) ----
  // Causal within each document, no N x N matrix materialised.
  virtual void attention_forward(const ExecContext& ctx, const AttentionShape& s, const float* q,
                                 const float* k, const float* v, float* out, float* lse) = 0;
  // Writes (not accumulates) dq, dk, dv.
  virtual void attention_backward(const ExecContext& ctx, const AttentionShape& s,
                                  const float* dout, const float* q, const float* k, const float* v,
                                  const float* out, const float* lse, float* dq, float* dk,
                                  float* dv) = 0;

  // ---- LM head + cross-entropy, fused and chunked over tokens ----
  // logits = hidden[N,d] * W[V,d]^T, loss_i = logsumexp(logits_i) - logits_i[target_i].
  // Returns the summed loss over tokens whose target != kIgnoreIndex. When dhidden is not null,
  // writes dhidden = grad_scale * dloss/dhidden and accumulates dW += grad_scale * dloss/dW
  // (dW may be null for a frozen head). Never holds more than a chunk of logits.
  virtual LossSum lm_head_loss(const ExecContext& ctx, const float* hidden, const float* W,
                               const int32_t* targets, int64_t n, int64_t d, int64_t vocab,
                               float grad_scale, float* dhidden, float* dW) = 0;

  // ---- optimizer: AdamW with decoupled weight decay over spans of flat buffers ----
  // p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p), grads first multiplied by grad_scale.
  virtual void adamw_step(const ExecContext& ctx, float* params, const float* grads, float* m,
                          float* v, const ParamSpan* spans, int n_spans, const AdamWHyper& h) = 0;

  // ---- compute precision ----
  // bf16 mixed precision: linear layers, the LM head and attention take bf16 operands (tensor
  // cores) with fp32 accumulation, while every buffer the model sees stays fp32 (master weights,
  // activations, gradients, loss and reductions). Returns false when the backend has no bf16
  // path (the CPU backend computes in fp32 only).
  virtual bool set_bf16_compute(bool on) { return !on; }
  // The flat weight buffer [params, params + count) whose bf16 copy the backend keeps for bf16
  // compute, so weights are not converted on every use: adamw_step over it refreshes the copy in
  // the same pass, and any other write into the range through this backend marks the copy stale
  // (re-made at its next use). Writes that bypass the backend (a communicator's collectives) are
  // not seen, so a multi-rank run must not register one. nullptr forgets it.
  virtual void set_weight_mirror(const float* params, size_t count) {
    (void)params;
    (void)count;
  }

  // ---- profiling ----
  // Device time per op since the last call, largest first, when the backend times its ops (the
  // CUDA backend with FTUNE_PROFILE=1 in the environment: a pair of CUDA events around each
  // op); empty otherwise. Waits for the device.
  virtual std::vector<OpTime> take_op_profile() { return {}; }
};

std::unique_ptr<Backend> make_cpu_backend();

// Owning device buffer of floats (or any POD) tied to one backend.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend* be, size_t count) : be_(be), count_(count) {
    ptr_ = count ? static_cast<T*>(be->alloc(count * sizeof(T))) : nullptr;
  }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      be_ = o.be_;
      ptr_ = o.ptr_;
      count_ = o.count_;
      o.ptr_ = nullptr;
      o.count_ = 0;
    }
    return *this;
  }
  void reset() {
    if (ptr_) be_->free(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

 private:
  Backend* be_ = nullptr;
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

}  // namespace ftune
