#include "engine/train/fault_injection.h"

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>

namespace ftune {

namespace {

int64_t env_int(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoll(v) : -1;
}

}  // namespace

FaultInjection FaultInjection::from_env() {
  FaultInjection f;
  f.signal_at_step = env_int("FTUNE_TEST_SIGNAL_AT_STEP");
  f.hang_rank = int(env_int("FTUNE_TEST_HANG_RANK"));
  f.nan_at_step = env_int("FTUNE_TEST_NAN_AT_STEP");
  f.spike_at_step = env_int("FTUNE_TEST_SPIKE_AT_STEP");
  f.export_fail_at_unit = int(env_int("FTUNE_TEST_EXPORT_FAIL_AT_UNIT"));
  return f;
}

void FaultInjection::before_forward(int64_t step, int rank) const {
  if (step == signal_at_step) std::raise(SIGTERM);
  if (hang_rank == rank && step == 2)
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

bool FaultInjection::take_nan(int64_t step) {
  if (step != nan_at_step) return false;
  nan_at_step = -1;
  return true;
}

bool FaultInjection::take_spike(int64_t step) {
  if (step != spike_at_step) return false;
  spike_at_step = -1;
  return true;
}

}  // namespace ftune
