// ZeRO-2/3 (engine/zero.h) on one rank: the sharded model computes exactly what the whole one
// does, unit by unit. Several ranks are covered under MPI by tests/test_launch.cpp.
#include <gtest/gtest.h>

#include "engine/communicator.h"
#include "engine/model.h"
#include "engine/zero.h"
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
};

class ZeroModel : public ::testing::TestWithParam<ZeroCase> {};

TEST_P(ZeroModel, GradientsAndLossMatchTheWholeModel) {
  const ZeroCase zc = GetParam();
  auto be = make_cpu_backend();
  auto comm = make_local_communicator();
  const ModelConfig cfg = testing::tiny_model_config(zc.tied);
  const Batch b = testing::tiny_packed_batch();
  Model whole(be.get(), cfg, b.tokens(), true, nullptr, zc.recompute);
  ZeroShards zero(be.get(), *comm, ParamLayout(cfg), zc.stage, 1);
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
                      ZeroCase{3, false, Recompute::Full}, ZeroCase{2, true, Recompute::Mlp}),
    [](const auto& info) {
      const ZeroCase& c = info.param;
      return "zero" + std::to_string(c.stage) + (c.tied ? "_tied" : "_untied") + "_recompute" +
             std::to_string(int(c.recompute));
    });

TEST(Zero, ThirdStageHoldsOnlyTheShardAndWorkSlots) {
  auto be = make_cpu_backend();
  auto comm = make_local_communicator();
  const ParamLayout lay(testing::tiny_model_config(false));
  ZeroShards z2(be.get(), *comm, lay, 2, 1), z3(be.get(), *comm, lay, 3, 1);
  const size_t slots =
      (lay.unit(0).size() + lay.unit(lay.tail_unit()).size() + lay.max_layer_size()) * 4;
  EXPECT_EQ(z2.memory().weights, 0u);
  EXPECT_EQ(z3.memory().weights, lay.total() * 4 + slots);
  EXPECT_GE(z2.memory().gradients, lay.total() * 4 + slots);
  EXPECT_EQ(z2.shard_params(), nullptr);
  // After a ZeRO-3 unshard the model works alone with whole weights.
  Model m(be.get(), testing::tiny_model_config(false), 8, true, nullptr, Recompute::None, &z3);
  m.init_random(1);
  z3.gather_whole_to_root();
  const std::vector<float> w = m.params_to_host();
  m.unshard(z3.take_whole());
  ASSERT_NE(m.params(), nullptr);
  EXPECT_TRUE(testing::bitwise_equal(m.params_to_host(), w));
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
