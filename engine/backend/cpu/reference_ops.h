// Plain scalar definitions of the CPU backend ops: the readable statement of what each fast kernel
// in engine/backend/cpu computes. Templated on the element type so tests can run them in double,
// both as ground truth for the fp32 kernels and for finite-difference checks of the backward
// passes. Deliberately naive: one thread, straight loops, no blocking. Never used on the training
// path.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "engine/backend/backend.h"
#include "engine/backend/dropout_mask.h"
#include "engine/base/error.h"

namespace ftune::ref {

// C[M,N] = alpha * op(A) * op(B) + beta * C. beta == 0 never reads C (BLAS convention), so an
// uninitialised C is fine.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
          std::type_identity_t<T> alpha, const T* A, int64_t lda, const T* B, int64_t ldb,
          std::type_identity_t<T> beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      T acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        const T a = trans_a ? A[k * lda + i] : A[i * lda + k];
        const T b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
        acc += a * b;
      }
      T& c = C[i * ldc + j];
      c = beta == T(0) ? alpha * acc : alpha * acc + beta * c;
    }
  }
}

template <class T>
void linear_forward(const T* x, const T* W, const T* bias, T* y, int64_t n, int64_t in,
                    int64_t out) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < out; ++o) {
      T acc = bias ? bias[o] : T(0);
      for (int64_t k = 0; k < in; ++k) acc += x[i * in + k] * W[o * in + k];
      y[i * out + o] = acc;
    }
  }
}

template <class T>
void linear_backward(const T* dy, const T* x, const T* W, T* dx, T* dW, T* dbias, int64_t n,
                     int64_t in, int64_t out, bool accumulate_dx) {
  if (dx) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k < in; ++k) {
        T acc = 0;
        for (int64_t o = 0; o < out; ++o) acc += dy[i * out + o] * W[o * in + k];
        dx[i * in + k] = accumulate_dx ? dx[i * in + k] + acc : acc;
      }
    }
  }
  if (dW) {
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t k = 0; k < in; ++k) {
        T acc = 0;
        for (int64_t i = 0; i < n; ++i) acc += dy[i * out + o] * x[i * in + k];
        dW[o * in + k] += acc;
      }
    }
  }
  if (dbias) {
    for (int64_t o = 0; o < out; ++o) {
      T acc = 0;
      for (int64_t i = 0; i < n; ++i) acc += dy[i * out + o];
      dbias[o] += acc;
    }
  }
}

template <class T>
void add_inplace(T* y, const T* x, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += x[i];
}

template <class T>
void scale_inplace(T* x, std::type_identity_t<T> s, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] *= s;
}

// Whether element i survives dropout with probability p under `seed`: the shared mask
// (engine/backend/dropout_mask.h) as the plain comparison it stands for.
inline bool dropout_keep(uint64_t seed, size_t i, float p) {
  return double(dropout_hash(seed, uint64_t(i))) * 0x1.0p-53 >= double(p);
}

// y (= or +=) x * keep / (1 - p).
template <class T>
void dropout(const T* x, T* y, size_t n, float p, uint64_t seed, bool accumulate) {
  const T s = T(1) / (T(1) - T(p));
  for (size_t i = 0; i < n; ++i) {
    const T v = dropout_keep(seed, i, p) ? x[i] * s : T(0);
    y[i] = accumulate ? y[i] + v : v;
  }
}

template <class T>
double sum_squares(const T* x, size_t n) {
  double acc = 0;
  for (size_t i = 0; i < n; ++i) acc += double(x[i]) * double(x[i]);
  return acc;
}

template <class T>
void embedding_forward(const int32_t* ids, const T* table, T* out, int64_t n, int64_t dim) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < dim; ++d) out[i * dim + d] = table[int64_t(ids[i]) * dim + d];
}

template <class T>
void embedding_backward(const int32_t* ids, const T* dout, T* dtable, int64_t n, int64_t dim,
                        int64_t vocab) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= vocab)
      throw Error("reference embedding_backward: token id " + std::to_string(ids[i]) +
                  " is outside the vocabulary of " + std::to_string(vocab));
    for (int64_t d = 0; d < dim; ++d) dtable[int64_t(ids[i]) * dim + d] += dout[i * dim + d];
  }
}

