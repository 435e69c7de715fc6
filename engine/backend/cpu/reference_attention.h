// Plain scalar statement of causal, document-masked, grouped-query attention: the ground truth
// the fast CPU kernel (cpu_attention.cpp) is tested against, templated so tests can run it in
// double for finite-difference checks. It materialises each query row's scores, which the fast
// kernel must never do for a whole document; it is for tests only.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/backend/backend.h"

namespace ftune::ref {

// out[N,Hq,D] = softmax(scale * q k^T) v over keys of the query's own document at or before it;
// lse[N,Hq] = natural log-sum-exp of those scaled scores. q head h reads kv head h / (Hq / Hkv).
template <class T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* out,
                       T* lse) {
  const int hq = s.q_heads, hkv = s.kv_heads, dim = s.head_dim;
  const int group = hq / hkv;
  const T scale = T(s.scale);
  std::vector<T> p;
  for (int doc = 0; doc < s.n_docs; ++doc) {
    const int64_t begin = s.doc_offsets[doc];
    for (int64_t i = begin; i < s.doc_offsets[doc + 1]; ++i) {
      for (int h = 0; h < hq; ++h) {
        const int g = h / group;
        const T* qi = q + (i * hq + h) * dim;
        p.assign(size_t(i - begin + 1), T(0));
        T m = -INFINITY;
        for (int64_t j = begin; j <= i; ++j) {
          const T* kj = k + (j * hkv + g) * dim;
          T dot = 0;
          for (int d = 0; d < dim; ++d) dot += qi[d] * kj[d];
          p[j - begin] = scale * dot;
          m = std::max(m, p[j - begin]);
        }
        T sum = 0;
        for (T& x : p) {
          x = std::exp(x - m);
          sum += x;
        }
        T* oi = out + (i * hq + h) * dim;
        for (int d = 0; d < dim; ++d) oi[d] = 0;
        for (int64_t j = begin; j <= i; ++j) {
          const T* vj = v + (j * hkv + g) * dim;
          for (int d = 0; d < dim; ++d) oi[d] += p[j - begin] / sum * vj[d];
        }
        lse[i * hq + h] = m + std::log(sum);
      }
    }
  }
}

// The flash-style backward: probabilities recomputed from lse, Delta_i = dO_i . O_i taken from
// the saved output. Writes dq, dk, dv (=).
template <class T>
void attention_backward(const AttentionShape& s, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const T* lse, T* dq, T* dk, T* dv) {
  const int hq = s.q_heads, hkv = s.kv_heads, dim = s.head_dim;
  const int group = hq / hkv;
  const T scale = T(s.scale);
  std::fill(dq, dq + s.tokens * hq * dim, T(0));
  std::fill(dk, dk + s.tokens * hkv * dim, T(0));
  std::fill(dv, dv + s.tokens * hkv * dim, T(0));
  for (int doc = 0; doc < s.n_docs; ++doc) {
    const int64_t begin = s.doc_offsets[doc];
    for (int64_t i = begin; i < s.doc_offsets[doc + 1]; ++i) {
      for (int h = 0; h < hq; ++h) {
        const int g = h / group;
        const T* qi = q + (i * hq + h) * dim;
        const T* doi = dout + (i * hq + h) * dim;
        const T* oi = out + (i * hq + h) * dim;
        T delta = 0;
        for (int d = 0; d < dim; ++d) delta += doi[d] * oi[d];
        for (int64_t j = begin; j <= i; ++j) {
          const T* kj = k + (j * hkv + g) * dim;
          const T* vj = v + (j * hkv + g) * dim;
          T score = 0, dp = 0;
          for (int d = 0; d < dim; ++d) {
            score += qi[d] * kj[d];
            dp += doi[d] * vj[d];
          }
          const T p = std::exp(scale * score - lse[i * hq + h]);
          const T ds = p * (dp - delta);
          for (int d = 0; d < dim; ++d) {
            dq[(i * hq + h) * dim + d] += scale * ds * kj[d];
            dk[(j * hkv + g) * dim + d] += scale * ds * qi[d];
            dv[(j * hkv + g) * dim + d] += p * doi[d];
          }
        }
      }
    }
  }
}

}  // namespace ftune::ref
