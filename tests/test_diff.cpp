// ftune diff (engine/report/diff.h): synthetic pairs with known changes, the LoRA spectrum through
// its r x r core against the dense computation, and the CLI.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/base/error.h"
#include "engine/model/hf_export.h"
#include "engine/model/model.h"
#include "engine/model/model_config.h"
#include "engine/model/peft_adapter.h"
#include "engine/report/diff.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

// n orthonormal vectors of length len (Gram-Schmidt on random draws).
std::vector<std::vector<double>> orthonormal(int n, int64_t len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  std::vector<std::vector<double>> out;
  while (int(out.size()) < n) {
    std::vector<double> v(static_cast<size_t>(len));
    for (double& x : v) x = nd(rng);
    for (const auto& u : out) {
      double d = 0;
      for (int64_t i = 0; i < len; ++i) d += v[size_t(i)] * u[size_t(i)];
      for (int64_t i = 0; i < len; ++i) v[size_t(i)] -= d * u[size_t(i)];
    }
    double nn = 0;
    for (double x : v) nn += x * x;
    for (double& x : v) x /= std::sqrt(nn);
    out.push_back(v);
  }
  return out;
}

TEST(Diff, SingularValuesOfAKnownSpectrum) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{13, 7}, {6, 11}, {9, 9}}) {
    const int64_t k = std::min(rows, cols);
    const auto U = orthonormal(int(k), rows, 1), V = orthonormal(int(k), cols, 2);
    std::vector<double> sigma, m(size_t(rows * cols), 0.0);
    for (int64_t i = 0; i < k; ++i) sigma.push_back(double(k - i) * 0.75);
    for (int64_t s = 0; s < k; ++s)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
          m[size_t(i * cols + j)] +=
              sigma[size_t(s)] * U[size_t(s)][size_t(i)] * V[size_t(s)][size_t(j)];
    const std::vector<double> got = singular_values(m, rows, cols);
    ASSERT_EQ(got.size(), sigma.size());
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_NEAR(got[i], sigma[i], 1e-9) << rows << "x" << cols;
  }
  EXPECT_EQ(effective_rank({3, 1}), 1);  // 9 of 10 is 90%
  EXPECT_EQ(effective_rank({2, 1.5}), 2);
  EXPECT_EQ(effective_rank({0, 0}), 0);
}

TEST(Diff, LoraSpectrumEqualsTheDenseOne) {
  const int64_t out = 17, in = 12, r = 4;
  const std::vector<float> bf = testing::random_vec(size_t(out * r), 3),
                           af = testing::random_vec(size_t(r * in), 4);
  const std::vector<double> B(bf.begin(), bf.end()), A(af.begin(), af.end());
  const double s = 1.7;
  std::vector<double> dense(size_t(out * in), 0.0);
  for (int64_t i = 0; i < out; ++i)
    for (int64_t j = 0; j < in; ++j)
      for (int64_t k = 0; k < r; ++k)
        dense[size_t(i * in + j)] += s * B[size_t(i * r + k)] * A[size_t(k * in + j)];
  const std::vector<double> want = singular_values(dense, out, in),
                            got = lora_singular_values(B, A, out, in, r, s);
  ASSERT_EQ(got.size(), size_t(r));
  for (int64_t i = 0; i < r; ++i) EXPECT_NEAR(got[size_t(i)], want[size_t(i)], 1e-9 * want[0]);
  for (size_t i = size_t(r); i < want.size(); ++i) EXPECT_LT(want[i], 1e-9 * want[0]);
}

// A base model and a derived one with two known changes: one tensor scaled by 1.5, a rank-2
// update (singular values 2 and 1.5) added to another.
class DiffPairs : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::make_temp_dir("diff");
    auto be = make_cpu_backend();
    const ModelConfig cfg = testing::tiny_model_config(false);
    Model m(be.get(), cfg, 4, false);
    m.init_random(9);
    export_model_dir(m, "", dir_ + "/base", DType::F32, 0);
    export_model_dir(m, "", dir_ + "/same", DType::F32, 0);
    std::vector<float> p = m.params_to_host();
    const ParamEntry* scaled = m.layout().find(scaled_);
    const ParamEntry* ranked = m.layout().find(ranked_);
    ASSERT_TRUE(scaled && ranked);
    for (size_t i = 0; i < scaled->count; ++i) p[scaled->offset + i] *= 1.5f;
    const int64_t rows = ranked->shape[0], cols = ranked->shape[1];
    const auto U = orthonormal(2, rows, 5), V = orthonormal(2, cols, 6);
    for (int s = 0; s < 2; ++s)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
          p[ranked->offset + size_t(i * cols + j)] +=
              float((s == 0 ? 2.0 : 1.5) * U[size_t(s)][size_t(i)] * V[size_t(s)][size_t(j)]);
    m.params_from_host(p);
    export_model_dir(m, "", dir_ + "/derived", DType::F32, 0);
  }
  std::string dir_;
  const std::string scaled_ = "model.layers.1.mlp.up_proj.weight";
  const std::string ranked_ = "model.layers.0.self_attn.o_proj.weight";
};

