// Binds the CPU op functions to the Backend interface. Memory is plain host memory.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/base/dtype.h"

namespace ftune {
namespace {

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }

  void* alloc(size_t bytes) override {
    size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded ? rounded : 64);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, rounded);
    std::lock_guard<std::mutex> lock(mu_);
    sizes_[p] = rounded;
    held_ += rounded;
    peak_ = std::max(peak_, held_);
    return p;
  }
  void free(void* p) override {
    if (!p) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = sizes_.find(p);
      if (it != sizes_.end()) {
        held_ -= it->second;
        sizes_.erase(it);
      }
    }
    std::free(p);
  }
  // What ranks and `ftune plan` are measured by: bytes held through alloc at the high-water mark.
  size_t peak_allocated_bytes() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return peak_;
  }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { std::memmove(dst, src, bytes); }
  void zero(void* p, size_t bytes) override { std::memset(p, 0, bytes); }
  void synchronize(const ExecContext&) override {}

  void gemm(const ExecContext& c, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
            const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
            int64_t ldc) override {
    cpu::gemm(c.threads, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  void linear_forward(const ExecContext& c, const float* x, const float* W, const float* bias,
                      float* y, int64_t n, int64_t in, int64_t out) override {
    cpu::linear_forward(c.threads, x, W, bias, y, n, in, out);
  }
  void linear_backward(const ExecContext& c, const float* dy, const float* x, const float* W,
                       float* dx, float* dW, float* dbias, int64_t n, int64_t in, int64_t out,
                       bool acc) override {
    cpu::linear_backward(c.threads, dy, x, W, dx, dW, dbias, n, in, out, acc);
  }
  void add_inplace(const ExecContext& c, float* y, const float* x, size_t n) override {
    cpu::add_inplace(c.threads, y, x, n);
  }
  void scale_inplace(const ExecContext& c, float* x, float s, size_t n) override {
    cpu::scale_inplace(c.threads, x, s, n);
  }
  void dropout(const ExecContext& c, const float* x, float* y, size_t n, float p, uint64_t seed,
               bool accumulate) override {
    cpu::dropout(c.threads, x, y, n, p, seed, accumulate);
  }
  double sum_squares(const ExecContext& c, const float* x, size_t n) override {
    return cpu::sum_squares(c.threads, x, n);
  }
  void cast(const ExecContext&, const void* src, DType st, void* dst, DType dt, size_t n) override {
    convert(src, st, dst, dt, n);
  }
  void embedding_forward(const ExecContext& c, const int32_t* ids, const float* table, float* out,
                         int64_t n, int64_t dim) override {
    cpu::embedding_forward(c.threads, ids, table, out, n, dim);
  }
  void embedding_backward(const ExecContext& c, const int32_t* ids, const float* dout,
                          float* dtable, int64_t n, int64_t dim, int64_t vocab) override {
    cpu::embedding_backward(c.threads, ids, dout, dtable, n, dim, vocab);
  }
  void rmsnorm_forward(const ExecContext& c, const float* x, const float* w, float* y, float* rstd,
                       int64_t rows, int64_t dim, float eps) override {
    cpu::rmsnorm_forward(c.threads, x, w, y, rstd, rows, dim, eps);
  }
  void rmsnorm_backward(const ExecContext& c, const float* dy, const float* x, const float* w,
                        const float* rstd, float* dx, float* dw, int64_t rows,
                        int64_t dim) override {
    cpu::rmsnorm_backward(c.threads, dy, x, w, rstd, dx, dw, rows, dim);
  }
  void rope_forward(const ExecContext& c, float* x, const int32_t* pos, const float* inv_freq,
                    int64_t n, int heads, int head_dim) override {
    cpu::rope_forward(c.threads, x, pos, inv_freq, n, heads, head_dim);
  }
  void rope_backward(const ExecContext& c, float* dx, const int32_t* pos, const float* inv_freq,
                     int64_t n, int heads, int head_dim) override {
    cpu::rope_backward(c.threads, dx, pos, inv_freq, n, heads, head_dim);
  }
  void swiglu_forward(const ExecContext& c, const float* g, const float* u, float* h,
                      size_t n) override {
    cpu::swiglu_forward(c.threads, g, u, h, n);
  }
  void swiglu_backward(const ExecContext& c, const float* dh, const float* g, const float* u,
                       float* dg, float* du, size_t n) override {
    cpu::swiglu_backward(c.threads, dh, g, u, dg, du, n);
  }
  void attention_forward(const ExecContext& c, const AttentionShape& s, const float* q,
                         const float* k, const float* v, float* out, float* lse) override {
    cpu::attention_forward(c.threads, s, q, k, v, out, lse);
  }
  void attention_backward(const ExecContext& c, const AttentionShape& s, const float* dout,
                          const float* q, const float* k, const float* v, const float* out,
                          const float* lse, float* dq, float* dk, float* dv) override {
    cpu::attention_backward(c.threads, s, dout, q, k, v, out, lse, dq, dk, dv);
  }
  LossSum lm_head_loss(const ExecContext& c, const float* hidden, const float* W,
                       const int32_t* targets, int64_t n, int64_t d, int64_t vocab,
                       float grad_scale, float* dhidden, float* dW) override {
    return cpu::lm_head_loss(c.threads, hidden, W, targets, n, d, vocab, grad_scale, dhidden, dW);
  }
  void adamw_step(const ExecContext& c, float* p, const float* g, float* m, float* v,
                  const ParamSpan* spans, int n_spans, const AdamWHyper& h) override {
    cpu::adamw_step(c.threads, p, g, m, v, spans, n_spans, h);
  }

 private:
  mutable std::mutex mu_;
  std::unordered_map<void*, size_t> sizes_;
  size_t held_ = 0, peak_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() {
  return std::make_unique<CpuBackend>();
}

}  // namespace ftune
