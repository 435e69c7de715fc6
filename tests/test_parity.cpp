// Logits, loss and every gradient of tiny HF models (made by
// tests/fixtures/parity/make_parity_fixtures.py with transformers + torch) against ftune's
// forward and backward on the same weights and tokens. fp32: ‖a−b‖/‖b‖ ≤ 1e-5.
#include <gtest/gtest.h>

#include "engine/formats/safetensors.h"
#include "engine/model/model.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

std::vector<float> read_f32(const SafetensorsReader& r, const std::string& name) {
  const TensorInfo* t = r.find(name);
  if (!t) throw std::runtime_error("fixture lacks " + name);
  std::vector<float> v(size_t(t->numel()));
  r.read_as(*t, DType::F32, v.data());
  return v;
}

std::vector<int32_t> read_i32(const SafetensorsReader& r, const std::string& name) {
  const TensorInfo* t = r.find(name);
  if (!t) throw std::runtime_error("fixture lacks " + name);
  std::vector<int32_t> v(size_t(t->numel()));
  r.read_raw(*t, v.data());
  return v;
}

class Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Parity, MatchesTransformers) {
  const std::string dir = testing::fixtures_dir() + "/parity/" + GetParam();
  SafetensorsReader ref = SafetensorsReader::open(dir + "/reference.safetensors");
  const TensorInfo* ids_t = ref.find("input_ids");
  ASSERT_NE(ids_t, nullptr);
  const int64_t B = ids_t->shape[0], T = ids_t->shape[1];

  auto be = make_cpu_backend();
  Model model(be.get(), load_model_config(dir), B * T, true);
  model.load_weights(WeightStore::open_dir(dir));
  Batch b = Batch::from_rows(B, T, read_i32(ref, "input_ids"), read_i32(ref, "targets"));
  ExecContext ctx;
  ctx.threads = 2;

  std::vector<float> logits = model.logits(ctx, b);
  EXPECT_LT(testing::rel_error(logits, read_f32(ref, "logits")), 1e-5) << "logits";

  be->zero(model.grads(), model.num_params() * sizeof(float));
  const int64_t count = b.target_count();
  LossSum ls = model.forward_backward(ctx, b, 1.f / float(count));
  const double loss = ls.loss / double(ls.tokens);
  const double ref_loss = read_f32(ref, "loss")[0];
  EXPECT_EQ(ls.tokens, count);
  EXPECT_NEAR(loss, ref_loss, 1e-5 * ref_loss) << "loss";

  std::vector<float> g(model.num_params());
  be->download(g.data(), model.grads(), g.size() * sizeof(float));
  int compared = 0;
  for (const auto& e : model.layout().entries()) {
    std::vector<float> want = read_f32(ref, "grad." + e.name);
    ASSERT_EQ(want.size(), e.count) << e.name;
    EXPECT_LT(testing::rel_error(g.data() + e.offset, want.data(), e.count), 1e-5) << e.name;
    ++compared;
  }
  EXPECT_EQ(compared, int(model.layout().entries().size()));
}

INSTANTIATE_TEST_SUITE_P(Models, Parity, ::testing::Values("llama", "qwen2"));

}  // namespace
}  // namespace ftune
