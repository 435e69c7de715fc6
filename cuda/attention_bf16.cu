// Causal, document-masked, grouped-query attention in bf16 on tensor cores (sm_80+): the same
// problem, layouts, grid and lse convention as the fp32 SIMT path (attention.cu), with the tile
// products on mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 and fp32 accumulation, softmax
// statistics and Delta. No N x N matrix exists anywhere; no atomics (bitwise deterministic).
//
// Blocks. 4 warps (128 threads). Every warp owns 16 rows of the block's tile (query rows in the
// forward and dQ kernels, key rows in dK/dV) and runs the whole chain for them in registers:
// scores in m16n8 accumulator fragments, softmax on those registers, then the probabilities
// re-packed in place as the bf16 A operand of the next product (the accumulator of two adjacent
// n8 tiles is exactly the A fragment of one k16 step), so P and dS never touch shared memory.
// Tiles of kD = head_dim (64 or 128, a template parameter) columns live in shared memory with
// rows padded by 8 bf16 (16 bytes): the 8 row addresses of every ldmatrix phase then fall on
// distinct 16-byte bank groups, and every row start stays 16-byte aligned for cp.async.
//
// Fragments (PTX ISA, mma.m16n8k16 with .bf16; g = lane / 4, t = lane % 4):
//   A (16x16, row-major): reg0 = (row g, cols 2t, 2t+1), reg1 = (row g+8, same cols),
//                         reg2 = (row g, cols 2t+8, 2t+9), reg3 = (row g+8, cols 2t+8, 2t+9);
//   B (16x8, k x n):      reg0 = (k 2t, 2t+1; n g), reg1 = (k 2t+8, 2t+9; n g);
//   C/D (16x8, fp32):     c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, same cols);
// the lower column always in the lower 16 bits. ldmatrix.x4 loads four 8x8 matrices, the row
// addresses of matrix i coming from lanes 8i..8i+7; thread l receives row l/4, columns
// 2(l%4), 2(l%4)+1 of each matrix (.trans: column l/4, rows 2(l%4), 2(l%4)+1). Three uses:
//   A operand of a row-major tile:           lane row (l & 15),          column (l >> 4) * 8;
//   B operand from an [n][k] tile (K in QK^T, non-trans): lane row (l & 7) + (l >> 4) * 8,
//     column ((l >> 3) & 1) * 8; regs 0, 1 = n tile 0 and regs 2, 3 = n tile 1 (16 n rows);
//   B operand from a [k][n] tile (V in PV, .trans): lane row (l & 15), column (l >> 4) * 8
//     (the A addressing); regs 0, 1 = n tile 0 and regs 2, 3 = n tile 1 (16 n columns).
//
// Forward (64 query rows x 64-key tiles): Q, K and V tiles once each in shared memory (52 KB at
// kD = 128). K and V load in separate cp.async groups, staggered: V of tile j streams in while
// S = Q K_j^T and the softmax run, K of tile j + 1 while O += P V_j runs. Online softmax in base
// 2 on fp32 scores (s * scale * log2 e), row max and sum over the 4 lanes of a row (xor 1, 2),
// per-lane partial sums reduced once at the end. Writes out (bf16) and lse = natural
// log-sum-exp of the scaled scores (fp32), as the fp32 path does.
//
// Backward, three kernels: Delta_i = dO_i . O_i in fp32 from the bf16 tensors; dK/dV per 64-key
// tile looping over the q heads of its group and the query tiles at or after its keys (K and V
// resident in shared memory, Q / dO / lse / Delta tiles double-buffered with cp.async), with
// S^T = K Q^T, P^T, dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - Delta), dK += dS^T Q all
// per warp in registers; dQ per 64-query tile streaming double-buffered K/V tiles (S = Q K^T,
// dP = dO V^T, dS, dQ += dS K). Each output row is summed by one warp in a fixed order.
//
// Masks. Positions are document-relative: row i sees key j iff j <= i. Only tiles that reach
// past a warp's first row are masked; a warp whose rows all precede a key tile (or whose rows
// all lie past the document's end) skips the tile's math but keeps loading and syncing with the
// block. Tile rows past the document's end are zero-filled by cp.async (src-size 0): zero keys
// and values there are masked or multiplied by zero, and rows past the end are never stored.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>

#include "cuda/attention.h"
#include "engine/backend/attention_shape.h"
#include "engine/base/error.h"

