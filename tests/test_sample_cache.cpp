#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "engine/base/fs_util.h"
#include "engine/data/sample_cache.h"
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

void expect_same(const Samples& a, const Samples& b) {
  ASSERT_EQ(a.size(), b.size());
  for (int64_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a.length(i), b.length(i)) << "sample " << i;
    for (int64_t t = 0; t < a.length(i); ++t) {
      EXPECT_EQ(a.tokens_of(i)[t], b.tokens_of(i)[t]) << "sample " << i << " token " << t;
      EXPECT_EQ(a.trainable_of(i)[t], b.trainable_of(i)[t]) << "sample " << i << " token " << t;
    }
  }
}

std::vector<std::string> dir_entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    out.push_back(e.path().filename().string());
  return out;
}

TEST(SampleCache, RoundTripAndKeyCheck) {
  std::string dir = testing::make_temp_dir("cache");
  std::string path = dir + "/train.samples";
  SampleSet s = small_set();
  write_sample_cache(path, "k1", s, {{"truncated", 2}});
  auto back = open_sample_cache(path, "k1");
  ASSERT_NE(back, nullptr);
  expect_same(*back, s);
  EXPECT_EQ(back->num_tokens(), int64_t(s.tokens.size()));
  EXPECT_EQ(back->meta()["truncated"], 2);
  EXPECT_EQ(open_sample_cache(path, "k2"), nullptr) << "a stale cache must not be used";
  EXPECT_EQ(open_sample_cache(dir + "/absent", "k1"), nullptr);
}

// Samples stream into the file as they come, and training reads them in place from the mapping:
// neither side holds the token data in memory.
TEST(SampleCache, WriterStreamsAndReaderMapsInPlace) {
  std::string dir = testing::make_temp_dir("cache");
  std::string path = dir + "/big.samples";
  SampleSet ref;
  {
    SampleCacheWriter w(path);
    std::mt19937 rng(7);
    for (int i = 0; i < 3000; ++i) {
      std::vector<int32_t> ids(rng() % 300);
      std::vector<uint8_t> m(ids.size());
      for (size_t t = 0; t < ids.size(); ++t) {
        ids[t] = int32_t(rng() % 150000);
        m[t] = uint8_t(rng() % 2);
      }
      w.add(ids, m);
      ref.add(ids, m);
    }
    EXPECT_FALSE(path_exists(path)) << "nothing appears under the final name before finish()";
    w.finish("key", {});
  }
  EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"big.samples"}) << "temp files left";
  auto back = open_sample_cache(path, "key");
  ASSERT_NE(back, nullptr);
  expect_same(*back, ref);
  const uint8_t* lo = back->file().data();
  const uint8_t* hi = lo + back->file().size();
  for (int64_t i : {int64_t(0), int64_t(1500), back->size() - 1}) {
    const auto* p = reinterpret_cast<const uint8_t*>(back->tokens_of(i));
    EXPECT_TRUE(p >= lo && p <= hi) << "sample " << i << " was copied out of the mapping";
    EXPECT_TRUE(back->trainable_of(i) >= lo && back->trainable_of(i) <= hi);
  }
}

TEST(SampleCache, AbandonedWriterLeavesNothing) {
  std::string dir = testing::make_temp_dir("cache");
  {
    SampleCacheWriter w(dir + "/x.samples");
    w.add({1, 2, 3}, {1, 1, 1});
  }
  EXPECT_TRUE(dir_entries(dir).empty());
  testing::expect_error([&] { SampleCacheWriter w(dir + "/no/such/dir/x.samples"); },
                        {"cannot write the data cache", "data.cache_dir"});
}

TEST(SampleCache, SelectionReadsThroughItsParts) {
  auto a = std::make_shared<SampleSet>(small_set());
  auto b = std::make_shared<SampleSet>();
  b->add({42}, {1});
  SampleSelection sel;
  const int pa = sel.part_index(a), pb = sel.part_index(b);
  EXPECT_EQ(sel.part_index(a), pa) << "the same part keeps its index";
  sel.add(pb, 0);
  sel.add(pa, 2);
  sel.add(pa, 2);
  sel.add_all(pa);
  ASSERT_EQ(sel.size(), 6);
  EXPECT_EQ(sel.tokens_of(0)[0], 42);
  EXPECT_EQ(sel.length(1), 4);
  EXPECT_EQ(sel.tokens_of(2)[1], 1000000);
  EXPECT_EQ(sel.trainable_of(2)[2], 0);
  EXPECT_EQ(sel.length(4), 0);
  EXPECT_EQ(sel.num_tokens(), 1 + 4 + 4 + 7);
  testing::expect_error([&] { sel.add(pa, 3); }, {"out of range"});
}

TEST(SampleCache, DamagedFilesAreNotTrusted) {
  std::string dir = testing::make_temp_dir("cache");
  std::string path = dir + "/c";
  write_sample_cache(path, "k", small_set(), {});
  std::string bytes = read_file(path);
  for (size_t cut : {size_t(3), size_t(20), bytes.size() - 1}) {
    std::ofstream(path, std::ios::binary | std::ios::trunc)
        .write(bytes.data(), std::streamsize(cut));
    EXPECT_EQ(open_sample_cache(path, "k"), nullptr) << "truncated at " << cut;
  }
  std::string bad = bytes;
  bad[0] = 'X';
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bad;
  EXPECT_EQ(open_sample_cache(path, "k"), nullptr);
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
