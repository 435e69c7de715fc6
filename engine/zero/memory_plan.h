// `ftune plan`: predicts, before anything runs, what one rank holds in memory and how many bytes
// it moves per step for each sharding stage (none, ZeRO-1/2/3), and whether that communication
// could hide behind compute. Sizes follow the buffers Model and the trainer allocate, so the
// prediction can be checked against Backend::peak_allocated_bytes() of real ranks.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/dist/communicator.h"
#include "engine/model/lora.h"
#include "engine/model/model.h"
#include "engine/model/model_config.h"
#include "engine/recipe/recipe.h"

namespace ftune {

// Compute precision of a run. ftune stores weights, gradients and activations in fp32 either way;
// bf16 runs the linear layers, LM head and attention on bf16 tensor cores (CUDA) from those
// buffers, and a one-rank run keeps a bf16 copy of the weights for it (2 bytes a parameter).
enum class Precision { Fp32, Bf16 };
const char* precision_name(Precision p);
// fp32 | bf16; `key` names the flag or setting in the error.
Precision parse_precision(const std::string& name, const std::string& key);
// The compute precision of a run: the recipe's setting on a device kind (cpu | cuda).
// auto is bf16 on CUDA and fp32 on the CPU; bf16 on the CPU is an error naming `key`.
Precision resolve_precision(PrecisionSetting setting, const std::string& device_kind,
                            const std::string& key);
// The same for a flag's text: auto | fp32 | bf16.
Precision resolve_precision(const std::string& name, const std::string& device_kind,
                            const std::string& key);

// The bytes a Model(cfg, max_tokens, with_grads=true, lora, recompute) allocates, by purpose,
// computed from the shapes alone (equal to Model::memory(): fp32 buffers at either precision).
ModelMemory predict_model_memory(const ModelConfig& cfg, int64_t max_tokens, const LoraConfig* lora,
                                 Recompute recompute);

// The slices of the flat parameter buffer that ZeRO-2/3 gather and reduce one at a time
// (engine/zero/zero_shards.h): the embedding [0, first layer begin), each decoder layer, and the
// tail (final norm and untied LM head) [last layer end, total). Counts in parameters.
struct ParamUnits {
  std::vector<ShardRange> units;  // in order: embedding, layers, tail
  size_t embed = 0, tail = 0, largest_layer = 0;
  // The largest overlap of one unit with `shard`: the buffer a rank's part of a per-unit
  // reduce-scatter lands in.
  size_t largest_part(ShardRange shard) const;
};
ParamUnits param_units(const ModelConfig& cfg);

struct PlanInput {
  ModelConfig model;
  std::optional<LoraConfig> lora;  // method: lora
  int64_t micro_batch_size = 1, seq_len = 1, grad_accum = 1;
  Recompute recompute = Recompute::None;
  bool overlap =
      true;  // dist.overlap: ZeRO-2/3 hold one more layer (weights ahead, gradients behind)
  int world_size = 1;
  std::string device = "cuda";  // cuda | cpu (cpu: no GPU workspace)
  Precision precision = Precision::Fp32;
  uint64_t mem_limit_bytes = uint64_t(80) << 30;  // per rank (--gpu-mem)
  double link_gbps = 400;                         // per rank, Gbit/s
  double peak_tflops = 0;                         // 0: compute time is not predicted
  double mfu = 0.4;                               // assumed model-FLOPs utilisation
};

// One rank's bytes by purpose.
struct StageMemory {
  uint64_t weights = 0;      // base weights (+ adapters), gather buffers, the bf16 weight copy
  uint64_t grads = 0;        // gradients of what is trained (+ per-unit staging under ZeRO-2/3)
  uint64_t optimizer = 0;    // AdamW m and v
  uint64_t activations = 0;  // saved for backward (Model::memory().activations)
  uint64_t scratch = 0;      // backward work buffers (Model::memory().scratch)
  uint64_t workspace = 0;    // GPU: cuBLASLt workspace and the backend's op scratch; CPU: 0
  // Held for the whole run: what the backend's peak counts. Nothing is added at the end: a
  // ZeRO-3 export streams the weights to rank 0's host one unit at a time.
  uint64_t arena() const { return weights + grads + optimizer + activations + scratch; }
  uint64_t total() const { return arena() + workspace; }
};

struct StagePlan {
  Sharding stage = Sharding::None;
  bool supported = true;
  std::string why_not;        // when !supported
  StageMemory memory;         // rank 0 (it holds the largest shard)
  bool fits = false;          // peak + reserve within mem_limit_bytes
  double bytes_per_step = 0;  // sent (= received) per rank per optimizer step
  double comm_s = 0;
  double compute_s = 0;       // 0 when peak_tflops is not known
  double overlappable_s = 0;  // compute ftune runs the communication under (dist.overlap)
  bool hidden = false;        // comm_s <= overlappable_s
  double step_s = 0;          // compute_s + the part of comm_s that is not hidden
};

struct Plan {
  PlanInput input;
  uint64_t params = 0;            // base parameters (the flat layout, alignment included)
  uint64_t trained_params = 0;    // what the optimizer updates
  int64_t tokens_per_step = 0;    // per rank: micro_batch_size * seq_len * grad_accum
  double flops_per_step = 0;      // per rank, engine/tools/bench.cpp's formula (+ recomputation)
  uint64_t reserve = 0;           // GPU: CUDA context and allocator slack kept free
  std::vector<StagePlan> stages;  // none, zero1, zero2, zero3
};

struct RecipeConfig;
// The model (model.path's config.json only: no weights are read), LoRA settings, batch shape and
// recompute policy of a recipe; the other run-environment fields keep their defaults.
// train.global_batch_size, when set, gives grad_accum for world_size ranks.
PlanInput plan_input_from_recipe(const RecipeConfig& c, int world_size);

// One rank's memory under a stage (rank decides the size of its shard). Throws for a stage
// LoRA cannot use (ZeRO-2/3: the base has no gradients to shard).
StageMemory stage_memory(const PlanInput& in, Sharding stage, int rank);
Plan make_plan(const PlanInput& in);

// none | zero1 | zero2 | zero3 (the recipe's `sharding`); throws naming the key otherwise.
Sharding parse_sharding(const std::string& name);
// Before a run allocates: throws a clear error when `need` (one rank, as stage_memory predicts)
// exceeds the `free_bytes` of `total_bytes` the device reports, naming each part and what to
// change. Only the arena counts (workspace sizes are estimates), so it never refuses a run that
// would fit. `device` names the device in the message.
void check_memory_fits(const StageMemory& need, uint64_t free_bytes, uint64_t total_bytes,
                       const std::string& device);

// Dense peak TFLOP/s of a GPU kind (h100 | h200 | a100) at a precision (fp32: no tensor cores,
// as ftune's fp32 GEMMs run today). Throws naming --gpu for an unknown kind.
double default_peak_tflops(const std::string& gpu, Precision p);

}  // namespace ftune
