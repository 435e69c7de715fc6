// CPU (fp32, OpenMP) implementations of the backend ops, as free functions so each op family
// lives in its own file. cpu_backend.cpp binds them to the Backend interface. `threads` is the
// OpenMP thread count for the call. Semantics are documented on Backend in
// engine/backend/backend.h.
#pragma once
#include <cstddef>
#include <cstdint>

#include "engine/backend/backend.h"

namespace ftune::cpu {

// cpu_gemm.cpp (OpenBLAS)
void gemm(int threads, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc);
// The same product without BLAS (what portable builds use for gemm): plain i-k-j loops.
void gemm_portable(int threads, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                   float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                   float beta, float* C, int64_t ldc);
void linear_forward(int threads, const float* x, const float* W, const float* bias, float* y,
                    int64_t n, int64_t in, int64_t out);
void linear_backward(int threads, const float* dy, const float* x, const float* W, float* dx,
                     float* dW, float* dbias, int64_t n, int64_t in, int64_t out,
                     bool accumulate_dx);

// cpu_elementwise.cpp
void add_inplace(int threads, float* y, const float* x, size_t n);
void scale_inplace(int threads, float* x, float s, size_t n);
void dropout(int threads, const float* x, float* y, size_t n, float p, uint64_t seed,
             bool accumulate);
double sum_squares(int threads, const float* x, size_t n);  // fixed reduction order
void embedding_forward(int threads, const int32_t* ids, const float* table, float* out, int64_t n,
                       int64_t dim);
void embedding_backward(int threads, const int32_t* ids, const float* dout, float* dtable,
                        int64_t n, int64_t dim, int64_t vocab);
void swiglu_forward(int threads, const float* gate, const float* up, float* h, size_t n);
void swiglu_backward(int threads, const float* dh, const float* gate, const float* up, float* dgate,
                     float* dup, size_t n);

// cpu_norm.cpp
void rmsnorm_forward(int threads, const float* x, const float* w, float* y, float* rstd,
                     int64_t rows, int64_t dim, float eps);
void rmsnorm_backward(int threads, const float* dy, const float* x, const float* w,
                      const float* rstd, float* dx, float* dw, int64_t rows, int64_t dim);

// cpu_rope.cpp
void rope_forward(int threads, float* x, const int32_t* positions, const float* inv_freq, int64_t n,
                  int heads, int head_dim);
void rope_backward(int threads, float* dx, const int32_t* positions, const float* inv_freq,
                   int64_t n, int heads, int head_dim);

// cpu_attention.cpp
void attention_forward(int threads, const AttentionShape& s, const float* q, const float* k,
                       const float* v, float* out, float* lse);
void attention_backward(int threads, const AttentionShape& s, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const float* lse,
                        float* dq, float* dk, float* dv);

// cpu_lm_head_loss.cpp
LossSum lm_head_loss(int threads, const float* hidden, const float* W, const int32_t* targets,
                     int64_t n, int64_t d, int64_t vocab, float grad_scale, float* dhidden,
                     float* dW);
// Same, with chunk_tokens tokens per logits chunk (<= 0 picks the default); tests use it to show
// that the chunking does not change the result.
LossSum lm_head_loss(int threads, const float* hidden, const float* W, const int32_t* targets,
                     int64_t n, int64_t d, int64_t vocab, float grad_scale, float* dhidden,
                     float* dW, int64_t chunk_tokens);

// cpu_adamw.cpp
void adamw_step(int threads, float* params, const float* grads, float* m, float* v,
                const ParamSpan* spans, int n_spans, const AdamWHyper& h);

}  // namespace ftune::cpu
