#include "engine/train/trainer.h"

#include <omp.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "engine/model/peft_adapter.h"
#include "engine/train/checkpoint.h"
#include "engine/dist/communicator.h"
#include "engine/device/device.h"
#include "engine/trust/encryption.h"
#include "engine/base/error.h"
#include "engine/model/hf_export.h"
#include "engine/base/fs_util.h"
#include "engine/infer/generate.h"
#include "engine/base/json_limits.h"
#include "engine/dist/launch_env.h"
#include "engine/trust/manifest.h"
#include "engine/tools/plan.h"
#include "engine/base/progress.h"
#include "engine/report/report.h"
#include "engine/formats/safetensors.h"
#include "engine/train/schedule.h"
#include "engine/trust/signing.h"
#include "engine/text/tokenizer.h"
#include "engine/data/train_data.h"
#include "engine/zero/zero_shards.h"

namespace fs = std::filesystem;

namespace ftune {

// Ranks of this job on this node (mpirun / torchrun say; else 1).
int local_ranks() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE"})
    if (const char* s = std::getenv(v)) return std::max(1, std::atoi(s));
  return 1;
}

int resolve_threads(int64_t requested) {
  if (requested > 0) return int(requested);
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? int(n) : 1;
}

EvalResult evaluate(Model& model, const BlockDataset& data, int64_t micro_batch,
                    int64_t max_batches, int threads) {
  ExecContext ctx;
  ctx.threads = threads;
  double loss = 0;
  int64_t tokens = 0, batches = 0;
  for (int64_t b0 = 0; b0 < data.num_blocks(); b0 += micro_batch) {
    if (max_batches > 0 && batches >= max_batches) break;
    std::vector<int64_t> ids;
    for (int64_t b = b0; b < std::min(b0 + micro_batch, data.num_blocks()); ++b) ids.push_back(b);
    LossSum ls = model.forward_loss(ctx, data.make_batch(ids));
    loss += ls.loss;
    tokens += ls.tokens;
    ++batches;
  }
  EvalResult r;
  r.tokens = tokens;
  r.loss = tokens > 0 ? loss / double(tokens) : NAN;
  r.perplexity = std::exp(r.loss);
  return r;
}

EvalResult evaluate(Model& model, const TrainData& data, int64_t max_batches, int threads) {
  ExecContext ctx;
  ctx.threads = threads;
  double loss = 0;
  int64_t tokens = 0;
  const int64_t n =
      max_batches > 0 ? std::min(max_batches, data.val_batches()) : data.val_batches();
  for (int64_t i = 0; i < n; ++i) {
    LossSum ls = model.forward_loss(ctx, data.val_batch(i));
    loss += ls.loss;
    tokens += ls.tokens;
  }
  EvalResult r;
  r.tokens = tokens;
  r.loss = tokens > 0 ? loss / double(tokens) : NAN;
  r.perplexity = std::exp(r.loss);
  return r;
}

namespace {

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

std::vector<ParamSpan> decay_spans(const Model& model, const RecipeConfig& c) {
  // Adapters are all matrices: one span, decayed like weights.
  if (model.has_lora()) return {{0, model.num_train_params(), float(c.weight_decay)}};
  const ParamLayout& lay = model.layout();
  std::vector<ParamSpan> spans;
  for (const auto& e : lay.entries()) {
    float wd = 0.f;
    switch (e.kind) {
      case ParamKind::Weight:
      case ParamKind::Head:
        wd = float(c.weight_decay);
        break;
      case ParamKind::Norm:
      case ParamKind::Bias:
        wd = c.decay_norms_and_biases ? float(c.weight_decay) : 0.f;
        break;
      case ParamKind::Embedding:
        wd = c.decay_embeddings ? float(c.weight_decay) : 0.f;
        break;
    }
    // Merge neighbours with the same decay (alignment padding between them is inert zeros).
    if (!spans.empty() && spans.back().weight_decay == wd) {
      spans.back().count = e.offset + e.count - spans.back().offset;
    } else {
      spans.push_back({e.offset, e.count, wd});
    }
  }
  return spans;
}

// metrics.jsonl keeps one line per step; on resume the lines past the checkpoint are dropped so
// the file reads like one uninterrupted run.
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

size_t lora_param_count(const Model& m) {
  size_t n = 0;
  for (const auto& e : m.lora_layout().entries()) n += e.count;
  return n;
}

std::string fmt(const char* f, double a, double b) {
  char buf[128];
  std::snprintf(buf, sizeof buf, f, a, b);
  return buf;
}

}  // namespace

std::optional<LoraConfig> recipe_lora_config(const RecipeConfig& c) {
  if (c.method != "lora") return std::nullopt;
  LoraConfig lc;
  lc.rank = c.lora_rank;
  lc.alpha = c.lora_alpha;
  lc.dropout = c.lora_dropout;
  lc.rslora = c.lora_rslora;
  lc.init = c.lora_init;
  std::vector<std::string> names;
  std::string cur;
  for (char ch : c.lora_targets + ",") {
    if (ch == ',') {
      while (!cur.empty() && cur.back() == ' ') cur.pop_back();
      if (!cur.empty()) names.push_back(cur);
      cur.clear();
    } else if (ch != ' ' || !cur.empty()) {
      cur += ch;
    }
  }
  lc.targets = parse_lora_targets(names, "lora.targets");
  return lc;
}

namespace {

// Set by the signal handler; read once per step.
std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  // A second Ctrl-C while the first is being honoured ends the process at once. TERM and USR1
  // may arrive twice for one request (Slurm signals the ranks and srun forwards its own copy):
  // they keep the first request.
  int expected = 0;
  if (!g_stop_signal.compare_exchange_strong(expected, sig) && sig == SIGINT) _exit(128 + sig);
}

