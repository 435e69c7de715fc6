// Sample packing: rows hold whole samples, targets never cross a sample, and a packed batch
// gives each sample exactly the logits and loss it gets when run alone.
#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <set>

#include "engine/data/packing.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

SampleSet random_samples(const std::vector<int64_t>& lengths, int32_t vocab, uint64_t seed) {
  SampleSet s;
  std::mt19937 rng(static_cast<uint32_t>(seed));
  for (int64_t len : lengths) {
    std::vector<int32_t> ids(static_cast<size_t>(len));
    std::vector<uint8_t> train(static_cast<size_t>(len));
    for (auto& x : ids) x = int32_t(rng() % uint32_t(vocab));
    for (size_t i = 0; i < train.size(); ++i) train[i] = i >= train.size() / 3;  // a "prompt" third
    s.add(ids, train);
  }
  return s;
}

std::vector<int64_t> iota_order(int64_t n) {
  std::vector<int64_t> o(static_cast<size_t>(n));
  std::iota(o.begin(), o.end(), int64_t(0));
  return o;
}

TEST(Packing, RowsHoldWholeSamplesAndRespectTheLength) {
  SampleSet s = random_samples({5, 9, 3, 12, 1, 7, 7, 2, 30, 4}, 50, 1);
  PackStats st;
  auto rows = pack_rows(s, iota_order(s.size()), 12, Overlong::Truncate, &st);
  std::set<int64_t> seen;
  int64_t tokens = 0;
  for (const Row& r : rows) {
    int64_t used = 0;
    for (const RowPiece& p : r) {
      EXPECT_TRUE(seen.insert(p.sample).second) << "sample placed twice";
      EXPECT_EQ(p.length, std::min<int64_t>(s.length(p.sample), 12));
      used += p.length;
    }
    EXPECT_LE(used, 12);
    tokens += used;
  }
  EXPECT_EQ(int64_t(seen.size()), s.size());
  EXPECT_EQ(st.truncated, 1);  // the 30-token sample
  EXPECT_EQ(st.rows, int64_t(rows.size()));
  EXPECT_EQ(st.pad_tokens, st.rows * 12 - tokens);
  // 80 tokens into rows of 12: best-fit needs no more than 8 rows here.
  EXPECT_LE(rows.size(), 8u);

  PackStats dropped;
  auto rows2 = pack_rows(s, iota_order(s.size()), 12, Overlong::Drop, &dropped);
  EXPECT_EQ(dropped.dropped, 1);
  EXPECT_EQ(dropped.samples, s.size() - 1);
  EXPECT_EQ(pack_rows(s, iota_order(s.size()), 12, Overlong::Drop, nullptr).size(), rows2.size());
}

TEST(Packing, BatchTargetsStayInsideSamplesAndSkipPrompts) {
  SampleSet s = random_samples({4, 6, 3}, 50, 2);
  std::vector<Row> rows = {{{0, 4}, {2, 3}}, {{1, 6}}};
  Batch b = make_row_batch(s, rows, 8, 49);
  ASSERT_EQ(b.tokens(), 16);
  EXPECT_EQ(b.doc_offsets, (std::vector<int32_t>{0, 4, 7, 8, 14, 16}));
  EXPECT_EQ(b.positions, (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 0, 0, 1, 2, 3, 4, 5, 0, 1}));
  auto tok = [&](int64_t sample, int64_t t) {
    return s.tokens[size_t(s.offsets[size_t(sample)] + t)];
  };
  // Sample 0 (4 tokens, first token is prompt): targets t=0..2 predict tokens 1..3.
  EXPECT_EQ(b.targets[0], tok(0, 1));
  EXPECT_EQ(b.targets[2], tok(0, 3));
  EXPECT_EQ(b.targets[3], kIgnoreIndex) << "no target across the sample boundary";
  // Sample 2 (3 tokens, token 0 is prompt): both later tokens trained.
  EXPECT_EQ(b.targets[4], tok(2, 1));
  EXPECT_EQ(b.targets[6], kIgnoreIndex);
  EXPECT_EQ(b.ids[7], 49);
  EXPECT_EQ(b.targets[7], kIgnoreIndex) << "padding is never a target";
  // Sample 1 (6 tokens, tokens 0-1 prompt): position 0 would predict prompt token 1 -> ignored.
  EXPECT_EQ(b.targets[8], kIgnoreIndex);
  EXPECT_EQ(b.targets[9], tok(1, 2));
  EXPECT_EQ(b.target_count(), 3 + 2 + 4);
}

