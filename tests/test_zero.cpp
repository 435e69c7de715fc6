// ZeRO-2/3 (engine/zero/zero_shards.h) on one rank: the sharded model computes exactly what the
// whole one does, unit by unit. Several ranks are covered under MPI by tests/test_launch.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <map>

#include "engine/dist/communicator.h"
#include "engine/model/model.h"
#include "engine/zero/zero_shards.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

TEST(Zero, UnitsPartitionTheFlatBuffer) {
  for (bool tied : {false, true}) {
    const ParamLayout lay(testing::tiny_model_config(tied));
    size_t at = 0, largest = 0;
    for (int u = 0; u < lay.num_units(); ++u) {
      const ParamUnit pu = lay.unit(u);
      EXPECT_EQ(pu.begin, at) << "unit " << u;
      EXPECT_GT(pu.size(), 0u) << "unit " << u;
      at = pu.end;
      if (u > 0 && u < lay.tail_unit()) largest = std::max(largest, pu.size());
    }
    EXPECT_EQ(at, lay.total());
    EXPECT_EQ(lay.max_layer_size(), largest);
    EXPECT_EQ(lay.unit(ParamLayout::layer_unit(1)).begin, lay.layer(1).begin);
    // A tied head is the embedding (unit 0), an untied one lives in the tail.
    const ParamUnit hu = lay.unit(lay.head_unit());
    EXPECT_TRUE(hu.begin <= lay.head() && lay.head() < hu.end);
    EXPECT_EQ(lay.head_unit(), tied ? 0 : lay.tail_unit());
  }
}

struct ZeroCase {
  int stage;
  bool tied;
  Recompute recompute;
  bool overlap = true;
};

class ZeroModel : public ::testing::TestWithParam<ZeroCase> {};

TEST_P(ZeroModel, GradientsAndLossMatchTheWholeModel) {
  const ZeroCase zc = GetParam();
  auto be = make_cpu_backend();
  auto comm = make_local_communicator();
  const ModelConfig cfg = testing::tiny_model_config(zc.tied);
  const Batch b = testing::tiny_packed_batch();
  Model whole(be.get(), cfg, b.tokens(), true, nullptr, zc.recompute);
  ZeroShards zero(be.get(), *comm, ParamLayout(cfg), zc.stage, 1, zc.overlap);
  Model sharded(be.get(), cfg, b.tokens(), true, nullptr, zc.recompute, &zero);
  EXPECT_EQ(sharded.grads(), nullptr);
  EXPECT_EQ(sharded.params() == nullptr, zc.stage == 3);
  whole.init_random(3);
  sharded.init_random(3);

  ExecContext ctx;
  const size_t n = whole.num_params();
  be->zero(whole.grads(), n * sizeof(float));
  zero.zero_grads();
  const LossSum a = whole.forward_backward(ctx, b, 0.01f);
  const LossSum s = sharded.forward_backward(ctx, b, 0.01f);
  EXPECT_EQ(a.loss, s.loss);
  EXPECT_EQ(a.tokens, s.tokens);
  std::vector<float> ga(n), gs(n);
  be->download(ga.data(), whole.grads(), n * sizeof(float));
  be->download(gs.data(), zero.shard_grads(), n * sizeof(float));
  EXPECT_TRUE(testing::bitwise_equal(ga, gs));

  // A second micro-batch accumulates (the sharded one per unit, then into the shard).
  whole.forward_backward(ctx, b, 0.01f);
  sharded.forward_backward(ctx, b, 0.01f);
  be->download(ga.data(), whole.grads(), n * sizeof(float));
  be->download(gs.data(), zero.shard_grads(), n * sizeof(float));
  EXPECT_LT(testing::rel_error(ga, gs), 1e-6);

  // Evaluation and the weights read back go through the same units.
  EXPECT_EQ(whole.forward_loss(ctx, b).loss, sharded.forward_loss(ctx, b).loss);
  if (zc.stage == 3) zero.gather_whole_to_root();
  EXPECT_TRUE(testing::bitwise_equal(whole.params_to_host(), sharded.params_to_host()));
}

INSTANTIATE_TEST_SUITE_P(
    Stages, ZeroModel,
    ::testing::Values(ZeroCase{2, false, Recompute::None}, ZeroCase{2, true, Recompute::None},
                      ZeroCase{3, false, Recompute::None}, ZeroCase{3, true, Recompute::None},
                      ZeroCase{3, false, Recompute::Full}, ZeroCase{2, true, Recompute::Mlp},
                      ZeroCase{3, true, Recompute::None, false},
                      ZeroCase{3, false, Recompute::Full, false}),
    [](const auto& info) {
      const ZeroCase& c = info.param;
      return "zero" + std::to_string(c.stage) + (c.tied ? "_tied" : "_untied") + "_recompute" +
             std::to_string(int(c.recompute)) + (c.overlap ? "" : "_sequential");
    });

