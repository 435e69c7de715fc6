#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <set>

#include "engine/base/error.h"
#include "engine/data/token_stream.h"
#include "engine/text/tokenizer.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

std::string write_tmp(const std::string& name, const std::string& text) {
  std::string dir = testing::make_temp_dir("data");
  std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

std::string error_of(const std::string& path, const std::string& field = "text") {
  try {
    read_jsonl_texts(path, field);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Jsonl, ReadsTextsAndSkipsBlankLines) {
  auto p = write_tmp("a.jsonl", "{\"text\": \"one\"}\n\n{\"text\": \"two\", \"x\": 1}\n");
  auto t = read_jsonl_texts(p, "text");
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[1], "two");
}

TEST(Jsonl, ErrorsNameFileAndLine) {
  auto p = write_tmp("bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": oops}\n");
  EXPECT_NE(error_of(p).find("bad.jsonl:2: not valid JSON"), std::string::npos) << error_of(p);
  p = write_tmp("nofield.jsonl", "{\"body\": \"x\"}\n");
  EXPECT_NE(error_of(p).find("nofield.jsonl:1: no \"text\" field"), std::string::npos);
  EXPECT_NE(error_of(p).find("data.text_field"), std::string::npos);
  p = write_tmp("num.jsonl", "{\"text\": 3}\n");
  EXPECT_NE(error_of(p).find("must be a string"), std::string::npos);
  EXPECT_NE(error_of("/nonexistent/x.jsonl").find("cannot open data file"), std::string::npos);
  p = write_tmp("empty.jsonl", "\n\n");
  EXPECT_NE(error_of(p).find("holds no documents"), std::string::npos);
}

TEST(Split, DeterministicDisjointAndComplete) {
  std::vector<std::string> docs;
  for (int i = 0; i < 50; ++i) docs.push_back("doc" + std::to_string(i));
  std::vector<std::string> tr, va, tr2, va2;
  split_documents(docs, 0.1, 9, &tr, &va);
  split_documents(docs, 0.1, 9, &tr2, &va2);
  EXPECT_EQ(tr, tr2);
  EXPECT_EQ(va, va2);
  EXPECT_EQ(va.size(), 5u);
  std::set<std::string> all(tr.begin(), tr.end());
  for (auto& v : va) EXPECT_TRUE(all.insert(v).second) << "document in both splits";
  EXPECT_EQ(all.size(), 50u);
}

TEST(Blocks, TargetsAreInputsShiftedByOne) {
  Tokenizer tok =
      Tokenizer::load(std::string(FTUNE_SOURCE_DIR) + "/configs/models/quickstart-base");
  std::vector<std::string> docs = {"Plant: Basil\nLight: full sun.", "The cat sat on the mat.",
                                   "A third document, a little longer than the others."};
  BlockDataset ds(docs, tok, 8);
  ASSERT_GE(ds.num_blocks(), 2);
  Batch b = ds.make_batch({1, 0});
  ASSERT_EQ(b.tokens(), 16);
  for (int r = 0; r < 2; ++r)
    for (int t = 0; t + 1 < 8; ++t)
      EXPECT_EQ(b.targets[size_t(r * 8 + t)], b.ids[size_t(r * 8 + t + 1)]);
  Batch b0 = ds.make_batch({0});
  EXPECT_EQ(b0.targets[7], b.ids[0]);  // block 0's last target is block 1's first input; the
                                       // block's last target is the next block's first input
  // EOS closes each document.
  auto first = tok.encode(docs[0]);
  Batch all = ds.make_batch({0, 1});
  EXPECT_EQ(all.ids[first.size()], tok.eos_id());
}

// Blocks read across document boundaries (and past empty documents) straight from the stored
// samples; they must equal the same cut of the plain concatenation.
TEST(Blocks, StreamOverStoredDocumentsMatchesConcatenation) {
  auto docs = std::make_shared<SampleSet>();
  std::vector<int32_t> flat;
  std::mt19937 rng(3);
  for (int d = 0; d < 40; ++d) {
    std::vector<int32_t> ids(d % 7 == 3 ? 0 : rng() % 23);
    for (auto& t : ids) t = int32_t(rng() % 1000);
    docs->add(ids, std::vector<uint8_t>(ids.size(), 1));
    flat.insert(flat.end(), ids.begin(), ids.end());
  }
  const int64_t seq = 9;
  BlockDataset ds(docs, seq);
  ASSERT_EQ(ds.num_tokens(), int64_t(flat.size()));
  ASSERT_EQ(ds.num_blocks(), int64_t(flat.size() - 1) / seq);
  std::vector<int64_t> all(size_t(ds.num_blocks()));
  for (size_t i = 0; i < all.size(); ++i) all[i] = int64_t(all.size() - 1 - i);  // reversed
  Batch b = ds.make_batch(all);
  for (size_t r = 0; r < all.size(); ++r)
    for (int64_t t = 0; t < seq; ++t) {
      const size_t at = size_t(all[r] * seq + t);
      ASSERT_EQ(b.ids[r * size_t(seq) + size_t(t)], flat[at]) << "block " << all[r];
      ASSERT_EQ(b.targets[r * size_t(seq) + size_t(t)], flat[at + 1]) << "block " << all[r];
    }
  testing::expect_error([&] { ds.make_batch({ds.num_blocks()}); }, {"out of range"});
}

TEST(Sampler, PositionRestoresTheSameOrder) {
  BlockSampler a(23, 4, true, 5);
  std::vector<std::vector<int64_t>> seen;
  for (int i = 0; i < 12; ++i) seen.push_back(a.next());  // crosses two epoch boundaries
  BlockSampler b(23, 4, true, 5);
  for (int i = 0; i < 7; ++i) b.next();
  DataPosition p = b.position();
  BlockSampler c(23, 4, true, 5);
  c.set_position(p);
  for (int i = 7; i < 12; ++i) EXPECT_EQ(c.next(), seen[size_t(i)]) << "batch " << i;
  // Each epoch visits distinct blocks.
  std::set<int64_t> epoch0;
  for (int i = 0; i < 5; ++i)
    for (int64_t id : seen[size_t(i)]) EXPECT_TRUE(epoch0.insert(id).second);
  EXPECT_NE(seen[0], seen[5]) << "epochs should be reshuffled";
}

TEST(Sampler, TooLittleDataIsAClearError) {
  try {
    BlockSampler s(3, 4, true, 1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fewer than one micro-batch"), std::string::npos);
  }
}

}  // namespace
}  // namespace ftune
