#include <gtest/gtest.h>

#include <cmath>

#include "engine/train/schedule.h"

namespace ftune {
namespace {

TEST(Schedule, WarmupThenCosineToFloor) {
  Schedule s{ScheduleKind::Cosine, 1.0, 10, 110, 0.1};
  EXPECT_DOUBLE_EQ(s.lr_at(1), 0.1);
  EXPECT_DOUBLE_EQ(s.lr_at(10), 1.0);
  EXPECT_NEAR(s.lr_at(60), 0.1 + 0.9 * 0.5, 1e-12);  // halfway through the decay
  EXPECT_NEAR(s.lr_at(110), 0.1, 1e-12);
  for (int64_t t = 11; t < 110; ++t) EXPECT_GE(s.lr_at(t), s.lr_at(t + 1));
}

TEST(Schedule, LinearAndConstant) {
  Schedule lin{ScheduleKind::Linear, 2.0, 0, 100, 0.0};
  EXPECT_NEAR(lin.lr_at(50), 1.0, 1e-12);
  EXPECT_NEAR(lin.lr_at(100), 0.0, 1e-12);
  Schedule c{ScheduleKind::Constant, 3e-4, 5, 100, 0.0};
  EXPECT_NEAR(c.lr_at(5), 3e-4, 1e-15);
  EXPECT_NEAR(c.lr_at(99), 3e-4, 1e-15);
  EXPECT_NEAR(c.lr_at(2), 3e-4 * 2 / 5, 1e-15);
}

}  // namespace
}  // namespace ftune
