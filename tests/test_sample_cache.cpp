#include <gtest/gtest.h>

#include <fstream>

#include "engine/fs_util.h"
#include "engine/sample_cache.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

SampleSet small_set() {
  SampleSet s;
  s.add({5, 6, 7}, {0, 1, 1});
  s.add({}, {});
  s.add({9, 1000000, 2, 3}, {1, 1, 0, 1});
  return s;
}

TEST(SampleCache, RoundTripAndKeyCheck) {
  std::string dir = testing::make_temp_dir("cache");
  std::string path = dir + "/train.samples";
  SampleSet s = small_set();
  write_sample_cache(path, "k1", s, {{"truncated", 2}});
  nlohmann::json meta;
  auto back = read_sample_cache(path, "k1", &meta);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->tokens, s.tokens);
  EXPECT_EQ(back->trainable, s.trainable);
  EXPECT_EQ(back->offsets, s.offsets);
  EXPECT_EQ(meta["truncated"], 2);
  EXPECT_FALSE(read_sample_cache(path, "k2").has_value()) << "a stale cache must not be used";
  EXPECT_FALSE(read_sample_cache(dir + "/absent", "k1").has_value());
}

TEST(SampleCache, DamagedFilesAreNotTrusted) {
  std::string dir = testing::make_temp_dir("cache");
  std::string path = dir + "/c";
  write_sample_cache(path, "k", small_set(), {});
  std::string bytes = read_file(path);
  for (size_t cut : {size_t(3), size_t(20), bytes.size() - 1}) {
    std::ofstream(path, std::ios::binary | std::ios::trunc)
        .write(bytes.data(), std::streamsize(cut));
    EXPECT_FALSE(read_sample_cache(path, "k").has_value()) << "truncated at " << cut;
  }
  std::string bad = bytes;
  bad[0] = 'X';
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bad;
  EXPECT_FALSE(read_sample_cache(path, "k").has_value());
}

TEST(SampleCache, KeyFollowsFileContentsAndSettings) {
  std::string dir = testing::make_temp_dir("cache");
  std::string f = dir + "/data.jsonl";
  std::ofstream(f) << "{\"text\": \"a\"}\n";
  nlohmann::json settings = {{"seq_len", 128}, {"template", "chatml"}};
  std::string k1 = sample_cache_key(settings, {f});
  EXPECT_EQ(sample_cache_key(settings, {f}), k1);
  settings["seq_len"] = 256;
  EXPECT_NE(sample_cache_key(settings, {f}), k1);
  settings["seq_len"] = 128;
  std::ofstream(f, std::ios::app) << "{\"text\": \"b\"}\n";
  EXPECT_NE(sample_cache_key(settings, {f}), k1) << "edited data must invalidate the cache";
}

}  // namespace
}  // namespace ftune
