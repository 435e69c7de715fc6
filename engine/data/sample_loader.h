// Yields micro-batches of rows built from samples: each epoch shuffles the samples with a
// stream keyed by (seed, epoch), packs them (or pads one per row), and deals the epoch's
// batches round-robin to ranks. The position (epoch, batch index) is all a checkpoint needs.
// Samples may come from several sources mixed by weight: each epoch takes round(w x n) samples
// of a source of n, every sample once per whole unit of w plus a subset for the fraction drawn
// by a stream keyed by (seed, epoch, source), so the mix is a pure function of the position.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/data/packing.h"
#include "engine/data/token_stream.h"

namespace ftune {

// Samples [begin, end) of the samples form one source, mixed in with this weight (> 0).
struct SourceRange {
  int64_t begin = 0, end = 0;
  double weight = 1.0;
};

// Samples a source of n samples with weight w gives each epoch: round(w x n).
int64_t weighted_count(int64_t n, double weight);

struct LoaderOptions {
  int64_t seq_len = 256;
  int64_t rows_per_batch = 1;
  bool packing = true;
  bool shuffle = true;
  Overlong overlong = Overlong::Truncate;
  uint64_t seed = 0;
  int rank = 0;
  int world = 1;
  std::vector<SourceRange> sources;  // empty: every sample once per epoch
  // Padded layout only: put samples of similar length in the same batch (sorted within windows
  // of 64 batches, batch order then shuffled) so dynamic padding wastes little.
  bool bucket = true;
};

class SampleLoader {
 public:
  // Throws ftune::Error when the samples give no batch at all for this rank.
  SampleLoader(const Samples& samples, LoaderOptions opt);
  // Rows of this rank's next micro-batch; moves into the next epoch when this one is used up.
  std::vector<Row> next();
  const DataPosition& position() const { return pos_; }
  void set_position(const DataPosition& p);
  int64_t batches_per_epoch() const;  // for this rank, in the current epoch's layout
  const PackStats& stats() const { return stats_; }
  // The samples of an epoch, in training order, before packing (the mix and the shuffle).
  std::vector<int64_t> epoch_order(int64_t epoch) const;

 private:
  void build_epoch(int64_t epoch);
  void bucket_rows(int64_t epoch);
  const Samples& s_;
  LoaderOptions o_;
  DataPosition pos_;
  int64_t built_epoch_ = -1;
  std::vector<Row> rows_;
  PackStats stats_;
};

}  // namespace ftune
