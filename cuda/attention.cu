// Causal, document-masked, grouped-query attention on the GPU in fp32 (SIMT, fp32 accumulation).
//
// Grid. Every kernel runs on a (tile, head, document) grid: x walks tiles of max_doc_len, y the
// heads, z the documents (grid-strided when there are more than 65535 of them). Offsets live on
// the device, so the host cannot build a flattened list of live tiles without a copy back; a
// block whose tile starts past its document's end exits at once instead. Blocks whose tiles do
// the most work launch first: the last query tiles of a document in the forward and dQ kernels
// (x reversed), the first key tiles in the dK/dV kernel.
//
// Threads. 256 threads per block, seen as 16 row groups (rg) x 16 column groups (cg); a warp
// holds two row groups. In every tile product a thread owns rows rg + 16a and columns cg + 16b,
// so the 16 threads that share a row are 16 consecutive lanes and row reductions are four
// xor-shuffles. Each thread also owns head_dim / 16 output columns of its rows: four
// consecutive columns per 64 (float4 from shared memory) when the padded head_dim is a multiple
// of 64, every 16th column otherwise.
//
// Head dims. Kernels are templated on a padded head dim kD in {16, 32, 64, 128}; the real
// head_dim (<= kD) is a runtime value, tiles are zero-padded to kD in shared memory and only the
// real columns are stored. 64 and 128 are the fast paths (no padding); 4 or 24 run as 16 or 32.
// Global loads and stores are float4 when head_dim % 4 == 0 and every pointer is 16-byte
// aligned, scalar otherwise. Shared rows are padded by 4 floats, which keeps the float4 reads of
// 8 consecutive rows on distinct banks.
//
// Forward. A block owns kBr query rows of one (document, q head); it streams key/value tiles of
// the kv head h / (Hq / Hkv) from the document's start to the tile holding its last row, with an
// online softmax in base 2 (q is pre-multiplied by scale * log2(e) when loaded), and writes out
// and lse = natural log-sum-exp of the scaled scores. Only the tiles that touch the diagonal are
// masked. No N x N matrix exists anywhere.
//
// Backward, three kernels, no atomics, every sum in a fixed order (bitwise deterministic):
//   delta: Delta_i = dO_i . O_i per (token, q head), into the workspace (one warp a row);
//   dK/dV: a block owns kBc key rows of one (document, kv head), loops over the q heads of its
//          group and over the query tiles at or after its keys, and keeps dK and dV in registers
//          (P^T dO and dS^T Q pass through one shared buffer), so the group's q heads are summed
//          in a fixed order with no atomics;
//   dQ:    a block owns kBr query rows of one (document, q head) and streams key tiles, as the
//          forward does, recomputing P and dS.
// P = exp2(s - lse * log2(e)) is recomputed from the saved lse; dS = P * (dP - Delta).
//
// The two tile products (tile_dot: S = A B^T, tile_accum: C += P V) and the masking/softmax
// between them are the only places that touch the math; the tensor-core paths replace them later.
//
// Contract: args.max_doc_len must be at least the longest document (it sizes the grid; rows of
// a longer document would be left unwritten). Tile shapes per head dim are in Tiles below.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "cuda/attention.h"
#include "engine/backend/attention_shape.h"
#include "engine/base/error.h"