template <class T>
T sigmoid(T g) {
  return T(1) / (T(1) + std::exp(-g));
}

template <class T>
void swiglu_forward(const T* gate, const T* up, T* h, size_t n) {
  for (size_t i = 0; i < n; ++i) h[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

// d silu(g)/dg = sig + g * sig * (1 - sig).
template <class T>
void swiglu_backward(const T* dh, const T* gate, const T* up, T* dgate, T* dup, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const T g = gate[i], u = up[i], s = sigmoid(g);
    dgate[i] = dh[i] * u * (s + g * s * (T(1) - s));
    dup[i] = dh[i] * g * s;
  }
}

template <class T>
void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int64_t rows, int64_t dim,
                     std::type_identity_t<T> eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    T ss = 0;
    for (int64_t c = 0; c < dim; ++c) ss += xr[c] * xr[c];
    const T rs = T(1) / std::sqrt(ss / T(dim) + eps);
    rstd[r] = rs;
    for (int64_t c = 0; c < dim; ++c) y[r * dim + c] = xr[c] * rs * w[c];
  }
}

// With y_c = x_c * s * w_c and s = (mean(x^2) + eps)^(-1/2), ds/dx_c = -s^3 * x_c / dim, so
// dx_c = s * dy_c * w_c - x_c * s^3 * mean_k(dy_k * w_k * x_k).
template <class T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw,
                      int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * dim;
    const T* xr = x + r * dim;
    const T s = rstd[r];
    T dot = 0;
    for (int64_t c = 0; c < dim; ++c) dot += dyr[c] * w[c] * xr[c];
    const T coef = s * s * s * dot / T(dim);
    for (int64_t c = 0; c < dim; ++c) {
      dx[r * dim + c] = s * dyr[c] * w[c] - xr[c] * coef;
      if (dw) dw[c] += dyr[c] * xr[c] * s;
    }
  }
}

// Rotates each (x[i], x[i + D/2]) pair of every head by positions[t] * inv_freq[i]; sign = -1
// rotates the other way, which is the transpose and hence the backward pass.
template <class T>
void rope_rotate(T* x, const int32_t* positions, const T* inv_freq, int64_t n, int heads,
                 int head_dim, int sign) {
  const int half = head_dim / 2;
  for (int64_t t = 0; t < n; ++t) {
    for (int h = 0; h < heads; ++h) {
      T* xh = x + (t * heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const T angle = T(positions[t]) * inv_freq[i];
        const T c = std::cos(angle), s = T(sign) * std::sin(angle);
        const T x1 = xh[i], x2 = xh[i + half];
        xh[i] = x1 * c - x2 * s;
        xh[i + half] = x2 * c + x1 * s;
      }
    }
  }
}

template <class T>
void rope_forward(T* x, const int32_t* positions, const T* inv_freq, int64_t n, int heads,
                  int head_dim) {
  rope_rotate(x, positions, inv_freq, n, heads, head_dim, 1);
}

template <class T>
void rope_backward(T* dx, const int32_t* positions, const T* inv_freq, int64_t n, int heads,
                   int head_dim) {
  rope_rotate(dx, positions, inv_freq, n, heads, head_dim, -1);
}

// Textbook AdamW (Loshchilov & Hutter) with decoupled decay applied to the pre-step parameter.
template <class T>
void adamw_step(T* params, const T* grads, T* m, T* v, const ParamSpan* spans, int n_spans,
                const AdamWHyper& h) {
  const T b1 = h.beta1, b2 = h.beta2, lr = h.lr, eps = h.eps;
  const T bc1 = T(1) - std::pow(b1, T(h.step));
  const T bc2 = T(1) - std::pow(b2, T(h.step));
  for (int s = 0; s < n_spans; ++s) {
    const T wd = spans[s].weight_decay;
    for (size_t i = spans[s].offset; i < spans[s].offset + spans[s].count; ++i) {
      const T g = grads[i] * T(h.grad_scale);
      m[i] = b1 * m[i] + (T(1) - b1) * g;
      v[i] = b2 * v[i] + (T(1) - b2) * g * g;
      const T mhat = m[i] / bc1, vhat = v[i] / bc2;
      params[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * params[i]);
    }
  }
}

}  // namespace ftune::ref
