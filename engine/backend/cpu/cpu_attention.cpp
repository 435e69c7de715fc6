// Causal, document-masked, grouped-query attention on the CPU in fp32.
//
// Work is split into (document, kv head) items. An item owns the dK/dV rows of its kv head in its
// document and the out/dQ rows of the q heads that read that kv head, so threads never share an
// output, no atomics are needed, and every sum runs in a fixed order: results are bitwise
// identical for any thread count.
//
// Inside an item, query rows go in tiles of kTileRows against the keys up to the tile's last row,
// so the largest score buffer is kTileRows x T, never T x T. Keys and values of the item are
// packed once into zero-padded buffers (K and V transposed for the score products) so that every
// product below is one register-blocked micro-kernel with no edge cases.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "engine/backend/attention_shape.h"
#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cpu/simd.h"
#include "engine/base/error.h"

namespace ftune::cpu {
namespace {

using simd::exp_lanes;
using simd::fmadd;
using simd::kLanes;
using simd::lane_sum;
using simd::load;
using simd::row_max;
using simd::splat;
using simd::store;
using simd::VF;

constexpr int kMR = 4;                 // rows of the micro-kernel's register tile
constexpr int kColBlock = 2 * kLanes;  // its widest column block
constexpr int64_t kTileRows = 64;      // query rows per tile; a multiple of kMR
constexpr int64_t kKeyPad = 16;        // key counts are padded to this; a multiple of kColBlock
static_assert(kTileRows % kMR == 0 && kKeyPad % kColBlock == 0 && kKeyPad % kMR == 0);

inline int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

// Row stride of the key-indexed buffers (transposed K/V, score tiles) for tp padded keys: an odd
// number of 64-byte lines, so walking down a column touches every cache set instead of a few.
inline int64_t key_stride(int64_t tp) {
  return (tp / kKeyPad) % 2 == 1 ? tp : tp + kKeyPad;
}

// x[j] = e^(x[j] - shift) for j < n; returns the sum of the new values. The tail goes through
// the same vector exp as the body so an element's value does not depend on its position.
float exp_shift_sum(float* x, int64_t n, float shift) {
  const VF sv = splat(shift);
  VF acc = VF{};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const VF e = exp_lanes(load(x + j) - sv);
    store(x + j, e);
    acc += e;
  }
  if (j < n) {
    float tail[kLanes];
    for (int l = 0; l < kLanes; ++l) tail[l] = j + l < n ? x[j + l] : -INFINITY;
    const VF e = exp_lanes(load(tail) - sv);
    store(tail, e);
    for (int64_t l = 0; j + l < n; ++l) x[j + l] = tail[l];
    acc += e;  // lanes past n hold exp(-inf) == 0
  }
  return lane_sum(acc);
}

// p[j] = e^(p[j] - lse) and ds[j] = p[j] * (ds[j] - delta) for j < n: the recomputed
// probabilities and the score gradient of one query row.
void probs_and_score_grad(float* p, float* ds, int64_t n, float lse, float delta) {
  const VF lv = splat(lse), dv = splat(delta);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const VF e = exp_lanes(load(p + j) - lv);
    store(p + j, e);
    store(ds + j, e * (load(ds + j) - dv));
  }
  if (j < n) {
    float tail_p[kLanes], tail_d[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      tail_p[l] = j + l < n ? p[j + l] : -INFINITY;
      tail_d[l] = j + l < n ? ds[j + l] : 0.f;
    }
    const VF e = exp_lanes(load(tail_p) - lv);
    store(tail_p, e);
    store(tail_d, e * (load(tail_d) - dv));
    for (int64_t l = 0; j + l < n; ++l) {
      p[j + l] = tail_p[l];
      ds[j + l] = tail_d[l];
    }
  }
}

