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
  // The window transformers gives the layers in sliding_layers (0: no layer slides). ftune's
  // attention has none, so check_attention_window refuses runs it would bind.
  int64_t sliding_window = 0;
  std::vector<int64_t> sliding_layers;
  double attention_dropout = 0.0;  // transformers drops attention weights in training only
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

// Reads <dir>/config.json. Unsupported model_type, activation or rope scaling, and any key of
// config_keys() marked Refused holding another value than the accepted one, is an ftune::Error
// naming the file and key.
ModelConfig load_model_config(const std::string& dir);
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& label);
// Refuses a run whose attention spans `tokens` when a layer slides with a shorter window
// (transformers would mask what ftune attends to). `what` names the setting that sets `tokens`
// ("train.seq_len", "--seq-len"), which the error asks to lower.
void check_attention_window(const ModelConfig& cfg, int64_t tokens, const std::string& what);
// Refuses training a config whose training-only math ftune lacks (attention_dropout > 0).
void check_trainable(const ModelConfig& cfg);

// How ftune treats a top-level config.json key. Read: parsed and implemented (some values refused
// with a named error). Refused: what other architectures compute with and ftune lacks; any value
// but absent, null or `accepted` is an error, since such a config is most likely not the model
// its model_type claims. NoEffect: not in the forward's arithmetic. A key in no list is accepted:
// transformers' llama, mistral and qwen2 compute only with keys their config classes define
// (tests/fixtures/config_keys.json, checked to be all listed) and the few they look up
// optionally (partial_rotary_factor, is_causal, original_max_position_embeddings: listed), so an
// unlisted key is ignored there as here.
enum class ConfigKeyUse { Read, Refused, NoEffect };
struct ConfigKey {
  const char* name;
  ConfigKeyUse use;
  const char* accepted;  // Refused: the one value (JSON text) allowed besides null; else ""
  const char* note;      // how ftune reads it, or why it refuses it
};
const std::vector<ConfigKey>& config_keys();

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