namespace ftune::cuda {
namespace {

constexpr int kThreads = 256;  // 16 row groups x 16 column groups
constexpr int kPad = 4;        // floats of padding at the end of every shared-memory row
constexpr int kMaxGridZ = 65535;
constexpr int kMaxHeadDim = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Tile shapes per padded head dim, chosen so two 256-thread blocks fit an SM (shared memory at
// most ~110 KB, registers at most 128) with no local-memory spills (see the ptxas -v report).
template <int kD>
struct Tiles {
  static constexpr int kLd = kD + kPad;  // shared row stride of a head_dim-wide tile
  // forward: kFwdRows query rows per block, kFwdKeys keys per streamed tile
  static constexpr int kFwdRows = 64;
  static constexpr int kFwdKeys = kD > 64 ? 32 : 64;
  // dQ: same shape as the forward
  static constexpr int kDqRows = 64;
  static constexpr int kDqKeys = kD > 64 ? 32 : 64;
  // dK/dV: kDkvKeys key rows per block, kDkvRows query rows per streamed tile. The block keeps
  // dK and dV in registers (2 * kDkvKeys * kD / 256 per thread), hence fewer keys at kD = 128.
  static constexpr int kDkvKeys = kD > 64 ? 32 : 64;
  static constexpr int kDkvRows = kD > 64 ? 64 : 32;

  // Q, K, V tiles and the probability tile P.
  static constexpr size_t kFwdSmem = sizeof(float) * (size_t(kFwdRows + 2 * kFwdKeys) * kLd +
                                                      size_t(kFwdRows) * (kFwdKeys + kPad));
  // Q, dO, K, V tiles, the dS tile, lse and Delta of the rows.
  static constexpr size_t kDqSmem =
      sizeof(float) * (size_t(2 * kDqRows + 2 * kDqKeys) * kLd +
                       size_t(kDqRows) * (kDqKeys + kPad) + 2 * size_t(kDqRows));
  // K, V, Q, dO tiles, one P^T / dS^T buffer, lse and Delta of the streamed rows.
  static constexpr size_t kDkvSmem =
      sizeof(float) * (size_t(2 * kDkvKeys + 2 * kDkvRows) * kLd +
                       size_t(kDkvKeys) * (kDkvRows + kPad) + 2 * size_t(kDkvRows));
};

// What every kernel needs to find its rows.
struct Params {
  const int32_t* offs = nullptr;  // device doc offsets, n_docs + 1
  int n_docs = 0;
  int hq = 0, hkv = 0, group = 0;  // group = hq / hkv
  int dim = 0;                     // real head_dim (<= the kernel's kD)
  float scale = 0.f;
  bool vec = false;  // float4 global access allowed: dim % 4 == 0 and pointers 16-byte aligned
};

// ---- building blocks ----

__device__ __forceinline__ float component(const float4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Max / sum over the 16 lanes of a half warp (the threads that share a row). The xor butterfly
// gives every lane bitwise the same result.
__device__ __forceinline__ float max16(float x) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float sum16(float x) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// dst[r][d] (row stride kD + kPad) = mul * src[r * stride + d] for r < rows and d < dim, zero
// for the rest of the kRows x kD tile. src points at the tile's first row of the right head.
template <int kRows, int kD>
__device__ __forceinline__ void load_tile(float* dst, const float* __restrict__ src, int64_t stride,
                                          int rows, int dim, bool vec, float mul) {
  constexpr int kLd = kD + kPad;
  if (vec) {
    constexpr int kV = kD / 4;
    constexpr int kTotal = kRows * kV;
#pragma unroll
    for (int it = 0; it < (kTotal + kThreads - 1) / kThreads; ++it) {
      const int e = it * kThreads + int(threadIdx.x);
      if (kTotal % kThreads == 0 || e < kTotal) {
        const int r = e / kV, d = (e % kV) * 4;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (r < rows && d < dim) x = __ldg(reinterpret_cast<const float4*>(src + r * stride + d));
        x.x *= mul;
        x.y *= mul;
        x.z *= mul;
        x.w *= mul;
        *reinterpret_cast<float4*>(dst + r * kLd + d) = x;
      }
    }
  } else {
    constexpr int kTotal = kRows * kD;
#pragma unroll 4
    for (int it = 0; it < (kTotal + kThreads - 1) / kThreads; ++it) {
      const int e = it * kThreads + int(threadIdx.x);
      if (kTotal % kThreads == 0 || e < kTotal) {
        const int r = e / kD, d = e % kD;
        dst[r * kLd + d] = (r < rows && d < dim) ? mul * __ldg(src + r * stride + d) : 0.f;
      }
    }
  }
}

// lse (times log2 e) and Delta of a tile's rows into shared memory; zero for rows past `rows`.
template <int kRows>
__device__ __forceinline__ void load_row_stats(float* s_lse, float* s_delta,
                                               const float* __restrict__ lse,
                                               const float* __restrict__ delta, int64_t first_row,
                                               int64_t row_stride, int rows) {
  for (int r = int(threadIdx.x); r < kRows; r += kThreads) {
    const bool ok = r < rows;
    const int64_t idx = first_row + r * row_stride;
    s_lse[r] = ok ? __ldg(lse + idx) * kLog2e : 0.f;
    s_delta[r] = ok ? __ldg(delta + idx) : 0.f;
  }
}

// acc[a][b] = sum over d < kD of A[rg + 16a][d] * B[cg + 16b][d]; A and B are row-major shared
// tiles with row strides kLdA, kLdB (multiples of 4).
template <int kRM, int kCN, int kD, int kLdA, int kLdB>
__device__ __forceinline__ void tile_dot(float (&acc)[kRM][kCN], const float* A, const float* B,
                                         int rg, int cg) {
#pragma unroll
  for (int a = 0; a < kRM; ++a) {
#pragma unroll
    for (int b = 0; b < kCN; ++b) acc[a][b] = 0.f;
  }
#pragma unroll 1  // each step is kRM * kCN * 4 FMAs; unrolling more spills (ptxas -v)
  for (int d = 0; d < kD; d += 4) {
    float4 bv[kCN];
#pragma unroll
    for (int b = 0; b < kCN; ++b) {
      bv[b] = *reinterpret_cast<const float4*>(B + (cg + 16 * b) * kLdB + d);
    }
#pragma unroll
    for (int a = 0; a < kRM; ++a) {
      const float4 av = *reinterpret_cast<const float4*>(A + (rg + 16 * a) * kLdA + d);
#pragma unroll
      for (int b = 0; b < kCN; ++b) {
        acc[a][b] = fmaf(av.x, bv[b].x, acc[a][b]);
        acc[a][b] = fmaf(av.y, bv[b].y, acc[a][b]);
        acc[a][b] = fmaf(av.z, bv[b].z, acc[a][b]);
        acc[a][b] = fmaf(av.w, bv[b].w, acc[a][b]);
      }
    }
  }
}

// The head_dim columns a thread owns: four consecutive per 64 when kD % 64 == 0 (float4 reads
// of shared rows and float4 global stores), else columns cg, cg + 16, ...
template <int kD>
struct Cols {
  static constexpr int kN = kD / 16;
  static constexpr bool kQuad = kD % 64 == 0;
  __device__ static __forceinline__ int col(int t, int cg) {
    return kQuad ? (t / 4) * 64 + cg * 4 + (t % 4) : cg + 16 * t;
  }
  // v[t] = row[col(t)] of a shared row.
  __device__ static __forceinline__ void read(float (&v)[kN], const float* row, int cg) {
    if constexpr (kQuad) {
#pragma unroll
      for (int t4 = 0; t4 < kN / 4; ++t4) {
        const float4 x = *reinterpret_cast<const float4*>(row + t4 * 64 + cg * 4);
        v[4 * t4 + 0] = x.x;
        v[4 * t4 + 1] = x.y;
        v[4 * t4 + 2] = x.z;
        v[4 * t4 + 3] = x.w;
      }
    } else {
#pragma unroll
      for (int t = 0; t < kN; ++t) v[t] = row[cg + 16 * t];
    }
  }
  // dst[col(t)] = mul * v[t] for the columns below dim; dst is a global row.
  __device__ static __forceinline__ void store(float* dst, const float (&v)[kN], float mul, int dim,
                                               int cg, bool vec) {
    if constexpr (kQuad) {
#pragma unroll
      for (int t4 = 0; t4 < kN / 4; ++t4) {
        const int c = t4 * 64 + cg * 4;
        if (vec) {
          // dim % 4 == 0 here, so c < dim means all four columns are real.
          if (c < dim) {
            *reinterpret_cast<float4*>(dst + c) = make_float4(
                mul * v[4 * t4], mul * v[4 * t4 + 1], mul * v[4 * t4 + 2], mul * v[4 * t4 + 3]);
          }
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (c + e < dim) dst[c + e] = mul * v[4 * t4 + e];
          }
        }
      }
    } else {
#pragma unroll
      for (int t = 0; t < kN; ++t) {
        const int c = cg + 16 * t;
        if (c < dim) dst[c] = mul * v[t];
      }
    }
  }
};

// acc[a][t] += sum over c < kInner of P[rg + 16a][c] * V[c][col(t)]; P row stride kLdP, V row
// stride kLdV (both multiples of 4), kInner a multiple of 4.
template <int kRM, int kInner, int kD, int kLdP, int kLdV>
__device__ __forceinline__ void tile_accum(float (&acc)[kRM][kD / 16], const float* P,
                                           const float* V, int rg, int cg) {
  constexpr int kN = kD / 16;
#pragma unroll 1  // each step is 4 * kRM * kD / 16 FMAs
  for (int c = 0; c < kInner; c += 4) {
    float4 pv[kRM];
#pragma unroll
    for (int a = 0; a < kRM; ++a) {
      pv[a] = *reinterpret_cast<const float4*>(P + (rg + 16 * a) * kLdP + c);
    }
#pragma unroll
    for (int cc = 0; cc < 4; ++cc) {
      float vv[kN];
      Cols<kD>::read(vv, V + (c + cc) * kLdV, cg);
#pragma unroll
      for (int a = 0; a < kRM; ++a) {
        const float pa = component(pv[a], cc);
#pragma unroll
        for (int t = 0; t < kN; ++t) acc[a][t] = fmaf(pa, vv[t], acc[a][t]);
      }
    }
  }
}

// ---- forward ----

template <int kD, int kBr, int kBc>
__global__ void __launch_bounds__(kThreads, 2)
    attention_fwd_kernel(Params p, const float* __restrict__ q, const float* __restrict__ k,
                         const float* __restrict__ v, float* __restrict__ out,
                         float* __restrict__ lse) {
  static_assert(kD % 16 == 0 && kBr % 16 == 0 && kBc % 16 == 0, "tiles are multiples of 16");
  constexpr int kLd = kD + kPad, kLdP = kBc + kPad;
  constexpr int kRM = kBr / 16, kCN = kBc / 16, kOC = kD / 16;
  extern __shared__ float4 smem_f4[];
  float* sQ = reinterpret_cast<float*>(smem_f4);
  float* sK = sQ + kBr * kLd;
  float* sV = sK + kBc * kLd;
  float* sP = sV + kBc * kLd;

  const int rg = int(threadIdx.x) >> 4, cg = int(threadIdx.x) & 15;
  const int tile = int(gridDim.x) - 1 - int(blockIdx.x);  // heaviest tiles first
  const int h = int(blockIdx.y), g = h / p.group;
  const int64_t q_stride = int64_t(p.hq) * p.dim, kv_stride = int64_t(p.hkv) * p.dim;
  const float q_mul = p.scale * kLog2e;  // scores in base 2

  for (int doc = int(blockIdx.z); doc < p.n_docs; doc += int(gridDim.z)) {
    const int begin = p.offs[doc], len = p.offs[doc + 1] - begin;
    const int q0 = tile * kBr;
    if (q0 >= len) continue;  // uniform across the block
    const int q_rows = min(kBr, len - q0);
    __syncthreads();  // the previous document's tiles are no longer read
    load_tile<kBr, kD>(sQ, q + (int64_t(begin + q0) * p.hq + h) * p.dim, q_stride, q_rows, p.dim,
                       p.vec, q_mul);

    float o[kRM][kOC], m[kRM], l[kRM];
#pragma unroll
    for (int a = 0; a < kRM; ++a) {
      m[a] = -INFINITY;
      l[a] = 0.f;  // this thread's share of the row sum
#pragma unroll
      for (int t = 0; t < kOC; ++t) o[a][t] = 0.f;
    }

    const int n_kt = (q0 + q_rows - 1) / kBc + 1;  // key tiles up to the last row's diagonal
    for (int kt = 0; kt < n_kt; ++kt) {
      const int k0 = kt * kBc, k_rows = min(kBc, len - k0);
      __syncthreads();  // sK, sV, sP of the previous tile are no longer read
      const int64_t kv_off = (int64_t(begin + k0) * p.hkv + g) * p.dim;
      load_tile<kBc, kD>(sK, k + kv_off, kv_stride, k_rows, p.dim, p.vec, 1.f);
      load_tile<kBc, kD>(sV, v + kv_off, kv_stride, k_rows, p.dim, p.vec, 1.f);
      __syncthreads();

      float s[kRM][kCN];
      tile_dot<kRM, kCN, kD, kLd, kLd>(s, sQ, sK, rg, cg);
      if (k0 + kBc - 1 > q0) {  // the tile reaches past some query row: causal mask
#pragma unroll
        for (int a = 0; a < kRM; ++a) {
#pragma unroll
          for (int b = 0; b < kCN; ++b) {
            if (k0 + cg + 16 * b > q0 + rg + 16 * a) s[a][b] = -INFINITY;
          }
        }
      }
#pragma unroll
      for (int a = 0; a < kRM; ++a) {
        float mx = s[a][0];
#pragma unroll
        for (int b = 1; b < kCN; ++b) mx = fmaxf(mx, s[a][b]);
        mx = max16(mx);
        const float m_new = fmaxf(m[a], mx);
        // A row with no visible key yet keeps m = -inf; shift by 0 so no inf - inf appears.
        const float shift = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = exp2f(m[a] - shift);
        m[a] = m_new;
        float rs = 0.f;
#pragma unroll
        for (int b = 0; b < kCN; ++b) {
          const float e = exp2f(s[a][b] - shift);
          rs += e;
          sP[(rg + 16 * a) * kLdP + cg + 16 * b] = e;
        }
        l[a] = l[a] * alpha + rs;
#pragma unroll
        for (int t = 0; t < kOC; ++t) o[a][t] *= alpha;
      }
      __syncthreads();
      tile_accum<kRM, kBc, kD, kLdP, kLd>(o, sP, sV, rg, cg);
    }

#pragma unroll
    for (int a = 0; a < kRM; ++a) {
      const float lt = sum16(l[a]);
      const int r = rg + 16 * a;
      if (r < q_rows) {
        const int64_t row = int64_t(begin + q0 + r) * p.hq + h;
        Cols<kD>::store(out + row * p.dim, o[a], 1.f / lt, p.dim, cg, p.vec);
        if (cg == 0) lse[row] = (m[a] + log2f(lt)) * kLn2;
      }
    }
  }
}

// ---- backward ----

// delta[row] = dout[row] . out[row] for each of `rows` rows of dim floats; one warp per row.
__global__ void __launch_bounds__(kThreads)
    attention_delta_kernel(int64_t rows, int dim, const float* __restrict__ dout,
                           const float* __restrict__ out, float* __restrict__ delta) {
  const int64_t row = int64_t(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  const int lane = int(threadIdx.x) & 31;
  if (row >= rows) return;  // whole warps only
  const float* a = dout + row * dim;
  const float* b = out + row * dim;
  float acc = 0.f;
  for (int d = lane; d < dim; d += 32) acc = fmaf(__ldg(a + d), __ldg(b + d), acc);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) delta[row] = acc;
}

// dQ for kBr query rows of one (document, q head), streaming the key tiles they can see.
template <int kD, int kBr, int kBc>
__global__ void __launch_bounds__(kThreads, 2)
    attention_dq_kernel(Params p, const float* __restrict__ dout, const float* __restrict__ q,
                        const float* __restrict__ k, const float* __restrict__ v,
                        const float* __restrict__ lse, const float* __restrict__ delta,
                        float* __restrict__ dq) {
  static_assert(kD % 16 == 0 && kBr % 16 == 0 && kBc % 16 == 0, "tiles are multiples of 16");
  constexpr int kLd = kD + kPad, kLdS = kBc + kPad;
  constexpr int kRM = kBr / 16, kCN = kBc / 16, kOC = kD / 16;
  extern __shared__ float4 smem_f4[];
  float* sQ = reinterpret_cast<float*>(smem_f4);
  float* sdO = sQ + kBr * kLd;
  float* sK = sdO + kBr * kLd;
  float* sV = sK + kBc * kLd;
  float* sS = sV + kBc * kLd;
  float* sL = sS + kBr * kLdS;
  float* sDelta = sL + kBr;

  const int rg = int(threadIdx.x) >> 4, cg = int(threadIdx.x) & 15;
  const int tile = int(gridDim.x) - 1 - int(blockIdx.x);
  const int h = int(blockIdx.y), g = h / p.group;
  const int64_t q_stride = int64_t(p.hq) * p.dim, kv_stride = int64_t(p.hkv) * p.dim;
  const float q_mul = p.scale * kLog2e;

  for (int doc = int(blockIdx.z); doc < p.n_docs; doc += int(gridDim.z)) {
    const int begin = p.offs[doc], len = p.offs[doc + 1] - begin;
    const int q0 = tile * kBr;
    if (q0 >= len) continue;
    const int q_rows = min(kBr, len - q0);
    __syncthreads();
    const int64_t first = int64_t(begin + q0) * p.hq + h;
    load_tile<kBr, kD>(sQ, q + first * p.dim, q_stride, q_rows, p.dim, p.vec, q_mul);
    load_tile<kBr, kD>(sdO, dout + first * p.dim, q_stride, q_rows, p.dim, p.vec, 1.f);
    load_row_stats<kBr>(sL, sDelta, lse, delta, first, p.hq, q_rows);

    float acc[kRM][kOC];
#pragma unroll
    for (int a = 0; a < kRM; ++a) {
#pragma unroll
      for (int t = 0; t < kOC; ++t) acc[a][t] = 0.f;
    }

    const int n_kt = (q0 + q_rows - 1) / kBc + 1;
    for (int kt = 0; kt < n_kt; ++kt) {
      const int k0 = kt * kBc, k_rows = min(kBc, len - k0);
      __syncthreads();
      const int64_t kv_off = (int64_t(begin + k0) * p.hkv + g) * p.dim;
      load_tile<kBc, kD>(sK, k + kv_off, kv_stride, k_rows, p.dim, p.vec, 1.f);
      load_tile<kBc, kD>(sV, v + kv_off, kv_stride, k_rows, p.dim, p.vec, 1.f);
      __syncthreads();

      float s[kRM][kCN], dp[kRM][kCN];
      tile_dot<kRM, kCN, kD, kLd, kLd>(s, sQ, sK, rg, cg);
      tile_dot<kRM, kCN, kD, kLd, kLd>(dp, sdO, sV, rg, cg);
#pragma unroll
      for (int a = 0; a < kRM; ++a) {
        const int r = rg + 16 * a, i = q0 + r;
        const float lr = sL[r], dr = sDelta[r];
#pragma unroll
        for (int b = 0; b < kCN; ++b) {
          const int j = k0 + cg + 16 * b;
          const float pr = (j <= i && i < len) ? exp2f(s[a][b] - lr) : 0.f;
          sS[r * kLdS + cg + 16 * b] = pr * (dp[a][b] - dr);
        }
      }
      __syncthreads();
      tile_accum<kRM, kBc, kD, kLdS, kLd>(acc, sS, sK, rg, cg);
    }

#pragma unroll
    for (int a = 0; a < kRM; ++a) {
      const int r = rg + 16 * a;
      if (r < q_rows) {
        Cols<kD>::store(dq + (first + int64_t(r) * p.hq) * p.dim, acc[a], p.scale, p.dim, cg,
                        p.vec);
      }
    }
  }
}

// dK and dV for kBc key rows of one (document, kv head): every q head of the group, every query
// tile at or after the keys, summed in that fixed order in registers.
template <int kD, int kBc, int kBr>
__global__ void __launch_bounds__(kThreads, 2)
    attention_dkv_kernel(Params p, const float* __restrict__ dout, const float* __restrict__ q,
                         const float* __restrict__ k, const float* __restrict__ v,
                         const float* __restrict__ lse, const float* __restrict__ delta,
                         float* __restrict__ dk, float* __restrict__ dv) {
  static_assert(kD % 16 == 0 && kBr % 16 == 0 && kBc % 16 == 0, "tiles are multiples of 16");
  constexpr int kLd = kD + kPad, kLdB = kBr + kPad;
  constexpr int kRM = kBc / 16, kCN = kBr / 16, kOC = kD / 16;
  extern __shared__ float4 smem_f4[];
  float* sK = reinterpret_cast<float*>(smem_f4);
  float* sV = sK + kBc * kLd;
  float* sQ = sV + kBc * kLd;
  float* sdO = sQ + kBr * kLd;
  float* sB = sdO + kBr * kLd;  // P^T, then dS^T, [kBc][kBr]
  float* sL = sB + kBc * kLdB;
  float* sDelta = sL + kBr;

  const int rg = int(threadIdx.x) >> 4, cg = int(threadIdx.x) & 15;
  const int tile = int(blockIdx.x);  // the first key tiles see the most queries
  const int g = int(blockIdx.y);
  const int64_t q_stride = int64_t(p.hq) * p.dim, kv_stride = int64_t(p.hkv) * p.dim;
  const float k_mul = p.scale * kLog2e;  // K only enters the scores here: scale it

  for (int doc = int(blockIdx.z); doc < p.n_docs; doc += int(gridDim.z)) {
    const int begin = p.offs[doc], len = p.offs[doc + 1] - begin;
    const int k0 = tile * kBc;
    if (k0 >= len) continue;
    const int k_rows = min(kBc, len - k0);
    __syncthreads();
    const int64_t kv_first = int64_t(begin + k0) * p.hkv + g;
    load_tile<kBc, kD>(sK, k + kv_first * p.dim, kv_stride, k_rows, p.dim, p.vec, k_mul);
    load_tile<kBc, kD>(sV, v + kv_first * p.dim, kv_stride, k_rows, p.dim, p.vec, 1.f);

    float dk_acc[kRM][kOC], dv_acc[kRM][kOC];
#pragma unroll
    for (int a = 0; a < kRM; ++a) {
#pragma unroll
      for (int t = 0; t < kOC; ++t) {
        dk_acc[a][t] = 0.f;
        dv_acc[a][t] = 0.f;
      }
    }

    for (int hh = 0; hh < p.group; ++hh) {
      const int h = g * p.group + hh;
      for (int q0 = (k0 / kBr) * kBr; q0 < len; q0 += kBr) {
        const int q_rows = min(kBr, len - q0);
        __syncthreads();  // sQ, sdO, sB of the previous tile are no longer read
        const int64_t first = int64_t(begin + q0) * p.hq + h;
        load_tile<kBr, kD>(sQ, q + first * p.dim, q_stride, q_rows, p.dim, p.vec, 1.f);
        load_tile<kBr, kD>(sdO, dout + first * p.dim, q_stride, q_rows, p.dim, p.vec, 1.f);
        load_row_stats<kBr>(sL, sDelta, lse, delta, first, p.hq, q_rows);
        __syncthreads();

        // Transposed scores: thread rows are keys j, columns are queries i.
        float s[kRM][kCN], dp[kRM][kCN];
        tile_dot<kRM, kCN, kD, kLd, kLd>(s, sK, sQ, rg, cg);
        tile_dot<kRM, kCN, kD, kLd, kLd>(dp, sV, sdO, rg, cg);
#pragma unroll
        for (int a = 0; a < kRM; ++a) {
          const int j = k0 + rg + 16 * a;
#pragma unroll
          for (int b = 0; b < kCN; ++b) {
            const int c = cg + 16 * b, i = q0 + c;
            const float pr = (j <= i && i < len) ? exp2f(s[a][b] - sL[c]) : 0.f;
            dp[a][b] = pr * (dp[a][b] - sDelta[c]);  // dS^T
            sB[(rg + 16 * a) * kLdB + c] = pr;       // P^T
          }
        }
        __syncthreads();
        tile_accum<kRM, kBr, kD, kLdB, kLd>(dv_acc, sB, sdO, rg, cg);
        __syncthreads();
#pragma unroll
        for (int a = 0; a < kRM; ++a) {
#pragma unroll
          for (int b = 0; b < kCN; ++b) sB[(rg + 16 * a) * kLdB + cg + 16 * b] = dp[a][b];
        }
        __syncthreads();
        tile_accum<kRM, kBr, kD, kLdB, kLd>(dk_acc, sB, sQ, rg, cg);
      }
    }

#pragma unroll
    for (int a = 0; a < kRM; ++a) {
      const int r = rg + 16 * a;
      if (r < k_rows) {
        const int64_t row = kv_first + int64_t(r) * p.hkv;
        Cols<kD>::store(dk + row * p.dim, dk_acc[a], p.scale, p.dim, cg, p.vec);
        Cols<kD>::store(dv + row * p.dim, dv_acc[a], 1.f, p.dim, cg, p.vec);
      }
    }
  }
}

// ---- host side ----

[[noreturn]] void fail(const std::string& msg) {
  throw Error("CUDA attention: " + msg);
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(std::string(what) + " failed: " + cudaGetErrorString(e));
}

void check_launch(const char* what) {
  check(cudaGetLastError(), what);
}

int ceil_div(int a, int b) {
  return (a + b - 1) / b;
}

bool aligned16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

// Shape checks that need no device access. Returns false when there is nothing to compute.
bool validate(const AttentionArgs& a) {
  const std::string bad = attention_layout_error(a.tokens, a.q_heads, a.kv_heads, a.head_dim,
                                                 a.n_docs, a.doc_offsets != nullptr);
  if (!bad.empty()) fail(bad);
  if (a.head_dim > kMaxHeadDim) {
    fail("head_dim " + std::to_string(a.head_dim) + " is not supported (at most " +
         std::to_string(kMaxHeadDim) + ")");
  }
  if (a.q_heads > 65535) fail("more than 65535 q heads");
  if (a.tokens == 0) return false;
  if (a.max_doc_len <= 0 || a.max_doc_len > a.tokens) {
    fail("max_doc_len " + std::to_string(a.max_doc_len) + " is outside 1.." +
         std::to_string(a.tokens));
  }
  if (a.tokens > INT32_MAX) fail("more than 2^31 - 1 tokens");
  return true;
}

Params make_params(const AttentionArgs& a, bool vec) {
  Params p;
  p.offs = a.doc_offsets;
  p.n_docs = a.n_docs;
  p.hq = a.q_heads;
  p.hkv = a.kv_heads;
  p.group = a.q_heads / a.kv_heads;
  p.dim = a.head_dim;
  p.scale = a.scale;
  p.vec = vec;
  return p;
}

template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes, const char* what) {
  if (bytes > 48 * 1024) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
          what);
  }
}

