#include "engine/train/job.h"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/threads.h"
#include "engine/train/checkpoint.h"
#include "engine/trust/signing.h"

namespace fs = std::filesystem;

namespace ftune {

namespace {

// Ranks of this job on this node (mpirun / torchrun say; else 1).
int local_ranks() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE"})
    if (const char* s = std::getenv(v)) return std::max(1, std::atoi(s));
  return 1;
}

// Files and folders a run writes into output_dir; --force removes only these.
const char* const kRunEntries[] = {"checkpoints", "model",        "adapter",     "metrics.jsonl",
                                   "recipe.yaml", "summary.json", "memory.json", "submit.sbatch",
                                   "slurm-logs",  "report.html"};

// What `ftune submit` puts in output_dir before the job starts: not a run yet, and kept.
bool is_submit_entry(const std::string& name) {
  return name == "submit.sbatch" || name == "slurm-logs";
}

bool is_run_entry(const std::string& name) {
  for (const char* e : kRunEntries)
    if (name == e) return true;
  return false;
}

// "<entry>.tmp.<pid>": what an atomic write of a run entry leaves when the process is killed
// mid-way (write_file_atomic, export). Ours, and garbage once no run is writing.
bool is_run_temp(const std::string& name) {
  const size_t t = name.find(".tmp.");
  return t != std::string::npos && t > 0 && is_run_entry(name.substr(0, t));
}

// Decides what to do with output_dir before anything is written. Returns the checkpoint to
// resume from ("" for a fresh start).
std::string prepare_output_dir(const Recipe& r, const TrainOptions& opt) {
  const std::string& out = r.cfg.output_dir;
  std::vector<std::string> entries, foreign;
  if (fs::exists(out)) {
    if (!fs::is_directory(out))
      throw Error("output_dir '" + out + "' exists and is not a directory");
    for (const auto& e : fs::directory_iterator(out)) {
      std::string n = e.path().filename().string();
      if (is_run_temp(n)) {
        fs::remove_all(e.path());
        continue;
      }
      entries.push_back(n);
      if (!is_run_entry(n) && n.rfind("model.", 0) != 0 && n.rfind("adapter.", 0) != 0)
        foreign.push_back(n);
    }
  }
  const bool empty =
      std::all_of(entries.begin(), entries.end(), [](const auto& n) { return is_submit_entry(n); });
  std::string same_run;  // latest checkpoint of a run started by this very recipe
  std::string stored_recipe = out + "/recipe.yaml";
  // The same recipe up to run-control keys (log.every, checkpoint cadence, guards, export format,
  // threads, ...), which may change when a run is resumed; a recipe.yaml that no longer loads
  // counts as a different recipe.
  std::optional<RecipeConfig> stored;
  if (path_exists(stored_recipe)) {
    try {
      stored = load_recipe(stored_recipe).cfg;
    } catch (const Error&) {
    }
  }
  const bool same_recipe = stored && recipe_identity_yaml(*stored) == r.identity_yaml;
  auto changes = [&](bool run_control) {
    std::string s;
    if (!stored) return s;
    for (const std::string& d : recipe_differences(*stored, r.cfg, run_control))
      s += (s.empty() ? "" : "; ") + d;
    return s;
  };
  std::optional<std::string> latest;
  try {
    if (!empty) latest = latest_checkpoint(out);
  } catch (const Error&) {
    if (!opt.force) throw;  // a damaged pointer must not block starting over
  }

  auto refuse_foreign = [&](const char* flag) {
    if (!foreign.empty())
      throw Error(std::string(flag) + ": output_dir '" + out +
                  "' holds files ftune did not write (" + foreign.front() +
                  (foreign.size() > 1 ? ", ..." : "") +
                  "); refusing to delete them: choose another output_dir");
  };
  if ((opt.resume || opt.auto_resume) && same_recipe && !latest && !empty) {
    // A run of this recipe that ended (crashed, was killed) before its first checkpoint: there
    // is nothing to continue, so it starts over; resuming must not fail on such a directory.
    refuse_foreign(opt.resume ? "--resume" : "--auto-resume");
    for (const auto& n : entries)
      if (!is_submit_entry(n)) fs::remove_all(fs::path(out) / n);
    if (!opt.quiet)
      std::fprintf(stderr, "%s: no checkpoint yet in '%s': starting the run over\n",
                   opt.resume ? "--resume" : "--auto-resume", out.c_str());
    return "";
  }
  auto resuming = [&](const char* flag) {
    const std::string changed = changes(true);
    if (!changed.empty() && !opt.quiet)
      std::fprintf(stderr, "%s: continuing with changed run settings: %s\n", flag, changed.c_str());
    return *latest;
  };
  if (opt.auto_resume && !opt.resume && same_recipe && latest) return resuming("--auto-resume");
  if (opt.resume) {
    if (!latest)
      throw Error("--resume: output_dir '" + out + "' holds no checkpoint to resume from");
    if (!same_recipe) {
      const std::string changed = changes(false);
      throw Error("--resume: the recipe differs from the one that started the run in '" + out +
                  "'" + (changed.empty() ? "" : " (" + changed + ")") + "; compare it with " +
                  stored_recipe + ". Only run settings (logging, checkpoint cadence, guards, " +
                  "export format, threads, timeouts) may change on resume: resume with the " +
                  "same training settings, or pass --force to start over");
    }
    return resuming("--resume");
  }
  if (empty) return "";
  if (!opt.force) {
    if (same_recipe && latest)
      throw Error("output_dir '" + out + "' already holds a run of this recipe (latest " +
                  fs::path(*latest).filename().string() +
                  "): pass --resume to continue it or --force to start over");
    throw Error("output_dir '" + out + "' is not empty: choose another output_dir, or pass " +
                "--force to replace the run in it");
  }
  refuse_foreign("--force");
  for (const auto& n : entries)
    if (!is_submit_entry(n)) fs::remove_all(fs::path(out) / n);
  return "";
}

}  // namespace

