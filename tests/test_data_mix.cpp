// Several training sources mixed by weight: per-epoch counts in SampleLoader, seeded fractional
// subsets, and end-to-end runs (packed and stream layouts) that cache and resume bit for bit.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/data/sample_loader.h"
#include "engine/recipe/recipe.h"
#include "engine/train/trainer.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

const std::string kSrc = FTUNE_SOURCE_DIR;

// ---------------------------------------------------------------- SampleLoader

// `n` samples of distinct lengths 1..n (tokens equal to the sample's index), all trainable.
SampleSet samples(int64_t n) {
  SampleSet s;
  for (int64_t i = 0; i < n; ++i)
    s.add(std::vector<int32_t>(size_t(i % 7 + 1), int32_t(i)),
          std::vector<uint8_t>(size_t(i % 7 + 1), 1));
  return s;
}

// One sample per row and one row per batch, so an epoch's batches show every sample it took.
LoaderOptions one_per_batch(std::vector<SourceRange> sources, uint64_t seed = 3) {
  LoaderOptions o;
  o.seq_len = 16;
  o.rows_per_batch = 1;
  o.packing = false;
  o.seed = seed;
  o.sources = std::move(sources);
  return o;
}

// How often each sample index was drawn in the loader's current epoch, read through next().
std::map<int64_t, int> draw_epoch(SampleLoader& l) {
  std::map<int64_t, int> seen;
  // One sample per row: every epoch of the mix has the same number of batches.
  const int64_t n = l.batches_per_epoch();
  for (int64_t b = 0; b < n; ++b) {
    std::vector<Row> rows = l.next();
    EXPECT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].size(), 1u);
    seen[rows[0][0].sample]++;
  }
  EXPECT_EQ(l.position().index, n);
  return seen;
}

int64_t count_in(const std::map<int64_t, int>& seen, int64_t begin, int64_t end) {
  int64_t c = 0;
  for (const auto& [i, k] : seen)
    if (i >= begin && i < end) c += k;
  return c;
}

TEST(DataMix, WholeWeightsRepeatEverySampleOfTheirSource) {
  SampleSet s = samples(16);
  SampleLoader l(s, one_per_batch({{0, 10, 2.0}, {10, 16, 1.0}}));
  EXPECT_EQ(l.batches_per_epoch(), 26);
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::map<int64_t, int> seen = draw_epoch(l);
    EXPECT_EQ(count_in(seen, 0, 10), 20);
    EXPECT_EQ(count_in(seen, 10, 16), 6);
    for (int64_t i = 0; i < 16; ++i) EXPECT_EQ(seen[i], i < 10 ? 2 : 1) << "sample " << i;
  }
  // Swapping the weights swaps the shares.
  SampleLoader swapped(s, one_per_batch({{0, 10, 1.0}, {10, 16, 2.0}}));
  std::map<int64_t, int> seen = draw_epoch(swapped);
  EXPECT_EQ(count_in(seen, 0, 10), 10);
  EXPECT_EQ(count_in(seen, 10, 16), 12);
}

TEST(DataMix, UnitWeightsKeepTheUnmixedOrder) {
  SampleSet s = samples(20);
  LoaderOptions plain = one_per_batch({});
  SampleLoader a(s, plain), b(s, one_per_batch({{0, 20, 1.0}}));
  SampleLoader c(s, one_per_batch({{0, 8, 1.0}, {8, 20, 1.0}}));
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    EXPECT_EQ(a.epoch_order(epoch), b.epoch_order(epoch)) << epoch;
    EXPECT_EQ(a.epoch_order(epoch), c.epoch_order(epoch)) << epoch;
  }
}

