// Row-major matrix products on the GPU through cuBLASLt, for the CUDA backend.
//
// fp32 operands and output with CUBLAS_COMPUTE_32F (true fp32 FMA, never TF32), so products agree
// with the CPU backend's OpenBLAS to fp32 rounding; or (run_bf16) bf16 operands on the tensor
// cores with fp32 accumulation and an fp32 output, for bf16 mixed precision. cuBLASLt is
// column-major: a row-major C[M,N] is the column-major C^T[N,M], so C = op(A) op(B) is computed as
// C^T = op(B)^T op(A)^T with the operands swapped and each layout described as stored.
//
// Everything cuBLASLt needs besides the pointers (the matmul descriptor, the three layouts, the
// preference and the heuristic's algorithm) is built once per key (element types, transposes,
// M, N, K, leading dimensions, beta != 0, bias epilogue, pointer alignments) and cached: a
// training step repeats a few dozen shapes. A key's algorithm never changes, so a repeated call
// gives bitwise the same result. One workspace is allocated with the handle.
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace ftune::cuda {

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // C[M,N] = alpha * op(A) * op(B) + beta * C (+ bias[N] on every row when bias is not null),
  // row-major; op(A) is [M,K], op(B) is [K,N]. beta == 0 never reads C. `op` names the backend
  // op in error messages.
  void run(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
           float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
           float* C, int64_t ldc, const float* bias, const char* op);

  // The same with bf16 operands: fp32 accumulation, fp32 C (and bias), alpha and beta.
  void run_bf16(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                float alpha, const __nv_bfloat16* A, int64_t lda, const __nv_bfloat16* B,
                int64_t ldb, float beta, float* C, int64_t ldc, const float* bias, const char* op);

  size_t cached_plans() const;

 private:
  void run_typed(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                 float alpha, const void* A, int64_t lda, const void* B, int64_t ldb, float beta,
                 float* C, int64_t ldc, const float* bias, cudaDataType in_type, const char* op);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ftune::cuda
