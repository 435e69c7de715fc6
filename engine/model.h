// The Llama-family decoder: flat parameter/gradient buffers (ParamLayout), an explicit forward
// that saves what backward needs, and a mirrored backward. Device details stay in the Backend.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/model_config.h"
#include "engine/param_layout.h"

namespace ftune {

class WeightStore;

// One micro-batch, host side: N = rows*seq tokens, row-major. targets[i] is the token that
// should follow ids[i], or kIgnoreIndex. doc_offsets are cu_seqlens-style over the N tokens;
// positions restart at each document start.
struct Batch {
  int64_t rows = 0, seq = 0;
  std::vector<int32_t> ids, targets, positions, doc_offsets;
  int64_t tokens() const { return rows * seq; }
  int64_t target_count() const;  // targets that are not kIgnoreIndex
  // Every row one document starting at position 0.
  static Batch from_rows(int64_t rows, int64_t seq, std::vector<int32_t> ids,
                         std::vector<int32_t> targets);
};

class Model {
 public:
  // Allocates parameters (zero), gradients and activation buffers for up to max_tokens tokens
  // per forward. Gradients can be skipped (eval/generate) with with_grads=false.
  Model(Backend* be, ModelConfig cfg, int64_t max_tokens, bool with_grads);
  ~Model();

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  Backend* backend() const { return be_; }
  float* params() const { return params_.get(); }
  float* grads() const { return grads_.get(); }
  size_t num_params() const { return layout_.total(); }
  int64_t max_tokens() const { return max_tokens_; }

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
  void forward(const ExecContext& ctx, const Batch& b);  // fills acts up to the final norm
  void backward(const ExecContext& ctx, const Batch& b);
  AttentionShape attn_shape(const Batch& b) const;

  Backend* be_;
  ModelConfig cfg_;
  ParamLayout layout_;
  int64_t max_tokens_;
  DeviceBuffer<float> params_, grads_, inv_freq_;
  std::unique_ptr<Acts> a_;
};

}  // namespace ftune