// c[kMR x NV*kLanes] = (or += with kAccumulate) sum over k < K of a(r, k) * b[k, :], where
// a(r, k) = a[r * a_rs + k * a_ks] is broadcast and b's rows are loaded as vectors. Every product
// in this file is this kernel with different strides.
template <int NV, bool kAccumulate>
inline void micro_kernel(int64_t K, const float* a, int64_t a_rs, int64_t a_ks, const float* b,
                         int64_t ldb, float* c, int64_t ldc) {
  VF acc[kMR][NV];
  for (int r = 0; r < kMR; ++r) {
    for (int v = 0; v < NV; ++v) acc[r][v] = kAccumulate ? load(c + r * ldc + v * kLanes) : VF{};
  }
  for (int64_t k = 0; k < K; ++k) {
    const float* bk = b + k * ldb;
    VF bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load(bk + v * kLanes);
    const float* ak = a + k * a_ks;
    for (int r = 0; r < kMR; ++r) {
      const VF x = splat(ak[r * a_rs]);
      for (int v = 0; v < NV; ++v) acc[r][v] = fmadd(x, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < kMR; ++r) {
    for (int v = 0; v < NV; ++v) store(c + r * ldc + v * kLanes, acc[r][v]);
  }
}

// One kMR-row strip of C[:, 0:ncols] (ncols a multiple of kLanes) with the kernel above.
template <bool kAccumulate>
void strip(int64_t K, const float* a, int64_t a_rs, int64_t a_ks, const float* b, int64_t ldb,
           float* c, int64_t ldc, int64_t ncols) {
  int64_t col = 0;
  for (; col + kColBlock <= ncols; col += kColBlock) {
    micro_kernel<2, kAccumulate>(K, a, a_rs, a_ks, b + col, ldb, c + col, ldc);
  }
  if (col < ncols) micro_kernel<1, kAccumulate>(K, a, a_rs, a_ks, b + col, ldb, c + col, ldc);
}

struct Item {
  int64_t begin = 0;  // first token of the document
  int64_t len = 0;    // its length T
  int kv_head = 0;
};

// Per-thread scratch sized for the longest document: O(T * D + kTileRows * T) floats. Tp is T
// rounded up to kKeyPad, Dp the head_dim rounded up to a vector, lt = key_stride(Tp).
struct Workspace {
  std::vector<float> kt, vt;            // [D][lt]: keys / values of the item, transposed
  std::vector<float> kp, vp;            // [Tp][Dp]: keys / values of the item, row-major
  std::vector<float> dk, dv;            // [Tp][Dp]: gradient accumulators of the item
  std::vector<float> s, dp;             // [kTileRows][lt]: scores -> probabilities; dP -> dS
  std::vector<float> qt, dot, ot;       // [kTileRows][Dp]: scale*q, dO, out or dQ tiles
  std::vector<float> row_lse, row_aux;  // [kTileRows]
};

struct Dims {
  int hq, hkv, group, dim;
  int64_t dp;  // head_dim padded to a whole vector
  float scale;
};

void check_shape(const AttentionShape& s) {
  const std::string bad = attention_layout_error(s.tokens, s.q_heads, s.kv_heads, s.head_dim,
                                                 s.n_docs, s.doc_offsets != nullptr);
  FTUNE_CHECK(bad.empty(), "attention " + bad);
  if (s.n_docs == 0) return;  // and no tokens
  FTUNE_CHECK(s.doc_offsets[0] == 0, "attention doc_offsets must start at 0");
  for (int d = 0; d < s.n_docs; ++d) {
    FTUNE_CHECK(
        s.doc_offsets[d + 1] > s.doc_offsets[d],
        "attention doc_offsets must be strictly increasing (document " + std::to_string(d) + ")");
  }
  FTUNE_CHECK(s.doc_offsets[s.n_docs] == s.tokens,
              "attention doc_offsets end at " + std::to_string(s.doc_offsets[s.n_docs]) +
                  " but there are " + std::to_string(s.tokens) + " tokens");
}

// Longest documents first so dynamic scheduling balances the quadratic costs.
std::vector<Item> make_items(const AttentionShape& s) {
  std::vector<Item> items;
  items.reserve(size_t(s.n_docs) * size_t(s.kv_heads));
  for (int d = 0; d < s.n_docs; ++d) {
    for (int g = 0; g < s.kv_heads; ++g) {
      items.push_back({s.doc_offsets[d], s.doc_offsets[d + 1] - s.doc_offsets[d], g});
    }
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& a, const Item& b) { return a.len > b.len; });
  return items;
}

int64_t longest_doc(const AttentionShape& s) {
  int64_t t = 0;
  for (int d = 0; d < s.n_docs; ++d)
    t = std::max<int64_t>(t, s.doc_offsets[d + 1] - s.doc_offsets[d]);
  return t;
}

Dims make_dims(const AttentionShape& s) {
  return {s.q_heads, s.kv_heads, s.q_heads / s.kv_heads, s.head_dim, round_up(s.head_dim, kLanes),
          s.scale};
}

// dst[d * lt + j] = src row j of the item's kv head; columns T..lt stay zero. Blocks of keys
// so the stores run along dst rows rather than striding down a column per element.
void pack_transposed(const float* src, const Item& it, const Dims& m, int64_t lt, float* dst) {
  constexpr int64_t kBlock = 16;
  std::fill(dst, dst + m.dim * lt, 0.f);
  const int64_t src_stride = int64_t(m.hkv) * m.dim;
  const float* base = src + (it.begin * m.hkv + it.kv_head) * m.dim;
  for (int64_t j0 = 0; j0 < it.len; j0 += kBlock) {
    const int64_t jn = std::min(kBlock, it.len - j0);
    for (int d = 0; d < m.dim; ++d) {
      float* out = dst + d * lt + j0;
      const float* in = base + j0 * src_stride + d;
      for (int64_t j = 0; j < jn; ++j) out[j] = in[j * src_stride];
    }
  }
}

// dst[j * Dp + d] = src row j of the item's kv head; padding rows and columns zero.
void pack_rows(const float* src, const Item& it, const Dims& m, int64_t tp, float* dst) {
  std::fill(dst, dst + tp * m.dp, 0.f);
  for (int64_t j = 0; j < it.len; ++j) {
    const float* row = src + ((it.begin + j) * m.hkv + it.kv_head) * m.dim;
    std::copy(row, row + m.dim, dst + j * m.dp);
  }
}

// rows x [Dp] tile of a [N, H, D] tensor at head h, times mul; padding rows/columns zero.
void pack_tile(const float* src, int64_t first, int64_t rows, int heads, int h, const Dims& m,
               float mul, float* dst) {
  std::fill(dst, dst + kTileRows * m.dp, 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = src + ((first + r) * heads + h) * m.dim;
    for (int d = 0; d < m.dim; ++d) dst[r * m.dp + d] = mul * row[d];
  }
}

void forward_item(const Item& it, const Dims& m, const float* q, const float* k, const float* v,
                  float* out, float* lse, Workspace& w) {
  const int64_t T = it.len, tp = round_up(T, kKeyPad), lt = key_stride(tp);
  pack_transposed(k, it, m, lt, w.kt.data());
  pack_rows(v, it, m, tp, w.vp.data());
  float* s = w.s.data();
  for (int hh = 0; hh < m.group; ++hh) {
    const int h = it.kv_head * m.group + hh;
    for (int64_t i0 = 0; i0 < T; i0 += kTileRows) {
      const int64_t rows = std::min(kTileRows, T - i0), rows_p = round_up(rows, kMR);
      pack_tile(q, it.begin + i0, rows, m.hq, h, m, m.scale, w.qt.data());
      for (int64_t rb = 0; rb < rows_p; rb += kMR) {
        // Keys this row block can see; the causal triangle past them is never computed.
        const int64_t kend = std::min(T, i0 + rb + kMR), kend_p = round_up(kend, kMR);
        strip<false>(m.dim, w.qt.data() + rb * m.dp, m.dp, 1, w.kt.data(), lt, s + rb * lt, lt,
                     round_up(kend, kColBlock));
        for (int64_t r = rb; r < rb + kMR; ++r) {
          float* p = s + r * lt;
          if (r >= rows) {
            std::fill(p, p + kend_p, 0.f);
            continue;
          }
          const int64_t n = i0 + r + 1;
          const float mx = row_max(p, n);
          const float sum = exp_shift_sum(p, n, mx);
          std::fill(p + n, p + kend_p, 0.f);
          w.row_lse[r] = mx + std::log(sum);
          w.row_aux[r] = 1.f / sum;
        }
        // Unnormalised probabilities times V; the 1/sum is applied when the row is written.
        strip<false>(kend_p, s + rb * lt, lt, 1, w.vp.data(), m.dp, w.ot.data() + rb * m.dp, m.dp,
                     m.dp);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t tok = it.begin + i0 + r;
        float* o = out + (tok * m.hq + h) * m.dim;
        const float* src = w.ot.data() + r * m.dp;
        for (int d = 0; d < m.dim; ++d) o[d] = src[d] * w.row_aux[r];
        lse[tok * m.hq + h] = w.row_lse[r];
      }
    }
  }
}

void backward_item(const Item& it, const Dims& m, const float* dout, const float* q, const float* k,
                   const float* v, const float* out, const float* lse, float* dq, float* dk,
                   float* dv, Workspace& w) {
  const int64_t T = it.len, tp = round_up(T, kKeyPad), lt = key_stride(tp);
  pack_transposed(k, it, m, lt, w.kt.data());
  pack_transposed(v, it, m, lt, w.vt.data());
  pack_rows(k, it, m, tp, w.kp.data());
  std::fill(w.dk.begin(), w.dk.begin() + tp * m.dp, 0.f);
  std::fill(w.dv.begin(), w.dv.begin() + tp * m.dp, 0.f);
  float* s = w.s.data();
  float* dp = w.dp.data();
  for (int hh = 0; hh < m.group; ++hh) {
    const int h = it.kv_head * m.group + hh;
    for (int64_t i0 = 0; i0 < T; i0 += kTileRows) {
      const int64_t rows = std::min(kTileRows, T - i0), rows_p = round_up(rows, kMR);
      // The scaled q tile serves both the scores and dK = scale * dS^T q.
      pack_tile(q, it.begin + i0, rows, m.hq, h, m, m.scale, w.qt.data());
      pack_tile(dout, it.begin + i0, rows, m.hq, h, m, 1.f, w.dot.data());
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t tok = it.begin + i0 + r;
        const float* o = out + (tok * m.hq + h) * m.dim;
        const float* g = w.dot.data() + r * m.dp;
        float delta = 0.f;
        for (int d = 0; d < m.dim; ++d) delta += g[d] * o[d];
        w.row_aux[r] = delta;
        w.row_lse[r] = lse[tok * m.hq + h];
      }
      for (int64_t rb = 0; rb < rows_p; rb += kMR) {
        const int64_t kend = std::min(T, i0 + rb + kMR), kend_p = round_up(kend, kMR);
        const int64_t ncols = round_up(kend, kColBlock);
        strip<false>(m.dim, w.qt.data() + rb * m.dp, m.dp, 1, w.kt.data(), lt, s + rb * lt, lt,
                     ncols);
        strip<false>(m.dim, w.dot.data() + rb * m.dp, m.dp, 1, w.vt.data(), lt, dp + rb * lt, lt,
                     ncols);
        for (int64_t r = rb; r < rb + kMR; ++r) {
          float* p = s + r * lt;
          float* ds = dp + r * lt;
          if (r >= rows) {
            std::fill(p, p + kend_p, 0.f);
            std::fill(ds, ds + kend_p, 0.f);
            continue;
          }
          const int64_t n = i0 + r + 1;
          probs_and_score_grad(p, ds, n, w.row_lse[r], w.row_aux[r]);
          std::fill(p + n, p + kend_p, 0.f);
          std::fill(ds + n, ds + kend_p, 0.f);
        }
        // dQ (before the scale) = dS K.
        strip<false>(kend_p, dp + rb * lt, lt, 1, w.kp.data(), m.dp, w.ot.data() + rb * m.dp, m.dp,
                     m.dp);
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* g = dq + ((it.begin + i0 + r) * m.hq + h) * m.dim;
        const float* src = w.ot.data() + r * m.dp;
        for (int d = 0; d < m.dim; ++d) g[d] = m.scale * src[d];
      }
      // dK += dS^T (scale q) and dV += P^T dO, kMR keys at a time over the query rows that can
      // see them. Row blocks at or below a key block have probabilities written (or zeroed)
      // for all of its keys, so no stale values are read.
      for (int64_t j = 0; j < round_up(i0 + rows, kMR); j += kMR) {
        const int64_t r0 = std::max<int64_t>(0, j - i0);
        strip<true>(rows_p - r0, dp + r0 * lt + j, 1, lt, w.qt.data() + r0 * m.dp, m.dp,
                    w.dk.data() + j * m.dp, m.dp, m.dp);
        strip<true>(rows_p - r0, s + r0 * lt + j, 1, lt, w.dot.data() + r0 * m.dp, m.dp,
                    w.dv.data() + j * m.dp, m.dp, m.dp);
      }
    }
  }
  for (int64_t j = 0; j < T; ++j) {
    const int64_t row = ((it.begin + j) * m.hkv + it.kv_head) * m.dim;
    std::copy(w.dk.data() + j * m.dp, w.dk.data() + j * m.dp + m.dim, dk + row);
    std::copy(w.dv.data() + j * m.dp, w.dv.data() + j * m.dp + m.dim, dv + row);
  }
}

