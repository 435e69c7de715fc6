#include "engine/train/guard.h"

#include <cmath>

#include "engine/train/agreed_error.h"
#include "engine/train/run_log.h"

namespace ftune {

namespace {

GuardAction guard_action(GuardPolicy policy) {
  switch (policy) {
    case GuardPolicy::Skip:
      return GuardAction::kSkip;
    case GuardPolicy::Rollback:
      return GuardAction::kRollback;
    case GuardPolicy::Stop:
      break;
  }
  return GuardAction::kStop;
}

const char* const kAdvice =
    ": lower optim.lr or raise schedule.warmup_steps; the last checkpoint is intact for "
    "--resume";

}  // namespace

const char* guard_action_name(GuardAction a) {
  switch (a) {
    case GuardAction::kSkip:
      return "skip";
    case GuardAction::kStop:
      return "stop";
    case GuardAction::kRollback:
      return "rollback";
    case GuardAction::kNone:
      break;
  }
  return "none";
}

double loss_zscore(const std::vector<double>& window, double loss) {
  double mean = 0;
  for (double x : window) mean += x;
  mean /= double(window.size());
  double var = 0;
  for (double x : window) var += (x - mean) * (x - mean);
  const double sd = std::sqrt(var / double(window.size()));
  return sd > 0 ? (loss - mean) / sd : 0.0;
}

GuardVerdict judge_step(const RecipeConfig& c, const TrainState& state, int64_t step, double loss,
                        double gnorm, Communicator& comm) {
  const bool lead = comm.rank() == 0;
  GuardVerdict g;
  if (!std::isfinite(loss) || !std::isfinite(gnorm)) {
    g.kind = GuardKind::kNonFinite;
    g.action = guard_action(c.guard_nonfinite);
  } else if (c.guard_spike_zscore > 0 &&
             int64_t(state.loss_window.size()) >= c.guard_spike_window) {
    g.zscore = loss_zscore(state.loss_window, loss);
    if (g.zscore > c.guard_spike_zscore) {
      g.kind = GuardKind::kSpike;
      g.action = guard_action(c.guard_spike);
    }
  }
  if (comm.world_size() > 1) {
    double verdict[3] = {lead ? double(g.action) : 0.0, lead ? double(g.kind) : 0.0,
                         lead ? g.zscore : 0.0};
    comm.all_reduce_sum_host(verdict, 3);
    g.action = GuardAction(int(verdict[0]));
    g.kind = GuardKind(int(verdict[1]));
    g.zscore = verdict[2];
  }
  if (g.action == GuardAction::kNone) return g;
  g.what = g.kind == GuardKind::kNonFinite
               ? "non-finite loss or gradient at step " + std::to_string(step) + " (loss " +
                     num_text(loss) + ", gradient norm " + num_text(gnorm) + ")"
               : "loss spike at step " + std::to_string(step) + ": loss " + fmt("%.4f", loss, 0) +
                     " is " + fmt("%.1f", g.zscore, 0) + " standard deviations above the mean " +
                     "of the last " + std::to_string(c.guard_spike_window) +
                     " steps (guard.spike_zscore " + fmt("%g", c.guard_spike_zscore, 0) + ")";
  return g;
}

void stop_if_guard_ends_run(const GuardVerdict& g, const RecipeConfig& c, const TrainState& state) {
  if (g.action == GuardAction::kRollback && state.rollbacks >= c.guard_max_rollbacks)
    throw AgreedError(g.what + " after " + std::to_string(state.rollbacks) +
                      " rollbacks (guard.max_rollbacks " + std::to_string(c.guard_max_rollbacks) +
                      "; learning rate now x" + fmt("%g", state.lr_scale, 0) + ")" + kAdvice);
  if (g.action == GuardAction::kStop)
    throw AgreedError(g.what + kAdvice + " (" + g.key() +
                      ": skip or rollback carries a run past such steps)");
}

nlohmann::json guard_event(int64_t step, const GuardVerdict& g) {
  nlohmann::json event = {{"step", step},
                          {"guard", g.kind == GuardKind::kNonFinite ? "nonfinite" : "spike"},
                          {"action", guard_action_name(g.action)},
                          {"detail", g.what}};
  if (g.kind == GuardKind::kSpike) event["zscore"] = g.zscore;
  return event;
}

}  // namespace ftune
