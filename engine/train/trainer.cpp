// The step loop. Reading order: Trainer::run() is the whole run on one screen; open_job
// (job.cpp) and build_session (session.cpp) are its setup, Checkpointer (checkpointer.cpp) its
// checkpoints, judge_step (guard.cpp) its numeric guards, RunLog (run_log.cpp) what it prints
// and records, and finish_run (finish.cpp) the export after the last step.
#include "engine/train/trainer.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "engine/backend/cpu/blas_core.h"
#include "engine/base/fs_util.h"
#include "engine/dist/launch_env.h"
#include "engine/train/agreed_error.h"
#include "engine/train/checkpointer.h"
#include "engine/train/fault_injection.h"
#include "engine/train/finish.h"
#include "engine/train/guard.h"
#include "engine/train/job.h"
#include "engine/train/run_log.h"
#include "engine/train/session.h"
#include "engine/train/stop_signals.h"

namespace fs = std::filesystem;

namespace ftune {

namespace {

// One step's numbers after the reductions: the same on every rank.
struct StepOutcome {
  double loss = 0;               // mean per-target-token loss of the global batch
  double gnorm = 0;              // gradient norm before clipping
  double total_targets = 0;      // target tokens of the global batch
  bool stop_requested = false;   // some rank holds a stop signal
  float* shard_grads = nullptr;  // this rank's slice of the reduced gradients
};

class Trainer {
 public:
  Trainer(const Recipe& recipe, const TrainOptions& opt, Communicator& comm,
          const DeviceChoice& dev)
      : comm_(comm),
        job_(open_job(recipe, opt, comm, dev)),
        s_(build_session(job_, comm)),
        c_(job_.c()),
        log_(c_.output_dir + "/metrics.jsonl", job_.lead, job_.opt.quiet),
        ckpt_(job_, s_, comm),
        faults_(FaultInjection::from_env()),
        state_(ckpt_.fresh_state()) {}

  TrainResult run() {
    start();
    for (int64_t step = state_.step + 1; step <= s_.total_steps; ++step) {
      const StepOutcome o = forward_backward(step);
      const AdamWHyper h = adamw_hyper(step, o.gnorm);
      const GuardVerdict g = judge_step(c_, state_, step, o.loss, o.gnorm, comm_);
      if (g.action != GuardAction::kNone) {
        stop_if_guard_ends_run(g, c_, state_);
        if (g.action == GuardAction::kRollback) {
          step = roll_back(step, g);  // the loop's ++ makes it the step after the checkpoint
          continue;
        }
        log_.write(guard_event(step, g));
        log_.say(g.what + ": update skipped (" + g.key() + ": skip)");
      }
      const bool applied = g.action == GuardAction::kNone;
      if (applied) apply_update(o, h);
      record_step(step, o, h.lr, applied);  // a skipped step still consumed its data
      // A stop request is honoured at this step boundary on every rank at once: checkpoint,
      // then return as interrupted.
      const bool stopping = o.stop_requested && step != s_.total_steps;
      const bool checkpoint_failed = !checkpoint_if_due(step, stopping);
      // Before the model is exported the report holds the curves so far (rank 0 alone reads).
      if (job_.lead && c_.report_every > 0 && step % c_.report_every == 0 && step != s_.total_steps)
        write_report_or_warn(c_.output_dir);
      if (stopping) return stop(step, checkpoint_failed);
      if (job_.opt.stop_after_step > 0 && step == job_.opt.stop_after_step &&
          step != s_.total_steps) {
        result_.interrupted = true;
        log_.finish_progress();
        return std::move(result_);
      }
    }
    log_.end_progress();
    if (result_.first_step > s_.total_steps && has_val())
      result_.val_after = evaluate(*s_.model, *s_.data, c_.eval_max_batches, job_.threads);
    finish_run(job_, s_, comm_, state_, faults_, log_, result_);
    return std::move(result_);
  }

 private:
  bool has_val() const { return s_.data->val_batches() > 0; }

