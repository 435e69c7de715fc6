#include "engine/train/stop_signals.h"

#include <unistd.h>

#include <atomic>
#include <iterator>

namespace ftune {

namespace {

std::atomic<int> g_stop_signal{0};

constexpr int kSignals[] = {SIGTERM, SIGINT, SIGUSR1};

extern "C" void on_stop_signal(int sig) {
  // A second Ctrl-C while the first is being honoured ends the process at once. TERM and USR1
  // may arrive twice for one request (Slurm signals the ranks and srun forwards its own copy):
  // they keep the first request.
  int expected = 0;
  if (!g_stop_signal.compare_exchange_strong(expected, sig) && sig == SIGINT) _exit(128 + sig);
}

}  // namespace

StopSignals::StopSignals() {
  static_assert(std::size(kSignals) == 3, "old_ holds one action per signal");
  g_stop_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &sa, &old_[i]);
  struct sigaction ign {};
  ign.sa_handler = SIG_IGN;
  sigemptyset(&ign.sa_mask);
  sigaction(SIGXFSZ, &ign, &old_xfsz_);
}

StopSignals::~StopSignals() {
  for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &old_[i], nullptr);
  sigaction(SIGXFSZ, &old_xfsz_, nullptr);
}

int stop_signal() {
  return g_stop_signal.load();
}

}  // namespace ftune
