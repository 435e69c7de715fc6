#include "engine/data/batch.h"

#include <cstddef>
#include <utility>

namespace ftune {

int64_t Batch::target_count() const {
  int64_t n = 0;
  for (int32_t t : targets) n += t != kIgnoreIndex;
  return n;
}

Batch Batch::from_rows(int64_t rows, int64_t seq, std::vector<int32_t> ids,
                       std::vector<int32_t> targets) {
  Batch b;
  b.rows = rows;
  b.seq = seq;
  b.ids = std::move(ids);
  b.targets = std::move(targets);
  b.positions.resize(size_t(rows * seq));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < seq; ++t) b.positions[size_t(r * seq + t)] = int32_t(t);
  for (int64_t r = 0; r <= rows; ++r) b.doc_offsets.push_back(int32_t(r * seq));
  return b;
}

}  // namespace ftune
