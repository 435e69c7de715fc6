// What a run trains: the model (with its LoRA adapters and ZeRO shards), its data, the schedule
// and the optimizer state of this rank's slice, all allocated up front so that running out of
// memory is one clear error before the first step.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/data/train_data.h"
#include "engine/dist/communicator.h"
#include "engine/model/lora.h"
#include "engine/model/model.h"
#include "engine/text/tokenizer.h"
#include "engine/train/checkpoint.h"
#include "engine/train/job.h"
#include "engine/train/schedule.h"
#include "engine/zero/memory_plan.h"
#include "engine/zero/zero_shards.h"

namespace ftune {

struct Session {
  ModelConfig mc;
  Tokenizer tok;
  std::optional<LoraConfig> lora;  // method: lora
  int world = 1;
  int stage = 0;  // ZeRO stage: 0 (none) .. 3
  int64_t grad_accum = 1;
  // Declared in the order they are built, so they are freed in reverse (buffers before the
  // model, the model before its shards).
  std::unique_ptr<ZeroShards> zero;  // ZeRO-2/3
  std::unique_ptr<Model> model;
  Precision precision = Precision::Fp32;
  size_t bf16_copy_bytes = 0;  // the one-rank bf16 weight mirror
  DType base_dtype = DType::F32;
  std::unique_ptr<TrainData> data;
  DataPosition initial_pos;
  int64_t total_steps = 1;
  Schedule sched;
  // Optimizer state exists only for what is trained (the adapters under LoRA), and with
  // sharding (zero1 and up) only for this rank's slice of it.
  size_t n_train = 0;
  bool sharded = false;
  ShardRange shard;
  DeviceBuffer<float> m, v;      // AdamW moments of the shard
  std::vector<ParamSpan> spans;  // decay spans clipped to the shard, offsets relative to it
  ShardSlice slice;              // what this rank writes of a sharded checkpoint

  // The starting weights again (a guard rollback with no checkpoint to return to).
  void reinit_weights(const Job& job);
  // The run's opening lines: memory by purpose, then what trains on what.
  std::string memory_line() const;
  std::string header_line(const Job& job) const;
};

Session build_session(const Job& job, Communicator& comm);

}  // namespace ftune
