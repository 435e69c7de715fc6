// The Llama-family decoder: flat parameter/gradient buffers (ParamLayout), an explicit forward
// that saves what backward needs, and a mirrored backward. Device details stay in the Backend.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/data/batch.h"
#include "engine/model/lora.h"
#include "engine/model/model_config.h"
#include "engine/model/param_layout.h"

namespace ftune {

class WeightStore;
class SafetensorsReader;
struct LoraRun;

// Bytes a model holds on its backend, by purpose (what `ftune train` prints at start).
struct ModelMemory {
  size_t weights = 0;      // base parameters (+ adapters)
  size_t gradients = 0;    // of what is trained
  size_t activations = 0;  // saved for backward, all layers, max_tokens tokens
  size_t scratch = 0;      // backward work buffers
};

// What backward recomputes instead of keeping from forward: nothing, the MLP's h (one N x f
// buffer per layer less), or each whole layer from its input (activation checkpointing: one
// layer's internals in memory instead of all; about one extra forward of compute).
Recompute parse_recompute(const std::string& name);  // none | mlp | full; throws naming the key

// How a sharded run (ZeRO-2/3, engine/zero/zero_shards.h) supplies weights and takes gradients, one
// unit (ParamLayout::unit) at a time. Pointers are to the unit's first float (unit-local layout).
class ShardHooks {
 public:
  virtual ~ShardHooks() = default;
  // true: the model holds no full weight buffer and asks for each unit's weights (ZeRO-3).
  virtual bool shards_params() const = 0;
  // Weights of unit u, valid until the matching release (acquires nest; only the outermost
  // gathers).
  virtual const float* acquire_params(int u) = 0;
  virtual void release_params(int u) = 0;
  // A hint: unit u's weights are the next the model acquires but one (the gather may start now,
  // overlapping the current unit's compute). Every rank hints alike.
  virtual void prefetch_params(int u) { (void)u; }
  // A zeroed buffer that backward accumulates unit u's gradients into; grads_done takes them
  // (reduce-scatter into this rank's shard).
  virtual float* acquire_grads(int u) = 0;
  virtual void grads_done(int u) = 0;
  // Whole-buffer host copies (ZeRO-3): from_host keeps this rank's slice; to_host returns what
  // the run gathered for it beforehand (ZeroShards::gather_to_root).
  virtual void params_from_host(const std::vector<float>& host) = 0;
  virtual std::vector<float> params_to_host() const = 0;
};

class Model {
 public:
  // Allocates parameters (zero), gradients and activation buffers for up to max_tokens tokens
  // per forward. Gradients can be skipped (eval/generate) with with_grads=false. With `lora`
  // every targeted linear carries an adapter (zero until init_lora/load_lora) and the base
  // weights are frozen: gradients exist only for the adapters.
  // With `shards` (full fine-tunes only) gradients, and for ZeRO-3 weights, live in the hooks'
  // buffers: grads() and, for ZeRO-3, params() are null.
  Model(Backend* be, ModelConfig cfg, int64_t max_tokens, bool with_grads,
        const LoraConfig* lora = nullptr, Recompute recompute = Recompute::None,
        ShardHooks* shards = nullptr);
  ~Model();

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  Backend* backend() const { return be_; }
  float* params() const { return params_.get(); }
  float* grads() const { return grads_.get(); }  // null when the base is frozen
  size_t num_params() const { return layout_.total(); }

  // LoRA adapters, when the model was built with them.
  bool has_lora() const { return lora_on_; }
  const LoraConfig& lora_config() const { return lora_cfg_; }
  const LoraLayout& lora_layout() const { return lora_layout_; }
  float* lora_params() const { return lora_params_.get(); }
  float* lora_grads() const { return lora_grads_.get(); }
  // A Kaiming-uniform (bound 1/sqrt(in), as PEFT) or N(0, 1/r) per lora.init; B zero, so the
  // model starts exactly as the base.
  void init_lora(uint64_t seed);
  // Adapter tensors by their PEFT names (adapter_model.safetensors); every tensor must be there
  // with the right shape and nothing else may be.
  void load_lora(const SafetensorsReader& r);
  std::vector<float> lora_to_host() const;
  void lora_from_host(const std::vector<float>& host);
  // Folds s * B A into each adapted base weight and drops the adapters: the merged model gives
  // the same outputs up to fp32 rounding.
  void merge_lora();

  // What the optimizer updates: the adapters with LoRA, else every parameter.
  float* train_params() const { return lora_on_ ? lora_params() : params(); }
  float* train_grads() const { return lora_on_ ? lora_grads() : grads(); }
  size_t num_train_params() const { return lora_on_ ? lora_layout_.total() : layout_.total(); }
  int64_t max_tokens() const { return max_tokens_; }
  ModelMemory memory() const;

  // Weights from a model directory (any float dtype on disk; converted to fp32). Missing or
  // ill-shaped tensors are errors naming the tensor. Returns the dtype found on disk.
  DType load_weights(const WeightStore& store);
  // HF-style init: normal(0, initializer_range) for weights/embeddings, ones for norms, zero
  // biases.
  void init_random(uint64_t seed);
  // Host copies of the parameter buffer, for save/compare.
  std::vector<float> params_to_host() const;
  void params_from_host(const std::vector<float>& host);

  // Forward + backward of one micro-batch. Gradients accumulate (+=) into grads(); each
  // token's loss gradient is multiplied by grad_scale (1 / target tokens of the whole step).
  LossSum forward_backward(const ExecContext& ctx, const Batch& b, float grad_scale);
  // Forward only: summed loss over counted targets.
  LossSum forward_loss(const ExecContext& ctx, const Batch& b);
  // All logits [N, V] (host), for parity checks and scoring.
  std::vector<float> logits(const ExecContext& ctx, const Batch& b);
  // Logits [V] of the last position of each document of the batch's first row (generation).
  std::vector<float> last_logits(const ExecContext& ctx, const Batch& b);

 private:
  struct Acts;
  void upload_batch(const Batch& b);
  // Fills acts up to the final norm; `training` turns adapter dropout on.
  void forward(const ExecContext& ctx, const Batch& b, bool training);
  void forward_layer(const ExecContext& ctx, const Batch& b, const LoraRun& lr, int layer);
  void backward(const ExecContext& ctx, const Batch& b);
  AttentionShape attn_shape(const Batch& b) const;
  LoraRun lora_run(const ExecContext& ctx, bool training) const;
  // Weights / gradients of one unit, unit-local (through the hooks when sharded, else views of
  // the model's own buffers). Every acquire is paired with a release / grads_done.
  const float* unit_params(int u);
  void release_unit(int u);
  void prefetch_unit(int u);
  float* unit_grads(int u);
  void unit_grads_done(int u);
  size_t unit_begin(int u) const { return shards_ ? layout_.unit(u).begin : 0; }

  Backend* be_;
  ModelConfig cfg_;
  ParamLayout layout_;
  int64_t max_tokens_;
  Recompute recompute_ = Recompute::None;
  ShardHooks* shards_ = nullptr;
  DeviceBuffer<float> params_, grads_, inv_freq_;
  std::unique_ptr<Acts> a_;
  bool lora_on_ = false;
  LoraConfig lora_cfg_;
  LoraLayout lora_layout_;
  DeviceBuffer<float> lora_params_, lora_grads_;
  // Saved x A^T of every adapter ([layer][target][N x r]), backward scratch d(xA^T) [N x r], and
  // the dropped-out input [N x max(in)] when lora.dropout > 0.
  DeviceBuffer<float> lora_xa_, lora_dxa_, lora_xd_;
};

}  // namespace ftune
