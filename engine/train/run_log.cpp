#include "engine/train/run_log.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"

namespace ftune {

RunLog::RunLog(std::string metrics_path, bool lead, bool quiet)
    : path_(std::move(metrics_path)), lead_(lead), quiet_(quiet) {}

void RunLog::say(const std::string& s) {
  if (quiet_) return;
  if (live_)
    live_->message(s);
  else
    std::fprintf(stderr, "%s\n", s.c_str());
}

void RunLog::start_fresh() {
  if (lead_) write_file_atomic(path_, "");
}

void RunLog::trim_to(int64_t step) {
  if (!lead_) return;
  const bool was_open = metrics_.is_open();
  if (was_open) metrics_.close();
  trim_metrics(path_, step);
  if (was_open) metrics_.open(path_, std::ios::app);
}

void RunLog::open() {
  if (lead_) metrics_.open(path_, std::ios::app);
}

void RunLog::write(const nlohmann::json& line) {
  if (!lead_) return;
  metrics_ << line.dump() << "\n";
  metrics_.flush();
}

void RunLog::start_progress(int64_t total_steps, int64_t start_step, int64_t log_every) {
  if (!quiet_) live_.emplace(total_steps, start_step, log_every, stderr);
}

void RunLog::update_progress(int64_t step, double loss, double lr, double tokens_per_s) {
  if (live_) live_->update(step, loss, lr, tokens_per_s);
}

void RunLog::finish_progress() {
  if (live_) live_->finish();
}

void RunLog::end_progress() {
  finish_progress();
  live_.reset();
}

void trim_metrics(const std::string& path, int64_t keep_through_step) {
  if (!path_exists(path)) return;
  std::istringstream in(read_file(path));
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      auto j = parse_json_bounded(line, path);
      if (j.value("step", int64_t(0)) <= keep_through_step) kept += line + "\n";
    } catch (const std::exception&) {
      // a torn last line from a crash: drop it
    }
  }
  write_file_atomic(path, kept);
}

std::string fmt(const char* f, double a, double b) {
  char buf[128];
  std::snprintf(buf, sizeof buf, f, a, b);
  return buf;
}

std::string num_text(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  return std::to_string(x);
}

}  // namespace ftune
