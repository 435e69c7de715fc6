// Step progress: a live line redrawn in place on a terminal (bar, step/total, loss, lr,
// tokens/s, ETA), plain periodic lines otherwise (logs, CI, pipes).
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace ftune {

class Progress {
 public:
  Progress(int64_t total_steps, int64_t start_step, int64_t log_every, std::FILE* out = stderr);
  void update(int64_t step, double loss, double lr, double tokens_per_s);
  // A line that must not be overwritten by the live bar (eval results, checkpoints).
  void message(const std::string& line);
  void finish();
  static std::string format_duration(double seconds);

 private:
  int64_t total_, start_, every_;
  std::FILE* out_;
  bool tty_;
  bool live_ = false;  // a live line is on screen
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace ftune