TEST(DataMix, FractionalWeightIsSeededAndChangesPerEpoch) {
  SampleSet s = samples(30);
  // Source 1 has 20 samples at weight 1.35: 20 whole plus round(0.35 x 20) = 7 more.
  const std::vector<SourceRange> mix = {{0, 10, 1.0}, {10, 30, 1.35}};
  EXPECT_EQ(weighted_count(20, 1.35), 27);
  SampleLoader a(s, one_per_batch(mix)), b(s, one_per_batch(mix));
  std::vector<std::set<int64_t>> extras;
  for (int epoch = 0; epoch < 4; ++epoch) {
    std::map<int64_t, int> seen = draw_epoch(a);
    EXPECT_EQ(draw_epoch(b), seen) << "same seed, same epoch, same mix";
    EXPECT_EQ(count_in(seen, 0, 10), 10);
    EXPECT_EQ(count_in(seen, 10, 30), 27);
    std::set<int64_t> twice;
    for (int64_t i = 10; i < 30; ++i) {
      EXPECT_GE(seen[i], 1);
      EXPECT_LE(seen[i], 2);
      if (seen[i] == 2) twice.insert(i);
    }
    EXPECT_EQ(twice.size(), 7u);
    extras.push_back(twice);
  }
  // The extra subset is drawn anew each epoch.
  EXPECT_TRUE(extras[0] != extras[1] || extras[1] != extras[2] || extras[2] != extras[3]);
  // And depends on the seed.
  SampleLoader other(s, one_per_batch(mix, 4));
  EXPECT_NE(other.epoch_order(0), a.epoch_order(0));
  // A weight below one takes a subset only.
  SampleLoader half(s, one_per_batch({{0, 10, 1.0}, {10, 30, 0.5}}));
  std::map<int64_t, int> seen = draw_epoch(half);
  EXPECT_EQ(count_in(seen, 10, 30), 10);
  for (int64_t i = 10; i < 30; ++i) EXPECT_LE(seen[i], 1);
}

TEST(DataMix, ResumedLoaderContinuesTheSameMix) {
  SampleSet s = samples(30);
  const std::vector<SourceRange> mix = {{0, 10, 2.0}, {10, 30, 0.7}};
  SampleLoader full(s, one_per_batch(mix));
  std::vector<int64_t> expected;
  for (int i = 0; i < 90; ++i) expected.push_back(full.next()[0][0].sample);
  SampleLoader first(s, one_per_batch(mix));
  for (int i = 0; i < 50; ++i) first.next();
  SampleLoader resumed(s, one_per_batch(mix));
  resumed.set_position(first.position());
  for (int i = 50; i < 90; ++i) EXPECT_EQ(resumed.next()[0][0].sample, expected[size_t(i)]) << i;
}

// ---------------------------------------------------------------- training

// Quickstart garden notes as two sources: instruction records and plain text records.
struct MixFiles {
  std::string dir, instr, text;
};

const MixFiles& mix_files() {
  static MixFiles f = [] {
    MixFiles m;
    m.dir = testing::make_temp_dir("mix");
    m.instr = m.dir + "/instr.jsonl";
    m.text = m.dir + "/notes.jsonl";
    std::istringstream in(read_file(kSrc + "/data/quickstart/train.jsonl"));
    std::ofstream instr(m.instr), text(m.text);
    std::string line;
    int n = 0;
    while (std::getline(in, line) && n < 160) {
      auto j = nlohmann::json::parse(line);
      std::string t = j["text"];
      if (n % 2 == 0) {
        auto nl = t.find('\n');
        nlohmann::json rec = {{"ask", "How should I grow " + t.substr(7, nl - 7) + "?"},
                              {"output", t.substr(nl + 1)}};
        instr << rec.dump() << "\n";
      } else {
        text << nlohmann::json{{"body", t}}.dump() << "\n";
      }
      ++n;
    }
    return m;
  }();
  return f;
}

// Instruction data (its own instruction_field) at weight 2, text (its own format and field) at
// a fractional weight; the recipe's top-level data.* settings stay the defaults.
Recipe mix_recipe(const std::string& out, const std::string& cache, const std::string& weight,
                  std::vector<std::string> extra = {}) {
  const MixFiles& f = mix_files();
  std::string yaml = "model:\n  path: " + kSrc +
                     "/configs/models/quickstart-base\n  init: random\n"
                     "data:\n  format: instruction\n  chat_template: alpaca\n  val_fraction: 0.1\n"
                     "  cache_dir: " +
                     cache +
                     "\n"
                     "  train:\n"
                     "    - {path: instr.jsonl, weight: 2, instruction_field: ask}\n"
                     "    - {path: notes.jsonl, weight: " +
                     weight +
                     ", format: text, text_field: body}\n"
                     "train:\n  seq_len: 96\n  micro_batch_size: 4\n  max_steps: 16\n"
                     "optim:\n  lr: 0.003\n"
                     "schedule:\n  warmup_steps: 2\n"
                     "checkpoint:\n  every: 8\n  keep_last: 0\n"
                     "output_dir: " +
                     out + "\nthreads: 2\nseed: 5\n";
  return load_recipe_text(yaml, "mix.yaml", f.dir, extra);
}

