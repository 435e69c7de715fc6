// Causal, document-masked, grouped-query attention on the GPU in fp32 (attention_bf16.cu: bf16):
// a tiled, online-softmax (flash-style) forward that saves only the per-row log-sum-exp, and a
// backward that recomputes probabilities from it. No N x N matrix is ever materialised.
// Layouts match Backend::attention_forward/backward (engine/backend/backend.h): q and out [N, Hq,
// D], k and v [N, Hkv, D], lse [N, Hq]; q head h reads kv head h / (Hq / Hkv).
#pragma once
#include <cuda_bf16.h>
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

// bf16 on tensor cores (attention_bf16.cu; mma.sync m16n8k16, sm_80+): the same attention, layouts
// and lse convention (fp32 natural log-sum-exp of the scaled scores, [N, Hq]) as above, with bf16
// q, k, v, out, dout, dq, dk, dv and fp32 accumulation, softmax statistics and Delta. head_dim
// must be 64 or 128, every bf16 pointer 16-byte aligned and lse / workspace 4-byte aligned.
// Bitwise deterministic (no atomics). Writes (not accumulates) dq, dk, dv; `workspace` is at
// least attention_bf16_workspace_bytes(a).
void attention_forward_bf16(cudaStream_t stream, const AttentionArgs& a, const __nv_bfloat16* q,
                            const __nv_bfloat16* k, const __nv_bfloat16* v, __nv_bfloat16* out,
                            float* lse);
void attention_backward_bf16(cudaStream_t stream, const AttentionArgs& a, const __nv_bfloat16* dout,
                             const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                             const __nv_bfloat16* out, const float* lse, __nv_bfloat16* dq,
                             __nv_bfloat16* dk, __nv_bfloat16* dv, void* workspace);
size_t attention_bf16_workspace_bytes(const AttentionArgs& a);

}  // namespace ftune::cuda
