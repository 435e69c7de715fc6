#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "engine/base/error.h"
#include "engine/data/sample_loader.h"

namespace ftune {
namespace {

SampleSet samples(int n, uint32_t seed) {
  SampleSet s;
  std::mt19937 rng(seed);
  for (int i = 0; i < n; ++i) {
    size_t len = 1 + rng() % 20;
    s.add(std::vector<int32_t>(len, i), std::vector<uint8_t>(len, 1));
  }
  return s;
}

LoaderOptions opts(bool packing) {
  LoaderOptions o;
  o.seq_len = 24;
  o.rows_per_batch = 2;
  o.packing = packing;
  o.seed = 7;
  return o;
}

std::multiset<int64_t> samples_in(const std::vector<Row>& rows) {
  std::multiset<int64_t> out;
  for (const Row& r : rows)
    for (const RowPiece& p : r) out.insert(p.sample);
  return out;
}

TEST(SampleLoader, EpochVisitsEachSampleOnce) {
  SampleSet s = samples(60, 1);
  for (bool packing : {true, false}) {
    SampleLoader l(s, opts(packing));
    std::multiset<int64_t> seen;
    for (int64_t b = 0; b < l.batches_per_epoch(); ++b) {
      auto m = samples_in(l.next());
      seen.insert(m.begin(), m.end());
    }
    for (int64_t id : seen) EXPECT_EQ(seen.count(id), 1u) << "sample " << id;
    EXPECT_GE(int64_t(seen.size()), s.size() - 2 * (packing ? 4 : 1))
        << "only a remainder left out";
    EXPECT_EQ(l.position().epoch, 0);
    l.next();
    EXPECT_EQ(l.position().epoch, 1);
  }
}

TEST(SampleLoader, ResumedPositionContinuesIdentically) {
  SampleSet s = samples(50, 2);
  SampleLoader a(s, opts(true));
  std::vector<std::vector<Row>> seq;
  for (int i = 0; i < 40; ++i) seq.push_back(a.next());  // several epochs
  SampleLoader b(s, opts(true));
  for (int i = 0; i < 17; ++i) b.next();
  DataPosition p = b.position();
  SampleLoader c(s, opts(true));
  c.set_position(p);
  for (int i = 17; i < 40; ++i) {
    auto rows = c.next();
    ASSERT_EQ(rows.size(), seq[size_t(i)].size());
    for (size_t r = 0; r < rows.size(); ++r) {
      ASSERT_EQ(rows[r].size(), seq[size_t(i)][r].size()) << "batch " << i;
      for (size_t k = 0; k < rows[r].size(); ++k)
        EXPECT_EQ(rows[r][k].sample, seq[size_t(i)][r][k].sample) << "batch " << i;
    }
  }
}

TEST(SampleLoader, RanksSeeDisjointCompleteShards) {
  SampleSet s = samples(80, 3);
  LoaderOptions one = opts(true);
  SampleLoader all(s, one);
  std::multiset<int64_t> whole;
  const int world = 3;
  const int64_t per_rank = all.batches_per_epoch() / world;
  for (int64_t b = 0; b < per_rank * world; ++b) {
    auto m = samples_in(all.next());
    whole.insert(m.begin(), m.end());
  }
  std::multiset<int64_t> union_of_ranks;
  for (int r = 0; r < world; ++r) {
    LoaderOptions o = one;
    o.rank = r;
    o.world = world;
    SampleLoader l(s, o);
    EXPECT_EQ(l.batches_per_epoch(), per_rank);
    for (int64_t b = 0; b < per_rank; ++b) {
      auto m = samples_in(l.next());
      for (int64_t id : m) EXPECT_EQ(union_of_ranks.count(id), 0u) << "sample on two ranks";
      union_of_ranks.insert(m.begin(), m.end());
    }
  }
  EXPECT_EQ(union_of_ranks, whole) << "the ranks together see what one rank would";
}

TEST(SampleLoader, BucketingKeepsTheEpochAndCutsPadding) {
  SampleSet s = samples(200, 5);
  auto run = [&](bool bucket, int64_t* padded_len) {
    LoaderOptions o = opts(false);
    o.rows_per_batch = 4;
    o.bucket = bucket;
    SampleLoader l(s, o);
    std::multiset<int64_t> seen;
    *padded_len = 0;
    for (int64_t b = 0; b < l.batches_per_epoch(); ++b) {
      auto rows = l.next();
      *padded_len += batch_row_length(rows, o.seq_len) * int64_t(rows.size());
      auto m = samples_in(rows);
      seen.insert(m.begin(), m.end());
    }
    return seen;
  };
  int64_t plain = 0, bucketed = 0;
  auto a = run(false, &plain), b = run(true, &bucketed);
  EXPECT_EQ(a, b) << "bucketing reorders an epoch, never changes it";
  EXPECT_LT(bucketed, plain * 3 / 4) << "similar lengths share a batch";
}

TEST(SampleLoader, TooLittleDataIsAClearError) {
  SampleSet s = samples(1, 4);
  try {
    SampleLoader l(s, opts(true));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fewer than one micro-batch"), std::string::npos);
  }
}

}  // namespace
}  // namespace ftune
