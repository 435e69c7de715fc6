#include "engine/base/progress.h"

#include <unistd.h>

#include <cmath>

namespace ftune {

Progress::Progress(int64_t total, int64_t start, int64_t every, std::FILE* out)
    : total_(total),
      start_(start),
      every_(every > 0 ? every : 1),
      out_(out),
      tty_(isatty(fileno(out)) != 0),
      t0_(std::chrono::steady_clock::now()) {}

std::string Progress::format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  long t = long(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

void Progress::update(int64_t step, double loss, double lr, double tps) {
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  int64_t done = step - start_;
  double eta = done > 0 ? elapsed / double(done) * double(total_ - step) : NAN;
  char stats[160];
  std::snprintf(stats, sizeof stats, "step %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s",
                static_cast<long long>(step), static_cast<long long>(total_), loss, lr, tps,
                format_duration(eta).c_str());
  if (tty_) {
    const int width = 24;
    int filled = total_ > 0 ? int(double(width) * double(step) / double(total_)) : width;
    std::string bar(size_t(filled), '#');
    bar.resize(size_t(width), '.');
    std::fprintf(out_, "\r\033[K[%s] %s", bar.c_str(), stats);
    live_ = true;
  } else if (step % every_ == 0 || step == total_ || step == start_ + 1) {
    std::fprintf(out_, "%s\n", stats);
  }
  std::fflush(out_);
}

void Progress::message(const std::string& line) {
  if (live_) std::fprintf(out_, "\r\033[K");
  std::fprintf(out_, "%s\n", line.c_str());
  live_ = false;
  std::fflush(out_);
}

void Progress::finish() {
  if (live_) std::fprintf(out_, "\n");
  live_ = false;
  std::fflush(out_);
}

}  // namespace ftune
