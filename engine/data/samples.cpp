#include "engine/data/samples.h"

#include "engine/base/error.h"

namespace ftune {

void SampleSet::add(const std::vector<int32_t>& ids, const std::vector<uint8_t>& train) {
  FTUNE_CHECK(ids.size() == train.size(), "sample tokens and mask differ in length");
  tokens.insert(tokens.end(), ids.begin(), ids.end());
  trainable.insert(trainable.end(), train.begin(), train.end());
  offsets.push_back(int64_t(tokens.size()));
}

int SampleSelection::part_index(std::shared_ptr<const Samples> p) {
  for (size_t i = 0; i < parts_.size(); ++i)
    if (parts_[i] == p) return int(i);
  FTUNE_CHECK(parts_.size() < (size_t(1) << (64 - kShift)),
              "too many sample sets in one selection");
  parts_.push_back(std::move(p));
  return int(parts_.size()) - 1;
}

void SampleSelection::add(int p, int64_t s) {
  FTUNE_CHECK(p >= 0 && size_t(p) < parts_.size() && s >= 0 && s < parts_[size_t(p)]->size(),
              "sample reference out of range");
  refs_.push_back(uint64_t(p) << kShift | uint64_t(s));
}

void SampleSelection::add_all(int p) {
  const int64_t n = parts_.at(size_t(p))->size();
  refs_.reserve(refs_.size() + size_t(n));
  for (int64_t s = 0; s < n; ++s) refs_.push_back(uint64_t(p) << kShift | uint64_t(s));
}

int64_t SampleSelection::length(int64_t i) const {
  return part(i).length(sample(i));
}
const int32_t* SampleSelection::tokens_of(int64_t i) const {
  return part(i).tokens_of(sample(i));
}
const uint8_t* SampleSelection::trainable_of(int64_t i) const {
  return part(i).trainable_of(sample(i));
}
int64_t SampleSelection::num_tokens() const {
  int64_t n = 0;
  for (int64_t i = 0; i < size(); ++i) n += length(i);
  return n;
}

}  // namespace ftune