std::vector<Workspace> make_workspaces(int count, int64_t max_t, const Dims& m, bool backward) {
  const size_t tp = size_t(round_up(max_t, kKeyPad)), dp = size_t(m.dp);
  const size_t lt = size_t(key_stride(int64_t(tp)));  // >= key_stride of any shorter document
  std::vector<Workspace> ws(static_cast<size_t>(count));
  for (Workspace& w : ws) {
    w.kt.resize(size_t(m.dim) * lt);
    w.s.resize(size_t(kTileRows) * lt);
    w.qt.resize(size_t(kTileRows) * dp);
    w.ot.resize(size_t(kTileRows) * dp);
    w.row_lse.resize(kTileRows);
    w.row_aux.resize(kTileRows);
    if (backward) {
      w.vt.resize(size_t(m.dim) * lt);
      w.kp.resize(tp * dp);
      w.dk.resize(tp * dp);
      w.dv.resize(tp * dp);
      w.dp.resize(size_t(kTileRows) * lt);
      w.dot.resize(size_t(kTileRows) * dp);
    } else {
      w.vp.resize(tp * dp);
    }
  }
  return ws;
}

}  // namespace

void attention_forward(int threads, const AttentionShape& s, const float* q, const float* k,
                       const float* v, float* out, float* lse) {
  check_shape(s);
  if (s.tokens == 0) return;
  const Dims m = make_dims(s);
  const std::vector<Item> items = make_items(s);
  const int nt = std::clamp<int>(threads, 1, int(items.size()));
  std::vector<Workspace> ws = make_workspaces(nt, longest_doc(s), m, false);
  const int64_t n_items = int64_t(items.size());
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t i = 0; i < n_items; ++i) {
    forward_item(items[size_t(i)], m, q, k, v, out, lse, ws[size_t(omp_get_thread_num())]);
  }
}

void attention_backward(int threads, const AttentionShape& s, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const float* lse,
                        float* dq, float* dk, float* dv) {
  check_shape(s);
  if (s.tokens == 0) return;
  const Dims m = make_dims(s);
  const std::vector<Item> items = make_items(s);
  const int nt = std::clamp<int>(threads, 1, int(items.size()));
  std::vector<Workspace> ws = make_workspaces(nt, longest_doc(s), m, true);
  const int64_t n_items = int64_t(items.size());
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t i = 0; i < n_items; ++i) {
    backward_item(items[size_t(i)], m, dout, q, k, v, out, lse, dq, dk, dv,
                  ws[size_t(omp_get_thread_num())]);
  }
}

}  // namespace ftune::cpu
