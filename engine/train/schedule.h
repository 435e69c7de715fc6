// Learning-rate schedules: linear warmup, then constant, linear decay or cosine decay to
// min_lr_ratio * lr at the last step. A pure function of the step: nothing to save on resume.
#pragma once
#include <cstdint>
#include <string>

#include "engine/recipe/recipe.h"

namespace ftune {

struct Schedule {
  ScheduleKind kind = ScheduleKind::Cosine;
  double lr = 3e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.0;
  // Learning rate for optimizer step `step` (1-based).
  double lr_at(int64_t step) const;
};

}  // namespace ftune
