// cuBLASLt is loaded when the CUDA backend first needs it (dlopen), not linked: the shared library
// is 540 MB, and mapping it at start-up cost every ftune process ~200 MB of resident memory and
// 0.1 s even on CPU runs. These definitions stand in for the few cuBLASLt entry points ftune
// calls and forward to the real ones. When the library cannot be loaded every call returns
// CUBLAS_STATUS_NOT_INITIALIZED and the status text says why.
#include <cublasLt.h>
#include <dlfcn.h>

#include <mutex>
#include <string>

namespace {

struct Library {
  void* handle = nullptr;
  std::string error;
};

const Library& library() {
  static Library lib;
  static std::once_flag once;
  std::call_once(once, [] {
    for (const char* name : {"libcublasLt.so.13", "libcublasLt.so"}) {
      lib.handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib.handle) return;
      const char* e = dlerror();
      lib.error = e ? e : "dlopen failed";
    }
    lib.error = "cannot load cuBLASLt (" + lib.error +
                "); put CUDA 13's lib64 (or PyTorch's nvidia/cublas/lib) on LD_LIBRARY_PATH";
  });
  return lib;
}

template <class Fn>
Fn symbol(const char* name) {
  const Library& lib = library();
  return lib.handle ? reinterpret_cast<Fn>(dlsym(lib.handle, name)) : nullptr;
}

}  // namespace

// Each entry point resolves its symbol once; a missing library or symbol reads as "not
// initialized", which the backend reports with the reason from cublasLtGetStatusString.
#define FTUNE_LT_CALL(name, ...)                         \
  static const auto fn = symbol<decltype(&name)>(#name); \
  return fn ? fn(__VA_ARGS__) : CUBLAS_STATUS_NOT_INITIALIZED

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
  FTUNE_LT_CALL(cublasLtCreate, h);
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
  FTUNE_LT_CALL(cublasLtDestroy, h);
}
cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t desc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t a_desc, const void* B,
                              cublasLtMatrixLayout_t b_desc, const void* beta, const void* C,
                              cublasLtMatrixLayout_t c_desc, void* D, cublasLtMatrixLayout_t d_desc,
                              const cublasLtMatmulAlgo_t* algo, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream) {
  FTUNE_LT_CALL(cublasLtMatmul, h, desc, alpha, A, a_desc, B, b_desc, beta, C, c_desc, D, d_desc,
                algo, workspace, workspace_bytes, stream);
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
  FTUNE_LT_CALL(cublasLtMatrixLayoutCreate, layout, type, rows, cols, ld);
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  FTUNE_LT_CALL(cublasLtMatrixLayoutDestroy, layout);
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  FTUNE_LT_CALL(cublasLtMatmulDescCreate, desc, compute, scale);
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  FTUNE_LT_CALL(cublasLtMatmulDescDestroy, desc);
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              size_t bytes) {
  FTUNE_LT_CALL(cublasLtMatmulDescSetAttribute, desc, attr, buf, bytes);
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  FTUNE_LT_CALL(cublasLtMatmulPreferenceCreate, pref);
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  FTUNE_LT_CALL(cublasLtMatmulPreferenceDestroy, pref);
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void* buf, size_t bytes) {
  FTUNE_LT_CALL(cublasLtMatmulPreferenceSetAttribute, pref, attr, buf, bytes);
}
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t h, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a_desc,
    cublasLtMatrixLayout_t b_desc, cublasLtMatrixLayout_t c_desc, cublasLtMatrixLayout_t d_desc,
    cublasLtMatmulPreference_t pref, int requested, cublasLtMatmulHeuristicResult_t results[],
    int* returned) {
  FTUNE_LT_CALL(cublasLtMatmulAlgoGetHeuristic, h, desc, a_desc, b_desc, c_desc, d_desc, pref,
                requested, results, returned);
}
const char* cublasLtGetStatusName(cublasStatus_t status) {
  static const auto fn = symbol<decltype(&cublasLtGetStatusName)>("cublasLtGetStatusName");
  return fn ? fn(status) : "CUBLAS_STATUS_NOT_INITIALIZED";
}
const char* cublasLtGetStatusString(cublasStatus_t status) {
  static const auto fn = symbol<decltype(&cublasLtGetStatusString)>("cublasLtGetStatusString");
  return fn ? fn(status) : library().error.c_str();
}