  // Resumed or fresh: the run's records, its opening lines, and the validation loss before.
  void start() {
    result_.lead = job_.lead;
    result_.data_summary = s_.data->describe();
    const std::string recipe_copy = c_.output_dir + "/recipe.yaml";
    if (!job_.resume_from.empty()) {
      state_ = ckpt_.restore(job_.resume_from);
      log_.trim_to(state_.step);
      // Run settings may have changed (prepare_output_dir named them): the record follows.
      if (job_.lead) write_file_atomic(recipe_copy, job_.recipe->resolved_yaml);
      log_.say("resumed from " + job_.resume_from + " at step " + std::to_string(state_.step));
    } else if (job_.lead) {
      write_file_atomic(recipe_copy, job_.recipe->resolved_yaml);
      log_.start_fresh();
    }
    log_.open();
    log_.say(s_.memory_line());
    log_.say(s_.header_line(job_));
    if (job_.dev.kind == "cpu") log_.say(gemm_path_line(job_.threads));
    if (state_.step == 0 && has_val())
      result_.val_before = evaluate_and_say("validation before: ");
    else if (!has_val())
      log_.say("validation: no validation batch of train.seq_len tokens; skipping evaluation");
    ctx_.threads = job_.threads;
    result_.first_step = state_.step + 1;
    t_start_ = std::chrono::steady_clock::now();
    log_.start_progress(s_.total_steps, state_.step, c_.log_every);
  }

  EvalResult evaluate_and_say(const std::string& label) {
    EvalResult e = evaluate(*s_.model, *s_.data, c_.eval_max_batches, job_.threads);
    log_.say(label + fmt("loss %.4f  perplexity %.2f", e.loss, e.perplexity));
    return e;
  }

  // The step's micro-batches through forward and backward, gradients reduced across ranks.
  StepOutcome forward_backward(int64_t step) {
    Backend* be = job_.be.get();
    Model& model = *s_.model;
    ZeroShards* zero = s_.zero.get();
    std::vector<Batch> micro;
    int64_t targets = 0;
    for (int64_t a = 0; a < s_.grad_accum; ++a) {
      micro.push_back(s_.data->next());
      targets += micro.back().target_count();
    }
    StepOutcome o;
    o.total_targets = double(targets);
    comm_.all_reduce_sum_host(&o.total_targets, 1);
    // Normalise by the step's target tokens, not per micro-batch: accumulation of k
    // micro-batches then equals one batch k times larger.
    const float grad_scale = float(1.0 / std::max(1.0, o.total_targets));
    if (zero)
      zero->zero_grads();
    else
      be->zero(model.train_grads(), s_.n_train * sizeof(float));
    double loss_sum = 0;
    faults_.before_forward(step, comm_.rank());
    for (size_t k = 0; k < micro.size(); ++k) {
      // Dropout draws from a stream fixed by (seed, step, micro-batch): resume replays it. The
      // micro-batch is counted over all ranks (ranks are dealt batches round-robin), so any rank
      // count draws the masks of one rank accumulating the same global batch.
      ctx_.seed = (uint64_t(c_.seed) * 0x9e3779b97f4a7c15ull) ^ (uint64_t(step) << 16) ^
                  (uint64_t(k) * uint64_t(s_.world) + uint64_t(comm_.rank()));
      loss_sum += model.forward_backward(ctx_, micro[k], grad_scale).loss;
      tokens_this_run_ += micro[k].tokens();
    }
    // ZeRO-2/3 gradients were reduce-scattered during backward: each rank's shard adds its
    // squared norm to the same all-reduce.
    if (zero) zero->finish_grads();  // reductions still under way land in the shard first
    o.shard_grads = zero ? zero->shard_grads() : model.train_grads() + s_.shard.begin;
    if (faults_.take_nan(step) && job_.lead) {
      const float nan = std::numeric_limits<float>::quiet_NaN();
      be->upload(zero ? o.shard_grads : model.train_grads(), &nan, sizeof nan);
    }
    if (faults_.take_spike(step) && job_.lead) loss_sum *= 1000;
    // A pending stop request (SIGTERM, SIGUSR1, Ctrl-C) rides along with the loss, so every
    // rank learns of it in the same step without a collective of its own.
    double sums[3] = {loss_sum, stop_signal() != 0 ? 1.0 : 0.0,
                      zero ? be->sum_squares(ctx_, o.shard_grads, s_.shard.size()) : 0.0};
    comm_.all_reduce_sum_host(sums, 3);
    if (!zero) comm_.all_reduce_sum(model.train_grads(), s_.n_train);
    o.loss = sums[0] / std::max(1.0, o.total_targets);
    o.gnorm = std::sqrt(zero ? sums[2] : be->sum_squares(ctx_, model.train_grads(), s_.n_train));
    o.stop_requested = sums[1] > 0;
    return o;
  }

