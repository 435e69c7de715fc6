// Where every parameter lives in the flat buffers. Parameters, gradients and both AdamW moments
// share this layout: embedding, then each decoder layer as one contiguous slice, then the final
// norm and (untied) LM head. Tensor names are Hugging Face's, so I/O maps one to one.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/model/model_config.h"

namespace ftune {

enum class ParamKind { Embedding, Norm, Weight, Bias, Head };

struct ParamEntry {
  std::string name;            // HF name, e.g. "model.layers.3.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // HF shape ([out, in] for linear weights)
  size_t offset = 0;           // in floats, into the flat buffer
  size_t count = 0;
  ParamKind kind = ParamKind::Weight;
  int layer = -1;  // -1 outside the decoder layers
};

constexpr size_t kNoParam = size_t(-1);

// Offsets (in floats) of one decoder layer's tensors; kNoParam where the model has none.
struct LayerOffsets {
  size_t attn_norm, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;
  size_t mlp_norm, gate_w, gate_b, up_w, up_b, down_w, down_b;
  size_t begin, end;  // the layer's contiguous slice
};

// A contiguous range of the flat buffer that a sharded run gathers and reduces as one: unit 0 is
// the embedding, unit 1+l decoder layer l, the last unit the tail (final norm and untied head).
struct ParamUnit {
  size_t begin = 0, end = 0;
  size_t size() const { return end - begin; }
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelConfig& cfg);
  const std::vector<ParamEntry>& entries() const { return entries_; }
  const ParamEntry* find(const std::string& name) const;
  size_t total() const { return total_; }
  size_t embed() const { return embed_; }
  size_t final_norm() const { return final_norm_; }
  size_t head() const { return head_; }  // == embed() when tied
  const LayerOffsets& layer(int i) const { return layers_[size_t(i)]; }
  int num_layers() const { return int(layers_.size()); }
  int num_units() const { return num_layers() + 2; }
  ParamUnit unit(int u) const;
  static int layer_unit(int layer) { return layer + 1; }
  int tail_unit() const { return num_layers() + 1; }
  int head_unit() const { return head_ == embed_ ? 0 : tail_unit(); }
  size_t max_layer_size() const;  // the largest decoder-layer unit

 private:
  size_t add(const std::string& name, std::vector<int64_t> shape, ParamKind kind, int layer);
  std::vector<ParamEntry> entries_;
  std::vector<LayerOffsets> layers_;
  size_t total_ = 0, embed_ = 0, final_norm_ = 0, head_ = 0;
};

}  // namespace ftune
