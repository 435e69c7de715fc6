#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "engine/infer/generate.h"

namespace ftune {
namespace {

TEST(Sampling, GreedyPicksArgmax) {
  uint64_t rng = 1;
  EXPECT_EQ(sample_token({0.1f, 3.f, -2.f, 2.9f}, 0.0, 1.0, &rng), 1);
}

TEST(Sampling, TopPKeepsOnlyTheNucleus) {
  // Probabilities ~ {0.66, 0.24, 0.09, ...}: top_p 0.5 leaves only the first token.
  std::vector<float> logits = {3.f, 2.f, 1.f, -5.f};
  uint64_t rng = 42;
  for (int i = 0; i < 200; ++i) EXPECT_EQ(sample_token(logits, 1.0, 0.5, &rng), 0);
}

TEST(Sampling, TemperatureSamplesFollowTheDistribution) {
  std::vector<float> logits = {0.f, std::log(3.f)};  // p = {0.25, 0.75}
  uint64_t rng = 7;
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += sample_token(logits, 1.0, 1.0, &rng);
  EXPECT_NEAR(double(ones) / n, 0.75, 0.02);
}

}  // namespace
}  // namespace ftune
