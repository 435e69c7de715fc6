#include "engine/zero/memory_plan.h"

#include <algorithm>
#include <cstdio>

#include "engine/base/error.h"
#include "engine/dist/communicator.h"
#include "engine/model/param_layout.h"
#include "engine/recipe/recipe.h"

namespace ftune {

const char* precision_name(Precision p) {
  return p == Precision::Bf16 ? "bf16" : "fp32";
}

Precision parse_precision(const std::string& name, const std::string& key) {
  if (name == "fp32") return Precision::Fp32;
  if (name == "bf16") return Precision::Bf16;
  throw Error(key + ": unknown precision '" + name + "' (use fp32 or bf16)");
}

Precision resolve_precision(PrecisionSetting setting, const std::string& device_kind,
                            const std::string& key) {
  if (setting == PrecisionSetting::Auto)
    return device_kind == "cuda" ? Precision::Bf16 : Precision::Fp32;
  const Precision p = setting == PrecisionSetting::Bf16 ? Precision::Bf16 : Precision::Fp32;
  if (p == Precision::Bf16 && device_kind != "cuda")
    throw Error(key + ": bf16 runs on a GPU (device: cuda); the CPU backend computes in fp32: " +
                "set " + key + " to fp32 or auto");
  return p;
}

namespace {

// Bytes per element of weights, gradients and activations: fp32 at either precision (bf16
// converts from them, see Precision).
constexpr uint64_t kStoredBytes = 4;

}  // namespace

// Mirrors Model's constructor and Model::Acts buffer by buffer; tests pin it to Model::memory().
ModelMemory predict_model_memory(const ModelConfig& c, int64_t max_tokens, const LoraConfig* lora,
                                 Recompute rc) {
  const uint64_t cb = kStoredBytes;
  const uint64_t N = uint64_t(max_tokens), L = uint64_t(c.num_layers);
  const uint64_t d = uint64_t(c.hidden_size), f = uint64_t(c.intermediate_size);
  const uint64_t q = uint64_t(c.q_dim()), kv = uint64_t(c.kv_dim()), hq = uint64_t(c.num_heads);
  // Layers whose internals are stored (recompute full keeps one work slot), and those whose
  // SwiGLU output h is (recompute mlp or full keep one).
  const uint64_t Li = rc == Recompute::Full ? 1 : L;
  const uint64_t Lh = rc == Recompute::None ? L : 1;

  const uint64_t params = ParamLayout(c).total();
  const uint64_t inv_freq = rope_inv_freq(c).size();  // fp32 always
  const uint64_t adapters = lora ? LoraLayout(c, *lora).total() : 0;
  const uint64_t r = lora ? uint64_t(lora->rank) : 0;

  ModelMemory m;
  m.weights = (params + adapters) * cb + inv_freq * 4;
  m.gradients = (lora ? adapters : params) * cb;

  // Saved for backward: each layer's input, the stored layers' internals, h, the final norm's
  // input and output; statistics (rstd, lse) fp32 and token ids int32.
  const uint64_t stored = L * N * d + Li * N * (d + q + kv + kv + q + d + d + f + f) + Lh * N * f +
                          2 * N * d + L * uint64_t(kLoraTargets) * N * r;
  const uint64_t stats = Li * N * (1 + hq + 1) + N;
  m.activations = stored * cb + stats * 4 + 3 * N * 4;

  // Backward work buffers: tmp always, the gradient buffers with grads, adapter scratch.
  uint64_t work = N * std::max(d, q);
  work += N * (d + d + q + q + kv + kv + f + f + f);
  if (lora) {
    work += N * r;
    if (lora->dropout > 0) work += N * std::max({d, f, q});
  }
  m.scratch = work * cb;
  return m;
}

ParamUnits param_units(const ModelConfig& cfg) {
  const ParamLayout lay(cfg);
  ParamUnits u;
  const int L = lay.num_layers();
  const size_t first = L > 0 ? lay.layer(0).begin : lay.final_norm();
  const size_t last = L > 0 ? lay.layer(L - 1).end : lay.final_norm();
  u.units.push_back({0, first});
  for (int l = 0; l < L; ++l) u.units.push_back({lay.layer(l).begin, lay.layer(l).end});
  u.units.push_back({last, lay.total()});
  u.embed = first;
  u.tail = lay.total() - last;
  for (int l = 0; l < L; ++l)
    u.largest_layer = std::max(u.largest_layer, lay.layer(l).end - lay.layer(l).begin);
  return u;
}

size_t ParamUnits::largest_part(ShardRange shard) const {
  size_t most = 0;
  for (const ShardRange& r : units) {
    const size_t b = std::max(r.begin, shard.begin), e = std::min(r.end, shard.end);
    if (b < e) most = std::max(most, e - b);
  }
  return most;
}

namespace {

// The CUDA backend's own buffers (not in peak_allocated_bytes): cuBLASLt workspace, one chunk of
// LM-head logits, per-token loss sums, attention backward's Delta and the embedding-gradient
// sort. Sizes follow cuda/gemm.cu, lm_head_loss.cu, attention.cu and embedding.cu.
uint64_t gpu_workspace_bytes(const ModelConfig& c, int64_t max_tokens) {
  constexpr uint64_t kMiB = uint64_t(1) << 20;
  constexpr uint64_t kCublasLt = 32 * kMiB;           // gemm.cu kWorkspaceBytes
  constexpr int64_t kChunkFloats = int64_t(1) << 25;  // cuda_ops.h kLmHeadChunkFloats
  // Scratch::get rounds requests above 1 MiB up to whole MiB.
  auto scratch = [&](uint64_t b) { return b > kMiB ? (b + kMiB - 1) / kMiB * kMiB : b; };
  const uint64_t N = uint64_t(max_tokens), V = uint64_t(c.vocab_size);
  const uint64_t rows = std::min<uint64_t>(N, std::max<int64_t>(1, kChunkFloats / c.vocab_size));
  const uint64_t logits = scratch(rows * V * 4);
  const uint64_t losses = scratch(N * 8);
  const uint64_t delta = scratch(N * uint64_t(c.num_heads) * 4);
  // Keys and values twice over plus CUB's temporary storage (about as large again): an estimate.
  const uint64_t sort = scratch(5 * N * 4);
  return kCublasLt + logits + losses + delta + sort;
}

bool stage_supported(const PlanInput& in, Sharding s, std::string* why) {
  if (in.lora && (s == Sharding::Zero2 || s == Sharding::Zero3)) {
    *why = "LoRA trains only the adapters (the base has no gradients to shard): use none or zero1";
    return false;
  }
  return true;
}

}  // namespace

StageMemory stage_memory(const PlanInput& in, Sharding s, int rank) {
  std::string why;
  if (!stage_supported(in, s, &why))
    throw Error(std::string("sharding ") + sharding_name(s) + ": " + why);
  FTUNE_CHECK(in.world_size >= 1 && rank >= 0 && rank < in.world_size, "rank outside the world");
  const ModelConfig& c = in.model;
  const int64_t max_tokens = in.micro_batch_size * in.seq_len;
  const LoraConfig* lora = in.lora ? &*in.lora : nullptr;
  const ModelMemory mm = predict_model_memory(c, max_tokens, lora, in.recompute);
  const uint64_t cb = kStoredBytes;
  const bool bf16 = in.precision == Precision::Bf16;
  const bool gpu = in.device == "cuda";

  const uint64_t params = ParamLayout(c).total();
  const uint64_t inv_freq = rope_inv_freq(c).size();
  const uint64_t trained = lora ? LoraLayout(c, *lora).total() : params;
  // ZeRO-1/2/3 split the trained state into world_size slices of ceil(n / world_size).
  // ZeRO-1 only shards with several ranks; ZeRO-2/3 keep their per-unit buffers even alone.
  const bool sharded =
      (s == Sharding::Zero1 && in.world_size > 1) || s == Sharding::Zero2 || s == Sharding::Zero3;
  const ShardRange range =
      sharded ? shard_range(trained, rank, in.world_size) : ShardRange{0, size_t(trained)};
  const uint64_t shard = range.size();
  const ParamUnits u = param_units(c);
  // Per-unit work slots ZeRO-2/3 reuse: the embedding (also the tied head, so it stays through
  // backward), the tail, and one layer at a time.
  const uint64_t unit_buffers = u.embed + u.tail + u.largest_layer;

  StageMemory m;
  m.activations = mm.activations;
  m.scratch = mm.scratch;
  m.workspace = gpu ? gpu_workspace_bytes(c, max_tokens) : 0;

  // Weights held for compute: every base weight (and adapter), or under ZeRO-3 this rank's slice
  // plus the units gathered for the layer being computed (and, with dist.overlap, the next).
  uint64_t compute_weights = params + (lora ? trained : 0);
  if (s == Sharding::Zero3)
    compute_weights = shard + unit_buffers + (in.overlap ? u.largest_layer : 0);
  m.weights = compute_weights * cb + inv_freq * 4;
  // bf16 on one rank: the backend's bf16 copy of the whole weights, refreshed by each update
  // (with several ranks, or sharded weights, each product converts its weight instead).
  if (bf16 && in.world_size == 1 && s != Sharding::Zero3) m.weights += params * 2;

  // ZeRO-2/3: the shard, the per-unit staging slots, and the buffer this rank's part of a unit's
  // reduce-scatter lands in before it is added to the shard.
  uint64_t grads = trained;
  if (s == Sharding::Zero2 || s == Sharding::Zero3)
    // With dist.overlap a second layer slot, and each reduction runs in place in its slot.
    grads = shard + unit_buffers + (in.overlap ? u.largest_layer : u.largest_part(range));
  m.grads = grads * cb;
  m.optimizer = 2 * shard * 4;  // AdamW m and v, fp32 at any precision
  // Checkpoints are written by every rank from its own slices, and a ZeRO-3 export gathers one
  // unit at a time through the work slots above: neither adds to the peak.
  return m;
}

Precision resolve_precision(const std::string& name, const std::string& device_kind,
                            const std::string& key) {
  if (name == "auto") return resolve_precision(PrecisionSetting::Auto, device_kind, key);
  return resolve_precision(parse_precision(name, key) == Precision::Bf16 ? PrecisionSetting::Bf16
                                                                         : PrecisionSetting::Fp32,
                           device_kind, key);
}

Sharding parse_sharding(const std::string& name) {
  for (Sharding s : kAllShardings)
    if (name == sharding_name(s)) return s;
  throw Error("sharding: unknown stage '" + name + "' (use none, zero1, zero2 or zero3)");
}

void check_memory_fits(const StageMemory& need, uint64_t free_bytes, uint64_t total_bytes,
                       const std::string& device) {
  if (need.arena() <= free_bytes) return;
  auto gib = [](uint64_t b) {
    char t[32];
    std::snprintf(t, sizeof t, "%.2f GiB", double(b) / double(uint64_t(1) << 30));
    return std::string(t);
  };
  throw Error("the run needs " + gib(need.arena()) + " on " + device + " (weights " +
              gib(need.weights) + ", gradients " + gib(need.grads) + ", optimizer " +
              gib(need.optimizer) + ", activations " + gib(need.activations) + ", scratch " +
              gib(need.scratch) + ", plus about " + gib(need.workspace) +
              " of workspace) but only " + gib(free_bytes) + " of " + gib(total_bytes) +
              " are free. Lower train.micro_batch_size or train.seq_len (raise train.grad_accum "
              "to keep the batch), set train.recompute: full, split the state across GPUs "
              "(sharding: zero3 with ftune launch -n N; `ftune plan RECIPE --gpus N` shows what "
              "each needs), or use method: lora");
}

double default_peak_tflops(const std::string& gpu, Precision p) {
  // Dense, SXM parts; fp32 is the CUDA-core rate (ftune's fp32 GEMMs do not use TF32).
  const bool bf16 = p == Precision::Bf16;
  if (gpu == "h100" || gpu == "h200") return bf16 ? 989.0 : 67.0;
  if (gpu == "a100") return bf16 ? 312.0 : 19.5;
  throw Error("--gpu: unknown GPU kind '" + gpu +
              "' (known: h100, h200, a100); or give its dense peak with --peak-tflops");
}

PlanInput plan_input_from_recipe(const RecipeConfig& c, int world_size) {
  PlanInput in;
  in.model = load_model_config(c.model_path);
  in.lora = recipe_lora_config(c);
  in.world_size = world_size;
  in.micro_batch_size = c.micro_batch_size;
  in.seq_len = c.seq_len;
  in.grad_accum = recipe_grad_accum(c, world_size, "change one of them or --gpus");
  in.recompute = c.recompute;
  in.overlap = c.dist_overlap;
  return in;
}

Plan make_plan(const PlanInput& in) {
  if (in.world_size < 1) throw Error("--gpus: need at least 1 rank");
  if (in.micro_batch_size < 1 || in.seq_len < 1 || in.grad_accum < 1)
    throw Error("train.micro_batch_size, train.seq_len and train.grad_accum must be at least 1");
  if (in.device != "cuda" && in.device != "cpu")
    throw Error("--device: unknown device '" + in.device + "' (use cuda or cpu)");
  if (!(in.link_gbps > 0)) throw Error("--link-gbps: must be above 0 (Gbit/s per rank)");
  if (!(in.mfu > 0 && in.mfu <= 1)) throw Error("--mfu: must be in (0, 1]");
  if (in.peak_tflops < 0) throw Error("--peak-tflops: must not be negative");

  Plan plan;
  plan.input = in;
  const ModelConfig& c = in.model;
  const bool lora = in.lora.has_value();
  plan.params = ParamLayout(c).total();
  plan.trained_params = lora ? LoraLayout(c, *in.lora).total() : plan.params;
  plan.tokens_per_step = in.micro_batch_size * in.seq_len * in.grad_accum;
  plan.reserve = in.device == "cuda" ? uint64_t(1) << 30 : 0;

  // FLOPs per token as `ftune bench` counts them; backward also reruns the layers' forward under
  // recompute full (recompute mlp only reruns an elementwise SwiGLU: not counted).
  const double total_tok = flops_per_token(c, in.seq_len, lora);
  const double lin = total_tok - 12.0 * double(c.num_layers) * double(c.num_heads) *
                                     double(c.head_dim) * double(in.seq_len);
  const double fwd_tok =
      lin / (lora ? 4.0 : 6.0) * 2.0 +
      4.0 * double(c.num_layers) * double(c.num_heads) * double(c.head_dim) * double(in.seq_len);
  const double recompute_tok = in.recompute == Recompute::Full ? fwd_tok : 0.0;
  const double step_tok = total_tok + recompute_tok;
  plan.flops_per_step = step_tok * double(plan.tokens_per_step);
  const double bwd_frac = 1.0 - fwd_tok / step_tok;
  const double compute_s =
      in.peak_tflops > 0 ? plan.flops_per_step / (in.peak_tflops * 1e12 * in.mfu) : 0.0;

  const double W = double(in.world_size);
  const double ring = (W - 1) / W;         // share of a buffer each rank sends in a ring pass
  const double cb = double(kStoredBytes);  // collectives move the fp32 buffers
  const double grad_bytes = double(plan.trained_params) * cb;
  const double weight_bytes = double(plan.trained_params) * cb;
  const double accum = double(in.grad_accum);
  const double regathered_bytes = (2.0 * double(plan.trained_params) -
                                   (c.tie_word_embeddings ? 0.0 : double(param_units(c).embed))) *
                                  cb;
  const double link_bytes_per_s = in.link_gbps * 1e9 / 8.0;

  for (Sharding s : kAllShardings) {
    StagePlan sp;
    sp.stage = s;
    sp.supported = stage_supported(in, s, &sp.why_not);
    if (!sp.supported) {
      plan.stages.push_back(sp);
      continue;
    }
    sp.memory = stage_memory(in, s, 0);
    sp.fits = sp.memory.total() + plan.reserve <= in.mem_limit_bytes;
    // Bytes each rank sends per step (ring all-reduce = reduce-scatter + all-gather), and the
    // compute ftune runs them under: only ZeRO-2/3 with dist.overlap overlap a collective with
    // compute; the gradient all-reduce (none, zero1) and the weight all-gather after the update
    // (zero1, zero2) wait for it.
    switch (s) {
      case Sharding::None:
        // One all-reduce of the gradients after the last micro-batch's backward.
        sp.bytes_per_step = 2 * ring * grad_bytes;
        sp.overlappable_s = 0;
        break;
      case Sharding::Zero1:
        // The same all-reduce, then each rank's updated slice all-gathered.
        sp.bytes_per_step = 2 * ring * grad_bytes + ring * weight_bytes;
        sp.overlappable_s = 0;
        break;
      case Sharding::Zero2:
        // A reduce-scatter of the gradients per micro-batch (each layer's under the next
        // layer's backward) and one all-gather of the updated weights.
        sp.bytes_per_step = accum * ring * grad_bytes + ring * weight_bytes;
        sp.overlappable_s = in.overlap ? compute_s * bwd_frac : 0;
        break;
      case Sharding::Zero3:
        // Per micro-batch: the weights all-gathered for forward and again for backward (the
        // loss regathers the tail, and a tied head the embedding; the embedding's backward needs
        // no weights), and the gradients reduce-scattered; with dist.overlap each gather runs
        // under the previous layer's compute and each reduce-scatter under the next backward.
        sp.bytes_per_step = accum * (ring * regathered_bytes + ring * grad_bytes);
        sp.overlappable_s = in.overlap ? compute_s : 0;
        break;
    }
    sp.comm_s = sp.bytes_per_step / link_bytes_per_s;
    sp.compute_s = compute_s;
    sp.hidden = sp.comm_s <= sp.overlappable_s;
    sp.step_s = compute_s + std::max(0.0, sp.comm_s - sp.overlappable_s);
    plan.stages.push_back(sp);
  }
  return plan;
}

}  // namespace ftune