TEST(Packing, PackedBatchEqualsSamplesRunAlone) {
  nlohmann::json j = {{"model_type", "qwen2"},    {"vocab_size", 41},
                      {"hidden_size", 32},        {"intermediate_size", 48},
                      {"num_hidden_layers", 2},   {"num_attention_heads", 4},
                      {"num_key_value_heads", 2}, {"tie_word_embeddings", true},
                      {"initializer_range", 0.3}};
  ModelConfig cfg = parse_model_config(j, "packing test");
  auto be = make_cpu_backend();
  const int64_t seq = 16;
  Model model(be.get(), cfg, 4 * seq, false);
  model.init_random(9);
  SampleSet s = random_samples({7, 3, 16, 5, 9, 2, 11}, 41, 3);
  auto rows = pack_rows(s, iota_order(s.size()), seq, Overlong::Truncate, nullptr);
  ASSERT_LE(rows.size(), 4u);
  Batch packed = make_row_batch(s, rows, seq, 0);
  ExecContext ctx;
  ctx.threads = 2;
  std::vector<float> logits = model.logits(ctx, packed);
  const double packed_loss = model.forward_loss(ctx, packed).loss;

  double alone_loss = 0;
  const size_t V = 41;
  for (size_t r = 0; r < rows.size(); ++r) {
    int64_t at = int64_t(r) * seq;
    for (const RowPiece& p : rows[r]) {
      Batch one = make_row_batch(s, {{p}}, p.length, 0);
      std::vector<float> ref = model.logits(ctx, one);
      EXPECT_LT(testing::rel_error(logits.data() + size_t(at) * V, ref.data(), ref.size()), 1e-5)
          << "sample " << p.sample;
      alone_loss += model.forward_loss(ctx, one).loss;
      at += p.length;
    }
  }
  EXPECT_NEAR(packed_loss, alone_loss, 1e-5 * alone_loss);
}

TEST(Packing, DynamicPaddingChangesNothingButLength) {
  nlohmann::json j = {{"model_type", "llama"},    {"vocab_size", 41},
                      {"hidden_size", 32},        {"intermediate_size", 48},
                      {"num_hidden_layers", 2},   {"num_attention_heads", 4},
                      {"num_key_value_heads", 2}, {"initializer_range", 0.3}};
  auto be = make_cpu_backend();
  Model model(be.get(), parse_model_config(j, "dyn"), 3 * 32, false);
  model.init_random(4);
  SampleSet s = random_samples({5, 11, 3}, 41, 8);
  auto rows = single_rows(s, iota_order(s.size()), 32, Overlong::Truncate, nullptr);
  ASSERT_EQ(batch_row_length(rows, 32), 16);  // longest 11, rounded up to 8s
  Batch full = make_row_batch(s, rows, 32, 0), tight = make_row_batch(s, rows, 16, 0);
  ExecContext ctx;
  std::vector<float> a = model.logits(ctx, full), b = model.logits(ctx, tight);
  const size_t V = 41;
  for (size_t r = 0; r < rows.size(); ++r)
    EXPECT_LT(testing::rel_error(b.data() + r * 16 * V, a.data() + r * 32 * V,
                                 size_t(rows[r][0].length) * V),
              1e-6)
        << "row " << r;
  LossSum la = model.forward_loss(ctx, full), lb = model.forward_loss(ctx, tight);
  EXPECT_EQ(la.tokens, lb.tokens);
  EXPECT_NEAR(la.loss, lb.loss, 1e-6 * la.loss);
}

}  // namespace
}  // namespace ftune
