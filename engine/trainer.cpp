#include "engine/trainer.h"

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
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "engine/adapter.h"
#include "engine/checkpoint.h"
#include "engine/communicator.h"
#include "engine/device.h"
#include "engine/encryption.h"
#include "engine/error.h"
#include "engine/export.h"
#include "engine/fs_util.h"
#include "engine/generate.h"
#include "engine/launch_env.h"
#include "engine/manifest.h"
#include "engine/progress.h"
#include "engine/safetensors.h"
#include "engine/schedule.h"
#include "engine/signing.h"
#include "engine/tokenizer.h"
#include "engine/train_data.h"
#include "engine/zero.h"

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
const char* const kRunEntries[] = {"checkpoints",   "model",         "adapter",
                                   "metrics.jsonl", "recipe.yaml",   "summary.json",
                                   "memory.json",   "submit.sbatch", "slurm-logs"};

// What `ftune submit` puts in output_dir before the job starts: not a run yet, and kept.
bool is_submit_entry(const std::string& name) {
  return name == "submit.sbatch" || name == "slurm-logs";
}

bool is_run_entry(const std::string& name) {
  for (const char* e : kRunEntries)
    if (name == e) return true;
  return false;
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
      entries.push_back(n);
      if (!is_run_entry(n) && n.rfind("model.", 0) != 0 && n.rfind("adapter.", 0) != 0)
        foreign.push_back(n);
    }
  }
  const bool empty =
      std::all_of(entries.begin(), entries.end(), [](const auto& n) { return is_submit_entry(n); });
  std::string same_run;  // latest checkpoint of a run started by this very recipe
  std::string stored_recipe = out + "/recipe.yaml";
  bool same_recipe = path_exists(stored_recipe) && read_file(stored_recipe) == r.resolved_yaml;
  std::optional<std::string> latest;
  try {
    if (!empty) latest = latest_checkpoint(out);
  } catch (const Error&) {
    if (!opt.force) throw;  // a damaged pointer must not block starting over
  }

  if (opt.auto_resume && !opt.resume && same_recipe && latest) return *latest;
  if (opt.resume) {
    if (!latest)
      throw Error("--resume: output_dir '" + out + "' holds no checkpoint to resume from");
    if (!same_recipe)
      throw Error("--resume: the recipe differs from the one that started the run in '" + out +
                  "' (compare it with " + stored_recipe + "); resume with the same recipe and " +
                  "overrides, or pass --force to start over");
    return *latest;
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
  if (!foreign.empty())
    throw Error("--force: output_dir '" + out + "' holds files ftune did not write (" +
                foreign.front() + (foreign.size() > 1 ? ", ..." : "") +
                "); refusing to delete them: choose another output_dir");
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
      auto j = nlohmann::json::parse(line);
      if (j.value("step", int64_t(0)) <= keep_through_step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {
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
class StopSignals {
 public:
  StopSignals() {
    g_stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &sa, &old_[i]);
  }
  ~StopSignals() {
    for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &old_[i], nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  static constexpr int kSignals[] = {SIGTERM, SIGINT, SIGUSR1};
  struct sigaction old_[3]{};
};

TrainResult run_training_on(const Recipe& recipe, const TrainOptions& given, Communicator& comm) {
  const RecipeConfig& c = recipe.cfg;
  // Rank 0 leads: it alone prepares output_dir, prints, and writes metrics, checkpoints and
  // outputs; every rank trains its share of each batch and holds the same weights.
  const bool lead = comm.rank() == 0;
  TrainOptions opt = given;
  if (!lead) opt.quiet = true;
  TrainResult result;

  // ---- job: inputs exist, device, threads, output directory ----
  if (!fs::is_directory(c.model_path))
    throw Error("model.path: '" + c.model_path + "' is not a directory; point it at a Hugging " +
                "Face model directory (config.json, *.safetensors, tokenizer.json)");
  for (const auto& [key, path] :
       {std::pair{"data.train", c.data_train}, {"data.validation", c.data_validation}})
    if (!path.empty() && !fs::is_regular_file(path))
      throw Error(std::string(key) + ": file '" + path + "' does not exist");
  DeviceChoice dev = resolve_device(c.device);
  if (dev.kind == "cuda" && comm.world_size() > 1)
    throw Error(
        "several ranks on the GPU need NCCL, which is not part of ftune yet (issue #6); "
        "run GPU training as one rank, or the ranks with `device: cpu`");
  std::unique_ptr<Backend> be = make_backend(dev);
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
  }
  comm.barrier();
  if (!lead && (opt.resume || opt.auto_resume))
    resume_from = latest_checkpoint(c.output_dir).value_or("");
  const std::string recipe_sha = sha256_hex(recipe.resolved_yaml);

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
  // error now, with what to change, rather than a failure mid-run.
  std::unique_ptr<ZeroShards> zero;
  std::unique_ptr<Model> model_ptr;
  try {
    if (stage >= 2)
      zero = std::make_unique<ZeroShards>(be.get(), comm, ParamLayout(mc), stage, threads);
    model_ptr =
        std::make_unique<Model>(be.get(), mc, c.micro_batch_size * c.seq_len, true,
                                lora ? &*lora : nullptr, parse_recompute(c.recompute), zero.get());
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + "\nthe model does not fit on " + dev.detail +
                ": lower train.micro_batch_size or train.seq_len (raise train.grad_accum to keep " +
                "the batch), set train.recompute: full, or use method: lora");
  }
  Model& model = *model_ptr;
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

  std::unique_ptr<TrainData> data =
      make_train_data(c, c.model_path, tok, threads, comm.rank(), comm.world_size(), !opt.quiet);
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
  auto save = [&](const TrainState& st) {
    std::string dir;
    if (!sharded) {
      if (lead)
        dir = save_checkpoint(c.output_dir, model, m.get(), v.get(), st, c.checkpoint_keep_last,
                              c.model_path, okey);
      return dir;
    }
    const std::string tmp = sharded_checkpoint_tmp_dir(c.output_dir, st.step);
    if (lead) {
      fs::remove_all(tmp);
      fs::create_directories(tmp);
    }
    comm.barrier();
    write_checkpoint_shard(tmp, slice, m.get(), v.get(),
                           stage >= 3 ? zero->shard_params() : nullptr, be.get(), okey);
    comm.barrier();  // every rank's files are written before the lead publishes
    if (lead)
      dir = finish_sharded_checkpoint(c.output_dir, tmp, stage >= 3 ? nullptr : &model, st,
                                      c.checkpoint_keep_last, c.model_path, okey);
    return dir;
  };
  TrainState state;
  state.total_steps = total_steps;
  state.seed = uint64_t(c.seed);
  state.recipe_sha256 = recipe_sha;
  state.world_size = world;
  state.global_micro_batches = grad_accum * world;
  const std::string metrics_path = c.output_dir + "/metrics.jsonl";
  std::optional<Progress> live;  // exists while the step loop draws its line
  auto say = [&](const std::string& s) {
    if (opt.quiet) return;
    if (live)
      live->message(s);
    else
      std::fprintf(stderr, "%s\n", s.c_str());
  };
  if (!resume_from.empty()) {
    if (sharded) {
      // Each rank reads only its slices (ZeRO-3 weights included) from whole or sharded files.
      if (stage >= 3 && checkpoint_has_sharded_weights(resume_from))
        zero->load_shard(
            read_checkpoint_weights_range(resume_from, shard.begin, shard.end, n_train, okey));
      else
        load_checkpoint_weights(resume_from, model, okey);
      load_checkpoint_moments(resume_from, shard.begin, shard.end, n_train, m.get(), v.get(),
                              be.get(), okey);
      state = read_checkpoint_state(resume_from);
    } else {
      state = load_checkpoint(resume_from, model, m.get(), v.get(), okey);
    }
    if (state.recipe_sha256 != recipe_sha || state.total_steps != total_steps)
      throw Error("--resume: checkpoint " + resume_from + " was written by a different recipe");
    // The same global batch continues on any number of ranks: the data position is stored per
    // rank of the writing run, so it converts to micro-batches dealt in total and back.
    if (state.global_micro_batches > 0 && state.global_micro_batches != grad_accum * world)
      throw Error("--resume: checkpoint " + resume_from + " was written with " +
                  std::to_string(state.global_micro_batches) + " micro-batches per step over " +
                  std::to_string(state.world_size) + " ranks, this run takes " +
                  std::to_string(grad_accum * world) + " over " + std::to_string(world) +
                  ": set train.global_batch_size so every rank count trains the same batch");
    DataPosition pos = state.data;
    if (state.world_size != world) {
      const int64_t dealt = pos.index * state.world_size;
      if (dealt % world != 0)
        throw Error("--resume: checkpoint " + resume_from + " stopped after " +
                    std::to_string(dealt) + " micro-batches of its epoch, which " +
                    std::to_string(world) + " ranks cannot split evenly; resume on " +
                    std::to_string(state.world_size) + " ranks or from another checkpoint");
      pos.index = dealt / world;
    }
    data->set_position(pos);
    state.world_size = world;
    state.global_micro_batches = grad_accum * world;
    if (lead) trim_metrics(metrics_path, state.step);
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
        " MiB, scratch " + mib(mm.scratch) + " MiB = " +
        mib(mm.weights + mm.gradients + opt_bytes + mm.activations + mm.scratch) + " MiB");
  }
  say("ftune: " + mc.model_type + " " + std::to_string(model.num_params()) + " parameters" +
      (lora ? " (LoRA: " + std::to_string(lora_param_count(model)) + " trained)" : "") + " on " +
      dev.detail + " (" + std::to_string(threads) + " threads); " + data->describe() + "; " +
      std::to_string(total_steps) + " steps");

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
  // at step 2.
  const char* signal_env = std::getenv("FTUNE_TEST_SIGNAL_AT_STEP");
  const char* hang_env = std::getenv("FTUNE_TEST_HANG_RANK");
  const int64_t signal_at_step = signal_env ? std::atoll(signal_env) : -1;
  const int hang_rank = hang_env ? std::atoi(hang_env) : -1;
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
    // A pending stop request (SIGTERM, SIGUSR1, Ctrl-C) rides along with the loss, so every
    // rank learns of it in the same step without a collective of its own.
    // ZeRO-2/3 gradients were reduce-scattered during backward: each rank's shard adds its
    // squared norm to the same all-reduce.
    const float* shard_grads = zero ? zero->shard_grads() : model.train_grads() + shard.begin;
    double sums[3] = {loss_sum, g_stop_signal.load() != 0 ? 1.0 : 0.0,
                      zero ? be->sum_squares(ctx, shard_grads, shard.size()) : 0.0};
    comm.all_reduce_sum_host(sums, 3);
    loss_sum = sums[0];
    if (!zero) comm.all_reduce_sum(model.train_grads(), n_train);
    const double loss = loss_sum / std::max(1.0, total_targets);
    const double gnorm =
        std::sqrt(zero ? sums[2] : be->sum_squares(ctx, model.train_grads(), n_train));
    if (!std::isfinite(loss) || !std::isfinite(gnorm))
      throw Error("non-finite loss or gradient at step " + std::to_string(step) + " (loss " +
                  std::to_string(loss) + "): lower optim.lr or raise schedule." +
                  "warmup_steps; the last checkpoint is intact for --resume");
    AdamWHyper h;
    h.lr = float(sched.lr_at(step));
    h.beta1 = float(c.beta1);
    h.beta2 = float(c.beta2);
    h.eps = float(c.eps);
    h.step = step;
    h.grad_scale = (c.clip > 0 && gnorm > c.clip) ? float(c.clip / (gnorm + 1e-6)) : 1.f;
    float* shard_params = stage >= 3 ? zero->shard_params() : model.train_params() + shard.begin;
    be->adamw_step(ctx, shard_params, shard_grads, m.get(), v.get(), spans.data(),
                   int(spans.size()), h);
    // Below ZeRO-3 every rank keeps whole weights; ZeRO-3 gathers them layer by layer on use.
    if (sharded && stage < 3) comm.all_gather(model.train_params(), n_train);

    state.step = step;
    state.data = data->position();
    state.tokens_seen += int64_t(total_targets);
    state.last_loss = loss;
    result.losses.push_back(loss);
    result.grad_norms.push_back(gnorm);
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    const double tps = elapsed > 0 ? double(tokens_this_run) / elapsed : 0;
    if (live) live->update(step, loss, h.lr, tps);

    nlohmann::json line = {{"step", step},
                           {"loss", loss},
                           {"lr", h.lr},
                           {"grad_norm", gnorm},
                           {"tokens", state.tokens_seen},
                           {"tokens_per_s", tps},
                           {"elapsed_s", elapsed}};
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
    if (lead) {
      metrics << line.dump() << "\n";
      metrics.flush();
    }
    // The stop request is honoured at this step boundary on every rank at once: checkpoint,
    // then return as interrupted.
    const bool stopping = sums[1] > 0 && step != total_steps;
    if ((c.checkpoint_every > 0 && step % c.checkpoint_every == 0) || step == total_steps ||
        stopping) {
      const std::string dir = save(state);
      if ((c.checkpoint_every > 0 || stopping) && step != total_steps) say("checkpoint: " + dir);
      comm.barrier();  // no rank runs ahead of a checkpoint it might be resumed from
    }
    result.tokens_per_s = tps;
    if (stopping) {
      const int sig = g_stop_signal.load();
      say(std::string("stopped by ") + (sig > 0 ? strsignal(sig) : "a signal") + " at step " +
          std::to_string(step) + "; resume with --resume");
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

  // ZeRO-3: rank 0 takes the whole weights for the export and generation below.
  if (stage >= 3) {
    zero->gather_whole_to_root();
    if (lead) model.unshard(zero->take_whole());
  }

  // What each rank held at its peak (`ftune plan` predicts it; tests compare).
  {
    std::vector<double> peaks(size_t(world), 0.0);
    peaks[size_t(comm.rank())] = double(be->peak_allocated_bytes());
    comm.all_reduce_sum_host(peaks.data(), peaks.size());
    if (lead) {
      nlohmann::json ranks = nlohmann::json::array();
      for (int r = 0; r < world; ++r)
        ranks.push_back({{"rank", r}, {"peak_allocated_bytes", int64_t(peaks[size_t(r)])}});
      write_file_atomic(c.output_dir + "/memory.json", nlohmann::json{{"world_size", world},
                                                                      {"sharding", c.sharding},
                                                                      {"device", dev.kind},
                                                                      {"ranks", ranks}}
                                                               .dump(2) +
                                                           "\n");
    }
  }
  // ---- export (rank 0) ----
  if (!lead) return result;
  const DType out_dtype = resolve_export_dtype(c.export_dtype, base_dtype);
  const size_t max_shard = size_t(c.export_max_shard_mb) * 1000 * 1000;
  if (lora) {
    result.adapter_dir = c.output_dir + "/adapter";
    export_adapter_dir(model, result.adapter_dir, c.model_path, out_dtype, okey);
    say("adapter written to " + result.adapter_dir);
  }
  if (!lora || c.export_merge) {
    // Generation below runs on the merged model then, which gives the same logits.
    if (lora) model.merge_lora();
    result.model_dir = c.output_dir + "/model";
    export_model_dir(model, c.model_path, result.model_dir, out_dtype, max_shard, okey);
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
    result.generation = generate_text(model, tok, c.generate_prompt, g, threads);
  }
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
  return result;
}

}  // namespace

TrainResult run_training(const Recipe& recipe, const TrainOptions& opt) {
  std::unique_ptr<Communicator> comm =
      make_communicator(detect_launch_env(), recipe.cfg.dist_timeout);
  StopSignals stop_signals;
  if (comm->world_size() == 1) return run_training_on(recipe, opt, *comm);
  try {
    return run_training_on(recipe, opt, *comm);
  } catch (const std::exception& e) {
    // One rank failing must end the job, not leave the others waiting in a collective.
    std::fprintf(stderr, "ftune: error on rank %d: %s\n", comm->rank(), e.what());
    comm->abort(1);
    throw;
  }
}

}  // namespace ftune
