// What a run tells the user and writes down: messages (through the live progress line while it
// is drawn), the progress line itself, and metrics.jsonl, one line per step (rank 0 only).
#pragma once
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "engine/base/progress.h"

namespace ftune {

class RunLog {
 public:
  // Writes nothing when !lead; prints nothing when quiet.
  RunLog(std::string metrics_path, bool lead, bool quiet);
  const std::string& metrics_path() const { return path_; }

  void say(const std::string& line);
  // metrics.jsonl: emptied for a fresh run, trimmed to `step` for a resumed one, then opened
  // for appending. trim_to also serves a rollback mid-run.
  void start_fresh();
  void trim_to(int64_t step);
  void open();
  void write(const nlohmann::json& line);

  void start_progress(int64_t total_steps, int64_t start_step, int64_t log_every);
  void update_progress(int64_t step, double loss, double lr, double tokens_per_s);
  void finish_progress();  // the line stays; later messages print plainly
  void end_progress();     // finished and gone

 private:
  std::string path_;
  bool lead_, quiet_;
  std::ofstream metrics_;
  std::optional<Progress> live_;  // exists while the step loop draws its line
};

// metrics.jsonl keeps one line per step; on resume the lines past the checkpoint are dropped so
// the file reads like one uninterrupted run.
void trim_metrics(const std::string& path, int64_t keep_through_step);

// printf of up to two numbers into a short string.
std::string fmt(const char* f, double a, double b);
// std::to_string's text for a finite value; "nan" / "inf" / "-inf" otherwise (to_string
// would print "-nan" for some NaNs).
std::string num_text(double x);

}  // namespace ftune
