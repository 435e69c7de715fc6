#include "engine/sample_loader.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "engine/error.h"

namespace ftune {

SampleLoader::SampleLoader(const SampleSet& samples, LoaderOptions opt) : s_(samples), o_(opt) {
  FTUNE_CHECK(o_.world >= 1 && o_.rank >= 0 && o_.rank < o_.world, "bad rank/world");
  build_epoch(0);
  if (batches_per_epoch() == 0)
    throw Error("the training data gives " + std::to_string(rows_.size()) + " rows of " +
                std::to_string(o_.seq_len) + " tokens, fewer than one micro-batch (" +
                std::to_string(o_.rows_per_batch) + " rows) per rank (" +
                std::to_string(o_.world) + " ranks): add data or lower train.micro_batch_size");
}

void SampleLoader::build_epoch(int64_t epoch) {
  std::vector<int64_t> order(size_t(s_.size()));
  std::iota(order.begin(), order.end(), int64_t(0));
  if (o_.shuffle) {
    std::mt19937_64 rng(o_.seed * 0x9e3779b97f4a7c15ull + uint64_t(epoch) + 1);
    std::shuffle(order.begin(), order.end(), rng);
  }
  rows_ = o_.packing ? pack_rows(s_, order, o_.seq_len, o_.overlong, &stats_)
                     : single_rows(s_, order, o_.seq_len, o_.overlong, &stats_);
  built_epoch_ = epoch;
}

int64_t SampleLoader::batches_per_epoch() const {
  // Every rank gets the same number of batches; the remainder of the epoch is left out.
  const int64_t total = int64_t(rows_.size()) / o_.rows_per_batch;
  return total / o_.world;
}

std::vector<Row> SampleLoader::next() {
  if (built_epoch_ != pos_.epoch) build_epoch(pos_.epoch);
  if (pos_.index >= batches_per_epoch()) {
    pos_.epoch++;
    pos_.index = 0;
    build_epoch(pos_.epoch);
    if (batches_per_epoch() == 0)
      throw Error("epoch " + std::to_string(pos_.epoch) + " of the training data packs into " +
                  "fewer rows than one micro-batch per rank");
  }
  const int64_t batch = pos_.index * o_.world + o_.rank;  // round-robin over ranks
  auto first = rows_.begin() + batch * o_.rows_per_batch;
  std::vector<Row> out(first, first + o_.rows_per_batch);
  pos_.index++;
  return out;
}

void SampleLoader::set_position(const DataPosition& p) {
  pos_ = p;
  build_epoch(pos_.epoch);
}

}  // namespace ftune
