#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"
#include "engine/cli/commands.h"
#include "engine/train/checkpoint.h"

namespace fs = std::filesystem;

namespace ftune::cli {

namespace {

// "RUNNING", "PENDING (BeginTime)", "COMPLETED", ... from squeue; "" when Slurm's commands are
// missing, the controller does not answer within a few seconds or no longer knows the job.
std::string slurm_job_state(const std::string& job) {
  const std::string cmd = "command -v squeue >/dev/null 2>&1 && timeout 10 squeue -h -j " + job +
                          " --states=all -o '%T|%r' 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return "";
  std::string reply;
  char buf[256];
  while (fgets(buf, sizeof buf, p)) reply += buf;
  if (pclose(p) != 0) return "";
  reply = reply.substr(0, reply.find('\n'));
  const size_t bar = reply.find('|');
  if (bar == std::string::npos || bar == 0) return "";
  const std::string state = reply.substr(0, bar), reason = reply.substr(bar + 1);
  return reason.empty() || reason == "None" ? state : state + " (" + reason + ")";
}

}  // namespace

// `ftune status OUTPUT_DIR`: where a run stands, from what it wrote (metrics, checkpoints,
// summary, the Slurm job script and logs) — without loading any weights.
void add_status(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand("status", "Summarise a run: step, losses, checkpoint, job");
  auto dir = std::make_shared<std::string>();
  cmd->add_option("output_dir", *dir, "The run's output_dir")->required();
  cmd->footer("Example:\n  ftune status runs/quickstart");
  cmd->callback([dir, action] {
    *action = [dir] {
      const std::string d = *dir;
      if (!fs::is_directory(d)) throw Error("status: '" + d + "' is not a directory");
      std::printf("run:        %s\n", d.c_str());
      nlohmann::json last, last_val;
      int64_t lines = 0;
      if (path_exists(d + "/metrics.jsonl")) {
        std::istringstream in(read_file(d + "/metrics.jsonl"));
        std::string line;
        while (std::getline(in, line)) {
          try {
            auto j = parse_json_bounded(line, d + "/metrics.jsonl");
            // Guard and checkpoint events share the file; only step lines carry a loss.
            if (!j.contains("loss")) continue;
            last = j;
            if (j.contains("val_loss")) last_val = j;
            ++lines;
          } catch (const std::exception&) {
            // a torn last line from a crash: the lines before it still tell the story
          }
        }
      }
      int64_t total = 0;
      std::optional<std::string> latest;
      try {
        latest = latest_checkpoint(d);
      } catch (const Error& e) {
        std::printf("checkpoint: damaged pointer (%s)\n", e.what());
      }
      if (latest) {
        const TrainState st = train_state_from_json(
            parse_json_bounded(read_file(*latest + "/state.json"), *latest + "/state.json"),
            *latest + "/state.json");
        total = st.total_steps;
        std::printf("checkpoint: %s (step %lld, %lld tokens)\n", latest->c_str(),
                    static_cast<long long>(st.step), static_cast<long long>(st.tokens_seen));
      } else {
        std::printf("checkpoint: none yet\n");
      }
      if (!last.is_null()) {
        std::printf("step:       %lld%s\n", static_cast<long long>(last.value("step", 0LL)),
                    total > 0 ? (" of " + std::to_string(total)).c_str() : "");
        std::printf("train loss: %.4f  (lr %.3g, %.0f tokens/s)\n", last.value("loss", 0.0),
                    last.value("lr", 0.0), last.value("tokens_per_s", 0.0));
      } else {
        std::printf("step:       not started (no metrics yet)\n");
      }
      if (!last_val.is_null())
        std::printf("val loss:   %.4f at step %lld\n", last_val.value("val_loss", 0.0),
                    static_cast<long long>(last_val.value("step", 0LL)));
      const bool done = path_exists(d + "/summary.json");
      std::printf("state:      %s\n", done        ? "finished (summary.json written)"
                                      : lines > 0 ? "stopped or running (no summary yet; "
                                                    "`ftune train ... --resume` continues it)"
                                                  : "not started");
      for (const char* out : {"model", "adapter"})
        if (fs::is_directory(d + "/" + out)) std::printf("output:     %s/%s\n", d.c_str(), out);
      if (path_exists(d + "/submit.sbatch")) {
        // The newest job `ftune submit` recorded, its log, and its state while Slurm knows it.
        std::string job;
        if (path_exists(d + "/slurm-logs/jobs")) {
          std::istringstream in(read_file(d + "/slurm-logs/jobs"));
          std::string line;
          while (std::getline(in, line))
            if (!line.empty()) job = line.substr(0, line.find(' '));
        } else {  // submitted by hand: the newest slurm-JOBID.out names the job
          fs::file_time_type when{};
          std::error_code ec;
          for (const auto& e : fs::directory_iterator(d + "/slurm-logs", ec)) {
            const std::string n = e.path().filename().string();
            if (e.is_regular_file() && n.rfind("slurm-", 0) == 0 && n.size() > 10 &&
                n.substr(n.size() - 4) == ".out" && (job.empty() || e.last_write_time() > when)) {
              job = n.substr(6, n.size() - 10);
              when = e.last_write_time();
            }
          }
        }
        if (job.empty() || job.find_first_not_of("0123456789") != std::string::npos) {
          std::printf("slurm:      %s (not submitted)\n", (d + "/submit.sbatch").c_str());
        } else {
          const std::string state = slurm_job_state(job);
          const std::string log = d + "/slurm-logs/slurm-" + job + ".out";
          std::printf("slurm:      job %s%s%s, script %s\n", job.c_str(), state.empty() ? "" : ": ",
                      state.c_str(), (d + "/submit.sbatch").c_str());
          std::printf("slurm log:  %s\n", path_exists(log) ? log.c_str() : "none yet");
        }
      }
      return 0;
    };
  });
}

}  // namespace ftune::cli
