// A Llama-family decoder's shape, read from a Hugging Face config.json. Covers Llama 2/3
// (incl. llama3 rope scaling), Mistral, Qwen2 (q/k/v bias) and SmolLM (model_type llama).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/base/dtype.h"

namespace ftune {

struct RopeScaling {
  std::string type = "default";  // default | linear | llama3
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type;  // llama | mistral | qwen2
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  int64_t sliding_window = 0;  // 0: none (Mistral sets one; training longer rows is refused)
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2, Llama attention_bias
  bool o_bias = false;    // Llama attention_bias
  bool mlp_bias = false;  // Llama mlp_bias
  int32_t bos_token_id = -1;
  int32_t eos_token_id = -1;
  DType dtype = DType::F32;  // torch_dtype / dtype on disk
  nlohmann::json raw;        // the original file, written back on export

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
};

// Reads <dir>/config.json. Unsupported model_type, activation or rope scaling is an
// ftune::Error naming the file and key.
ModelConfig load_model_config(const std::string& dir);
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& label);
// config.json contents for a config (the original keys kept, dtype updated).
nlohmann::json model_config_json(const ModelConfig& cfg, DType stored);
// RoPE inverse frequencies [head_dim/2] with the configured scaling applied (as HF computes them).
std::vector<float> rope_inv_freq(const ModelConfig& cfg);

// Training FLOPs per token: 6·N (N = non-embedding parameters: the LM head is not counted, as
// in the peers' MFU figures) plus 12·L·H·Q·T for attention (PaLM appendix B); causal sparsity
// not discounted. `ftune bench`, `ftune plan` and bench/pytorch_step.py use the same formula.
// A frozen base (LoRA) skips the weight-gradient GEMMs: 4·N instead of 6·N (adapters are not
// counted).
double flops_per_token(const ModelConfig& c, int64_t seq, bool frozen_base = false);

}  // namespace ftune
