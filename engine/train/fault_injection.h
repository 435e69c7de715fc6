// Fault injection for tests only, in one place. Each hook is read from the environment once per
// run and does nothing unless its variable is set.
#pragma once
#include <cstdint>

namespace ftune {

struct FaultInjection {
  int64_t signal_at_step = -1;   // FTUNE_TEST_SIGNAL_AT_STEP: SIGTERM to this process at step N
  int hang_rank = -1;            // FTUNE_TEST_HANG_RANK: rank R stops answering at step 2
  int64_t nan_at_step = -1;      // FTUNE_TEST_NAN_AT_STEP: a NaN in rank 0's gradients, once
  int64_t spike_at_step = -1;    // FTUNE_TEST_SPIKE_AT_STEP: rank 0's loss x1000, once
  int export_fail_at_unit = -1;  // FTUNE_TEST_EXPORT_FAIL_AT_UNIT: rank 0's ZeRO-3 export
                                 // write fails as that unit comes up

  static FaultInjection from_env();
  // Before the step's forward passes: the signal, or this rank hanging for good.
  void before_forward(int64_t step, int rank) const;
  // True once, at the step named (on every rank): a rollback replaying that step then trains
  // through it.
  bool take_nan(int64_t step);
  bool take_spike(int64_t step);
};

}  // namespace ftune