// One rank whose started all-gathers land only at finish(), and in-flight targets read NaN: a
// slot used before its gather is finished shows up as a wrong result.
class DeferredCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  void all_reduce_sum(float*, size_t) override {}
  void all_reduce_sum_host(double*, size_t) override {}
  void barrier() override {}
  void all_gather(float*, size_t) override {}
  void gather_to_root(const float* shard, float* full, size_t n) override {
    std::copy(shard, shard + n, full);
  }
  void reduce_scatter_sum(const float* in, float* out, const std::vector<size_t>& c) override {
    std::copy(in, in + c[0], out);
  }
  void all_gather_v(const float* mine, float* out, const std::vector<size_t>& c) override {
    ASSERT_TRUE(started.empty()) << "a blocking gather overtook a started one";
    std::copy(mine, mine + c[0], out);
  }
  uint64_t start_all_gather_v(const float* mine, float* out,
                              const std::vector<size_t>& c) override {
    std::fill(out, out + c[0], std::numeric_limits<float>::quiet_NaN());
    started[++last] = {mine, out, c[0], {}};
    ++starts;
    return last;
  }
  uint64_t start_reduce_scatter_sum_in_place(float* buf, const std::vector<size_t>& c,
                                             size_t* result_at) override {
    // One rank's sum is its own data: kept aside until finish, NaN meanwhile.
    Job j{nullptr, buf, c[0], std::vector<float>(buf, buf + c[0])};
    std::fill(buf, buf + c[0], std::numeric_limits<float>::quiet_NaN());
    started[++last] = std::move(j);
    ++reductions;
    *result_at = 0;
    return last;
  }
  void finish(uint64_t h) override {
    ASSERT_TRUE(started.count(h)) << "finished twice or never started";
    const Job& j = started[h];
    if (j.from)
      std::copy(j.from, j.from + j.n, j.to);
    else
      std::copy(j.kept.begin(), j.kept.end(), j.to);
    started.erase(h);
  }
  struct Job {
    const float* from;  // a gather's source, or null: a reduction's result is `kept`
    float* to;
    size_t n;
    std::vector<float> kept;
  };
  std::map<uint64_t, Job> started;
  uint64_t last = 0;
  int starts = 0, reductions = 0;
};

// With overlap: under ZeRO-3 every layer but the first is gathered ahead of its use, and under
// ZeRO-2/3 every unit's gradients are reduced while backward goes on; each collective is
// finished before its buffer is used, nothing is left in flight, and the results are bitwise
// those of the whole model.
TEST(Zero, OverlapStartsCollectivesAheadAndFinishesThemBeforeUse) {
  for (int stage : {2, 3}) {
    for (bool tied : {false, true}) {
      auto be = make_cpu_backend();
      DeferredCommunicator comm;
      ModelConfig cfg = testing::tiny_model_config(tied);
      cfg.num_layers = 5;
      const Batch b = testing::tiny_packed_batch();
      const ParamLayout lay(cfg);
      const int L = int(cfg.num_layers);
      for (Recompute rc : {Recompute::None, Recompute::Full}) {
        const std::string what = "zero" + std::to_string(stage) + " tied " + std::to_string(tied) +
                                 " recompute " + std::to_string(int(rc));
        Model whole(be.get(), cfg, b.tokens(), true, nullptr, rc);
        ZeroShards zero(be.get(), comm, lay, stage, 1);
        Model sharded(be.get(), cfg, b.tokens(), true, nullptr, rc, &zero);
        whole.init_random(5);
        sharded.init_random(5);
        ExecContext ctx;
        be->zero(whole.grads(), whole.num_params() * sizeof(float));
        zero.zero_grads();
        // Two micro-batches: the second one's reductions accumulate onto the first's (in
        // another order than the whole model's for a tied head, hence not bitwise then).
        std::vector<float> ga(whole.num_params()), gs(ga.size());
        for (int k = 0; k < 2; ++k) {
          EXPECT_EQ(whole.forward_backward(ctx, b, 0.01f).loss,
                    sharded.forward_backward(ctx, b, 0.01f).loss)
              << what;
          EXPECT_TRUE(comm.started.empty()) << what;
          EXPECT_EQ(comm.reductions, (k + 1) * lay.num_units()) << what;
          be->download(ga.data(), whole.grads(), ga.size() * sizeof(float));
          be->download(gs.data(), zero.shard_grads(), gs.size() * sizeof(float));
          if (k == 0) {
            EXPECT_TRUE(testing::bitwise_equal(ga, gs)) << what;
          }
          EXPECT_LT(testing::rel_error(ga, gs), 1e-6) << what;
        }
        comm.reductions = 0;
        if (stage == 2) continue;
        // Forward: the embedding is waited for, then each layer and the tail start one unit
        // ahead. Backward: the last two layers are still in their slots, the rest start ahead.
        // The second micro-batch: the embedding, the tail and the first two layers are still
        // there, the others start ahead again.
        const ZeroShards::GatherStats& g = zero.gather_stats();
        EXPECT_EQ(g.waited, 1) << what;
        EXPECT_EQ(g.prefetched, 2 * (L + 1 + L - 2) - 3) << what;
        EXPECT_EQ(comm.starts, g.prefetched) << what;
        // New weights: nothing gathered before is used again.
        std::vector<float> w = whole.params_to_host();
        for (float& x : w) x *= 0.5f;
        whole.params_from_host(w);
        sharded.params_from_host(w);
        EXPECT_EQ(whole.forward_loss(ctx, b).loss, sharded.forward_loss(ctx, b).loss) << what;
        EXPECT_EQ(g.waited, 2) << what;
        // A hint nobody follows is finished before the slot is used for anything else.
        zero.prefetch_params(ParamLayout::layer_unit(1));
        EXPECT_FALSE(comm.started.empty());
        zero.invalidate_weights();
        EXPECT_TRUE(comm.started.empty());
        comm.starts = 0;
      }
    }
  }
}

