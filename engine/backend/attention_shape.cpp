#include "engine/backend/attention_shape.h"

namespace ftune {

std::string attention_layout_error(int64_t tokens, int q_heads, int kv_heads, int head_dim,
                                   int n_docs, bool has_doc_offsets) {
  if (tokens < 0 || q_heads <= 0 || kv_heads <= 0 || head_dim <= 0)
    return "needs tokens >= 0 and positive q_heads, kv_heads and head_dim (got tokens " +
           std::to_string(tokens) + ", q_heads " + std::to_string(q_heads) + ", kv_heads " +
           std::to_string(kv_heads) + ", head_dim " + std::to_string(head_dim) + ")";
  if (q_heads % kv_heads != 0)
    return "q_heads " + std::to_string(q_heads) + " is not a multiple of kv_heads " +
           std::to_string(kv_heads);
  if (n_docs < 0) return "negative n_docs";
  if ((tokens > 0 && n_docs == 0) || (n_docs > 0 && !has_doc_offsets))
    return "tokens without doc_offsets";
  return "";
}

}  // namespace ftune