template <int kD>
void forward_impl(cudaStream_t stream, const AttentionArgs& a, const Params& p, const float* q,
                  const float* k, const float* v, float* out, float* lse) {
  using T = Tiles<kD>;
  auto kernel = attention_fwd_kernel<kD, T::kFwdRows, T::kFwdKeys>;
  allow_smem(kernel, T::kFwdSmem, "forward shared-memory setup");
  const dim3 grid(unsigned(ceil_div(a.max_doc_len, T::kFwdRows)), unsigned(a.q_heads),
                  unsigned(a.n_docs < kMaxGridZ ? a.n_docs : kMaxGridZ));
  kernel<<<grid, kThreads, T::kFwdSmem, stream>>>(p, q, k, v, out, lse);
  check_launch("forward kernel launch");
}

template <int kD>
void backward_impl(cudaStream_t stream, const AttentionArgs& a, const Params& p, const float* dout,
                   const float* q, const float* k, const float* v, const float* lse,
                   const float* delta, float* dq, float* dk, float* dv) {
  using T = Tiles<kD>;
  const unsigned z = unsigned(a.n_docs < kMaxGridZ ? a.n_docs : kMaxGridZ);

  auto dkv = attention_dkv_kernel<kD, T::kDkvKeys, T::kDkvRows>;
  allow_smem(dkv, T::kDkvSmem, "dK/dV shared-memory setup");
  const dim3 grid_kv(unsigned(ceil_div(a.max_doc_len, T::kDkvKeys)), unsigned(a.kv_heads), z);
  dkv<<<grid_kv, kThreads, T::kDkvSmem, stream>>>(p, dout, q, k, v, lse, delta, dk, dv);
  check_launch("dK/dV kernel launch");

  auto dqk = attention_dq_kernel<kD, T::kDqRows, T::kDqKeys>;
  allow_smem(dqk, T::kDqSmem, "dQ shared-memory setup");
  const dim3 grid_q(unsigned(ceil_div(a.max_doc_len, T::kDqRows)), unsigned(a.q_heads), z);
  dqk<<<grid_q, kThreads, T::kDqSmem, stream>>>(p, dout, q, k, v, lse, delta, dq);
  check_launch("dQ kernel launch");
}

