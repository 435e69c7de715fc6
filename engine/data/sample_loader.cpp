#include "engine/data/sample_loader.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "engine/base/error.h"

namespace ftune {

int64_t weighted_count(int64_t n, double weight) {
  return std::llround(weight * double(n));
}

SampleLoader::SampleLoader(const Samples& samples, LoaderOptions opt) : s_(samples), o_(opt) {
  FTUNE_CHECK(o_.world >= 1 && o_.rank >= 0 && o_.rank < o_.world, "bad rank/world");
  for (const SourceRange& r : o_.sources)
    FTUNE_CHECK(r.begin >= 0 && r.begin <= r.end && r.end <= s_.size() && r.weight > 0,
                "bad source range");
  build_epoch(0);
  if (batches_per_epoch() == 0)
    throw Error("the training data gives " + std::to_string(rows_.size()) + " rows of " +
                std::to_string(o_.seq_len) + " tokens, fewer than one micro-batch (" +
                std::to_string(o_.rows_per_batch) + " rows) per rank (" + std::to_string(o_.world) +
                " ranks): add data or lower train.micro_batch_size");
}

std::vector<int64_t> SampleLoader::epoch_order(int64_t epoch) const {
  std::vector<int64_t> order;
  if (o_.sources.empty()) {
    order.resize(size_t(s_.size()));
    std::iota(order.begin(), order.end(), int64_t(0));
  }
  for (size_t src = 0; src < o_.sources.size(); ++src) {
    const SourceRange& r = o_.sources[src];
    const int64_t n = r.end - r.begin;
    const int64_t whole = int64_t(std::floor(r.weight));
    const int64_t extra = std::min(weighted_count(n, r.weight) - whole * n, n);
    for (int64_t c = 0; c < whole; ++c)
      for (int64_t i = r.begin; i < r.end; ++i) order.push_back(i);
    if (extra <= 0) continue;
    // The fraction: a subset that changes every epoch, independent of the other sources.
    std::vector<int64_t> pick(static_cast<size_t>(n));
    std::iota(pick.begin(), pick.end(), r.begin);
    std::mt19937_64 rng(o_.seed * 0xbf58476d1ce4e5b9ull + uint64_t(epoch) * 0x94d049bb133111ebull +
                        src + 1);
    for (int64_t i = 0; i < extra; ++i) {
      std::uniform_int_distribution<int64_t> d(i, n - 1);
      std::swap(pick[size_t(i)], pick[size_t(d(rng))]);
    }
    std::sort(pick.begin(), pick.begin() + extra);
    order.insert(order.end(), pick.begin(), pick.begin() + extra);
  }
  if (o_.shuffle) {
    std::mt19937_64 rng(o_.seed * 0x9e3779b97f4a7c15ull + uint64_t(epoch) + 1);
    std::shuffle(order.begin(), order.end(), rng);
  }
  return order;
}

void SampleLoader::build_epoch(int64_t epoch) {
  const std::vector<int64_t> order = epoch_order(epoch);
  rows_ = o_.packing ? pack_rows(s_, order, o_.seq_len, o_.overlong, &stats_)
                     : single_rows(s_, order, o_.seq_len, o_.overlong, &stats_);
  if (!o_.packing && o_.bucket) bucket_rows(epoch);
  built_epoch_ = epoch;
}

void SampleLoader::bucket_rows(int64_t epoch) {
  const size_t per = size_t(o_.rows_per_batch);
  const size_t window = per * 64;
  for (size_t w = 0; w < rows_.size(); w += window) {
    auto end = rows_.begin() + long(std::min(rows_.size(), w + window));
    std::stable_sort(rows_.begin() + long(w), end,
                     [](const Row& a, const Row& b) { return a[0].length < b[0].length; });
  }
  // Shuffle whole batches so the epoch does not run from short to long samples.
  const size_t batches = rows_.size() / per;
  std::vector<size_t> perm(batches);
  std::iota(perm.begin(), perm.end(), size_t(0));
  if (o_.shuffle) {
    std::mt19937_64 rng(o_.seed * 0xd1b54a32d192ed03ull + uint64_t(epoch) + 7);
    std::shuffle(perm.begin(), perm.end(), rng);
  }
  std::vector<Row> out;
  out.reserve(rows_.size());
  for (size_t b : perm)
    for (size_t r = 0; r < per; ++r) out.push_back(std::move(rows_[b * per + r]));
  for (size_t r = batches * per; r < rows_.size(); ++r) out.push_back(std::move(rows_[r]));
  rows_ = std::move(out);
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
