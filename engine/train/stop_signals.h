// Stop requests from outside (SIGTERM, SIGINT, SIGUSR1): noted by a handler, honoured by the
// step loop at the next step boundary on every rank at once (checkpoint, then return).
#pragma once
#include <signal.h>

namespace ftune {

// Installs the stop handlers for the life of a run and restores the previous ones after.
// SIGXFSZ is ignored meanwhile: over a file-size limit (ulimit -f) a write then fails with
// EFBIG, which a checkpoint reports per checkpoint.on_error, instead of the signal killing the
// process mid-write.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_[3]{};
  struct sigaction old_xfsz_ {};
};

// The signal that asked the run to stop, or 0. Read once per step.
int stop_signal();

}  // namespace ftune