// The padded head dim whose kernels serve head_dim.
int padded_dim(int head_dim) {
  return head_dim <= 16 ? 16 : head_dim <= 32 ? 32 : head_dim <= 64 ? 64 : 128;
}

}  // namespace

size_t attention_workspace_bytes(const AttentionArgs& a) {
  if (a.tokens <= 0 || a.q_heads <= 0) return 0;
  return size_t(a.tokens) * size_t(a.q_heads) * sizeof(float);  // Delta per (token, q head)
}

void attention_forward(cudaStream_t stream, const AttentionArgs& a, const float* q, const float* k,
                       const float* v, float* out, float* lse) {
  if (!validate(a)) return;
  if (!q || !k || !v || !out || !lse) fail("forward got a null tensor");
  const bool vec =
      a.head_dim % 4 == 0 && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);
  const Params p = make_params(a, vec);
  switch (padded_dim(a.head_dim)) {
    case 16:
      forward_impl<16>(stream, a, p, q, k, v, out, lse);
      break;
    case 32:
      forward_impl<32>(stream, a, p, q, k, v, out, lse);
      break;
    case 64:
      forward_impl<64>(stream, a, p, q, k, v, out, lse);
      break;
    default:
      forward_impl<128>(stream, a, p, q, k, v, out, lse);
      break;
  }
}

