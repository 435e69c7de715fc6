// Saving and restoring a run's state (weights, AdamW moments, data position, TrainState) with
// every rank agreeing on the outcome. A checkpoint write that fails (disk full, file-size limit,
// unwritable directory) leaves the previous checkpoint and `latest` intact; each rank's failure
// flag is summed across ranks where a barrier stood, so every rank takes the same path after.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "engine/dist/communicator.h"
#include "engine/train/checkpoint.h"
#include "engine/train/job.h"
#include "engine/train/session.h"

namespace ftune {

struct SaveOutcome {
  std::string dir;          // the published checkpoint (lead), "" on failure
  std::string error;        // this rank's own failure, if any
  std::vector<int> failed;  // every rank that failed, the same list on all ranks
};

class Checkpointer {
 public:
  Checkpointer(const Job& job, Session& s, Communicator& comm) : job_(job), s_(s), comm_(comm) {}

  // The state a run starts from when nothing is restored.
  TrainState fresh_state() const;
  SaveOutcome save(const TrainState& st);
  // Weights, moments, data position and state from checkpoint `dir` (--resume, a rollback);
  // a checkpoint of another recipe or batch shape is an error naming what differs.
  TrainState restore(const std::string& dir);
  // Back to the starting weights, zero moments and the first batch (a rollback with no
  // checkpoint to return to).
  TrainState restore_initial();
  // The latest checkpoint's name, "" when there is none or its pointer is damaged.
  std::string latest_name() const;

 private:
  const Job& job_;
  Session& s_;
  Communicator& comm_;
};

}  // namespace ftune
