#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/dist/communicator.h"
#include "engine/train/checkpoint.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace ftune {
namespace {

ModelConfig small() {
  return parse_model_config({{"model_type", "qwen2"},
                             {"vocab_size", 31},
                             {"hidden_size", 16},
                             {"intermediate_size", 24},
                             {"num_hidden_layers", 2},
                             {"num_attention_heads", 4},
                             {"num_key_value_heads", 2},
                             {"tie_word_embeddings", true}},
                            "small");
}

TEST(Checkpoint, RoundTripRestoresEverything) {
  auto be = make_cpu_backend();
  Model a(be.get(), small(), 8, true);
  a.init_random(3);
  std::vector<float> m = testing::random_vec(a.num_params(), 1),
                     v = testing::random_vec(a.num_params(), 2, 0, 1);
  TrainState s;
  s.step = 7;
  s.total_steps = 20;
  s.data = {2, 12};
  s.tokens_seen = 999;
  s.seed = 5;
  s.recipe_sha256 = "abc";
  s.last_loss = 1.25;
  std::string run = testing::make_temp_dir("ckpt");
  std::string dir = save_checkpoint(run, a, m.data(), v.data(), s, 0);
  EXPECT_EQ(latest_checkpoint(run).value(), dir);
  EXPECT_TRUE(path_exists(dir + "/config.json"));

  Model b(be.get(), small(), 8, true);
  std::vector<float> m2(a.num_params()), v2(a.num_params());
  TrainState r = load_checkpoint(dir, b, m2.data(), v2.data());
  EXPECT_EQ(b.params_to_host(), a.params_to_host());
  EXPECT_EQ(m2, m);
  EXPECT_EQ(v2, v);
  EXPECT_EQ(r.step, 7);
  EXPECT_EQ(r.data.epoch, 2);
  EXPECT_EQ(r.data.index, 12);
  EXPECT_EQ(r.tokens_seen, 999);
  EXPECT_EQ(r.recipe_sha256, "abc");
  EXPECT_DOUBLE_EQ(r.last_loss, 1.25);
}

TEST(Checkpoint, KeepsNewestAndNoTempDirs) {
  auto be = make_cpu_backend();
  Model a(be.get(), small(), 8, true);
  std::vector<float> m(a.num_params()), v(a.num_params());
  std::string run = testing::make_temp_dir("ckpt");
  TrainState s;
  for (int step = 1; step <= 4; ++step) {
    s.step = step;
    save_checkpoint(run, a, m.data(), v.data(), s, 2);
  }
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(run + "/checkpoints")) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step-00000003", "step-00000004"}));
  EXPECT_EQ(read_file(run + "/checkpoints/latest"), "step-00000004\n");
}

TEST(Checkpoint, DamagedPointerIsAClearError) {
  std::string run = testing::make_temp_dir("ckpt");
  fs::create_directories(run + "/checkpoints");
  std::ofstream(run + "/checkpoints/latest") << "step-00000009\n";
  try {
    latest_checkpoint(run);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("incomplete or missing"), std::string::npos);
  }
  EXPECT_FALSE(latest_checkpoint(testing::make_temp_dir("empty")).has_value());
}

TEST(Checkpoint, ShapeMismatchNamesTheTensor) {
  auto be = make_cpu_backend();
  Model a(be.get(), small(), 8, true);
  std::vector<float> m(a.num_params()), v(a.num_params());
  std::string run = testing::make_temp_dir("ckpt");
  TrainState s;
  s.step = 1;
  std::string dir = save_checkpoint(run, a, m.data(), v.data(), s, 0);
  ModelConfig other = small();
  other.hidden_size = 20;
  other.head_dim = 5;
  Model b(be.get(), other, 8, true);
  std::vector<float> m2(b.num_params()), v2(b.num_params());
  try {
    load_checkpoint(dir, b, m2.data(), v2.data());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.embed_tokens.weight"), std::string::npos)
        << e.what();
  }
}

// Three ranks write uneven slices (ZeRO-3: weights too); the published checkpoint reads back
// whole, and in the slices of two ranks, exactly; an incomplete one is never published.
TEST(Checkpoint, ShardedWritesReadBackOnAnyRankCount) {
  auto be = make_cpu_backend();
  Model a(be.get(), small(), 8, true);
  a.init_random(4);
  const size_t n = a.num_params();
  const std::vector<float> w = a.params_to_host(), m = testing::random_vec(n, 1),
                           v = testing::random_vec(n, 2, 0, 1);
  TrainState s;
  s.step = 3;
  s.total_steps = 9;
  s.world_size = 3;
  s.global_micro_batches = 6;
  const std::string run = testing::make_temp_dir("ckpt_sharded");
  const std::string tmp = sharded_checkpoint_tmp_dir(run, s.step);
  fs::create_directories(tmp);
  for (int r = 0; r < 3; ++r) {
    const ShardRange sr = shard_range(n, r, 3);
    const ShardSlice slice{sr.begin, sr.end, n, r, 3};
    write_checkpoint_shard(tmp, slice, m.data() + sr.begin, v.data() + sr.begin,
                           w.data() + sr.begin, be.get());
    // Until every rank's file is there the lead refuses to publish.
    if (r < 2)
      testing::expect_error([&] { finish_sharded_checkpoint(run, tmp, nullptr, s, 0); },
                            {"rank " + std::to_string(r + 1), "not published"});
  }
  EXPECT_FALSE(latest_checkpoint(run).has_value());
  const std::string dir = finish_sharded_checkpoint(run, tmp, nullptr, s, 0);
  EXPECT_EQ(latest_checkpoint(run).value(), dir);
  EXPECT_TRUE(checkpoint_has_sharded_weights(dir));
  const TrainState r = read_checkpoint_state(dir);
  EXPECT_EQ(r.world_size, 3);
  EXPECT_EQ(r.global_micro_batches, 6);

  // Whole, through the model (load_checkpoint reads the shards).
  Model b(be.get(), small(), 8, true);
  std::vector<float> m2(n), v2(n);
  load_checkpoint(dir, b, m2.data(), v2.data());
  EXPECT_EQ(b.params_to_host(), w);
  EXPECT_EQ(m2, m);
  EXPECT_EQ(v2, v);
  // In two ranks' slices, which straddle the writers'.
  for (int q = 0; q < 2; ++q) {
    const ShardRange sr = shard_range(n, q, 2);
    std::vector<float> pm(sr.size()), pv(sr.size());
    load_checkpoint_moments(dir, sr.begin, sr.end, n, pm.data(), pv.data(), be.get());
    EXPECT_EQ(pm, std::vector<float>(m.begin() + long(sr.begin), m.begin() + long(sr.end)));
    EXPECT_EQ(read_checkpoint_weights_range(dir, sr.begin, sr.end, n),
              std::vector<float>(w.begin() + long(sr.begin), w.begin() + long(sr.end)));
  }
  // A shard gone missing later is named.
  fs::remove(dir + "/optimizer.rank-00001-of-00003.safetensors");
  std::vector<float> pm(n), pv(n);
  testing::expect_error(
      [&] { load_checkpoint_moments(dir, 0, n, n, pm.data(), pv.data(), be.get()); },
      {"optimizer.rank-00001-of-00003.safetensors", "incomplete"});
}

}  // namespace
}  // namespace ftune
