// The tokenized dataset on disk: samples in a flat, memory-mappable binary, keyed by a hash of
// everything that shaped them (data files' contents, tokenizer, template, settings), so a run
// reuses it when nothing changed and rebuilds it when anything did. Training reads the samples
// straight from the mapping, and building spills tokens to disk as it goes, so neither keeps a
// multi-GB dataset in memory (only 8 bytes of offsets per sample).
// Layout: "FTSAMPL1", u64 LE header length, JSON header {key, samples, tokens, meta}, zero
// padding to a multiple of 64 bytes, then int64 offsets[samples+1], int32 tokens[tokens],
// uint8 trainable[tokens]. Written atomically.
#pragma once
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/base/byte_source.h"
#include "engine/data/samples.h"

namespace ftune {

// Hash of the inputs: `settings` (any JSON the caller builds from the recipe) plus the SHA-256
// of every file in `files` (data files, tokenizer.json, ...).
std::string sample_cache_key(const nlohmann::json& settings, const std::vector<std::string>& files);

// Samples read in place from a cache file's mapping.
class MappedSamples final : public Samples {
 public:
  int64_t size() const override { return n_; }
  int64_t length(int64_t i) const override { return offsets_[i + 1] - offsets_[i]; }
  const int32_t* tokens_of(int64_t i) const override { return tokens_ + offsets_[i]; }
  const uint8_t* trainable_of(int64_t i) const override { return trainable_ + offsets_[i]; }
  int64_t num_tokens() const { return offsets_[n_]; }
  const nlohmann::json& meta() const { return meta_; }
  const ByteSource& file() const { return *src_; }

 private:
  friend std::shared_ptr<const MappedSamples> open_sample_cache(const std::string&,
                                                                const std::string&);
  std::unique_ptr<ByteSource> src_;
  int64_t n_ = 0;
  const int64_t* offsets_ = nullptr;
  const int32_t* tokens_ = nullptr;
  const uint8_t* trainable_ = nullptr;
  nlohmann::json meta_;
};

// The cached samples when `path` exists and was written for `key`; nullptr when absent, stale or
// damaged (a damaged cache is never trusted: the caller rebuilds it).
std::shared_ptr<const MappedSamples> open_sample_cache(const std::string& path,
                                                       const std::string& key);

// Writes a cache file as samples arrive: tokens and flags go to temp files beside `path`, only
// offsets stay in memory, and finish() assembles the file atomically. A writer destroyed
// without finish() (a bad line stopped the build, say) leaves nothing behind.
class SampleCacheWriter final : public SampleSink {
 public:
  explicit SampleCacheWriter(std::string path);
  ~SampleCacheWriter() override;
  SampleCacheWriter(const SampleCacheWriter&) = delete;
  SampleCacheWriter& operator=(const SampleCacheWriter&) = delete;

  void add(const std::vector<int32_t>& ids, const std::vector<uint8_t>& train) override;
  void finish(const std::string& key, const nlohmann::json& meta);

 private:
  void put(std::FILE* f, const std::string& name, const void* p, size_t n);
  void discard();
  std::string path_, tokens_tmp_, mask_tmp_;
  std::FILE* tokens_ = nullptr;
  std::FILE* mask_ = nullptr;
  std::vector<int64_t> offsets_{0};
};

// A whole in-memory set at once (tests, small sets).
void write_sample_cache(const std::string& path, const std::string& key, const Samples& s,
                        const nlohmann::json& meta);

}  // namespace ftune