void attention_backward(cudaStream_t stream, const AttentionArgs& a, const float* dout,
                        const float* q, const float* k, const float* v, const float* out,
                        const float* lse, float* dq, float* dk, float* dv, void* workspace) {
  if (!validate(a)) return;
  if (!dout || !q || !k || !v || !out || !lse || !dq || !dk || !dv) {
    fail("backward got a null tensor");
  }
  if (!workspace) fail("backward needs a workspace of attention_workspace_bytes()");
  float* delta = static_cast<float*>(workspace);

  const int64_t rows = a.tokens * a.q_heads;
  const int64_t blocks = (rows + kThreads / 32 - 1) / (kThreads / 32);
  attention_delta_kernel<<<dim3(unsigned(blocks)), kThreads, 0, stream>>>(rows, a.head_dim, dout,
                                                                          out, delta);
  check_launch("delta kernel launch");

  const bool vec = a.head_dim % 4 == 0 && aligned16(dout) && aligned16(q) && aligned16(k) &&
                   aligned16(v) && aligned16(dq) && aligned16(dk) && aligned16(dv);
  const Params p = make_params(a, vec);
  switch (padded_dim(a.head_dim)) {
    case 16:
      backward_impl<16>(stream, a, p, dout, q, k, v, lse, delta, dq, dk, dv);
      break;
    case 32:
      backward_impl<32>(stream, a, p, dout, q, k, v, lse, delta, dq, dk, dv);
      break;
    case 64:
      backward_impl<64>(stream, a, p, dout, q, k, v, lse, delta, dq, dk, dv);
      break;
    default:
      backward_impl<128>(stream, a, p, dout, q, k, v, lse, delta, dq, dk, dv);
      break;
  }
}

}  // namespace ftune::cuda
