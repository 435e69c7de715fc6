// Causal, document-masked, grouped-query attention on the GPU (fp32 for now): a tiled,
// online-softmax (flash-style) forward that saves only the per-row log-sum-exp, and a backward
// that recomputes probabilities from it. No N x N matrix is ever materialised.
// Layouts match Backend::attention_forward/backward (engine/backend.h): q and out [N, Hq, D],
// k and v [N, Hkv, D], lse [N, Hq]; q head h reads kv head h / (Hq / Hkv).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ftune::cuda {

struct AttentionArgs {
  int64_t tokens = 0;  // N
  int q_heads = 0, kv_heads = 0, head_dim = 0;
  const int32_t* doc_offsets = nullptr;  // DEVICE array, n_docs + 1 entries (cu_seqlens)
  int n_docs = 0;
  int max_doc_len = 0;  // longest document, for grid sizing
  float scale = 0.f;
};

void attention_forward(cudaStream_t stream, const AttentionArgs& a, const float* q, const float* k,
                       const float* v, float* out, float* lse);
// Writes (not accumulates) dq, dk, dv. `workspace` is at least attention_workspace_bytes(a).
void attention_backward(cudaStream_t stream, const AttentionArgs& a, const float* dout,
                        const float* q, const float* k, const float* v, const float* out,
                        const float* lse, float* dq, float* dk, float* dv, void* workspace);
size_t attention_workspace_bytes(const AttentionArgs& a);

}  // namespace ftune::cuda
