// The training job: recipe -> model + data -> step loop -> checkpoints -> exported weights.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/infer/evaluate.h"
#include "engine/model/model.h"
#include "engine/recipe/recipe.h"

namespace ftune {

struct TrainOptions {
  bool resume = false;  // continue from output_dir/checkpoints/latest
  bool force = false;   // start over in a non-empty output_dir
  bool quiet = false;   // no progress output (tests)
  // Stop after this step (its checkpoint written, no export), as an interrupted run would.
  int64_t stop_after_step = 0;
  // Resume when output_dir holds a checkpoint of this same recipe, else start fresh (what a
  // requeued batch job runs).
  bool auto_resume = false;
};

struct TrainResult {
  std::vector<double> losses;  // train loss of each step run in this process, in order
  std::vector<double> grad_norms;
  int64_t first_step = 0;  // step number of losses[0]
  EvalResult val_before, val_after;
  std::string model_dir;    // exported HF directory ("" for LoRA without export.merge)
  std::string adapter_dir;  // exported PEFT adapter directory (LoRA)
  std::string generation;   // sample continuation of generate.prompt (if any)
  double tokens_per_s = 0;
  bool interrupted = false;  // stopped by stop_after_step or a signal (checkpoint written)
  int stop_signal = 0;       // the signal that stopped it (SIGTERM, SIGINT, SIGUSR1), else 0
  std::string data_summary;  // how the data was laid out (samples, rows, padding, cache)
  bool lead = true;          // rank 0 (the others print nothing)
};

TrainResult run_training(const Recipe& recipe, const TrainOptions& opt);

}  // namespace ftune
