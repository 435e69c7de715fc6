// Checkpoints: everything a run needs to continue bit for bit. Layout under the run directory:
//   checkpoints/step-00000010/{config.json, model.safetensors, optimizer.safetensors, state.json}
//   checkpoints/latest        -> the name of the newest complete checkpoint, written last
// A checkpoint is written into a temp directory, every file fsynced, then renamed into place;
// `latest` moves only after that, so a crash at any instant leaves the previous one usable.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/data/token_stream.h"
#include "engine/model/model.h"

namespace ftune {

struct WeightKey;

struct TrainState {
  int64_t step = 0;  // optimizer steps completed
  int64_t total_steps = 0;
  DataPosition data;        // where the sampler resumes
  int64_t tokens_seen = 0;  // target tokens trained on
  uint64_t seed = 0;
  std::string recipe_sha256;  // resolved recipe text hash, to recognise the same run
  double last_loss = 0.0;
  // Ranks of the run that wrote it and micro-batches per step over all of them (0: unknown, an
  // older checkpoint); data.index counts this rank's micro-batches of the epoch.
  int world_size = 1;
  int64_t global_micro_batches = 0;
  // Numeric guards (guard.cpp): the learning-rate factor rollbacks have applied, how many there
  // were, and the recent accepted losses the spike detector compares against; kept so a resumed
  // run decides exactly as an uninterrupted one.
  double lr_scale = 1.0;
  int64_t rollbacks = 0;
  std::vector<double> loss_window;
};

nlohmann::json train_state_to_json(const TrainState& s);
TrainState train_state_from_json(const nlohmann::json& j, const std::string& label);

// Writing a checkpoint either publishes it whole or fails with an Error naming the file and the
// OS error (disk full, file-size limit, read-only or unwritable directory); a failure removes
// what it wrote and leaves the previous checkpoint and `latest` as they were.
// Writes checkpoint `state.step`; m and v are the AdamW moment buffers (laid out as the trained
// parameters). Full runs store model.safetensors + config.json; LoRA runs store the adapters as
// a PEFT directory (base_model names the base) since the base never changes.
// Keeps the newest keep_last checkpoints (0 keeps all). Returns the checkpoint directory.
// With `key` the weight files (model or adapters, and the moments) are written encrypted.
std::string save_checkpoint(const std::string& run_dir, const Model& model, const float* m,
                            const float* v, const TrainState& state, int64_t keep_last,
                            const std::string& base_model = "", const WeightKey* key = nullptr);
// The directory `latest` names, if any.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);
// Removes what writers killed mid-way left in run_dir/checkpoints (step-N.tmp.* directories,
// latest.tmp.* files). Only while no other process writes checkpoints there.
void remove_checkpoint_temps(const std::string& run_dir);
// Sharded runs (ZeRO, several ranks): every rank writes its slice of the moments (and with
// ZeRO-3 of the weights) as optimizer/weights.rank-R-of-W.safetensors (metadata: begin, end,
// total) into one temporary directory; after a barrier the lead adds the whole weights when it
// has them (below ZeRO-3, or LoRA adapters) and state.json, and publishes the directory and
// `latest` only then, so a rank that failed leaves no checkpoint. Any rank count reads any other's.
struct ShardSlice {
  size_t begin = 0, end = 0, total = 0;
  int rank = 0, world = 1;
};
std::string sharded_checkpoint_tmp_dir(const std::string& run_dir, int64_t step);
// Empties (creates) a checkpoint's temp directory; errors name the directory and the OS error.
void reset_checkpoint_dir(const std::string& dir);
// params: this rank's weight slice (ZeRO-3), else null.
void write_checkpoint_shard(const std::string& tmp_dir, const ShardSlice& s, const float* m,
                            const float* v, const float* params, Backend* be,
                            const WeightKey* key = nullptr);
// model: whole weights to store (null under ZeRO-3). Checks every rank's shard is there. A
// failure before publishing leaves tmp_dir for the caller to remove (or to complete).
std::string finish_sharded_checkpoint(const std::string& run_dir, const std::string& tmp_dir,
                                      const Model* model, const TrainState& state,
                                      int64_t keep_last, const std::string& base_model = "",
                                      const WeightKey* key = nullptr);
// Pieces of a resume, for sharded runs: weights (whole or LoRA), [begin, end) of the moments or
// of ZeRO-3 weight shards, and the state.
bool checkpoint_has_sharded_weights(const std::string& dir);
std::vector<float> read_checkpoint_weights_range(const std::string& dir, size_t begin, size_t end,
                                                 size_t total, const WeightKey* key = nullptr);
void load_checkpoint_moments(const std::string& dir, size_t begin, size_t end, size_t total,
                             float* m, float* v, Backend* be, const WeightKey* key = nullptr);
void load_checkpoint_weights(const std::string& dir, Model& model, const WeightKey* key = nullptr);
TrainState read_checkpoint_state(const std::string& dir);

// Restores parameters (LoRA: the adapters, over a base the caller loaded), moments and state.
// Mismatched shapes are errors naming the tensor.
TrainState load_checkpoint(const std::string& ckpt_dir, Model& model, float* m, float* v,
                           const WeightKey* key = nullptr);

}  // namespace ftune
