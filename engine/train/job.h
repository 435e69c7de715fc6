// Opening a training job: the inputs must exist, the device and thread count are fixed, the
// signing and encryption keys are checked, and output_dir is settled (kept, cleared, or the
// checkpoint to resume from chosen) before anything is trained.
#pragma once
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "engine/backend/backend.h"
#include "engine/device/device.h"
#include "engine/dist/communicator.h"
#include "engine/recipe/recipe.h"
#include "engine/train/trainer.h"
#include "engine/trust/encryption.h"

namespace ftune {

struct Job {
  const Recipe* recipe = nullptr;
  const RecipeConfig* cfg = nullptr;
  DeviceChoice dev;
  TrainOptions opt;  // quiet on every rank but the lead
  bool lead = true;  // rank 0: it alone prepares output_dir, prints and writes outputs
  std::unique_ptr<Backend> be;
  int threads = 1;
  std::chrono::system_clock::time_point wall_start;
  std::optional<WeightKey> out_key;   // export.encrypt_key_*: outputs and checkpoints
  std::optional<WeightKey> base_key;  // model.key_*: an encrypted base model
  std::string resume_from;            // the checkpoint to continue from, "" for a fresh start
  std::string recipe_sha;             // of what the run computes (run settings excluded)

  const RecipeConfig& c() const { return *cfg; }
  const WeightKey* okey() const { return out_key ? &*out_key : nullptr; }
  // An encrypted base takes model.key_*, else the output key (re-tuning one's own model).
  const WeightKey* base_weights_key() const { return base_key ? &*base_key : okey(); }
};

// Every rank opens the job; the lead alone touches output_dir, the others then read which
// checkpoint it chose.
Job open_job(const Recipe& recipe, const TrainOptions& opt, Communicator& comm,
             const DeviceChoice& dev);

}  // namespace ftune
