// cuBLASLt matrix products with cached plans (see gemm.h), and the deterministic column sums
// linear_backward uses for the bias gradient.
#include <algorithm>
#include <cstring>
#include <string>
#include <unordered_map>

#include "cuda/cuda_ops.h"
#include "cuda/gemm.h"
#include "engine/base/error.h"

namespace ftune::cuda {
namespace {

// cuBLASLt's recommended workspace on Hopper; smaller cards use what fits.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;
// A training run repeats a few dozen shapes; a runaway caller (e.g. generation with growing
// lengths) should not grow the cache without bound.
constexpr size_t kMaxPlans = 4096;

// Largest power of two (capped at 256) dividing the address: cuBLASLt picks kernels whose
// vectorised loads the pointer supports, so the alignment is part of a plan's key.
uint32_t ptr_align(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a == 0) return 256;
  const uintptr_t low = a & (~a + 1);
  return low >= 256 ? 256u : uint32_t(low);
}

struct Key {
  int32_t a_type, c_type, compute;  // cudaDataType / cublasComputeType_t, for the bf16 step
  int32_t flags;                    // trans_a | trans_b << 1 | beta != 0 << 2 | bias << 3
  int64_t M, N, K, lda, ldb, ldc;
  uint32_t align_a, align_b, align_c, align_bias;
  bool operator==(const Key& o) const { return std::memcmp(this, &o, sizeof(Key)) == 0; }
};
static_assert(sizeof(Key) == 4 * 4 + 6 * 8 + 4 * 4, "Key must have no padding (memcmp, hash)");

struct KeyHash {
  size_t operator()(const Key& k) const {
    // FNV-1a over the key's bytes (it has no padding).
    const auto* b = reinterpret_cast<const unsigned char*>(&k);
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(Key); ++i) h = (h ^ b[i]) * 1099511628211ull;
    return size_t(h);
  }
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;  // false: the heuristic offered nothing (only tolerated for bias plans)
  void destroy() {
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (desc) cublasLtMatmulDescDestroy(desc);
    la = lb = lc = nullptr;
    desc = nullptr;
  }
};

std::string shape_str(const Key& k) {
  return "M=" + std::to_string(k.M) + " N=" + std::to_string(k.N) + " K=" + std::to_string(k.K) +
         " trans_a=" + std::to_string(k.flags & 1) +
         " trans_b=" + std::to_string((k.flags >> 1) & 1) + " lda=" + std::to_string(k.lda) +
         " ldb=" + std::to_string(k.ldb) + " ldc=" + std::to_string(k.ldc);
}

