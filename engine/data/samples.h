// Tokenized samples, each a token list with a per-token "train on this" flag, wherever they live:
// in memory (while building, in tests), mapped from the on-disk cache (real runs, so a multi-GB
// dataset never sits in RAM), or a selection of samples from other sets (train/validation splits
// and mixes of several sources, which hold only indices).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace ftune {

// Read access to a set of samples. trainable(i)[t] says whether predicting token t of sample i
// counts in the loss (prompt tokens of an instruction sample are not trained on, for example).
class Samples {
 public:
  virtual ~Samples() = default;
  virtual int64_t size() const = 0;
  virtual int64_t length(int64_t i) const = 0;
  virtual const int32_t* tokens_of(int64_t i) const = 0;
  virtual const uint8_t* trainable_of(int64_t i) const = 0;
};

// Where a builder puts samples as it makes them.
class SampleSink {
 public:
  virtual ~SampleSink() = default;
  virtual void add(const std::vector<int32_t>& ids, const std::vector<uint8_t>& train) = 0;
};

// Samples stored back to back in memory: sample i is [offsets[i], offsets[i+1]).
struct SampleSet final : Samples, SampleSink {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> trainable;
  std::vector<int64_t> offsets{0};

  int64_t size() const override { return int64_t(offsets.size()) - 1; }
  int64_t length(int64_t i) const override { return offsets[size_t(i) + 1] - offsets[size_t(i)]; }
  const int32_t* tokens_of(int64_t i) const override { return tokens.data() + offsets[size_t(i)]; }
  const uint8_t* trainable_of(int64_t i) const override {
    return trainable.data() + offsets[size_t(i)];
  }
  void add(const std::vector<int32_t>& ids, const std::vector<uint8_t>& train) override;
};

// Chosen samples of other sets, in the order added (a sample may appear more than once). Holds
// the parts alive and 8 bytes per entry, never token data.
class SampleSelection final : public Samples {
 public:
  // Index of `part` for add(); the same part given twice gets the same index.
  int part_index(std::shared_ptr<const Samples> part);
  void add(int part, int64_t sample);
  void add_all(int part);  // every sample of the part, in order

  int64_t size() const override { return int64_t(refs_.size()); }
  int64_t length(int64_t i) const override;
  const int32_t* tokens_of(int64_t i) const override;
  const uint8_t* trainable_of(int64_t i) const override;
  int64_t num_tokens() const;

 private:
  // An entry packs (part, sample): up to 256 parts (sources), 2^56 samples each.
  static constexpr int kShift = 56;
  const Samples& part(int64_t i) const { return *parts_[size_t(refs_[size_t(i)] >> kShift)]; }
  int64_t sample(int64_t i) const {
    return int64_t(refs_[size_t(i)] & ((uint64_t(1) << kShift) - 1));
  }
  std::vector<std::shared_ptr<const Samples>> parts_;
  std::vector<uint64_t> refs_;
};

}  // namespace ftune
