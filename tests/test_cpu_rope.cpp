// CPU RoPE (HF rotate_half layout): reference backward vs finite differences, fp32 kernels vs
// the double reference up to long-context positions, and forward/backward being inverses.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/backend/cpu/reference_ops.h"
#include "engine/base/error.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

using testing::dot;
using testing::numeric_grad;
using testing::random_vec;
using testing::rel_error;
using testing::to_double;

// Llama's default frequencies: base^(-2i/D), computed the way HF does (in fp32).
std::vector<float> llama_inv_freq(int head_dim, float base) {
  std::vector<float> f(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i)
    f[i] = 1.f / std::pow(base, float(2 * i) / float(head_dim));
  return f;
}

std::vector<int32_t> random_positions(size_t n, int32_t max_pos, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, max_pos);
  std::vector<int32_t> p(n);
  for (auto& v : p) v = dist(rng);
  return p;
}

TEST(RefRoPE, BackwardMatchesFiniteDifferences) {
  const int64_t n = 4;
  const int heads = 3, head_dim = 6;
  const std::vector<int32_t> pos = {0, 1, 7, 1000};
  const auto inv_freq = to_double(llama_inv_freq(head_dim, 10000.f));
  auto x = to_double(random_vec(n * heads * head_dim, 1));
  const auto R = to_double(random_vec(n * heads * head_dim, 2));
  auto loss = [&] {
    auto y = x;
    ref::rope_forward(y.data(), pos.data(), inv_freq.data(), n, heads, head_dim);
    return dot(y, R);
  };
  auto grad = R;
  ref::rope_backward(grad.data(), pos.data(), inv_freq.data(), n, heads, head_dim);
  EXPECT_LE(rel_error(grad, numeric_grad(x, loss)), 1e-6);
}

TEST(CpuRoPE, ForwardAndBackwardMatchReference) {
  const int64_t n = 101;  // with head_dim 64 this takes the parallel path
  const int heads = 3;
  uint64_t seed = 10;
  for (int head_dim : {2, 6, 10, 64}) {
    for (int32_t max_pos : {50, 131072}) {
      SCOPED_TRACE(::testing::Message() << "head_dim=" << head_dim << " max_pos=" << max_pos);
      const auto inv_freq = llama_inv_freq(head_dim, 500000.f);
      auto pos = random_positions(n, max_pos, ++seed);
      pos[0] = max_pos;  // always include the extreme position
      const auto x0 = random_vec(n * heads * head_dim, ++seed);
      for (bool backward : {false, true}) {
        auto x = x0;
        auto want = to_double(x0);
        if (backward) {
          cpu::rope_backward(2, x.data(), pos.data(), inv_freq.data(), n, heads, head_dim);
          ref::rope_backward(want.data(), pos.data(), to_double(inv_freq).data(), n, heads,
                             head_dim);
        } else {
          cpu::rope_forward(2, x.data(), pos.data(), inv_freq.data(), n, heads, head_dim);
          ref::rope_forward(want.data(), pos.data(), to_double(inv_freq).data(), n, heads,
                            head_dim);
        }
        EXPECT_LE(rel_error(to_double(x), want), 1e-5) << (backward ? "backward" : "forward");
        // Also per element, so an error confined to the long-position tokens cannot hide.
        double worst = 0;
        for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::fabs(x[i] - want[i]));
        EXPECT_LE(worst, 2e-6);
      }
    }
  }
}

TEST(CpuRoPE, BackwardUndoesForward) {
  const int64_t n = 301;
  const int heads = 5, head_dim = 64;
  const auto inv_freq = llama_inv_freq(head_dim, 10000.f);
  const auto pos = random_positions(n, 131072, 20);
  const auto x0 = random_vec(n * heads * head_dim, 21);
  auto x = x0;
  cpu::rope_forward(2, x.data(), pos.data(), inv_freq.data(), n, heads, head_dim);
  EXPECT_GT(rel_error(x, x0), 0.1);  // it did rotate
  cpu::rope_backward(2, x.data(), pos.data(), inv_freq.data(), n, heads, head_dim);
  EXPECT_LE(rel_error(x, x0), 1e-6);
}

TEST(CpuRoPE, PositionZeroIsIdentityAndPairsUseRotateHalfLayout) {
  const int heads = 1, head_dim = 4;
  // inv_freq chosen so pair 0 turns by pi/2 at position 1 and pair 1 not at all.
  const std::vector<float> inv_freq = {float(M_PI / 2), 0.f};
  std::vector<float> x = {1, 2, 3, 4, 1, 2, 3, 4};
  const std::vector<int32_t> pos = {0, 1};
  cpu::rope_forward(1, x.data(), pos.data(), inv_freq.data(), 2, heads, head_dim);
  const std::vector<float> want = {1, 2, 3, 4, -3, 2, 1, 4};  // (x0, x2) -> (-x2, x0)
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], want[i], 1e-6) << i;
}

TEST(CpuRoPE, RejectsOddHeadDim) {
  std::vector<float> x(5);
  const std::vector<int32_t> pos = {0};
  const std::vector<float> inv_freq = {1.f, 1.f};
  EXPECT_THROW(cpu::rope_forward(1, x.data(), pos.data(), inv_freq.data(), 1, 1, 5), Error);
}

}  // namespace
}  // namespace ftune