TrainOptions quiet() {
  TrainOptions o;
  o.quiet = true;
  return o;
}

TEST(DataMix, MixedSourcesTrainCacheAndResume) {
  std::string cache = testing::make_temp_dir("cache");
  std::string full = testing::make_temp_dir("full"), part = testing::make_temp_dir("part");
  TrainResult a = run_training(mix_recipe(full, cache, "0.5"), quiet());
  // 80 records each, 8 held out of each: 72 x 2 and round(72 x 0.5) per epoch.
  EXPECT_NE(a.data_summary.find("mix per epoch: instr.jsonl 72 samples x2.0 = 144, notes.jsonl "
                                "72 samples x0.5 = 36"),
            std::string::npos)
      << a.data_summary;
  EXPECT_NE(a.data_summary.find("144 train / 16 validation samples"), std::string::npos)
      << a.data_summary;
  EXPECT_EQ(a.data_summary.find("from cache"), std::string::npos) << a.data_summary;
  ASSERT_EQ(a.losses.size(), 16u);
  EXPECT_LT(a.val_after.loss, a.val_before.loss - 1.0);

  // Each source is cached under its own settings; resuming reproduces the losses exactly.
  TrainOptions stop = quiet();
  stop.stop_after_step = 8;
  TrainResult first = run_training(mix_recipe(part, cache, "0.5"), stop);
  EXPECT_NE(first.data_summary.find("from cache"), std::string::npos) << first.data_summary;
  TrainOptions resume = quiet();
  resume.resume = true;
  TrainResult rest = run_training(mix_recipe(part, cache, "0.5"), resume);
  ASSERT_EQ(rest.losses.size(), 8u);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(rest.losses[i], a.losses[8 + i]) << "step " << 9 + i;

  // Another weight changes the mix, not the cached samples.
  TrainResult w = run_training(
      mix_recipe(testing::make_temp_dir("w"), cache, "1.5", {"train.max_steps=3"}), quiet());
  EXPECT_NE(w.data_summary.find("notes.jsonl 72 samples x1.5 = 108"), std::string::npos)
      << w.data_summary;
  EXPECT_NE(w.data_summary.find("from cache"), std::string::npos) << w.data_summary;
}

TEST(DataMix, StreamLayoutRepeatsWholeWeightsAndRejectsFractions) {
  const MixFiles& f = mix_files();
  auto stream_recipe = [&](const std::string& weight) {
    std::string yaml = "model:\n  path: " + kSrc +
                       "/configs/models/quickstart-base\n  init: random\n"
                       "data:\n  text_field: body\n  cache: false\n  train:\n"
                       "    - {path: notes.jsonl, weight: " +
                       weight +
                       "}\n"
                       "    - {path: notes.jsonl}\n"
                       "train:\n  seq_len: 64\n  micro_batch_size: 2\n  max_steps: 2\n"
                       "output_dir: " +
                       testing::make_temp_dir("s") + "\nthreads: 2\nseed: 5\n";
    return load_recipe_text(yaml, "stream.yaml", f.dir);
  };
  TrainResult r = run_training(stream_recipe("2"), quiet());
  EXPECT_NE(r.data_summary.find("stream layout"), std::string::npos) << r.data_summary;
  EXPECT_NE(r.data_summary.find("mix: notes.jsonl 76 documents x2, notes.jsonl 76 documents x1"),
            std::string::npos)
      << r.data_summary;
  try {
    run_training(stream_recipe("1.5"), quiet());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("data.train[0].weight: 1.5 is fractional"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("data.packing: pack or pad"), std::string::npos)
        << e.what();
  }
}

TEST(DataMix, MissingLaterSourceIsAClearError) {
  const MixFiles& f = mix_files();
  std::string yaml = "model:\n  path: " + kSrc +
                     "/configs/models/quickstart-base\n  init: random\n"
                     "data:\n  train: [{path: notes.jsonl, text_field: body}, {path: gone.jsonl}]\n"
                     "output_dir: " +
                     testing::make_temp_dir("g") + "\nthreads: 2\n";
  try {
    run_training(load_recipe_text(yaml, "gone.yaml", f.dir), quiet());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "data.train[1]: file '" + f.dir + "/gone.jsonl' does not exist");
  }
}

}  // namespace
}  // namespace ftune