Job open_job(const Recipe& recipe, const TrainOptions& given, Communicator& comm,
             const DeviceChoice& dev) {
  const RecipeConfig& c = recipe.cfg;
  Job job;
  job.recipe = &recipe;
  job.cfg = &c;
  job.dev = dev;
  job.lead = comm.rank() == 0;
  job.opt = given;
  if (!job.lead) job.opt.quiet = true;

  if (!fs::is_directory(c.model_path))
    throw Error("model.path: '" + c.model_path + "' is not a directory; point it at a Hugging " +
                "Face model directory (config.json, *.safetensors, tokenizer.json)");
  for (const auto& [key, path] :
       {std::pair{"data.train", c.data_train}, {"data.validation", c.data_validation}})
    if (!path.empty() && !fs::is_regular_file(path))
      throw Error(std::string(key) + ": file '" + path + "' does not exist");
  job.be = make_backend(dev);
  comm.use_stream(job.be->native_stream());  // NCCL orders its collectives against the run's stream
  // Cores are shared by the ranks on a node unless the recipe says how many threads each gets.
  // OpenBLAS may round GEMMs differently for another thread count, so a resume is bitwise only
  // with the same threads (docs/reliability.md, "What is bitwise, and where").
  job.threads =
      c.threads > 0 ? int(c.threads) : std::max(1, resolve_threads(0) / std::max(1, local_ranks()));
  omp_set_num_threads(job.threads);
  job.wall_start = std::chrono::system_clock::now();
  // Bad keys must fail now, not after hours of training.
  if (!c.export_sign_key.empty()) (void)public_key_sha256(c.export_sign_key);
  job.out_key = load_key_option(c.export_encrypt_key_file, c.export_encrypt_key_env);
  job.base_key = load_key_option(c.model_key_file, c.model_key_env);
  if (job.lead) {
    job.resume_from = prepare_output_dir(recipe, job.opt);
    fs::create_directories(c.output_dir);
    remove_checkpoint_temps(c.output_dir);  // left by a run killed while writing one
  }
  comm.barrier();
  if (!job.lead && (job.opt.resume || job.opt.auto_resume))
    job.resume_from = latest_checkpoint(c.output_dir).value_or("");
  // Checkpoints carry the hash of what the run computes, so run settings may change on resume.
  job.recipe_sha = sha256_hex(recipe.identity_yaml);
  return job;
}

}  // namespace ftune