struct ColumnOfRows {
  const float* dy;
  int64_t cols;
  __device__ double operator()(int64_t r, int64_t c) const { return double(dy[r * cols + c]); }
};

}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::unordered_map<Key, Plan, KeyHash> plans;

  ~Impl() {
    clear();
    if (workspace) cudaFree(workspace);
    if (handle) cublasLtDestroy(handle);
  }
  void clear() {
    for (auto& [k, p] : plans) p.destroy();
    plans.clear();
  }

  // Builds the plan for `k`: cuBLASLt's A is our B and its B our A (see gemm.h).
  Plan make_plan(const Key& k, const float* bias, const char* op) {
    const bool ta = k.flags & 1, tb = (k.flags >> 1) & 1, with_bias = (k.flags >> 3) & 1;
    Plan p;
    try {
      FTUNE_CUBLAS(cublasLtMatmulDescCreate(&p.desc, cublasComputeType_t(k.compute), CUDA_R_32F),
                   op);
      const cublasOperation_t op_a = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
      const cublasOperation_t op_b = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
      FTUNE_CUBLAS(
          cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)),
          op);
      FTUNE_CUBLAS(
          cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)),
          op);
      if (with_bias) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        FTUNE_CUBLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                    sizeof(epi)),
                     op);
        // fp32 bias for bf16 operands too (the output's type, stated rather than left implied).
        const cudaDataType bias_t = CUDA_R_32F;
        FTUNE_CUBLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                    &bias_t, sizeof(bias_t)),
                     op);
        // The heuristic reads the bias pointer's alignment from here.
        FTUNE_CUBLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                    &bias, sizeof(bias)),
                     op);
      }
      // Layouts as stored, column-major view of row-major memory:
      //   our B: [K rows, N cols] viewed from row-major [N, K] when trans_b, else [N rows, K cols]
      //   our A: [M rows, K cols] when trans_a, else [K rows, M cols]
      //   C:     [N rows, M cols]
      const auto a_t = cudaDataType(k.a_type), c_t = cudaDataType(k.c_type);
      FTUNE_CUBLAS(cublasLtMatrixLayoutCreate(&p.la, a_t, tb ? uint64_t(k.K) : uint64_t(k.N),
                                              tb ? uint64_t(k.N) : uint64_t(k.K), k.ldb),
                   op);
      FTUNE_CUBLAS(cublasLtMatrixLayoutCreate(&p.lb, a_t, ta ? uint64_t(k.M) : uint64_t(k.K),
                                              ta ? uint64_t(k.K) : uint64_t(k.M), k.lda),
                   op);
      FTUNE_CUBLAS(cublasLtMatrixLayoutCreate(&p.lc, c_t, uint64_t(k.N), uint64_t(k.M), k.ldc), op);

      cublasLtMatmulPreference_t pref = nullptr;
      FTUNE_CUBLAS(cublasLtMatmulPreferenceCreate(&pref), op);
      cublasLtMatmulHeuristicResult_t result{};
      int count = 0;
      cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
      {
        const uint64_t ws = workspace_bytes;
        const uint32_t al_a = k.align_b, al_b = k.align_a, al_c = k.align_c;  // swapped roles
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &ws, sizeof(ws));
        if (st == CUBLAS_STATUS_SUCCESS)
          st = cublasLtMatmulPreferenceSetAttribute(
              pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
        if (st == CUBLAS_STATUS_SUCCESS)
          st = cublasLtMatmulPreferenceSetAttribute(
              pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
        if (st == CUBLAS_STATUS_SUCCESS)
          st = cublasLtMatmulPreferenceSetAttribute(
              pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c));
        if (st == CUBLAS_STATUS_SUCCESS)
          st = cublasLtMatmulPreferenceSetAttribute(
              pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c));
        if (st == CUBLAS_STATUS_SUCCESS)
          st = cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.la, p.lb, p.lc, p.lc, pref, 1,
                                              &result, &count);
      }
      cublasLtMatmulPreferenceDestroy(pref);
      // NOT_SUPPORTED means no algorithm fits; anything else is a real failure.
      if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED)
        throw_cublas_error(st, "cublasLtMatmulAlgoGetHeuristic", op);
      p.found = st == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS;
      if (p.found) p.algo = result.algo;
      if (!p.found && !with_bias)
        throw Error(std::string(op) + ": cuBLASLt has no " +
                    (k.a_type == int32_t(CUDA_R_16BF) ? "bf16" : "fp32") + " algorithm for " +
                    shape_str(k));
    } catch (...) {
      p.destroy();
      throw;
    }
    return p;
  }
};

Gemm::Gemm() : impl_(std::make_unique<Impl>()) {
  FTUNE_CUBLAS(cublasLtCreate(&impl_->handle), "gemm init");
  size_t free_b = 0, total_b = 0;
  FTUNE_CUDA(cudaMemGetInfo(&free_b, &total_b), "gemm init");
  impl_->workspace_bytes = kWorkspaceBytes < free_b / 8 ? kWorkspaceBytes : size_t(4) << 20;
  FTUNE_CUDA(cudaMalloc(&impl_->workspace, impl_->workspace_bytes), "gemm init");
}

Gemm::~Gemm() = default;