TEST_F(DiffPairs, FindsExactlyTheKnownChanges) {
  const DiffReport r = diff_models(dir_ + "/base", dir_ + "/derived");
  EXPECT_FALSE(r.lora);
  int changed = 0;
  for (const TensorDiff& t : r.tensors) {
    if (!t.changed()) {
      EXPECT_NE(t.name, scaled_);
      EXPECT_NE(t.name, ranked_);
      EXPECT_EQ(t.cosine, 1.0) << t.name;
      continue;
    }
    ++changed;
    if (t.name == scaled_) {
      EXPECT_NEAR(t.rel_change, 0.5, 1e-6);
      EXPECT_NEAR(t.cosine, 1.0, 1e-9);
      EXPECT_EQ(t.module, "up");
      EXPECT_EQ(t.layer, 1);
    } else {
      EXPECT_EQ(t.name, ranked_);
      EXPECT_EQ(t.effective_rank_90, 2);
      ASSERT_GE(t.singular.size(), 3u);
      EXPECT_NEAR(t.singular[0], 2.0, 1e-5);
      EXPECT_NEAR(t.singular[1], 1.5, 1e-5);
      EXPECT_LT(t.singular[2], 1e-5);
      EXPECT_NEAR(t.delta_norm, 2.5, 1e-5);  // sqrt(2^2 + 1.5^2)
    }
  }
  EXPECT_EQ(changed, 2);
  // The heatmap holds the relative change of those two cells only.
  const auto& mods = DiffReport::modules();
  ASSERT_EQ(r.heatmap.size(), size_t(r.num_layers));
  for (int l = 0; l < r.num_layers; ++l)
    for (size_t k = 0; k < mods.size(); ++k) {
      const double v = r.heatmap[size_t(l)][k];
      const bool hot = (l == 1 && mods[k] == "up") || (l == 0 && mods[k] == "o");
      if (hot)
        EXPECT_GT(v, 0) << l << " " << mods[k];
      else
        EXPECT_EQ(v, 0) << l << " " << mods[k];
    }
  const DiffReport same = diff_models(dir_ + "/base", dir_ + "/same");
  for (const TensorDiff& t : same.tensors) EXPECT_FALSE(t.changed()) << t.name;
}

TEST_F(DiffPairs, MismatchesNameTheTensor) {
  auto be = make_cpu_backend();
  ModelConfig wide = testing::tiny_model_config(false);
  wide.intermediate_size += 8;
  Model m(be.get(), wide, 4, false);
  export_model_dir(m, "", dir_ + "/wide", DType::F32, 0);
  testing::expect_error([&] { diff_models(dir_ + "/base", dir_ + "/wide"); },
                        {"model.layers.0.mlp.gate_proj.weight", "shape"});
  testing::expect_error([&] { diff_models(dir_ + "/base", dir_ + "/nonexistent"); },
                        {"nonexistent"});
}

TEST_F(DiffPairs, CommandLine) {
  testing::CliRun t = testing::ftune("diff " + dir_ + "/base " + dir_ + "/derived");
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("changed 2"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find(scaled_), std::string::npos) << t.out;
  testing::CliRun j = testing::ftune("diff " + dir_ + "/base " + dir_ + "/derived --json");
  ASSERT_EQ(j.code, 0) << j.out;
  const nlohmann::json parsed = nlohmann::json::parse(j.out);
  EXPECT_EQ(parsed["heatmap"].size(), parsed["num_layers"].get<size_t>());
  testing::CliRun bad = testing::ftune("diff " + dir_ + "/base " + dir_ + "/missing");
  EXPECT_NE(bad.code, 0);
}

// A PEFT adapter against its base: the changes and spectra computed through B and A equal those
// of the merged model computed densely.
TEST(Diff, AdapterEqualsItsMergedModel) {
  const std::string base = testing::fixtures_dir() + "/parity/llama";
  const std::string adapter = testing::fixtures_dir() + "/peft/llama_all";
  const std::string merged = testing::make_temp_dir("diff_merged") + "/model";
  auto be = make_cpu_backend();
  auto model = open_inference_model(be.get(), base, adapter, 4, true);
  export_model_dir(*model, base, merged, DType::F32, 0);
  const DiffReport a = diff_models(base, adapter), d = diff_models(base, merged);
  EXPECT_TRUE(a.lora);
  ASSERT_EQ(a.tensors.size(), d.tensors.size());
  int adapted = 0;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const TensorDiff &x = a.tensors[i], &y = d.tensors[i];
    ASSERT_EQ(x.name, y.name);
    // The merged weights went through fp32: compare to float precision.
    EXPECT_NEAR(x.delta_norm, y.delta_norm, 1e-4 * std::max(1.0, y.delta_norm) + 1e-6) << x.name;
    EXPECT_NEAR(x.cosine, y.cosine, 1e-5) << x.name;
    EXPECT_NEAR(x.max_abs, y.max_abs, 1e-5 * std::max(1.0, y.max_abs) + 1e-6) << x.name;
    if (!x.changed()) continue;
    ++adapted;
    EXPECT_LE(x.effective_rank_90, 8) << x.name;  // r = 8
    EXPECT_EQ(x.effective_rank_90, y.effective_rank_90) << x.name;
    for (size_t k = 0; k < std::min(x.singular.size(), y.singular.size()); ++k)
      EXPECT_NEAR(x.singular[k], y.singular[k], 1e-4 * y.singular[0]) << x.name << " sigma " << k;
  }
  EXPECT_EQ(adapted, 7 * model->config().num_layers);  // all-linear: seven per layer
  testing::expect_error([&] { diff_models(adapter, base); }, {"LoRA adapter", "base model first"});
}

}  // namespace
}  // namespace ftune
