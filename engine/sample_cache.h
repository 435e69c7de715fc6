// The tokenized dataset on disk: a SampleSet in a flat, memory-mappable binary, keyed by a hash
// of everything that shaped it (data files' contents, tokenizer, template, settings), so a run
// reuses it when nothing changed and rebuilds it when anything did.
// Layout: "FTSAMPL1", u64 LE header length, JSON header {key, samples, tokens, meta}, zero
// padding to a multiple of 64 bytes, then int64 offsets[samples+1], int32 tokens[tokens],
// uint8 trainable[tokens]. Written atomically.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/packing.h"

namespace ftune {

// Hash of the inputs: `settings` (any JSON the caller builds from the recipe) plus the SHA-256
// of every file in `files` (data files, tokenizer.json, ...).
std::string sample_cache_key(const nlohmann::json& settings, const std::vector<std::string>& files);

void write_sample_cache(const std::string& path, const std::string& key, const SampleSet& s,
                        const nlohmann::json& meta);
// The cached set when `path` exists and was written for `key`; nullopt when absent, stale or
// damaged (a damaged cache is never trusted: the caller rebuilds it). *meta receives the header's
// meta.
std::optional<SampleSet> read_sample_cache(const std::string& path, const std::string& key,
                                           nlohmann::json* meta = nullptr);

}  // namespace ftune
