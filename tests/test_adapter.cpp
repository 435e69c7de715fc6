// PEFT adapters both ways: adapters PEFT wrote (tests/fixtures/peft, made by
// make_peft_fixtures.py with peft + transformers) load in ftune and give PEFT's logits, loss and
// adapter gradients, unmerged and merged; what ftune writes is PEFT's file again, name for name.
#include <gtest/gtest.h>

#include <cstdio>

#include "engine/base/fs_util.h"
#include "engine/formats/safetensors.h"
#include "engine/model/model.h"
#include "engine/model/peft_adapter.h"
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

std::vector<int32_t> read_ids(const SafetensorsReader& r, const std::string& name) {
  const TensorInfo* t = r.find(name);
  if (!t || t->dtype != DType::I64) throw std::runtime_error("fixture lacks int64 " + name);
  std::vector<int64_t> v(size_t(t->numel()));
  r.read_raw(*t, v.data());
  return std::vector<int32_t>(v.begin(), v.end());
}

struct Case {
  std::string adapter, base;
};

class PeftParity : public ::testing::TestWithParam<Case> {};

TEST_P(PeftParity, LoadsAndMatchesPeft) {
  const std::string dir = testing::fixtures_dir() + "/peft/" + GetParam().adapter;
  const std::string base = testing::fixtures_dir() + "/parity/" + GetParam().base;
  SafetensorsReader ref = SafetensorsReader::open(dir + "/reference.safetensors");
  const TensorInfo* ids_t = ref.find("input_ids");
  ASSERT_NE(ids_t, nullptr);
  const int64_t B = ids_t->shape[0], T = ids_t->shape[1];

  auto be = make_cpu_backend();
  const LoraConfig lc = read_adapter_config(dir);
  Model model(be.get(), load_model_config(base), B * T, true, &lc);
  model.load_weights(WeightStore::open_dir(base));
  load_adapter(model, dir);
  Batch b = Batch::from_rows(B, T, read_ids(ref, "input_ids"), read_ids(ref, "targets"));
  ExecContext ctx;
  ctx.threads = 2;
  EXPECT_LT(testing::rel_error(model.logits(ctx, b), read_f32(ref, "logits")), 1e-5);

  be->zero(model.lora_grads(), model.num_train_params() * sizeof(float));
  const int64_t count = b.target_count();
  LossSum ls = model.forward_backward(ctx, b, 1.f / float(count));
  const double ref_loss = read_f32(ref, "loss")[0];
  EXPECT_NEAR(ls.loss / double(ls.tokens), ref_loss, 1e-5 * ref_loss);
  std::vector<float> g(model.num_train_params());
  be->download(g.data(), model.lora_grads(), g.size() * sizeof(float));
  int compared = 0;
  for (const auto& e : model.lora_layout().entries()) {
    std::vector<float> want = read_f32(ref, "grad." + e.name);
    ASSERT_EQ(want.size(), e.count) << e.name;
    EXPECT_LT(testing::rel_error(g.data() + e.offset, want.data(), e.count), 1e-5) << e.name;
    ++compared;
  }
  EXPECT_EQ(compared, int(SafetensorsReader::open(dir + "/" + kAdapterWeights).tensors().size()));

  // What ftune writes back is PEFT's adapter: the same tensors, names and settings.
  const std::string out = testing::make_temp_dir("adapter") + "/out";
  export_adapter_dir(model, out, base, DType::F32);
  SafetensorsReader mine = SafetensorsReader::open(out + "/" + kAdapterWeights);
  SafetensorsReader peft = SafetensorsReader::open(dir + "/" + kAdapterWeights);
  ASSERT_EQ(mine.tensors().size(), peft.tensors().size());
  for (const auto& t : peft.tensors()) {
    const TensorInfo* m = mine.find(t.name);
    ASSERT_NE(m, nullptr) << t.name;
    EXPECT_EQ(m->shape, t.shape) << t.name;
    EXPECT_EQ(read_f32(mine, t.name), read_f32(peft, t.name)) << t.name;
  }
  const auto mine_cfg = nlohmann::json::parse(read_file(out + "/" + kAdapterConfig));
  const auto peft_cfg = nlohmann::json::parse(read_file(dir + "/" + kAdapterConfig));
  for (const char* k : {"peft_type", "task_type", "r", "lora_alpha", "use_rslora", "bias"})
    EXPECT_EQ(mine_cfg[k], peft_cfg[k]) << k;
  auto sorted = [](nlohmann::json a) {
    auto v = a.get<std::vector<std::string>>();
    std::sort(v.begin(), v.end());
    return v;
  };
  EXPECT_EQ(sorted(mine_cfg["target_modules"]), sorted(peft_cfg["target_modules"]));
  EXPECT_EQ(read_adapter_config(out).targets, lc.targets);

  // Merged into the base weights: PEFT's merge_and_unload logits.
  model.merge_lora();
  EXPECT_LT(testing::rel_error(model.logits(ctx, b), read_f32(ref, "logits_merged")), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PeftParity,
                         ::testing::Values(Case{"llama_qv", "llama"}, Case{"llama_all", "llama"},
                                           Case{"qwen2_all", "qwen2"}),
                         [](const auto& info) { return info.param.adapter; });

// What eval and generate open with --adapter: unmerged and --merged give the same logits.
TEST(Adapter, InferenceModelUnmergedAndMergedAgree) {
  const std::string dir = testing::fixtures_dir() + "/peft/qwen2_all";
  const std::string base = testing::fixtures_dir() + "/parity/qwen2";
  auto be = make_cpu_backend();
  auto unmerged = open_inference_model(be.get(), base, dir, 22, false);
  auto merged = open_inference_model(be.get(), base, dir, 22, true);
  EXPECT_TRUE(unmerged->has_lora());
  EXPECT_FALSE(merged->has_lora());
  SafetensorsReader ref = SafetensorsReader::open(dir + "/reference.safetensors");
  Batch b = Batch::from_rows(2, 11, read_ids(ref, "input_ids"), read_ids(ref, "targets"));
  ExecContext ctx;
  const std::vector<float> u = unmerged->logits(ctx, b), m = merged->logits(ctx, b);
  EXPECT_LT(testing::rel_error(u, m), 1e-5);
  EXPECT_LT(testing::rel_error(u, read_f32(ref, "logits")), 1e-5);
  testing::expect_error([&] { open_inference_model(be.get(), dir, "", 22, false); },
                        {"is a LoRA adapter, not a model"});
}

TEST(Adapter, MismatchedAdapterIsAClearError) {
  const std::string dir = testing::fixtures_dir() + "/peft/llama_qv";
  const std::string base = testing::fixtures_dir() + "/parity/llama";
  auto be = make_cpu_backend();
  LoraConfig lc = read_adapter_config(dir);
  lc.targets = parse_lora_targets({"q_proj", "k_proj", "v_proj"}, "t");  // k_proj not in file
  Model m(be.get(), load_model_config(base), 8, false, &lc);
  testing::expect_error([&] { load_adapter(m, dir); }, {"k_proj.lora_A.weight", "missing"});
  LoraConfig lc2 = read_adapter_config(dir);
  lc2.targets = parse_lora_targets({"q_proj"}, "t");  // v_proj in file but not expected
  Model m2(be.get(), load_model_config(base), 8, false, &lc2);
  testing::expect_error([&] { load_adapter(m2, dir); }, {"unexpected tensor", "v_proj"});
  lc2 = read_adapter_config(dir);
  lc2.rank = 2;
  Model m3(be.get(), load_model_config(base), 8, false, &lc2);
  testing::expect_error([&] { load_adapter(m3, dir); }, {"shape"});
  testing::expect_error([&] { read_adapter_config(base); }, {"not a LoRA adapter directory"});
}

// The reverse direction, committed: an adapter that ftune trained (peft/ftune_trained, made by
// make_peft_fixtures.py --ftune-trained), loaded into PEFT, gives PEFT's logits; ftune opening
// the same base and adapter, unmerged and merged, must give them too.
TEST(Adapter, PeftLoadsWhatFtuneTrained) {
  const std::string dir = testing::fixtures_dir() + "/peft/ftune_trained";
  const std::string base = dir + "/base", adapter = dir + "/adapter";
  SafetensorsReader ref = SafetensorsReader::open(dir + "/reference.safetensors");
  const TensorInfo* ids_t = ref.find("input_ids");
  ASSERT_NE(ids_t, nullptr);
  ASSERT_EQ(ids_t->shape, (std::vector<int64_t>{2, 16}));
  const std::vector<int32_t> ids = read_ids(ref, "input_ids");
  const std::vector<int32_t> no_targets(ids.size(), kIgnoreIndex);
  auto be = make_cpu_backend();
  ExecContext ctx;
  ctx.threads = 2;
  for (const bool merge : {false, true}) {
    SCOPED_TRACE(merge ? "merged" : "unmerged");
    auto model = open_inference_model(be.get(), base, adapter, 32, merge);
    EXPECT_EQ(model->has_lora(), !merge);
    const std::vector<float> want = read_f32(ref, merge ? "logits_merged" : "logits");
    const std::vector<float> got = model->logits(ctx, Batch::from_rows(2, 16, ids, no_targets));
    ASSERT_EQ(got.size(), want.size());
    const double err = testing::rel_error(got, want);
    char text[32];
    std::snprintf(text, sizeof text, "%.3e", err);
    RecordProperty(merge ? "rel_error_merged" : "rel_error_unmerged", text);
    EXPECT_LE(err, 1e-5);
  }
}

}  // namespace
}  // namespace ftune