TEST(Zero, ThirdStageHoldsOnlyTheShardAndWorkSlots) {
  auto be = make_cpu_backend();
  auto comm = make_local_communicator();
  const ParamLayout lay(testing::tiny_model_config(false));
  ZeroShards z2(be.get(), *comm, lay, 2, 1), z3(be.get(), *comm, lay, 3, 1);
  const size_t slots =
      (lay.unit(0).size() + lay.unit(lay.tail_unit()).size() + lay.max_layer_size()) * 4;
  EXPECT_EQ(z2.memory().weights, 0u);
  // With overlap one more layer slot each, so the next layer gathers while one computes and a
  // layer's gradients reduce (in place) while the next one's backward runs.
  const size_t layer = lay.max_layer_size() * 4;
  EXPECT_EQ(z3.memory().weights, lay.total() * 4 + slots + layer);
  EXPECT_EQ(z2.memory().gradients, lay.total() * 4 + slots + layer);
  ZeroShards z2_alone(be.get(), *comm, lay, 2, 1, false),
      z3_alone(be.get(), *comm, lay, 3, 1, false);
  EXPECT_EQ(z3_alone.memory().weights, lay.total() * 4 + slots);
  size_t largest_unit = 0;  // alone, a rank's part of a unit is all of it
  for (int u = 0; u < lay.num_units(); ++u)
    largest_unit = std::max(largest_unit, lay.unit(u).size());
  EXPECT_EQ(z2_alone.memory().gradients, lay.total() * 4 + slots + largest_unit * 4);
  EXPECT_EQ(z2.shard_params(), nullptr);
  // The export's view: each unit gathered to rank 0's host memory in turn is that unit of the
  // weights, and rank 0 never holds more than one unit of them.
  Model m(be.get(), testing::tiny_model_config(false), 8, true, nullptr, Recompute::None, &z3);
  m.init_random(1);
  z3.gather_whole_to_root();
  const std::vector<float> w = m.params_to_host();
  ASSERT_EQ(w.size(), lay.total());
  size_t largest = 0;
  for (int u = 0; u < lay.num_units(); ++u) {
    const ParamUnit pu = lay.unit(u);
    const float* got = z3.gather_unit_to_root(u);
    ASSERT_NE(got, nullptr);
    EXPECT_TRUE(testing::bitwise_equal(
        std::vector<float>(got, got + pu.size()),
        std::vector<float>(w.begin() + long(pu.begin), w.begin() + long(pu.end))))
        << "unit " << u;
    largest = std::max(largest, pu.size());
  }
  EXPECT_EQ(z3.largest_host_unit(), largest);
  EXPECT_LT(largest, lay.total() / 2);
}

TEST(Zero, RecipeErrorsSayWhatToChange) {
  const std::string src = FTUNE_SOURCE_DIR;
  const std::string out = testing::make_temp_dir("zero_err");
  testing::CliRun lora =
      testing::ftune("train " + src + "/recipes/quickstart-base.yaml method=lora " +
                     "output_dir=" + out + "/a sharding=zero3 data.cache=false");
  EXPECT_NE(lora.code, 0);
  EXPECT_NE(lora.out.find("with method: lora use zero1"), std::string::npos) << lora.out;
  testing::CliRun gb = testing::ftune("train " + src + "/recipes/quickstart-base.yaml " +
                                      "output_dir=" + out + "/b train.micro_batch_size=4 " +
                                      "train.global_batch_size=10 data.cache=false");
  EXPECT_NE(gb.code, 0);
  EXPECT_NE(gb.out.find("train.global_batch_size (10 rows) is not a multiple"), std::string::npos)
      << gb.out;
}

}  // namespace
}  // namespace ftune
