#include "engine/model/param_layout.h"

#include <algorithm>

#include "engine/base/error.h"

namespace ftune {

size_t ParamLayout::add(const std::string& name, std::vector<int64_t> shape, ParamKind kind,
                        int layer) {
  ParamEntry e;
  e.name = name;
  e.count = 1;
  for (int64_t s : shape) e.count *= size_t(s);
  e.shape = std::move(shape);
  e.kind = kind;
  e.layer = layer;
  // Keep every tensor 64-byte aligned (16 floats) so vector loads and a future GPU arena never
  // straddle a tensor boundary.
  total_ = (total_ + 15) / 16 * 16;
  e.offset = total_;
  total_ += e.count;
  entries_.push_back(std::move(e));
  return entries_.back().offset;
}

ParamLayout::ParamLayout(const ModelConfig& c) {
  const int64_t d = c.hidden_size, f = c.intermediate_size, q = c.q_dim(), kv = c.kv_dim();
  embed_ = add("model.embed_tokens.weight", {c.vocab_size, d}, ParamKind::Embedding, -1);
  for (int l = 0; l < int(c.num_layers); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerOffsets o;
    total_ = (total_ + 15) / 16 * 16;
    o.begin = total_;
    auto bias = [&](bool has, const std::string& n, int64_t size) {
      return has ? add(p + n, {size}, ParamKind::Bias, l) : kNoParam;
    };
    o.attn_norm = add(p + "input_layernorm.weight", {d}, ParamKind::Norm, l);
    o.q_w = add(p + "self_attn.q_proj.weight", {q, d}, ParamKind::Weight, l);
    o.q_b = bias(c.qkv_bias, "self_attn.q_proj.bias", q);
    o.k_w = add(p + "self_attn.k_proj.weight", {kv, d}, ParamKind::Weight, l);
    o.k_b = bias(c.qkv_bias, "self_attn.k_proj.bias", kv);
    o.v_w = add(p + "self_attn.v_proj.weight", {kv, d}, ParamKind::Weight, l);
    o.v_b = bias(c.qkv_bias, "self_attn.v_proj.bias", kv);
    o.o_w = add(p + "self_attn.o_proj.weight", {d, q}, ParamKind::Weight, l);
    o.o_b = bias(c.o_bias, "self_attn.o_proj.bias", d);
    o.mlp_norm = add(p + "post_attention_layernorm.weight", {d}, ParamKind::Norm, l);
    o.gate_w = add(p + "mlp.gate_proj.weight", {f, d}, ParamKind::Weight, l);
    o.gate_b = bias(c.mlp_bias, "mlp.gate_proj.bias", f);
    o.up_w = add(p + "mlp.up_proj.weight", {f, d}, ParamKind::Weight, l);
    o.up_b = bias(c.mlp_bias, "mlp.up_proj.bias", f);
    o.down_w = add(p + "mlp.down_proj.weight", {d, f}, ParamKind::Weight, l);
    o.down_b = bias(c.mlp_bias, "mlp.down_proj.bias", d);
    o.end = total_;
    layers_.push_back(o);
  }
  final_norm_ = add("model.norm.weight", {d}, ParamKind::Norm, -1);
  head_ = c.tie_word_embeddings ? embed_
                                : add("lm_head.weight", {c.vocab_size, d}, ParamKind::Head, -1);
  total_ = (total_ + 15) / 16 * 16;
}

ParamUnit ParamLayout::unit(int u) const {
  // Units tile the buffer: each ends where the next begins (alignment padding included).
  auto begin = [this](int k) -> size_t {
    if (k == 0) return 0;
    if (k <= num_layers()) return layers_[size_t(k - 1)].begin;
    if (k == tail_unit()) return layers_.empty() ? final_norm_ : layers_.back().end;
    return total_;
  };
  FTUNE_CHECK(u >= 0 && u < num_units(), "unit index out of range");
  return {begin(u), begin(u + 1)};
}

size_t ParamLayout::max_layer_size() const {
  size_t m = 0;
  for (int l = 0; l < num_layers(); ++l) m = std::max(m, unit(layer_unit(l)).size());
  return m;
}

const ParamEntry* ParamLayout::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

}  // namespace ftune
