#include "engine/train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "engine/base/error.h"

namespace ftune {

double Schedule::lr_at(int64_t step) const {
  if (warmup_steps > 0 && step <= warmup_steps) return lr * double(step) / double(warmup_steps);
  if (kind == ScheduleKind::Constant) return lr;
  const double span = double(std::max<int64_t>(1, total_steps - warmup_steps));
  const double progress = std::clamp(double(step - warmup_steps) / span, 0.0, 1.0);
  const double floor = lr * min_lr_ratio;
  if (kind == ScheduleKind::Linear) return floor + (lr - floor) * (1.0 - progress);
  return floor + (lr - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));  // cosine
}

}  // namespace ftune
