#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/cli/commands.h"
#include "engine/recipe/recipe.h"
#include "engine/trust/manifest.h"

namespace fs = std::filesystem;

namespace ftune::cli {

namespace {

// Fills {{name}} fields; a line whose fields are all empty values is dropped (an unset
// --partition leaves no `#SBATCH --partition=` line behind).
std::string render(const std::string& tmpl, const std::map<std::string, std::string>& values,
                   const std::string& file) {
  std::istringstream in(tmpl);
  std::string line, out;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    bool dropped = false;
    std::string r;
    size_t at = 0;
    while (true) {
      const size_t open = line.find("{{", at);
      if (open == std::string::npos) {
        r += line.substr(at);
        break;
      }
      const size_t close = line.find("}}", open);
      if (close == std::string::npos)
        throw Error(file + ":" + std::to_string(line_no) + ": unclosed '{{'");
      const std::string key = line.substr(open + 2, close - open - 2);
      auto it = values.find(key);
      if (it == values.end())
        throw Error(file + ":" + std::to_string(line_no) + ": unknown field {{" + key + "}}");
      if (it->second.empty()) dropped = true;
      r += line.substr(at, open - at) + it->second;
      at = close + 2;
    }
    if (!dropped) out += r + "\n";
  }
  return out;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace

void add_submit(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand("submit", "Submit a recipe as a Slurm batch job (sbatch)");
  struct Opts {
    std::string recipe, partition, account, time = "24:00:00", job_name, tmpl;
    std::vector<std::string> overrides;
    int nodes = 1, gpus_per_node = 0, tasks_per_node = 0, cpus_per_task = 0;
    bool dry_run = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("recipe", o->recipe, "Recipe YAML file")->required();
  cmd->add_option("overrides", o->overrides, "Overrides as key=value");
  cmd->add_option("--nodes", o->nodes, "Nodes")->check(CLI::PositiveNumber);
  cmd->add_option("--gpus-per-node", o->gpus_per_node, "GPUs per node (0: CPU ranks)");
  cmd->add_option("--tasks-per-node", o->tasks_per_node,
                  "Ranks per node (default: one per GPU, else 1)");
  cmd->add_option("--cpus-per-task", o->cpus_per_task, "CPU cores per rank");
  cmd->add_option("--partition", o->partition, "Slurm partition");
  cmd->add_option("--account", o->account, "Slurm account");
  cmd->add_option("--time", o->time, "Time limit (Slurm format, e.g. 24:00:00)");
  cmd->add_option("--job-name", o->job_name, "Job name (default: the recipe's file name)");
  cmd->add_option("--template", o->tmpl, "sbatch template (default: configs/cluster/slurm.sbatch)");
  cmd->add_flag("--dry-run", o->dry_run, "Write and print the script, do not submit");
  cmd->footer(
      "The script goes to OUTPUT_DIR/submit.sbatch, logs to OUTPUT_DIR/slurm-logs/. The job\n"
      "requeues itself when preempted and resumes from its latest checkpoint.\n"
      "Examples:\n"
      "  ftune submit my.yaml --nodes 2 --gpus-per-node 8 --partition gpu --time 12:00:00\n"
      "  ftune submit my.yaml --tasks-per-node 2 --dry-run");
  cmd->callback([o, action] {
    *action = [o] {
      const Recipe r = load_recipe(o->recipe, o->overrides);  // validates before anything runs
      const std::string out = r.cfg.output_dir;
      std::string tmpl = o->tmpl;
      if (tmpl.empty()) tmpl = std::string(FTUNE_SOURCE_DIR) + "/configs/cluster/slurm.sbatch";
      if (!path_exists(tmpl))
        throw Error("submit: template '" + tmpl + "' not found (pass --template FILE)");
      std::string overrides;
      for (const auto& kv : o->overrides)
        overrides += (overrides.empty() ? "" : " ") + shell_quote(kv);
      const int tasks =
          o->tasks_per_node > 0 ? o->tasks_per_node : (o->gpus_per_node > 0 ? o->gpus_per_node : 1);
      const std::map<std::string, std::string> values = {
          {"job_name", o->job_name.empty() ? fs::path(o->recipe).stem().string() : o->job_name},
          {"nodes", std::to_string(o->nodes)},
          {"tasks_per_node", std::to_string(tasks)},
          {"gpus_per_node", o->gpus_per_node > 0 ? std::to_string(o->gpus_per_node) : ""},
          {"cpus_per_task", o->cpus_per_task > 0 ? std::to_string(o->cpus_per_task) : ""},
          {"partition", o->partition},
          {"account", o->account},
          {"time", o->time},
          {"log_dir", out + "/slurm-logs"},
          {"ftune", shell_quote(self_binary())},
          {"recipe", shell_quote(fs::absolute(o->recipe).string())},
          {"overrides", overrides.empty() ? " " : overrides}};
      const std::string script = render(read_file(tmpl), values, tmpl);
      fs::create_directories(out + "/slurm-logs");
      const std::string path = out + "/submit.sbatch";
      write_file_atomic(path, script);
      if (o->dry_run) {
        std::printf("%s\n(dry run: written to %s, not submitted)\n", script.c_str(), path.c_str());
        return 0;
      }
      FILE* p = popen(("sbatch --parsable " + shell_quote(path) + " 2>&1").c_str(), "r");
      if (!p) throw Error("submit: cannot run sbatch");
      std::string reply;
      char buf[256];
      while (fgets(buf, sizeof buf, p)) reply += buf;
      const int rc = pclose(p);
      while (!reply.empty() && (reply.back() == '\n' || reply.back() == ' ')) reply.pop_back();
      if (rc != 0)
        throw Error("submit: sbatch failed: " + (reply.empty() ? "is Slurm installed?" : reply) +
                    " (the script is in " + path + ")");
      // --parsable prints "id" or "id;cluster" last; warnings (stderr) may come before it.
      const size_t nl = reply.rfind('\n');
      const std::string last = nl == std::string::npos ? reply : reply.substr(nl + 1);
      const std::string job = last.substr(0, last.find(';'));
      if (nl != std::string::npos) std::printf("%s\n", reply.substr(0, nl).c_str());
      if (job.empty() || job.find_first_not_of("0123456789") != std::string::npos)
        throw Error("submit: sbatch answered '" + reply + "', not a job id (the script is in " +
                    path + ")");
      // `ftune status` reads the newest job id from here (a pending job has no log yet).
      std::string jobs;
      if (path_exists(out + "/slurm-logs/jobs")) jobs = read_file(out + "/slurm-logs/jobs");
      write_file_atomic(out + "/slurm-logs/jobs",
                        jobs + job + " " + utc_timestamp(std::chrono::system_clock::now()) + "\n");
      std::printf("submitted job %s\nscript: %s\nlogs:   %s/slurm-logs/slurm-%s.out\n", job.c_str(),
                  path.c_str(), out.c_str(), job.c_str());
      return 0;
    };
  });
}

}  // namespace ftune::cli
