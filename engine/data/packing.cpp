#include "engine/data/packing.h"

#include <algorithm>
#include <map>

#include "engine/base/error.h"

namespace ftune {

namespace {

// Length a sample takes in a row after the overlong policy; 0 means leave it out.
int64_t fitted_length(const Samples& s, int64_t i, int64_t seq_len, Overlong p, PackStats* st) {
  const int64_t n = s.length(i);
  if (n == 0) return 0;
  if (n <= seq_len) return n;
  if (p == Overlong::Drop) {
    st->dropped++;
    return 0;
  }
  st->truncated++;
  return seq_len;
}

}  // namespace

std::vector<Row> pack_rows(const Samples& s, const std::vector<int64_t>& order, int64_t seq_len,
                           Overlong overlong, PackStats* stats) {
  PackStats local;
  PackStats* st = stats ? stats : &local;
  *st = {};
  std::vector<Row> rows;
  std::vector<int64_t> used;
  std::multimap<int64_t, size_t> open;  // room left -> row; smallest room that fits wins
  for (int64_t i : order) {
    const int64_t len = fitted_length(s, i, seq_len, overlong, st);
    if (len == 0) continue;
    auto it = open.lower_bound(len);
    size_t r;
    if (it == open.end()) {
      r = rows.size();
      rows.emplace_back();
      used.push_back(0);
    } else {
      r = it->second;
      open.erase(it);
    }
    rows[r].push_back({i, len});
    used[r] += len;
    st->samples++;
    if (used[r] < seq_len) open.emplace(seq_len - used[r], r);
  }
  st->rows = int64_t(rows.size());
  for (int64_t u : used) st->pad_tokens += seq_len - u;
  return rows;
}

std::vector<Row> single_rows(const Samples& s, const std::vector<int64_t>& order, int64_t seq_len,
                             Overlong overlong, PackStats* stats) {
  PackStats local;
  PackStats* st = stats ? stats : &local;
  *st = {};
  std::vector<Row> rows;
  for (int64_t i : order) {
    const int64_t len = fitted_length(s, i, seq_len, overlong, st);
    if (len == 0) continue;
    rows.push_back({{i, len}});
    st->samples++;
    st->pad_tokens += seq_len - len;
  }
  st->rows = int64_t(rows.size());
  return rows;
}

int64_t batch_row_length(const std::vector<Row>& rows, int64_t seq_len) {
  int64_t longest = 1;
  for (const Row& r : rows) {
    int64_t used = 0;
    for (const RowPiece& p : r) used += p.length;
    longest = std::max(longest, used);
  }
  return std::min(seq_len, (longest + 7) / 8 * 8);
}

Batch make_row_batch(const Samples& s, const std::vector<Row>& rows, int64_t seq_len,
                     int32_t pad_id) {
  Batch b;
  b.rows = int64_t(rows.size());
  b.seq = seq_len;
  const size_t n = size_t(b.rows * seq_len);
  b.ids.assign(n, pad_id);
  b.targets.assign(n, kIgnoreIndex);
  b.positions.assign(n, 0);
  b.doc_offsets.push_back(0);
  for (int64_t r = 0; r < b.rows; ++r) {
    int64_t at = r * seq_len;
    const int64_t row_end = at + seq_len;
    for (const RowPiece& p : rows[size_t(r)]) {
      FTUNE_CHECK(at + p.length <= row_end, "row overfull");
      const int32_t* tok = s.tokens_of(p.sample);
      const uint8_t* train = s.trainable_of(p.sample);
      for (int64_t t = 0; t < p.length; ++t) {
        b.ids[size_t(at + t)] = tok[t];
        b.positions[size_t(at + t)] = int32_t(t);
        if (t + 1 < p.length && train[t + 1]) b.targets[size_t(at + t)] = tok[t + 1];
      }
      at += p.length;
      b.doc_offsets.push_back(int32_t(at));
    }
    if (at < row_end) {  // padding: its own document, so no real token ever attends to it
      for (int64_t t = 0; at + t < row_end; ++t) b.positions[size_t(at + t)] = int32_t(t);
      b.doc_offsets.push_back(int32_t(row_end));
    }
  }
  return b;
}

}  // namespace ftune