  AdamWHyper adamw_hyper(int64_t step, double gnorm) const {
    AdamWHyper h;
    h.lr = float(s_.sched.lr_at(step) * state_.lr_scale);
    h.beta1 = float(c_.beta1);
    h.beta2 = float(c_.beta2);
    h.eps = float(c_.eps);
    h.step = step;
    h.grad_scale = (c_.clip > 0 && gnorm > c_.clip) ? float(c_.clip / (gnorm + 1e-6)) : 1.f;
    return h;
  }

  void apply_update(const StepOutcome& o, const AdamWHyper& h) {
    Model& model = *s_.model;
    const bool zero3 = s_.stage >= 3;
    float* shard_params = zero3 ? s_.zero->shard_params() : model.train_params() + s_.shard.begin;
    if (zero3) s_.zero->invalidate_weights();  // units gathered before now are stale after
    job_.be->adamw_step(ctx_, shard_params, o.shard_grads, s_.m.get(), s_.v.get(), s_.spans.data(),
                        int(s_.spans.size()), h);
    // Below ZeRO-3 every rank keeps whole weights; ZeRO-3 gathers them layer by layer on use.
    if (s_.sharded && !zero3) comm_.all_gather(model.train_params(), s_.n_train);
    state_.last_loss = o.loss;
    if (c_.guard_spike_zscore > 0) {
      state_.loss_window.push_back(o.loss);
      if (int64_t(state_.loss_window.size()) > c_.guard_spike_window)
        state_.loss_window.erase(state_.loss_window.begin());
    }
  }

  // guard.*: rollback. Back to the latest checkpoint (or the initial weights) with the learning
  // rate scaled by guard.lr_backoff; returns the step returned to.
  int64_t roll_back(int64_t step, const GuardVerdict& g) {
    nlohmann::json event = guard_event(step, g);
    const std::optional<std::string> ck = latest_checkpoint(c_.output_dir);
    const TrainState before = state_;
    state_ = ck ? ckpt_.restore(*ck) : ckpt_.restore_initial();
    state_.rollbacks = before.rollbacks + 1;
    state_.lr_scale = before.lr_scale * c_.guard_lr_backoff;
    // metrics.jsonl reads like one run, as after a resume: the undone steps' lines go, and the
    // event is filed under the step returned to so later trims keep it.
    event["step"] = state_.step;
    event["at_step"] = step;
    event["lr_scale"] = state_.lr_scale;
    log_.trim_to(state_.step);
    log_.write(event);
    log_.say(g.what + ": rolled back to " +
             (ck ? fs::path(*ck).filename().string() : std::string("the initial weights")) +
             ", learning rate x" + fmt("%g", state_.lr_scale, 0) + " from now on (" + g.key() +
             ": rollback, " + std::to_string(state_.rollbacks) + " of guard.max_rollbacks " +
             std::to_string(c_.guard_max_rollbacks) + ")");
    // losses[i] stays the loss of step first_step + i.
    if (state_.step + 1 >= result_.first_step) {
      result_.losses.resize(size_t(state_.step + 1 - result_.first_step));
      result_.grad_norms.resize(result_.losses.size());
    } else {
      result_.losses.clear();
      result_.grad_norms.clear();
      result_.first_step = state_.step + 1;
    }
    return state_.step;
  }

  // The step's state, its metrics.jsonl line (with validation when due) and the progress line.
  void record_step(int64_t step, const StepOutcome& o, float lr, bool applied) {
    state_.step = step;
    state_.data = s_.data->position();
    state_.tokens_seen += int64_t(o.total_targets);
    result_.losses.push_back(o.loss);
    result_.grad_norms.push_back(o.gnorm);
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start_).count();
    const double tps = elapsed > 0 ? double(tokens_this_run_) / elapsed : 0;
    log_.update_progress(step, o.loss, lr, tps);
    result_.tokens_per_s = tps;