namespace ftune::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
// Blocks per SM each kernel is compiled for (__launch_bounds__): three caps registers at 168 per
// thread, two at 255. The dK/dV kernel holds 2 * 16 * kD fp32 accumulators per warp and needs
// more than 168 without spilling (ptxas -v); the others fit three.
constexpr int kFwdMinBlocks = 3, kDqMinBlocks = 3, kDkvMinBlocks = 2;
constexpr int kMaxGridZ = 65535;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Tile shapes per head dim. Every block has 4 warps of 16 rows. The streamed tiles of the
// backward are smaller at kD = 128 so two blocks fit an A100 SM (and three an H100 one) and the
// dK/dV accumulators (2 * 16 * kD fp32 per warp) leave room for the score fragments.
template <int kD>
struct Tiles {
  static constexpr int kLd = kD + 8;  // shared row stride in bf16 (16 bytes of padding)
  static constexpr int kRowBytes = kLd * 2;
  static constexpr int kFwdRows = 16 * kWarps, kFwdKeys = 64;
  static constexpr int kDqRows = 16 * kWarps, kDqKeys = kD > 64 ? 32 : 64;
  static constexpr int kDkvKeys = 16 * kWarps, kDkvRows = kD > 64 ? 32 : 64;
  // Q, K, V.
  static constexpr size_t kFwdSmem = size_t(kRowBytes) * (kFwdRows + 2 * kFwdKeys);
  // Q, dO, two (K, V) buffers.
  static constexpr size_t kDqSmem = size_t(kRowBytes) * (2 * kDqRows + 4 * kDqKeys);
  // K, V, two (Q, dO) buffers, two (lse, Delta) buffers.
  static constexpr size_t kDkvSmem =
      size_t(kRowBytes) * (2 * kDkvKeys + 4 * kDkvRows) + sizeof(float) * 4 * kDkvRows;
  static_assert(kD == 64 || kD == 128, "head dims 64 and 128");
};

struct Params {
  const int32_t* offs = nullptr;  // device doc offsets, n_docs + 1
  int n_docs = 0;
  int hq = 0, hkv = 0, group = 0;  // group = hq / hkv
  float scale = 0.f;
};

