// The numeric guards (guard.nonfinite, guard.spike): judging a step's loss and gradient norm,
// and what the run is told when one trips. What happens next (skip, stop, rollback) is the step
// loop's (trainer.cpp).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/dist/communicator.h"
#include "engine/recipe/recipe.h"
#include "engine/train/checkpoint.h"

namespace ftune {

enum class GuardAction { kNone = 0, kSkip = 1, kStop = 2, kRollback = 3 };
enum class GuardKind { kNone = 0, kNonFinite = 1, kSpike = 2 };

struct GuardVerdict {
  GuardAction action = GuardAction::kNone;
  GuardKind kind = GuardKind::kNone;
  double zscore = 0;  // kSpike: how far the loss lies above the window's mean
  std::string what;   // the sentence naming what tripped (empty when nothing did)
  const char* key() const {
    return kind == GuardKind::kNonFinite ? "guard.nonfinite" : "guard.spike";
  }
};

// The loss and squared-norm sums are all-reduced, so every rank sees the same values; the
// lead's verdict is still what all ranks act on (one more tiny all-reduce with several ranks),
// so no reduction-order rounding can make ranks part ways.
GuardVerdict judge_step(const RecipeConfig& c, const TrainState& state, int64_t step, double loss,
                        double gnorm, Communicator& comm);

// Throws AgreedError when the verdict ends the run: a stop policy, or a rollback with
// guard.max_rollbacks used up.
void stop_if_guard_ends_run(const GuardVerdict& g, const RecipeConfig& c, const TrainState& state);

// The metrics.jsonl line that records a tripped guard at `step`.
nlohmann::json guard_event(int64_t step, const GuardVerdict& g);

const char* guard_action_name(GuardAction a);
// How far `loss` lies above the window's mean, in standard deviations (0 when the window is
// flat: no scale to measure a spike by).
double loss_zscore(const std::vector<double>& window, double loss);

}  // namespace ftune
