// Sample-level batching: samples (each a token list with a per-token "train on this" flag) are
// packed whole into rows of seq_len tokens with per-document attention and positions restarting
// at each sample, or placed one per row with padding. Either way a token is predicted only from
// its own sample, so a packed batch gives every sample the loss it would get alone.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/batch.h"
#include "engine/data/samples.h"
#include "engine/recipe/recipe.h"

namespace ftune {

// Overlong (recipe.h): a sample longer than a row is truncated (its start kept) or dropped.

struct PackStats {
  int64_t rows = 0;
  int64_t samples = 0;
  int64_t truncated = 0;   // samples cut to seq_len
  int64_t dropped = 0;     // samples left out
  int64_t pad_tokens = 0;  // row slots holding no sample token
};

// One row: the samples in it, in order, each with the number of its tokens used.
struct RowPiece {
  int64_t sample = 0;
  int64_t length = 0;
};
using Row = std::vector<RowPiece>;

// Best-fit packing of samples (visited in `order`) into rows of seq_len tokens: each sample goes
// into the open row with the least room that still holds it, else a new row. Deterministic.
std::vector<Row> pack_rows(const Samples& s, const std::vector<int64_t>& order, int64_t seq_len,
                           Overlong overlong, PackStats* stats);
// One sample per row (padding the rest), same overlong handling.
std::vector<Row> single_rows(const Samples& s, const std::vector<int64_t>& order, int64_t seq_len,
                             Overlong overlong, PackStats* stats);

// Row length a batch of these rows needs: the longest row's tokens rounded up to a multiple of 8,
// at most seq_len (padded layouts pad each batch only that far).
int64_t batch_row_length(const std::vector<Row>& rows, int64_t seq_len);

// A micro-batch from rows: each sample its own document (positions from 0), padding a document
// of pad_id tokens with no targets. Targets are the next token inside the same sample where that
// token is trainable, kIgnoreIndex elsewhere.
Batch make_row_batch(const Samples& s, const std::vector<Row>& rows, int64_t seq_len,
                     int32_t pad_id);

}  // namespace ftune