// ---- PTX wrappers ----

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; zero-fills the destination when !pred (nothing is
// read from src then, but it must still be a valid address).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(pred ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
               "r"(pred ? 4 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most kPending of this thread's most recent groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d (16x8 fp32) += a (16x16 bf16, row) * b (16x8 bf16, col).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16x2 register (round to nearest even), lo in the lower 16 bits.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &v, sizeof r);
  return r;
}

// The A fragment of k step kk (16 columns) from the accumulators of n tiles 2kk and 2kk + 1.
template <int kN>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c)[kN][4], int kk) {
  a[0] = pack_bf16(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack_bf16(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

template <int kN>
__device__ __forceinline__ void zero(float (&c)[kN][4]) {
#pragma unroll
  for (int n = 0; n < kN; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) c[n][e] = 0.f;
  }
}

// Per-lane byte offsets of the ldmatrix row addresses inside a tile of row stride kLd (see the
// file comment): kOffA for A operands and [k][n] B operands (.trans), kOffB for [n][k] B operands.
template <int kLd>
__device__ __forceinline__ uint32_t lane_off_a(int lane) {
  return uint32_t(((lane & 15) * kLd + (lane >> 4) * 8) * 2);
}
template <int kLd>
__device__ __forceinline__ uint32_t lane_off_b(int lane) {
  return uint32_t((((lane & 7) + ((lane >> 4) << 3)) * kLd + ((lane >> 3) & 1) * 8) * 2);
}

// c[n] += A (16 rows x kD, shared at a_row, row-major) * B^T, B = 8 * kN rows x kD of a shared
// [n][k] tile starting at b_row: c = A B^T, a 16 x 8kN block of scores.
template <int kN, int kD>
__device__ __forceinline__ void mma_abt(float (&c)[kN][4], uint32_t a_row, uint32_t b_row,
                                        uint32_t off_a, uint32_t off_b) {
  static_assert(kN % 2 == 0, "n tiles come in pairs");
  constexpr int kLd = kD + 8;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    uint32_t a[4];
    ldsm_x4(a, a_row + kk * 32 + off_a);
#pragma unroll
    for (int np = 0; np < kN / 2; ++np) {
      uint32_t b[4];
      ldsm_x4(b, b_row + uint32_t(np * 16 * kLd * 2) + kk * 32 + off_b);
      mma_bf16(c[2 * np], a, b[0], b[1]);
      mma_bf16(c[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// o[n] += P * V: P is the 16 x 16kK accumulator block p (re-packed to bf16 A fragments), V the
// 16kK x kD shared [k][n] tile at v_row.
template <int kK, int kD>
__device__ __forceinline__ void mma_pv(float (&o)[kD / 8][4], const float (&p)[2 * kK][4],
                                       uint32_t v_row, uint32_t off_a) {
  constexpr int kLd = kD + 8;
#pragma unroll
  for (int kk = 0; kk < kK; ++kk) {
    uint32_t a[4];
    acc_to_a(a, p, kk);
#pragma unroll
    for (int dp = 0; dp < kD / 16; ++dp) {
      uint32_t b[4];
      ldsm_x4_trans(b, v_row + uint32_t(kk * 16 * kLd * 2) + dp * 32 + off_a);
      mma_bf16(o[2 * dp], a, b[0], b[1]);
      mma_bf16(o[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// Rows [0, rows) of a kRows x kD bf16 tile (global row stride `stride` elements) into shared
// memory at dst (row stride kD + 8), rows past `rows` zero-filled; 16-byte cp.async by all
// threads of the block, 16 consecutive threads per 256-byte row at kD = 128. Not committed.
template <int kRows, int kD>
__device__ __forceinline__ void load_tile(uint32_t dst, const bf16* __restrict__ src,
                                          int64_t stride, int rows) {
  constexpr int kChunks = kD / 8, kTotal = kRows * kChunks, kLd = kD + 8;
  static_assert(kTotal % kThreads == 0, "whole passes of the block");
#pragma unroll 1  // unrolled, the hoisted addresses cost ~30 registers across the main loops
  for (int it = 0; it < kTotal / kThreads; ++it) {
    const int e = it * kThreads + int(threadIdx.x);
    const int r = e / kChunks, c = (e % kChunks) * 8;
    const bool ok = r < rows;
    cp_async_16(dst + uint32_t((r * kLd + c) * 2), ok ? src + r * stride + c : src, ok);
  }
}

// lse and Delta of a tile's rows (global index first + r * stride) into shared memory, zero for
// rows past `rows`. Not committed.
template <int kRows>
__device__ __forceinline__ void load_row_stats(uint32_t dst_lse, uint32_t dst_delta,
                                               const float* __restrict__ lse,
                                               const float* __restrict__ delta, int64_t first,
                                               int64_t stride, int rows) {
  for (int r = int(threadIdx.x); r < kRows; r += kThreads) {
    const bool ok = r < rows;
    const int64_t idx = ok ? first + r * stride : first;
    cp_async_4(dst_lse + uint32_t(r * 4), lse + idx, ok);
    cp_async_4(dst_delta + uint32_t(r * 4), delta + idx, ok);
  }
}

__device__ __forceinline__ void store_bf16x2(bf16* dst, float lo, float hi) {
  *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(lo, hi);
}

// ---- forward ----

template <int kD>
__global__ void __launch_bounds__(kThreads, kFwdMinBlocks)
    attention_bf16_fwd_kernel(Params p, const bf16* __restrict__ q, const bf16* __restrict__ k,
                              const bf16* __restrict__ v, bf16* __restrict__ out,
                              float* __restrict__ lse) {
  using T = Tiles<kD>;
  constexpr int kBr = T::kFwdRows, kBc = T::kFwdKeys, kLd = T::kLd, kRb = T::kRowBytes;
  constexpr int kSn = kBc / 8, kOn = kD / 8;
  extern __shared__ uint4 smem_raw[];
  const uint32_t sQ = smem_addr(smem_raw);
  const uint32_t sK = sQ + kBr * kRb;
  const uint32_t sV = sK + kBc * kRb;

  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;
  const uint32_t off_a = lane_off_a<kLd>(lane), off_b = lane_off_b<kLd>(lane);
  const int tile = int(gridDim.x) - 1 - int(blockIdx.x);  // heaviest tiles first
  const int h = int(blockIdx.y), kvh = h / p.group;
  const int64_t q_stride = int64_t(p.hq) * kD, kv_stride = int64_t(p.hkv) * kD;
  const float sl2 = p.scale * kLog2e;

  for (int doc = int(blockIdx.z); doc < p.n_docs; doc += int(gridDim.z)) {
    const int begin = p.offs[doc], len = p.offs[doc + 1] - begin;
    const int q0 = tile * kBr;
    if (q0 >= len) continue;
    const int q_rows = min(kBr, len - q0);
    const int w0 = q0 + 16 * warp;  // this warp's first row (document-relative)
    const bool active = w0 < len;
    const int n_kt = (q0 + q_rows - 1) / kBc + 1;  // key tiles up to the last row's
    const bf16* kb = k + (int64_t(begin) * p.hkv + kvh) * kD;
    const bf16* vb = v + (int64_t(begin) * p.hkv + kvh) * kD;
    const int64_t q_first = int64_t(begin + q0) * p.hq + h;

    __syncthreads();  // the previous document's tiles are no longer read
    load_tile<kBr, kD>(sQ, q + q_first * kD, q_stride, q_rows);
    load_tile<kBc, kD>(sK, kb, kv_stride, min(kBc, len));
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    float o[kOn][4];
    zero(o);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    for (int kt = 0; kt < n_kt; ++kt) {
      const int k0 = kt * kBc;
      if (kt > 0) {
        cp_async_wait<0>();
        __syncthreads();  // K tile kt has landed; every warp is done with V tile kt - 1
      }
      load_tile<kBc, kD>(sV, vb + k0 * kv_stride, kv_stride, min(kBc, len - k0));
      cp_async_commit();

      // Some row of this warp sees some key of the tile (warp-uniform).
      const bool live = active && k0 <= w0 + 15;
      float s[kSn][4];
      zero(s);
      if (live) {
        mma_abt<kSn, kD>(s, sQ + uint32_t(16 * warp * kRb), sK, off_a, off_b);
        const bool diag = k0 + kBc - 1 > w0;  // the tile reaches past the warp's first row
#pragma unroll
        for (int n = 0; n < kSn; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float x = s[n][e] * sl2;
            if (diag && k0 + 8 * n + 2 * t + (e & 1) > w0 + g + 8 * (e >> 1)) x = -INFINITY;
            s[n][e] = x;
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float mx = -INFINITY;
#pragma unroll
          for (int n = 0; n < kSn; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float m_new = fmaxf(m[r], mx);
          // A row with no visible key yet keeps m = -inf; shift by 0 so no inf - inf appears.
          const float shift = m_new == -INFINITY ? 0.f : m_new;
          const float alpha = exp2f(m[r] - shift);
          m[r] = m_new;
          float rs = 0.f;
#pragma unroll
          for (int n = 0; n < kSn; ++n) {
#pragma unroll
            for (int e = 2 * r; e < 2 * r + 2; ++e) {
              const float pe = exp2f(s[n][e] - shift);
              s[n][e] = pe;
              rs += pe;
            }
          }
          l[r] = l[r] * alpha + rs;  // this lane's columns only; the row sum comes at the end
#pragma unroll
          for (int n = 0; n < kOn; ++n) {
            o[n][2 * r] *= alpha;
            o[n][2 * r + 1] *= alpha;
          }
        }
      }

      cp_async_wait<0>();
      __syncthreads();  // V tile kt has landed; every warp is done with K tile kt
      if (kt + 1 < n_kt) {
        load_tile<kBc, kD>(sK, kb + (k0 + kBc) * kv_stride, kv_stride, min(kBc, len - k0 - kBc));
        cp_async_commit();
      }
      if (live) mma_pv<kBc / 16, kD>(o, s, sV, off_a);
    }

    if (active) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float lt = l[r];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        const int i = w0 + g + 8 * r;
        if (i < len) {
          const float inv = 1.f / lt;
          const int64_t row = int64_t(begin + i) * p.hq + h;
          bf16* dst = out + row * kD + 2 * t;
#pragma unroll
          for (int n = 0; n < kOn; ++n) {
            store_bf16x2(dst + 8 * n, o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
          }
          if (t == 0) lse[row] = (m[r] + log2f(lt)) * kLn2;
        }
      }
    }
  }
}

// ---- backward ----

// delta[row] = dout[row] . out[row] in fp32 over kD bf16 columns; kD / 8 lanes per row, one
// 16-byte load of each tensor per lane, a fixed xor-shuffle tree (deterministic).
template <int kD>
__global__ void __launch_bounds__(256)
    attention_delta_bf16_kernel(int64_t rows, const bf16* __restrict__ dout,
                                const bf16* __restrict__ out, float* __restrict__ delta) {
  constexpr int kLanes = kD / 8, kRowsPerWarp = 32 / kLanes;
  const int lane = int(threadIdx.x) & 31;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t row = warp * kRowsPerWarp + lane / kLanes;
  const int c = (lane % kLanes) * 8;
  float acc = 0.f;
  if (row < rows) {
    const uint4 a = __ldg(reinterpret_cast<const uint4*>(dout + row * kD + c));
    const uint4 b = __ldg(reinterpret_cast<const uint4*>(out + row * kD + c));
    const uint32_t wa[4] = {a.x, a.y, a.z, a.w}, wb[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // bf16 -> fp32 is a 16-bit shift
      acc = fmaf(__uint_as_float(wa[i] << 16), __uint_as_float(wb[i] << 16), acc);
      acc = fmaf(__uint_as_float(wa[i] & 0xffff0000u), __uint_as_float(wb[i] & 0xffff0000u), acc);
    }
  }
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (row < rows && lane % kLanes == 0) delta[row] = acc;
}

// dQ for 64 query rows of one (document, q head), streaming the key tiles they can see.
template <int kD>
__global__ void __launch_bounds__(kThreads, kDqMinBlocks)
    attention_bf16_dq_kernel(Params p, const bf16* __restrict__ dout, const bf16* __restrict__ q,
                             const bf16* __restrict__ k, const bf16* __restrict__ v,
                             const float* __restrict__ lse, const float* __restrict__ delta,
                             bf16* __restrict__ dq) {
  using T = Tiles<kD>;
  constexpr int kBr = T::kDqRows, kBc = T::kDqKeys, kLd = T::kLd, kRb = T::kRowBytes;
  constexpr int kSn = kBc / 8, kOn = kD / 8;
  constexpr uint32_t kTileKv = kBc * kRb;
  extern __shared__ uint4 smem_raw[];
  const uint32_t sQ = smem_addr(smem_raw);
  const uint32_t sdO = sQ + kBr * kRb;
  const uint32_t sKV = sdO + kBr * kRb;  // buffer b: K at sKV + 2b * kTileKv, V after it

  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;
  const uint32_t off_a = lane_off_a<kLd>(lane), off_b = lane_off_b<kLd>(lane);
  const int tile = int(gridDim.x) - 1 - int(blockIdx.x);
  const int h = int(blockIdx.y), kvh = h / p.group;
  const int64_t q_stride = int64_t(p.hq) * kD, kv_stride = int64_t(p.hkv) * kD;
  const float sl2 = p.scale * kLog2e;

  for (int doc = int(blockIdx.z); doc < p.n_docs; doc += int(gridDim.z)) {
    const int begin = p.offs[doc], len = p.offs[doc + 1] - begin;
    const int q0 = tile * kBr;
    if (q0 >= len) continue;
    const int q_rows = min(kBr, len - q0);
    const int w0 = q0 + 16 * warp;
    const bool active = w0 < len;
    const int n_kt = (q0 + q_rows - 1) / kBc + 1;
    const bf16* kb = k + (int64_t(begin) * p.hkv + kvh) * kD;
    const bf16* vb = v + (int64_t(begin) * p.hkv + kvh) * kD;
    const int64_t q_first = int64_t(begin + q0) * p.hq + h;

    __syncthreads();
    load_tile<kBr, kD>(sQ, q + q_first * kD, q_stride, q_rows);
    load_tile<kBr, kD>(sdO, dout + q_first * kD, q_stride, q_rows);
    load_tile<kBc, kD>(sKV, kb, kv_stride, min(kBc, len));
    load_tile<kBc, kD>(sKV + kTileKv, vb, kv_stride, min(kBc, len));
    cp_async_commit();

    // lse (times log2 e) and Delta of this lane's two rows, zero past the document's end.
    float lse2[2], dl[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = w0 + g + 8 * r;
      const int64_t idx = int64_t(begin + i) * p.hq + h;
      lse2[r] = i < len ? __ldg(lse + idx) * kLog2e : 0.f;
      dl[r] = i < len ? __ldg(delta + idx) : 0.f;
    }
    float acc[kOn][4];
    zero(acc);

    for (int kt = 0; kt < n_kt; ++kt) {
      const int k0 = kt * kBc;
      const uint32_t sK = sKV + uint32_t(kt & 1) * 2 * kTileKv, sV = sK + kTileKv;
      __syncthreads();  // buffer (kt + 1) & 1 was last read in iteration kt - 1
      if (kt + 1 < n_kt) {
        const uint32_t nK = sKV + uint32_t((kt + 1) & 1) * 2 * kTileKv;
        const int k1 = k0 + kBc, rows = min(kBc, len - k1);
        load_tile<kBc, kD>(nK, kb + k1 * kv_stride, kv_stride, rows);
        load_tile<kBc, kD>(nK + kTileKv, vb + k1 * kv_stride, kv_stride, rows);
      }
      cp_async_commit();  // possibly empty: keeps the group count uniform
      cp_async_wait<1>();
      __syncthreads();  // tile kt (and Q, dO) have landed

      if (active && k0 <= w0 + 15) {
        float s[kSn][4], dp[kSn][4];
        zero(s);
        zero(dp);
        mma_abt<kSn, kD>(s, sQ + uint32_t(16 * warp * kRb), sK, off_a, off_b);
        mma_abt<kSn, kD>(dp, sdO + uint32_t(16 * warp * kRb), sV, off_a, off_b);
        const bool diag = k0 + kBc - 1 > w0;
#pragma unroll
        for (int n = 0; n < kSn; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e >> 1;
            float pr = exp2f(fmaf(s[n][e], sl2, -lse2[r]));
            if (diag && k0 + 8 * n + 2 * t + (e & 1) > w0 + g + 8 * r) pr = 0.f;
            s[n][e] = pr * (dp[n][e] - dl[r]);  // dS
          }
        }
        mma_pv<kBc / 16, kD>(acc, s, sK, off_a);  // dQ += dS K
      }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = w0 + g + 8 * r;
      if (i < len) {
        bf16* dst = dq + (int64_t(begin + i) * p.hq + h) * kD + 2 * t;
#pragma unroll
        for (int n = 0; n < kOn; ++n) {
          store_bf16x2(dst + 8 * n, acc[n][2 * r] * p.scale, acc[n][2 * r + 1] * p.scale);
        }
      }
    }
  }
}

// dK and dV for 64 key rows of one (document, kv head): every q head of the group, every query
// tile at or after the keys, summed in that fixed order in registers.
template <int kD>
__global__ void __launch_bounds__(kThreads, kDkvMinBlocks)
    attention_bf16_dkv_kernel(Params p, const bf16* __restrict__ dout, const bf16* __restrict__ q,
                              const bf16* __restrict__ k, const bf16* __restrict__ v,
                              const float* __restrict__ lse, const float* __restrict__ delta,
                              bf16* __restrict__ dk, bf16* __restrict__ dv) {
  using T = Tiles<kD>;
  constexpr int kBc = T::kDkvKeys, kBr = T::kDkvRows, kLd = T::kLd, kRb = T::kRowBytes;
  constexpr int kSn = kBr / 8, kOn = kD / 8;
  constexpr uint32_t kTileQ = kBr * kRb;
  extern __shared__ uint4 smem_raw[];
  const uint32_t sK = smem_addr(smem_raw);
  const uint32_t sV = sK + kBc * kRb;
  const uint32_t sQd = sV + kBc * kRb;  // buffer b: Q at sQd + 2b * kTileQ, dO after it
  const uint32_t stats_off = 2 * kBc * kRb + 4 * kTileQ;  // buffer b: lse, Delta [kBr] each
  const uint32_t sStat = sK + stats_off;
  const float* stats =
      reinterpret_cast<const float*>(reinterpret_cast<const char*>(smem_raw) + stats_off);

  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;
  const uint32_t off_a = lane_off_a<kLd>(lane), off_b = lane_off_b<kLd>(lane);
  const int tile = int(blockIdx.x);  // the first key tiles see the most queries
  const int gk = int(blockIdx.y);
  const int64_t q_stride = int64_t(p.hq) * kD, kv_stride = int64_t(p.hkv) * kD;
  const float sl2 = p.scale * kLog2e;

  for (int doc = int(blockIdx.z); doc < p.n_docs; doc += int(gridDim.z)) {
    const int begin = p.offs[doc], len = p.offs[doc + 1] - begin;
    const int k0 = tile * kBc;
    if (k0 >= len) continue;
    const int k_rows = min(kBc, len - k0);
    const int kw0 = k0 + 16 * warp;  // this warp's first key
    const bool active = kw0 < len;
    const int first_qt = k0 / kBr;  // the query tile holding the block's first key
    const int n_qt = (len - 1) / kBr - first_qt + 1;
    const int n_it = p.group * n_qt;  // (q head, query tile) pairs, head-major
    const int64_t kv_first = int64_t(begin + k0) * p.hkv + gk;

    // Q, dO, lse and Delta of stream step `it` into buffer `buf` (not committed).
    auto load_step = [&](int it, int buf) {
      const int h = gk * p.group + it / n_qt;
      const int qs = (first_qt + it % n_qt) * kBr, rows = min(kBr, len - qs);
      const int64_t first = int64_t(begin + qs) * p.hq + h;
      const uint32_t dst = sQd + uint32_t(buf) * 2 * kTileQ;
      load_tile<kBr, kD>(dst, q + first * kD, q_stride, rows);
      load_tile<kBr, kD>(dst + kTileQ, dout + first * kD, q_stride, rows);
      const uint32_t st = sStat + uint32_t(buf * 2 * kBr * 4);
      load_row_stats<kBr>(st, st + kBr * 4, lse, delta, first, p.hq, rows);
    };

    __syncthreads();
    load_tile<kBc, kD>(sK, k + kv_first * kD, kv_stride, k_rows);
    load_tile<kBc, kD>(sV, v + kv_first * kD, kv_stride, k_rows);
    load_step(0, 0);
    cp_async_commit();

    float dk_acc[kOn][4], dv_acc[kOn][4];
    zero(dk_acc);
    zero(dv_acc);

    for (int it = 0; it < n_it; ++it) {
      const int buf = it & 1;
      __syncthreads();  // buffer buf ^ 1 was last read in iteration it - 1
      if (it + 1 < n_it) load_step(it + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();  // step it (and K, V) have landed

      const int q0 = (first_qt + it % n_qt) * kBr;
      if (active && kw0 <= q0 + kBr - 1) {  // some query of the tile sees some key of the warp
        const uint32_t sQ = sQd + uint32_t(buf) * 2 * kTileQ, sdO = sQ + kTileQ;
        const float* L = stats + buf * 2 * kBr;
        const float* Dl = L + kBr;
        // Transposed: rows are this warp's keys j, columns the tile's queries i.
        float st[kSn][4];
        zero(st);
        mma_abt<kSn, kD>(st, sK + uint32_t(16 * warp * kRb), sQ, off_a, off_b);
        const bool mask = kw0 + 15 > q0 || q0 + kBr > len;
#pragma unroll
        for (int n = 0; n < kSn; ++n) {
          const int c = 8 * n + 2 * t;
          const float2 lc = *reinterpret_cast<const float2*>(L + c);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = q0 + c + (e & 1), j = kw0 + g + 8 * (e >> 1);
            float pr = exp2f(fmaf(st[n][e], sl2, -(e & 1 ? lc.y : lc.x) * kLog2e));
            if (mask && (j > i || i >= len)) pr = 0.f;
            st[n][e] = pr;  // P^T
          }
        }
        mma_pv<kBr / 16, kD>(dv_acc, st, sdO, off_a);  // dV += P^T dO
        float dpt[kSn][4];
        zero(dpt);
        mma_abt<kSn, kD>(dpt, sV + uint32_t(16 * warp * kRb), sdO, off_a, off_b);  // dP^T
#pragma unroll
        for (int n = 0; n < kSn; ++n) {
          const float2 dc = *reinterpret_cast<const float2*>(Dl + 8 * n + 2 * t);
#pragma unroll
          for (int e = 0; e < 4; ++e) st[n][e] *= dpt[n][e] - (e & 1 ? dc.y : dc.x);  // dS^T
        }
        mma_pv<kBr / 16, kD>(dk_acc, st, sQ, off_a);  // dK += dS^T Q
      }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int j = kw0 + g + 8 * r;
      if (j < len) {
        const int64_t row = kv_first + int64_t(j - k0) * p.hkv;
        bf16* dkr = dk + row * kD + 2 * t;
        bf16* dvr = dv + row * kD + 2 * t;
#pragma unroll
        for (int n = 0; n < kOn; ++n) {
          store_bf16x2(dkr + 8 * n, dk_acc[n][2 * r] * p.scale, dk_acc[n][2 * r + 1] * p.scale);
          store_bf16x2(dvr + 8 * n, dv_acc[n][2 * r], dv_acc[n][2 * r + 1]);
        }
      }
    }
  }
}

// ---- host side ----

[[noreturn]] void fail(const std::string& msg) {
  throw Error("CUDA attention (bf16): " + msg);
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(std::string(what) + " failed: " + cudaGetErrorString(e));
}

int ceil_div(int a, int b) {
  return (a + b - 1) / b;
}

bool aligned(const void* ptr, size_t n) {
  return reinterpret_cast<uintptr_t>(ptr) % n == 0;
}

// Shape checks that need no device access. Returns false when there is nothing to compute.
bool validate(const AttentionArgs& a) {
  const std::string bad = attention_layout_error(a.tokens, a.q_heads, a.kv_heads, a.head_dim,
                                                 a.n_docs, a.doc_offsets != nullptr);
  if (!bad.empty()) fail(bad);
  if (a.head_dim != 64 && a.head_dim != 128) {
    fail("head_dim " + std::to_string(a.head_dim) + " is not supported (64 or 128)");
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

void require_aligned(std::initializer_list<const void*> ptrs, size_t n, const char* what) {
  for (const void* ptr : ptrs) {
    if (!ptr) fail(std::string(what) + " got a null tensor");
    if (!aligned(ptr, n)) {
      fail(std::string(what) + " needs " + std::to_string(n) + "-byte aligned tensors");
    }
  }
}

Params make_params(const AttentionArgs& a) {
  Params p;
  p.offs = a.doc_offsets;
  p.n_docs = a.n_docs;
  p.hq = a.q_heads;
  p.hkv = a.kv_heads;
  p.group = a.q_heads / a.kv_heads;
  p.scale = a.scale;
  return p;
}

unsigned grid_z(const AttentionArgs& a) {
  return unsigned(a.n_docs < kMaxGridZ ? a.n_docs : kMaxGridZ);
}

template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes, const char* what) {
  if (bytes > 48 * 1024) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
          what);
  }
}

template <int kD>
void forward_impl(cudaStream_t stream, const AttentionArgs& a, const Params& p, const bf16* q,
                  const bf16* k, const bf16* v, bf16* out, float* lse) {
  using T = Tiles<kD>;
  auto kernel = attention_bf16_fwd_kernel<kD>;
  allow_smem(kernel, T::kFwdSmem, "forward shared-memory setup");
  const dim3 grid(unsigned(ceil_div(a.max_doc_len, T::kFwdRows)), unsigned(a.q_heads), grid_z(a));
  kernel<<<grid, kThreads, T::kFwdSmem, stream>>>(p, q, k, v, out, lse);
  check(cudaGetLastError(), "forward kernel launch");
}

template <int kD>
void backward_impl(cudaStream_t stream, const AttentionArgs& a, const Params& p, const bf16* dout,
                   const bf16* q, const bf16* k, const bf16* v, const bf16* out, const float* lse,
                   float* delta, bf16* dq, bf16* dk, bf16* dv) {
  using T = Tiles<kD>;
  const int64_t rows = a.tokens * a.q_heads;
  constexpr int64_t kRowsPerBlock = 256 / 32 * (32 / (kD / 8));
  attention_delta_bf16_kernel<kD>
      <<<dim3(unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock)), 256, 0, stream>>>(rows, dout,
                                                                                       out, delta);
  check(cudaGetLastError(), "delta kernel launch");

  auto dkv = attention_bf16_dkv_kernel<kD>;
  allow_smem(dkv, T::kDkvSmem, "dK/dV shared-memory setup");
  const dim3 grid_kv(unsigned(ceil_div(a.max_doc_len, T::kDkvKeys)), unsigned(a.kv_heads),
                     grid_z(a));
  dkv<<<grid_kv, kThreads, T::kDkvSmem, stream>>>(p, dout, q, k, v, lse, delta, dk, dv);
  check(cudaGetLastError(), "dK/dV kernel launch");

  auto dqk = attention_bf16_dq_kernel<kD>;
  allow_smem(dqk, T::kDqSmem, "dQ shared-memory setup");
  const dim3 grid_q(unsigned(ceil_div(a.max_doc_len, T::kDqRows)), unsigned(a.q_heads), grid_z(a));
  dqk<<<grid_q, kThreads, T::kDqSmem, stream>>>(p, dout, q, k, v, lse, delta, dq);
  check(cudaGetLastError(), "dQ kernel launch");
}

}  // namespace

size_t attention_bf16_workspace_bytes(const AttentionArgs& a) {
  if (a.tokens <= 0 || a.q_heads <= 0) return 0;
  return size_t(a.tokens) * size_t(a.q_heads) * sizeof(float);  // Delta per (token, q head)
}

void attention_forward_bf16(cudaStream_t stream, const AttentionArgs& a, const bf16* q,
                            const bf16* k, const bf16* v, bf16* out, float* lse) {
  if (!validate(a)) return;
  require_aligned({q, k, v, out}, 16, "forward");
  require_aligned({lse}, 4, "forward");
  const Params p = make_params(a);
  if (a.head_dim == 64) {
    forward_impl<64>(stream, a, p, q, k, v, out, lse);
  } else {
    forward_impl<128>(stream, a, p, q, k, v, out, lse);
  }
}

void attention_backward_bf16(cudaStream_t stream, const AttentionArgs& a, const bf16* dout,
                             const bf16* q, const bf16* k, const bf16* v, const bf16* out,
                             const float* lse, bf16* dq, bf16* dk, bf16* dv, void* workspace) {
  if (!validate(a)) return;
  require_aligned({dout, q, k, v, out, dq, dk, dv}, 16, "backward");
  require_aligned({lse}, 4, "backward");
  if (!workspace) fail("backward needs a workspace of attention_bf16_workspace_bytes()");
  require_aligned({workspace}, 4, "backward");
  float* delta = static_cast<float*>(workspace);
  const Params p = make_params(a);
  if (a.head_dim == 64) {
    backward_impl<64>(stream, a, p, dout, q, k, v, out, lse, delta, dq, dk, dv);
  } else {
    backward_impl<128>(stream, a, p, dout, q, k, v, out, lse, delta, dq, dk, dv);
  }
}

}  // namespace ftune::cuda