    nlohmann::json line = {{"step", step},
                           {"lr", lr},
                           {"tokens", state_.tokens_seen},
                           {"tokens_per_s", tps},
                           {"elapsed_s", elapsed}};
    // JSON has no NaN: a skipped non-finite step's line leaves those values out.
    if (std::isfinite(o.loss)) line["loss"] = o.loss;
    if (std::isfinite(o.gnorm)) line["grad_norm"] = o.gnorm;
    if (!applied) line["skipped"] = true;
    if (c_.eval_every > 0 && step % c_.eval_every == 0 && step != s_.total_steps && has_val()) {
      const EvalResult e = evaluate_and_say("step " + std::to_string(step) + " validation: ");
      line["val_loss"] = e.loss;
      line["val_perplexity"] = e.perplexity;
    }
    if (step == s_.total_steps && has_val()) {
      result_.val_after = evaluate(*s_.model, *s_.data, c_.eval_max_batches, job_.threads);
      line["val_loss"] = result_.val_after.loss;
      line["val_perplexity"] = result_.val_after.perplexity;
    }
    log_.write(line);
  }

  // A checkpoint at checkpoint.every, the last step, or a stop request. Returns false when the
  // write failed and checkpoint.on_error let the run go on; throws AgreedError when it does not.
  bool checkpoint_if_due(int64_t step, bool stopping) {
    const bool due = (c_.checkpoint_every > 0 && step % c_.checkpoint_every == 0) ||
                     step == s_.total_steps || stopping;
    if (!due) return true;
    const SaveOutcome saved = ckpt_.save(state_);
    if (saved.failed.empty()) {
      if ((c_.checkpoint_every > 0 || stopping) && step != s_.total_steps)
        log_.say("checkpoint: " + saved.dir);
      return true;
    }
    std::string why = saved.error;
    if (why.empty())
      why = "rank " + std::to_string(saved.failed.front()) + " failed to write it (rank " +
            std::to_string(saved.failed.front()) + "'s message says why)";
    else if (!job_.lead)
      std::fprintf(stderr, "ftune: rank %d: %s\n", comm_.rank(), why.c_str());
    const std::string prev = ckpt_.latest_name();
    const std::string what = "checkpoint at step " + std::to_string(step) +
                             " was not written: " + why + "; " +
                             (prev.empty() ? "there is no earlier checkpoint"
                                           : "checkpoints/latest still names " + prev);
    if (c_.checkpoint_on_error != OnCheckpointError::Continue)
      throw AgreedError(what +
                        ". Fix the cause (free disk space, raise the file-size limit, make "
                        "the directory writable), then continue the run: the same `ftune "
                        "train` command with --resume (checkpoint.on_error: continue keeps a "
                        "run training when a checkpoint fails)");
    log_.say(what +
             "; training continues (checkpoint.on_error: continue), the next checkpoint "
             "tries again");
    log_.write({{"step", step},
                {"checkpoint", "failed"},
                {"action", "continue"},
                {"error", why},
                {"latest", prev}});
    return false;
  }

  // A stop request honoured after `step`'s checkpoint: the run returns as interrupted.
  TrainResult stop(int64_t step, bool checkpoint_failed) {
    const int sig = stop_signal();
    const std::string prev = checkpoint_failed ? ckpt_.latest_name() : "";
    log_.say(std::string("stopped by ") + (sig > 0 ? strsignal(sig) : "a signal") + " at step " +
             std::to_string(step) + "; resume with --resume" +
             (checkpoint_failed ? (prev.empty() ? " (it starts over: no checkpoint was written)"
                                                : " (it continues from " + prev + ")")
                                : ""));
    result_.interrupted = true;
    result_.stop_signal = sig > 0 ? sig : SIGTERM;
    log_.finish_progress();
    return std::move(result_);
  }

  Communicator& comm_;
  Job job_;
  Session s_;
  const RecipeConfig& c_;
  RunLog log_;
  Checkpointer ckpt_;
  FaultInjection faults_;
  TrainState state_;
  TrainResult result_;
  ExecContext ctx_;
  std::chrono::steady_clock::time_point t_start_;
  int64_t tokens_this_run_ = 0;
};

}  // namespace

TrainResult run_training(const Recipe& recipe, const TrainOptions& opt) {
  // The device decides the communicator: MPI between CPU ranks, NCCL between GPU ranks (each on
  // GPU local_rank % GPUs, which its backend uses too).
  const LaunchEnv env = detect_launch_env();
  const DeviceChoice dev = resolve_device(recipe.cfg.device, env.local_rank);
  std::unique_ptr<Communicator> comm = make_communicator(env, recipe.cfg.dist_timeout, dev.kind);
  StopSignals stop_signals;
  auto train = [&] { return Trainer(recipe, opt, *comm, dev).run(); };
  if (comm->world_size() == 1) return train();
  try {
    return train();
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
