// One micro-batch as the data layer hands it to the model: token ids, targets, positions and
// document boundaries, host side.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/base/targets.h"

namespace ftune {

// N = rows*seq tokens, row-major. targets[i] is the token that should follow ids[i], or
// kIgnoreIndex. doc_offsets are cu_seqlens-style over the N tokens; positions restart at each
// document start.
struct Batch {
  int64_t rows = 0, seq = 0;
  std::vector<int32_t> ids, targets, positions, doc_offsets;
  int64_t tokens() const { return rows * seq; }
  int64_t target_count() const;  // targets that are not kIgnoreIndex
  // Every row one document starting at position 0.
  static Batch from_rows(int64_t rows, int64_t seq, std::vector<int32_t> ids,
                         std::vector<int32_t> targets);
};

}  // namespace ftune