// Installs the stop handlers for the life of a run and restores the previous ones after.
// SIGXFSZ is ignored meanwhile: over a file-size limit (ulimit -f) a write then fails with
// EFBIG, which a checkpoint reports per checkpoint.on_error, instead of the signal killing the
// process mid-write.
class StopSignals {
 public:
  StopSignals() {
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
  ~StopSignals() {
    for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &old_[i], nullptr);
    sigaction(SIGXFSZ, &old_xfsz_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  static constexpr int kSignals[] = {SIGTERM, SIGINT, SIGUSR1};
  struct sigaction old_[3]{};
  struct sigaction old_xfsz_ {};
};

// An error every rank raises in the same step, having agreed on it through a collective (a
// failed checkpoint, a guard stopping the run): the ranks end together and cleanly, so none is
// aborted while another still prints why.
class AgreedError : public Error {
 public:
  using Error::Error;
};

// ZeRO-3 export: rank 0 writes the model while every rank gathers one unit after another to it
// (export_weights_dir asks for them in order). Should rank 0's write fail, it still serves the
// remaining gathers, and every rank then ends with the error together.
void export_sharded(ZeroShards& zero, const Model& model, Communicator& comm,
                    const std::string& source_dir, const std::string& dir, DType dtype,
                    size_t max_shard, const WeightKey* key) {
  const int units = model.layout().num_units();
  int served = 0;  // units gathered so far, in order, on every rank
  std::string failure;
  // Tests: rank 0's write fails as unit FTUNE_TEST_EXPORT_FAIL_AT_UNIT comes up.
  const char* fail_env = std::getenv("FTUNE_TEST_EXPORT_FAIL_AT_UNIT");
  const int fail_at = fail_env ? std::atoi(fail_env) : -1;
  if (comm.rank() == 0) {
    auto unit_weights = [&](int u) -> const float* {
      if (u == fail_at) throw Error("injected export failure at unit " + std::to_string(u));
      // Counted before the call: once a gather's collective has run, a failure copying it out
      // on rank 0 still leaves that unit served on every rank.
      while (served < u) zero.gather_unit_to_root(served++);
      ++served;
      return zero.gather_unit_to_root(u);
    };
    try {
      export_weights_dir(model.config(), model.layout(), unit_weights, source_dir, dir, dtype,
                         max_shard, key);
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "unknown error";
    }
  }
  while (served < units) zero.gather_unit_to_root(served++);
  double failed = failure.empty() ? 0.0 : 1.0;
  comm.all_reduce_sum_host(&failed, 1);
  if (failed > 0)
    throw AgreedError(comm.rank() == 0 ? failure : "rank 0 could not write the model to " + dir);
}

// guard.nonfinite / guard.spike
enum class GuardAction { kNone = 0, kSkip = 1, kStop = 2, kRollback = 3 };

GuardAction guard_action(const std::string& policy) {
  if (policy == "skip") return GuardAction::kSkip;
  if (policy == "rollback") return GuardAction::kRollback;
  return GuardAction::kStop;
}

const char* guard_action_name(GuardAction a) {
  switch (a) {
    case GuardAction::kSkip:
      return "skip";
    case GuardAction::kStop:
      return "stop";
    case GuardAction::kRollback:
      return "rollback";
    case GuardAction::kNone:
      break;
  }
  return "none";
}

// How far `loss` lies above the window's mean, in standard deviations (0 when the window is
// flat: no scale to measure a spike by).
double loss_zscore(const std::vector<double>& window, double loss) {
  double mean = 0;
  for (double x : window) mean += x;
  mean /= double(window.size());
  double var = 0;
  for (double x : window) var += (x - mean) * (x - mean);
  const double sd = std::sqrt(var / double(window.size()));
  return sd > 0 ? (loss - mean) / sd : 0.0;
}

// std::to_string's text for a finite value; "nan" / "inf" / "-inf" otherwise (to_string
// would print "-nan" for some NaNs).
std::string num_text(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  return std::to_string(x);
}

// The number of a test hook's step from the environment, or -1.
int64_t env_step(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoll(v) : -1;
}

// report.html is a view of the run, not part of it: failing to write it is a warning, never a
// failed run. Returns the path, or "" after printing why not.
std::string write_report_or_warn(const std::string& output_dir) {
  try {
    return write_report(output_dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ftune: warning: report.html not written: %s\n", e.what());
    return "";
  }
}

TrainResult run_training_on(const Recipe& recipe, const TrainOptions& given, Communicator& comm,
                            const DeviceChoice& dev) {
  const RecipeConfig& c = recipe.cfg;
  // Rank 0 leads: it alone prepares output_dir, prints, and writes metrics, checkpoints and
  // outputs; every rank trains its share of each batch and holds the same weights.
  const bool lead = comm.rank() == 0;
  TrainOptions opt = given;
  if (!lead) opt.quiet = true;
  TrainResult result;
  result.lead = lead;

  // ---- job: inputs exist, device, threads, output directory ----
  if (!fs::is_directory(c.model_path))
    throw Error("model.path: '" + c.model_path + "' is not a directory; point it at a Hugging " +
                "Face model directory (config.json, *.safetensors, tokenizer.json)");
  for (const auto& [key, path] :
       {std::pair{"data.train", c.data_train}, {"data.validation", c.data_validation}})
    if (!path.empty() && !fs::is_regular_file(path))
      throw Error(std::string(key) + ": file '" + path + "' does not exist");
  std::unique_ptr<Backend> be = make_backend(dev);
  comm.use_stream(be->native_stream());  // NCCL orders its collectives against the run's stream
  // Cores are shared by the ranks on a node unless the recipe says how many threads each gets.
  const int threads =
      c.threads > 0 ? int(c.threads) : std::max(1, resolve_threads(0) / std::max(1, local_ranks()));
  omp_set_num_threads(threads);
  const auto wall_start = std::chrono::system_clock::now();
  // Bad keys must fail now, not after hours of training.
  if (!c.export_sign_key.empty()) (void)public_key_sha256(c.export_sign_key);
  const std::optional<WeightKey> out_key =
      load_key_option(c.export_encrypt_key_file, c.export_encrypt_key_env);
  const std::optional<WeightKey> base_key = load_key_option(c.model_key_file, c.model_key_env);
  const WeightKey* okey = out_key ? &*out_key : nullptr;
  std::string resume_from;
  if (lead) {
    resume_from = prepare_output_dir(recipe, opt);
    fs::create_directories(c.output_dir);
    remove_checkpoint_temps(c.output_dir);  // left by a run killed while writing one
  }
  comm.barrier();
  if (!lead && (opt.resume || opt.auto_resume))
    resume_from = latest_checkpoint(c.output_dir).value_or("");
  // Checkpoints carry the hash of what the run computes, so run settings may change on resume.
  const std::string recipe_sha = sha256_hex(recipe.identity_yaml);

  // ---- model + data ----
  ModelConfig mc = load_model_config(c.model_path);
  if (mc.sliding_window > 0 && c.seq_len > mc.sliding_window)
    throw Error("train.seq_len (" + std::to_string(c.seq_len) + ") exceeds the model's " +
                "sliding_window (" + std::to_string(mc.sliding_window) + "), which ftune's " +
                "attention does not apply: lower train.seq_len");
  Tokenizer tok = Tokenizer::load(c.model_path);
  if (tok.vocab_size() > mc.vocab_size)
    throw Error("the tokenizer in '" + c.model_path + "' has " + std::to_string(tok.vocab_size()) +
                " tokens but config.json vocab_size is " + std::to_string(mc.vocab_size));
  const std::optional<LoraConfig> lora = recipe_lora_config(c);

  // ---- ranks: ZeRO stage and the global batch ----
  const int world = comm.world_size();
  const int stage = c.sharding == "zero3" ? 3 : c.sharding == "zero2" ? 2 : c.sharding == "zero1";
  if (stage >= 2 && lora)
    throw Error("sharding: " + c.sharding + " splits a full fine-tune's weights and gradients; " +
                "with method: lora use zero1 (the adapters' state is small) or none");
  int64_t grad_accum = c.grad_accum;
  if (c.global_batch_size > 0) {
    const int64_t per = c.micro_batch_size * world;
    if (c.global_batch_size % per != 0)
      throw Error("train.global_batch_size (" + std::to_string(c.global_batch_size) +
                  " rows) is not a multiple of train.micro_batch_size x ranks (" +
                  std::to_string(c.micro_batch_size) + " x " + std::to_string(world) +
                  "): change one of them");
    grad_accum = c.global_batch_size / per;
  }
  // Everything the model needs is allocated here, up front: running out of memory is one clear
  // error now, with what to change, rather than a failure mid-run. Where the device says how
  // much is free, `ftune plan`'s prediction for this rank is checked against it first, so the
  // error names every part of what is needed.
  if (size_t free_b = 0, total_b = 0; be->memory_info(&free_b, &total_b)) {
    PlanInput in = plan_input_from_recipe(c, world);
    in.device = dev.kind;
    check_memory_fits(stage_memory(in, parse_sharding(c.sharding), comm.rank()), free_b, total_b,
                      dev.detail);
  }
  std::unique_ptr<ZeroShards> zero;
  std::unique_ptr<Model> model_ptr;
  try {
    if (stage >= 2)
      zero = std::make_unique<ZeroShards>(be.get(), comm, ParamLayout(mc), stage, threads,
                                          c.dist_overlap);
    model_ptr =
        std::make_unique<Model>(be.get(), mc, c.micro_batch_size * c.seq_len, true,
                                lora ? &*lora : nullptr, parse_recompute(c.recompute), zero.get());
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + "\nthe model does not fit on " + dev.detail +
                ": lower train.micro_batch_size or train.seq_len (raise train.grad_accum to keep " +
                "the batch), set train.recompute: full, or use method: lora");
  }
  Model& model = *model_ptr;
  // bf16 mixed precision: the backend computes products and attention in bf16 from the fp32
  // buffers; one rank keeps a bf16 copy of the weights that the optimizer step refreshes (with
  // several ranks collectives write the weights behind the backend's back, so each product
  // converts its weight instead).
  const Precision precision = resolve_precision(c.precision, dev.kind, "precision");
  size_t bf16_copy_bytes = 0;
  if (precision == Precision::Bf16) {
    if (!be->set_bf16_compute(true))
      throw Error("precision: bf16 needs bf16 tensor cores (an sm_80 or newer GPU), which " +
                  dev.detail + " lacks: set precision: fp32");
    if (world == 1 && model.params()) {
      be->set_weight_mirror(model.params(), model.num_params());
      bf16_copy_bytes = model.num_params() * 2;
    }
  }
  DType base_dtype = DType::F32;
  if (c.model_init == "pretrained") {
    // An encrypted base takes model.key_*, else the output key (re-tuning one's own model).
    const WeightKey* bkey = base_key ? &*base_key : okey;
    base_dtype = model.load_weights(WeightStore::open_dir(c.model_path, bkey));
  } else {
    model.init_random(uint64_t(c.seed));
    base_dtype = mc.dtype;
  }
  if (lora) model.init_lora(uint64_t(c.seed));
  // The same starting weights again, for a guard rollback with no checkpoint to return to.
  auto reinit_weights = [&] {
    if (lora) {
      model.init_lora(uint64_t(c.seed));  // the base is frozen: only the adapters moved
    } else if (c.model_init == "pretrained") {
      model.load_weights(WeightStore::open_dir(c.model_path, base_key ? &*base_key : okey));
    } else {
      model.init_random(uint64_t(c.seed));
    }
  };

  std::unique_ptr<TrainData> data =
      make_train_data(c, c.model_path, tok, threads, comm.rank(), comm.world_size(), !opt.quiet);
  const DataPosition initial_pos = data->position();
  result.data_summary = data->describe();
  const int64_t batches_per_epoch = data->batches_per_epoch();
  int64_t total_steps = c.max_steps;
  if (total_steps <= 0)
    total_steps = std::max<int64_t>(
        1, int64_t(std::ceil(c.epochs * double(batches_per_epoch) / double(grad_accum))));
  Schedule sched{c.schedule_kind, c.lr, c.warmup_steps, total_steps, c.min_lr_ratio};

  // ---- optimizer state and resume ----
  // Optimizer state exists only for what is trained (the adapters under LoRA), and with
  // sharding (zero1 and up) only for this rank's slice of it.
  const size_t n_train = model.num_train_params();
  const bool sharded = (stage == 1 && world > 1) || stage >= 2;
  const ShardRange shard =
      sharded ? shard_range(n_train, comm.rank(), world) : ShardRange{0, n_train};
  if (zero)
    FTUNE_CHECK(zero->shard().begin == shard.begin && zero->shard().end == shard.end,
                "ZeRO shard mismatch");
  DeviceBuffer<float> m(be.get(), shard.size()), v(be.get(), shard.size());
  std::vector<ParamSpan> spans;  // decay spans clipped to the shard, offsets relative to it
  for (const ParamSpan& s : decay_spans(model, c)) {
    const size_t b = std::max(s.offset, shard.begin), e = std::min(s.offset + s.count, shard.end);
    if (b < e) spans.push_back({b - shard.begin, e - b, s.weight_decay});
  }
  // A sharded run's checkpoint: each rank writes its slices, the lead publishes the directory
  // once all have (checkpoint.h); any rank count reads any other's.
  const ShardSlice slice{shard.begin, shard.end, n_train, comm.rank(), world};
  // A checkpoint write that fails (disk full, file-size limit, unwritable directory) leaves the
  // previous checkpoint and `latest` intact and is reported per checkpoint.on_error. The ranks
  // agree on the outcome: a per-rank failure flag is summed across ranks where a barrier stood,
  // so every rank takes the same path afterwards.
  struct SaveOutcome {
    std::string dir;          // the published checkpoint (lead), "" on failure
    std::string error;        // this rank's own failure, if any
    std::vector<int> failed;  // every rank that failed, the same list on all ranks
  };
  auto save = [&](const TrainState& st) {
    SaveOutcome out;
    auto attempt = [&](const std::function<void()>& f) {
      try {
        f();
      } catch (const std::exception& e) {
        out.error = e.what();
      }
    };
    // Also the barrier: no rank runs ahead of a checkpoint it might be resumed from.
    auto agree = [&] {
      std::vector<double> flags(size_t(world), 0.0);
      flags[size_t(comm.rank())] = out.error.empty() ? 0.0 : 1.0;
      comm.all_reduce_sum_host(flags.data(), flags.size());
      for (int r = 0; r < world; ++r)
        if (flags[size_t(r)] > 0 &&
            std::find(out.failed.begin(), out.failed.end(), r) == out.failed.end())
          out.failed.push_back(r);
      return out.failed.empty();
    };
    if (!sharded) {
      if (lead)
        attempt([&] {
          out.dir = save_checkpoint(c.output_dir, model, m.get(), v.get(), st,
                                    c.checkpoint_keep_last, c.model_path, okey);
        });
      agree();
      return out;
    }
    const std::string tmp = sharded_checkpoint_tmp_dir(c.output_dir, st.step);
    if (lead) attempt([&] { reset_checkpoint_dir(tmp); });
    if (!agree()) return out;
    attempt([&] {
      write_checkpoint_shard(tmp, slice, m.get(), v.get(),
                             stage >= 3 ? zero->shard_params() : nullptr, be.get(), okey);
    });
    // Every rank's files are written before the lead publishes.
    if (!agree()) {
      std::error_code ec;
      if (lead) fs::remove_all(tmp, ec);
      return out;
    }
    if (lead)
      attempt([&] {
        out.dir = finish_sharded_checkpoint(c.output_dir, tmp, stage >= 3 ? nullptr : &model, st,
                                            c.checkpoint_keep_last, c.model_path, okey);
      });
    if (!out.error.empty()) {
      std::error_code ec;
      fs::remove_all(tmp, ec);
    }
    agree();
    return out;
  };
  auto fresh_state = [&] {
    TrainState st;
    st.total_steps = total_steps;
    st.seed = uint64_t(c.seed);
    st.recipe_sha256 = recipe_sha;
    st.world_size = world;
    st.global_micro_batches = grad_accum * world;
    return st;
  };
  TrainState state = fresh_state();
  const std::string metrics_path = c.output_dir + "/metrics.jsonl";
  std::optional<Progress> live;  // exists while the step loop draws its line
  auto say = [&](const std::string& s) {
    if (opt.quiet) return;
    if (live)
      live->message(s);
    else
      std::fprintf(stderr, "%s\n", s.c_str());
  };
  // Weights, moments, data position and state from a checkpoint: for --resume, and for a guard
  // rollback.
  auto restore = [&](const std::string& dir) {
    TrainState st;
    if (sharded) {
      // Each rank reads only its slices (ZeRO-3 weights included) from whole or sharded files.
      if (stage >= 3 && checkpoint_has_sharded_weights(dir))
        zero->load_shard(read_checkpoint_weights_range(dir, shard.begin, shard.end, n_train, okey));
      else
        load_checkpoint_weights(dir, model, okey);
      load_checkpoint_moments(dir, shard.begin, shard.end, n_train, m.get(), v.get(), be.get(),
                              okey);
      st = read_checkpoint_state(dir);
    } else {
      st = load_checkpoint(dir, model, m.get(), v.get(), okey);
    }
    if (st.recipe_sha256 != recipe_sha || st.total_steps != total_steps)
      throw Error("--resume: checkpoint " + dir + " was written by a different recipe");
    // The same global batch continues on any number of ranks: the data position is stored per
    // rank of the writing run, so it converts to micro-batches dealt in total and back.
    if (st.global_micro_batches > 0 && st.global_micro_batches != grad_accum * world)
      throw Error("--resume: checkpoint " + dir + " was written with " +
                  std::to_string(st.global_micro_batches) + " micro-batches per step over " +
                  std::to_string(st.world_size) + " ranks, this run takes " +
                  std::to_string(grad_accum * world) + " over " + std::to_string(world) +
                  ": set train.global_batch_size so every rank count trains the same batch");
    DataPosition pos = st.data;
    if (st.world_size != world) {
      const int64_t dealt = pos.index * st.world_size;
      if (dealt % world != 0)
        throw Error("--resume: checkpoint " + dir + " stopped after " + std::to_string(dealt) +
                    " micro-batches of its epoch, which " + std::to_string(world) +
                    " ranks cannot split evenly; resume on " + std::to_string(st.world_size) +
                    " ranks or from another checkpoint");
      pos.index = dealt / world;
    }
    data->set_position(pos);
    st.world_size = world;
    st.global_micro_batches = grad_accum * world;
    return st;
  };
  // The state a run starts in, for a rollback with no checkpoint to return to.
  auto restore_initial = [&] {
    reinit_weights();
    be->zero(m.get(), shard.size() * sizeof(float));
    be->zero(v.get(), shard.size() * sizeof(float));
    data->set_position(initial_pos);
    return fresh_state();
  };
  if (!resume_from.empty()) {
    state = restore(resume_from);
    if (lead) {
      trim_metrics(metrics_path, state.step);
      // Run settings may have changed (prepare_output_dir named them): the record follows.
      write_file_atomic(c.output_dir + "/recipe.yaml", recipe.resolved_yaml);
    }
    say("resumed from " + resume_from + " at step " + std::to_string(state.step));
  } else if (lead) {
    write_file_atomic(c.output_dir + "/recipe.yaml", recipe.resolved_yaml);
    write_file_atomic(metrics_path, "");
  }
  std::ofstream metrics;
  if (lead) metrics.open(metrics_path, std::ios::app);

  {
    ModelMemory mm = model.memory();
    if (zero) {
      const ZeroMemory zm = zero->memory();
      mm.weights += zm.weights;
      mm.gradients += zm.gradients;
    }
    const size_t opt_bytes = 2 * shard.size() * sizeof(float);
    auto mib = [](size_t b) { return fmt("%.1f", double(b) / double(1 << 20), 0); };
    say("memory: weights " + mib(mm.weights) + " MiB, gradients " + mib(mm.gradients) +
        " MiB, optimizer " + mib(opt_bytes) + " MiB, activations " + mib(mm.activations) +
        " MiB, scratch " + mib(mm.scratch) + " MiB" +
        (bf16_copy_bytes ? ", bf16 weight copy " + mib(bf16_copy_bytes) + " MiB" : "") + " = " +
        mib(mm.weights + mm.gradients + opt_bytes + mm.activations + mm.scratch + bf16_copy_bytes) +
        " MiB");
  }
  say("ftune: " + mc.model_type + " " + std::to_string(model.num_params()) + " parameters" +
      (lora ? " (LoRA: " + std::to_string(lora_param_count(model)) + " trained)" : "") + " on " +
      dev.detail + " (" + std::to_string(threads) + " threads, " + precision_name(precision) +
      "); " + data->describe() + "; " + std::to_string(total_steps) + " steps");

  auto eval_now = [&](const char* when) {
    EvalResult e = evaluate(model, *data, c.eval_max_batches, threads);
    say(std::string("validation ") + when + ": " +
        fmt("loss %.4f  perplexity %.2f", e.loss, e.perplexity));
    return e;
  };
  const bool has_val = data->val_batches() > 0;
  if (state.step == 0 && has_val)
    result.val_before = eval_now("before");
  else if (!has_val)
    say("validation: no validation batch of train.seq_len tokens; skipping evaluation");

  // ---- step loop ----
  ExecContext ctx;
  ctx.threads = threads;
  result.first_step = state.step + 1;
  const auto t_start = std::chrono::steady_clock::now();
  int64_t tokens_this_run = 0;
  if (!opt.quiet) live.emplace(total_steps, state.step, c.log_every, stderr);
  // Fault injection for tests only: SIGTERM to this process at step N; rank R stops answering
  // at step 2; a NaN in rank 0's gradients, or rank 0's loss x1000, once, at step N.
  const int64_t signal_at_step = env_step("FTUNE_TEST_SIGNAL_AT_STEP");
  const char* hang_env = std::getenv("FTUNE_TEST_HANG_RANK");
  const int hang_rank = hang_env ? std::atoi(hang_env) : -1;
  int64_t nan_at_step = env_step("FTUNE_TEST_NAN_AT_STEP");
  int64_t spike_at_step = env_step("FTUNE_TEST_SPIKE_AT_STEP");
  auto latest_name = [&]() -> std::string {
    try {
      const std::optional<std::string> l = latest_checkpoint(c.output_dir);
      return l ? fs::path(*l).filename().string() : "";
    } catch (const Error&) {
      return "";
    }
  };
  auto write_metrics = [&](const nlohmann::json& line) {
    if (!lead) return;
    metrics << line.dump() << "\n";
    metrics.flush();
  };
  for (int64_t step = state.step + 1; step <= total_steps; ++step) {
    std::vector<Batch> micro;
    int64_t targets = 0;
    for (int64_t a = 0; a < grad_accum; ++a) {
      micro.push_back(data->next());
      targets += micro.back().target_count();
    }
    double total_targets = double(targets);
    comm.all_reduce_sum_host(&total_targets, 1);
    // Normalise by the step's target tokens, not per micro-batch: accumulation of k
    // micro-batches then equals one batch k times larger.
    const float grad_scale = float(1.0 / std::max(1.0, total_targets));
    if (zero)
      zero->zero_grads();
    else
      be->zero(model.train_grads(), n_train * sizeof(float));
    double loss_sum = 0;
    if (step == signal_at_step) std::raise(SIGTERM);
    if (hang_rank == comm.rank() && step == 2)
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    for (size_t k = 0; k < micro.size(); ++k) {
      // Dropout draws from a stream fixed by (seed, step, micro-batch): resume replays it. The
      // micro-batch is counted over all ranks (ranks are dealt batches round-robin), so any rank
      // count draws the masks of one rank accumulating the same global batch.
      ctx.seed = (uint64_t(c.seed) * 0x9e3779b97f4a7c15ull) ^ (uint64_t(step) << 16) ^
                 (uint64_t(k) * uint64_t(world) + uint64_t(comm.rank()));
      loss_sum += model.forward_backward(ctx, micro[k], grad_scale).loss;
      tokens_this_run += micro[k].tokens();
    }
    // ZeRO-2/3 gradients were reduce-scattered during backward: each rank's shard adds its
    // squared norm to the same all-reduce.
    if (zero) zero->finish_grads();  // reductions still under way land in the shard first
    float* shard_grads = zero ? zero->shard_grads() : model.train_grads() + shard.begin;
    if (step == nan_at_step) {
      nan_at_step = -1;  // once: a rollback replaying this step then trains through it
      if (lead) {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        be->upload(zero ? shard_grads : model.train_grads(), &nan, sizeof nan);
      }
    }
    if (step == spike_at_step) {
      spike_at_step = -1;
      if (lead) loss_sum *= 1000;
    }
    // A pending stop request (SIGTERM, SIGUSR1, Ctrl-C) rides along with the loss, so every
    // rank learns of it in the same step without a collective of its own.
    double sums[3] = {loss_sum, g_stop_signal.load() != 0 ? 1.0 : 0.0,
                      zero ? be->sum_squares(ctx, shard_grads, shard.size()) : 0.0};
    comm.all_reduce_sum_host(sums, 3);
    loss_sum = sums[0];
    if (!zero) comm.all_reduce_sum(model.train_grads(), n_train);
    const double loss = loss_sum / std::max(1.0, total_targets);
    const double gnorm =
        std::sqrt(zero ? sums[2] : be->sum_squares(ctx, model.train_grads(), n_train));
    AdamWHyper h;
    h.lr = float(sched.lr_at(step) * state.lr_scale);
    h.beta1 = float(c.beta1);
    h.beta2 = float(c.beta2);
    h.eps = float(c.eps);
    h.step = step;
    h.grad_scale = (c.clip > 0 && gnorm > c.clip) ? float(c.clip / (gnorm + 1e-6)) : 1.f;

    // ---- numeric guards ----
    // The loss and the squared-norm sums are all-reduced, so every rank sees the same values;
    // the lead's verdict is still what all ranks act on (one more tiny all-reduce with several
    // ranks), so no reduction-order rounding can make ranks part ways.
    GuardAction act = GuardAction::kNone;
    int guard_kind = 0;  // 1: non-finite, 2: spike
    double z = 0;
    if (!std::isfinite(loss) || !std::isfinite(gnorm)) {
      guard_kind = 1;
      act = guard_action(c.guard_nonfinite);
    } else if (c.guard_spike_zscore > 0 &&
               int64_t(state.loss_window.size()) >= c.guard_spike_window) {
      z = loss_zscore(state.loss_window, loss);
      if (z > c.guard_spike_zscore) {
        guard_kind = 2;
        act = guard_action(c.guard_spike);
      }
    }
    if (world > 1) {
      double verdict[3] = {lead ? double(act) : 0.0, lead ? double(guard_kind) : 0.0,
                           lead ? z : 0.0};
      comm.all_reduce_sum_host(verdict, 3);
      act = GuardAction(int(verdict[0]));
      guard_kind = int(verdict[1]);
      z = verdict[2];
    }
    if (act != GuardAction::kNone) {
      const std::string key = guard_kind == 1 ? "guard.nonfinite" : "guard.spike";
      const std::string what =
          guard_kind == 1
              ? "non-finite loss or gradient at step " + std::to_string(step) + " (loss " +
                    num_text(loss) + ", gradient norm " + num_text(gnorm) + ")"
              : "loss spike at step " + std::to_string(step) + ": loss " + fmt("%.4f", loss, 0) +
                    " is " + fmt("%.1f", z, 0) + " standard deviations above the mean of the " +
                    "last " + std::to_string(c.guard_spike_window) + " steps (guard.spike_zscore " +
                    fmt("%g", c.guard_spike_zscore, 0) + ")";
      const std::string advice =
          ": lower optim.lr or raise schedule.warmup_steps; the last checkpoint is intact for "
          "--resume";
      if (act == GuardAction::kRollback && state.rollbacks >= c.guard_max_rollbacks)
        throw AgreedError(what + " after " + std::to_string(state.rollbacks) +
                          " rollbacks (guard.max_rollbacks " +
                          std::to_string(c.guard_max_rollbacks) + "; learning rate now x" +
                          fmt("%g", state.lr_scale, 0) + ")" + advice);
      if (act == GuardAction::kStop)
        throw AgreedError(what + advice + " (" + key +
                          ": skip or rollback carries a run past such steps)");
      nlohmann::json event = {{"step", step},
                              {"guard", guard_kind == 1 ? "nonfinite" : "spike"},
                              {"action", guard_action_name(act)},
                              {"detail", what}};
      if (guard_kind == 2) event["zscore"] = z;
      if (act == GuardAction::kRollback) {
        const std::optional<std::string> ck = latest_checkpoint(c.output_dir);
        const TrainState before = state;
        state = ck ? restore(*ck) : restore_initial();
        state.rollbacks = before.rollbacks + 1;
        state.lr_scale = before.lr_scale * c.guard_lr_backoff;
        // metrics.jsonl reads like one run, as after a resume: the undone steps' lines go, and
        // the event is filed under the step returned to so later trims keep it.
        event["step"] = state.step;
        event["at_step"] = step;
        event["lr_scale"] = state.lr_scale;
        if (lead) {
          metrics.close();
          trim_metrics(metrics_path, state.step);
          metrics.open(metrics_path, std::ios::app);
        }
        write_metrics(event);
        say(what + ": rolled back to " +
            (ck ? fs::path(*ck).filename().string() : std::string("the initial weights")) +
            ", learning rate x" + fmt("%g", state.lr_scale, 0) + " from now on (" + key +
            ": rollback, " + std::to_string(state.rollbacks) + " of guard.max_rollbacks " +
            std::to_string(c.guard_max_rollbacks) + ")");
        // losses[i] stays the loss of step first_step + i.
        if (state.step + 1 >= result.first_step) {
          result.losses.resize(size_t(state.step + 1 - result.first_step));
          result.grad_norms.resize(result.losses.size());
        } else {
          result.losses.clear();
          result.grad_norms.clear();
          result.first_step = state.step + 1;
        }
        step = state.step;  // the loop's ++ makes it the step after the checkpoint
        continue;
      }
      write_metrics(event);
      say(what + ": update skipped (" + key + ": skip)");
    }
    const bool apply = act == GuardAction::kNone;
    if (apply) {
      float* shard_params = stage >= 3 ? zero->shard_params() : model.train_params() + shard.begin;
      if (stage >= 3) zero->invalidate_weights();  // units gathered before now are stale after
      be->adamw_step(ctx, shard_params, shard_grads, m.get(), v.get(), spans.data(),
                     int(spans.size()), h);
      // Below ZeRO-3 every rank keeps whole weights; ZeRO-3 gathers them layer by layer on use.
      if (sharded && stage < 3) comm.all_gather(model.train_params(), n_train);
      state.last_loss = loss;
      if (c.guard_spike_zscore > 0) {
        state.loss_window.push_back(loss);
        if (int64_t(state.loss_window.size()) > c.guard_spike_window)
          state.loss_window.erase(state.loss_window.begin());
      }
    }

    // A skipped step still consumed its data.
    state.step = step;
    state.data = data->position();
    state.tokens_seen += int64_t(total_targets);
    result.losses.push_back(loss);
    result.grad_norms.push_back(gnorm);
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    const double tps = elapsed > 0 ? double(tokens_this_run) / elapsed : 0;
    if (live) live->update(step, loss, h.lr, tps);

    nlohmann::json line = {{"step", step},
                           {"lr", h.lr},
                           {"tokens", state.tokens_seen},
                           {"tokens_per_s", tps},
                           {"elapsed_s", elapsed}};
    // JSON has no NaN: a skipped non-finite step's line leaves those values out.
    if (std::isfinite(loss)) line["loss"] = loss;
    if (std::isfinite(gnorm)) line["grad_norm"] = gnorm;
    if (!apply) line["skipped"] = true;
    if (c.eval_every > 0 && step % c.eval_every == 0 && step != total_steps && has_val) {
      EvalResult e = evaluate(model, *data, c.eval_max_batches, threads);
      line["val_loss"] = e.loss;
      line["val_perplexity"] = e.perplexity;
      say("step " + std::to_string(step) +
          " validation: " + fmt("loss %.4f  perplexity %.2f", e.loss, e.perplexity));
    }
    if (step == total_steps && has_val) {
      result.val_after = evaluate(model, *data, c.eval_max_batches, threads);
      line["val_loss"] = result.val_after.loss;
      line["val_perplexity"] = result.val_after.perplexity;
    }
    write_metrics(line);
    // The stop request is honoured at this step boundary on every rank at once: checkpoint,
    // then return as interrupted.
    const bool stopping = sums[1] > 0 && step != total_steps;
    bool checkpoint_failed = false;
    if ((c.checkpoint_every > 0 && step % c.checkpoint_every == 0) || step == total_steps ||
        stopping) {
      const SaveOutcome saved = save(state);
      if (saved.failed.empty()) {
        if ((c.checkpoint_every > 0 || stopping) && step != total_steps)
          say("checkpoint: " + saved.dir);
      } else {
        checkpoint_failed = true;
        std::string why = saved.error;
        if (why.empty())
          why = "rank " + std::to_string(saved.failed.front()) + " failed to write it (rank " +
                std::to_string(saved.failed.front()) + "'s message says why)";
        else if (!lead)
          std::fprintf(stderr, "ftune: rank %d: %s\n", comm.rank(), why.c_str());
        const std::string prev = latest_name();
        const std::string what = "checkpoint at step " + std::to_string(step) +
                                 " was not written: " + why + "; " +
                                 (prev.empty() ? "there is no earlier checkpoint"
                                               : "checkpoints/latest still names " + prev);
        if (c.checkpoint_on_error != "continue")
          throw AgreedError(what +
                            ". Fix the cause (free disk space, raise the file-size limit, make "
                            "the directory writable), then continue the run: the same `ftune "
                            "train` command with --resume (checkpoint.on_error: continue keeps a "
                            "run training when a checkpoint fails)");
        say(what +
            "; training continues (checkpoint.on_error: continue), the next checkpoint "
            "tries again");
        write_metrics({{"step", step},
                       {"checkpoint", "failed"},
                       {"action", "continue"},
                       {"error", why},
                       {"latest", prev}});
      }
    }
    // Before the model is exported the report holds the curves so far (rank 0 alone reads).
    if (lead && c.report_every > 0 && step % c.report_every == 0 && step != total_steps)
      write_report_or_warn(c.output_dir);
    result.tokens_per_s = tps;
    if (stopping) {
      const int sig = g_stop_signal.load();
      const std::string prev = checkpoint_failed ? latest_name() : "";
      say(std::string("stopped by ") + (sig > 0 ? strsignal(sig) : "a signal") + " at step " +
          std::to_string(step) + "; resume with --resume" +
          (checkpoint_failed ? (prev.empty() ? " (it starts over: no checkpoint was written)"
                                             : " (it continues from " + prev + ")")
                             : ""));
      result.interrupted = true;
      result.stop_signal = sig > 0 ? sig : SIGTERM;
      if (live) live->finish();
      return result;
    }
    if (opt.stop_after_step > 0 && step == opt.stop_after_step && step != total_steps) {
      result.interrupted = true;
      if (live) live->finish();
      return result;
    }
  }
  if (live) live->finish();
  live.reset();
  if (result.first_step > total_steps && has_val)
    result.val_after = evaluate(model, *data, c.eval_max_batches, threads);

  // Every rank's training peak, before export and generation add their own buffers, and while
  // every rank is still here (below ZeRO-3 rank 0 exports alone).
  std::vector<double> peaks(size_t(world), 0.0);
  peaks[size_t(comm.rank())] = double(be->peak_allocated_bytes());
  comm.all_reduce_sum_host(peaks.data(), peaks.size());

  // ---- export: rank 0 writes. Under ZeRO-3 every rank takes part, gathering the weights to
  // rank 0 one unit at a time, so no rank ever holds the whole model; generation below runs
  // sharded on every rank for the same reason. ----
  const bool sharded_weights = stage >= 3;
  if (!lead && !sharded_weights) return result;
  const DType out_dtype = resolve_export_dtype(c.export_dtype, base_dtype);
  const size_t max_shard = size_t(c.export_max_shard_mb) * 1000 * 1000;
  if (lora && lead) {
    result.adapter_dir = c.output_dir + "/adapter";
    export_adapter_dir(model, result.adapter_dir, c.model_path, out_dtype, okey);
    say("adapter written to " + result.adapter_dir);
  }
  // The most weight bytes rank 0 held in host memory at once while exporting.
  size_t export_host_bytes = 0;
  if (!lora || c.export_merge) {
    // Generation below runs on the merged model then, which gives the same logits.
    if (lora) model.merge_lora();
    result.model_dir = c.output_dir + "/model";
    if (sharded_weights) {
      export_sharded(*zero, model, comm, c.model_path, result.model_dir, out_dtype, max_shard,
                     okey);
      export_host_bytes = zero->largest_host_unit() * sizeof(float);
    } else {
      export_model_dir(model, c.model_path, result.model_dir, out_dtype, max_shard, okey);
      for (int u = 0; u < model.layout().num_units(); ++u)
        export_host_bytes =
            std::max(export_host_bytes, model.layout().unit(u).size() * sizeof(float));
    }
  }
  if (has_val) {
    if (state.step > 0 && result.val_before.tokens > 0)
      say("validation before: " +
          fmt("loss %.4f  perplexity %.2f", result.val_before.loss, result.val_before.perplexity));
    say("validation after:  " +
        fmt("loss %.4f  perplexity %.2f", result.val_after.loss, result.val_after.perplexity));
  }
  if (!result.model_dir.empty()) say("model written to " + result.model_dir);

  if (!c.generate_prompt.empty()) {
    GenerateOptions g;
    g.max_new_tokens = c.generate_max_new_tokens;
    g.temperature = c.generate_temperature;
    g.top_p = c.generate_top_p;
    g.seed = uint64_t(c.seed);
    g.context_window = c.seq_len;
    // Sharded, every forward is collective: all ranks continue with rank 0's token, so they
    // stay in step even if their logits were to differ in the last bit.
    if (sharded_weights)
      g.agree = [&](int32_t token) {
        double t = lead ? double(token) : 0.0;
        comm.all_reduce_sum_host(&t, 1);
        return int32_t(t);
      };
    result.generation = generate_text(model, tok, c.generate_prompt, g, threads);
  }
  // What each rank held at its peak in training (`ftune plan` predicts it; tests compare).
  if (lead) {
    nlohmann::json ranks = nlohmann::json::array();
    for (int r = 0; r < world; ++r)
      ranks.push_back({{"rank", r}, {"peak_allocated_bytes", int64_t(peaks[size_t(r)])}});
    write_file_atomic(c.output_dir + "/memory.json",
                      nlohmann::json{{"world_size", world},
                                     {"sharding", c.sharding},
                                     {"device", dev.kind},
                                     {"ranks", ranks},
                                     {"export_host_bytes", int64_t(export_host_bytes)}}
                              .dump(2) +
                          "\n");
  }
  if (!lead) return result;
  nlohmann::json summary = {{"steps", state.step},
                            {"tokens_seen", state.tokens_seen},
                            {"final_train_loss", state.last_loss},
                            {"tokens_per_s", result.tokens_per_s},
                            {"method", c.method},
                            {"model_dir", result.model_dir},
                            {"adapter_dir", result.adapter_dir}};
  if (result.val_before.tokens > 0)
    summary["val_before"] = {{"loss", result.val_before.loss},
                             {"perplexity", result.val_before.perplexity}};
  if (result.val_after.tokens > 0)
    summary["val_after"] = {{"loss", result.val_after.loss},
                            {"perplexity", result.val_after.perplexity}};
  if (world > 1) summary["comm_busy_s"] = comm.busy_seconds();  // 0 where not measured (MPI)
  if (stage >= 3) {
    // How rank 0's weight gathers were served: started ahead (overlapping compute), waited for,
    // or reused from a slot; and the host time spent in them.
    const ZeroShards::GatherStats& g = zero->gather_stats();
    summary["zero3_gathers"] = {{"overlap", c.dist_overlap},
                                {"prefetched", g.prefetched},
                                {"waited", g.waited},
                                {"reused", g.reused},
                                {"wait_s", g.wait_s}};
    char spent[64];
    std::snprintf(spent, sizeof spent, "%.2f s", g.wait_s);
    say("ZeRO-3 weight gathers on rank 0: " + std::to_string(g.prefetched) + " started ahead, " +
        std::to_string(g.waited) + " waited for, " + std::to_string(g.reused) + " reused; " +
        spent + " spent in them");
  }
  write_file_atomic(c.output_dir + "/summary.json", summary.dump(2) + "\n");

  // ---- provenance: a manifest (signed when asked) in each output users ship ----
  std::vector<std::string> data_files;
  for (const DataSource& d : recipe_data_sources(c)) data_files.push_back(d.path);
  if (!c.data_validation.empty()) data_files.push_back(c.data_validation);
  nlohmann::json prov = provenance_base(c.model_path, recipe.resolved_yaml, data_files);
  prov["method"] = c.method;
  prov["steps"] = state.step;
  prov["tokens_seen"] = state.tokens_seen;
  prov["final_train_loss"] = state.last_loss;
  prov["final_val_loss"] =
      result.val_after.tokens > 0 ? nlohmann::json(result.val_after.loss) : nlohmann::json();
  prov["start_time"] = utc_timestamp(wall_start);
  prov["end_time"] = utc_timestamp(std::chrono::system_clock::now());
  // Which key, never the key: its one-way fingerprint.
  if (out_key) prov["encryption"] = {{"cipher", "AES-256-GCM"}, {"key_id", key_id(*out_key)}};
  for (const std::string& dir : {result.adapter_dir, result.model_dir}) {
    if (dir.empty()) continue;
    nlohmann::json m = prov;
    m["output"] = dir == result.adapter_dir ? "adapter" : c.method == "lora" ? "merged" : "model";
    write_manifest(dir, m, c.export_sign_key);
  }
  // Last, so that it shows the manifests (and checks the hashes) of what was just written.
  if (const std::string report = write_report_or_warn(c.output_dir); !report.empty())
    say("report written to " + report);
  return result;
}

}  // namespace

TrainResult run_training(const Recipe& recipe, const TrainOptions& opt) {
  // The device decides the communicator: MPI between CPU ranks, NCCL between GPU ranks (each on
  // GPU local_rank % GPUs, which its backend uses too).
  const LaunchEnv env = detect_launch_env();
  const DeviceChoice dev = resolve_device(recipe.cfg.device, env.local_rank);
  std::unique_ptr<Communicator> comm = make_communicator(env, recipe.cfg.dist_timeout, dev.kind);
  StopSignals stop_signals;
  if (comm->world_size() == 1) return run_training_on(recipe, opt, *comm, dev);
  try {
    return run_training_on(recipe, opt, *comm, dev);
  } catch (const AgreedError&) {
    throw;  // every rank stops here with it; the communicator shuts down normally
  } catch (const std::exception& e) {
    // One rank failing must end the job, not leave the others waiting in a collective.
    std::fprintf(stderr, "ftune: error on rank %d: %s\n", comm->rank(), e.what());
    comm->abort(1);
    throw;
  }
}

}  // namespace ftune