size_t Gemm::cached_plans() const {
  return impl_->plans.size();
}

void Gemm::run(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
               float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
               float* C, int64_t ldc, const float* bias, const char* op) {
  run_typed(stream, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias,
            CUDA_R_32F, op);
}

void Gemm::run_bf16(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N,
                    int64_t K, float alpha, const __nv_bfloat16* A, int64_t lda,
                    const __nv_bfloat16* B, int64_t ldb, float beta, float* C, int64_t ldc,
                    const float* bias, const char* op) {
  run_typed(stream, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias,
            CUDA_R_16BF, op);
}

void Gemm::run_typed(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N,
                     int64_t K, float alpha, const void* A, int64_t lda, const void* B, int64_t ldb,
                     float beta, float* C, int64_t ldc, const float* bias, cudaDataType in_type,
                     const char* op) {
  FTUNE_CHECK(M >= 0 && N >= 0 && K >= 0, std::string(op) + ": negative gemm dimension");
  if (M == 0 || N == 0) return;
  FTUNE_CHECK(lda >= std::max<int64_t>(1, trans_a ? M : K), std::string(op) + ": lda too small");
  FTUNE_CHECK(ldb >= std::max<int64_t>(1, trans_b ? K : N), std::string(op) + ": ldb too small");
  FTUNE_CHECK(ldc >= N, std::string(op) + ": ldc too small");
  if (K == 0) {
    // No products: C = beta * C (+ bias); beta == 0 overwrites whatever C held, NaN included.
    if (beta != 1.f || bias) scale_rows_add_bias(stream, C, M, N, ldc, beta, bias);
    return;
  }
  Key k{};
  k.a_type = int32_t(in_type);
  k.c_type = int32_t(CUDA_R_32F);
  k.compute = int32_t(CUBLAS_COMPUTE_32F);
  k.flags = int32_t(trans_a) | int32_t(trans_b) << 1 | int32_t(beta != 0.f) << 2 |
            int32_t(bias != nullptr) << 3;
  k.M = M;
  k.N = N;
  k.K = K;
  k.lda = lda;
  k.ldb = ldb;
  k.ldc = ldc;
  k.align_a = ptr_align(A);
  k.align_b = ptr_align(B);
  k.align_c = ptr_align(C);
  k.align_bias = bias ? ptr_align(bias) : 0;

  auto it = impl_->plans.find(k);
  if (it == impl_->plans.end()) {
    if (impl_->plans.size() >= kMaxPlans) impl_->clear();
    it = impl_->plans.emplace(k, impl_->make_plan(k, bias, op)).first;
  }
  Plan& p = it->second;
  if (bias && !p.found) {
    // No algorithm with the bias epilogue for this shape: C = beta * C + bias, then accumulate.
    scale_rows_add_bias(stream, C, M, N, ldc, beta, bias);
    run_typed(stream, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, 1.f, C, ldc, nullptr,
              in_type, op);
    return;
  }
  if (bias)
    FTUNE_CUBLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                sizeof(bias)),
                 op);
  FTUNE_CUBLAS(cublasLtMatmul(impl_->handle, p.desc, &alpha, B, p.la, A, p.lb, &beta, C, p.lc, C,
                              p.lc, &p.algo, impl_->workspace, impl_->workspace_bytes, stream),
               op);
}

size_t column_sum_partials(int64_t rows, int64_t cols) {
  return rows > 0 && cols > 0 ? size_t(column_chunks(rows) * cols) : 0;
}

void column_sums_add(cudaStream_t s, const float* dy, float* dbias, int64_t rows, int64_t cols,
                     double* partials) {
  if (rows <= 0 || cols <= 0) return;
  launch_column_partials(s, ColumnOfRows{dy, cols}, rows, cols, partials, "linear_backward");
  column_finish(s, partials, column_chunks(rows), cols, dbias);
}

}  // namespace ftune::cuda
