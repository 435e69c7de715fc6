// What every backend requires of an attention's layout before it touches memory, checked in one
// place: the CPU backend (cpu/cpu_attention.cpp) and both CUDA kernels (cuda/attention*.cu) call
// it, then add their own limits (the CPU reads the document offsets, which CUDA keeps on the
// device; CUDA bounds head_dim and grid sizes).
#pragma once
#include <cstdint>
#include <string>

namespace ftune {

// "" when tokens >= 0, head counts and head_dim are positive, q_heads is a multiple of kv_heads
// (grouped-query), n_docs >= 0 and tokens come with document offsets; else what is wrong.
std::string attention_layout_error(int64_t tokens, int q_heads, int kv_heads, int head_dim,
                                   int n_docs, bool has_doc_offsets);

}  // namespace ftune
