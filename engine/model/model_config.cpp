#include "engine/model/model_config.h"

#include <cmath>
#include <numbers>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"

namespace ftune {
namespace {

int64_t get_int(const nlohmann::json& j, const char* key, const std::string& label, bool required,
                int64_t fallback = 0) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) throw Error(label + ": missing required key '" + key + "'");
    return fallback;
  }
  if (!it->is_number_integer())
    throw Error(label + ": key '" + key + "' must be an integer, got " + json_excerpt(*it));
  return it->get<int64_t>();
}

double get_num(const nlohmann::json& j, const char* key, double fallback,
               const std::string& label) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number())
    throw Error(label + ": key '" + key + "' must be a number, got " + json_excerpt(*it));
  return it->get<double>();
}

// j.value(key, fallback) throws nlohmann's type_error for a non-string; this names the key.
std::string get_str(const nlohmann::json& j, const char* key, const std::string& fallback,
                    const std::string& label) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string())
    throw Error(label + ": key '" + key + "' must be a string, got " + json_excerpt(*it));
  return it->get<std::string>();
}

bool get_bool(const nlohmann::json& j, const char* key, bool fallback, const std::string& label) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw Error(label + ": key '" + key + "' must be true or false");
  return it->get<bool>();
}

// eos_token_id may be an int or a list (Llama 3 instruct); the first entry ends generation.
int32_t get_token_id(const nlohmann::json& j, const char* key, const std::string& label) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return -1;
  const nlohmann::json* v = &*it;
  if (v->is_array() && !v->empty()) v = &(*v)[0];
  if (!v->is_number_integer()) return -1;
  // Token ids are int32 everywhere; a larger value would silently wrap to another token.
  const bool in_range = v->is_number_unsigned()
                            ? v->get<uint64_t>() <= uint64_t(INT32_MAX)
                            : v->get<int64_t>() >= -1 && v->get<int64_t>() <= INT32_MAX;
  if (!in_range) throw Error(label + ": '" + key + "' " + json_excerpt(*v) + " is not a token id");
  return v->get<int32_t>();
}

using U = ConfigKeyUse;

// The one list of top-level config.json keys ftune knows (see ConfigKeyUse in the header).
// tests/test_config_keys.cpp spells the Read and Refused names out, so changing either list is a
// visible test change, and checks every key transformers writes for llama, mistral and qwen2 is
// in exactly one list.
const std::vector<ConfigKey> kConfigKeys = {
    {"model_type", U::Read, "", "llama, mistral or qwen2; any other is refused"},
    {"vocab_size", U::Read, "", "shape"},
    {"hidden_size", U::Read, "", "shape"},
    {"intermediate_size", U::Read, "", "shape"},
    {"num_hidden_layers", U::Read, "", "shape"},
    {"num_attention_heads", U::Read, "", "shape"},
    {"num_key_value_heads", U::Read, "", "shape (GQA; default num_attention_heads)"},
    {"head_dim", U::Read, "", "shape (default hidden_size / num_attention_heads)"},
    {"hidden_act", U::Read, "", "silu (swish) only: the MLP is SwiGLU"},
    {"rms_norm_eps", U::Read, "", "RMSNorm epsilon"},
    {"max_position_embeddings", U::Read, "",
     "caps the generation context; llama3 RoPE's default original_max_position_embeddings"},
    {"rope_theta", U::Read, "", "RoPE base (transformers 4)"},
    {"rope_scaling", U::Read, "",
     "RoPE type default, linear or llama3 (transformers 4); other types refused"},
    {"rope_parameters", U::Read, "",
     "RoPE theta and type (transformers 5); as rope_scaling, per-layer-type parameters and "
     "partial_rotary_factor other than 1 refused"},
    {"original_max_position_embeddings", U::Read, "",
     "llama3 RoPE: overrides the rope parameters' value, as transformers 5 does"},
    {"tie_word_embeddings", U::Read, "", "LM head shares the embedding"},
    {"attention_bias", U::Read, "",
     "llama: q/k/v/o biases (transformers' mistral has none, qwen2 always q/k/v)"},
    {"mlp_bias", U::Read, "", "llama: gate/up/down biases"},
    {"sliding_window", U::Read, "",
     "mistral: every layer's window; qwen2: with use_sliding_window. ftune has no windowed "
     "attention: check_attention_window refuses runs it binds"},
    {"use_sliding_window", U::Read, "", "qwen2: turns sliding_window on"},
    {"max_window_layers", U::Read, "", "qwen2: layers from this index slide (no layer_types)"},
    {"layer_types", U::Read, "",
     "qwen2: full_attention or sliding_attention per layer (other kinds refused); mistral and "
     "llama ignore it, as transformers does"},
    {"attention_dropout", U::Read, "",
     "training with it above 0 refused (check_trainable); eval and generation never drop"},
    {"initializer_range", U::Read, "", "std of model.init: random"},
    {"bos_token_id", U::Read, "", "token id"},
    {"eos_token_id", U::Read, "", "generation stops at it"},
    {"torch_dtype", U::Read, "", "dtype on disk (transformers 4)"},
    {"dtype", U::Read, "", "dtype on disk (transformers 5)"},

    {"quantization_config", U::Refused, "", "ftune loads unquantized weights only"},
    {"partial_rotary_factor", U::Refused, "1.0", "ftune rotates the whole head_dim"},
    {"attn_logit_softcapping", U::Refused, "", "ftune's attention has no logit soft-capping"},
    {"final_logit_softcapping", U::Refused, "", "ftune's LM head has no logit soft-capping"},
    {"query_pre_attn_scalar", U::Refused, "", "ftune scales attention by 1/sqrt(head_dim)"},
    {"attention_multiplier", U::Refused, "", "ftune scales attention by 1/sqrt(head_dim)"},
    {"embedding_multiplier", U::Refused, "", "ftune does not scale the embedding"},
    {"residual_multiplier", U::Refused, "", "ftune does not scale the residual branches"},
    {"logits_scaling", U::Refused, "", "ftune does not scale the logits"},
    {"use_qk_norm", U::Refused, "false", "ftune has no query/key norms"},
    {"qk_layernorm", U::Refused, "false", "ftune has no query/key norms"},
    {"is_causal", U::Refused, "true", "ftune's attention is causal"},
    {"use_bidirectional_attention", U::Refused, "false", "ftune's attention is causal"},
    {"attention_chunk_size", U::Refused, "", "ftune has no chunked attention"},
    {"num_local_experts", U::Refused, "", "ftune's MLP is dense (no mixture of experts)"},
    {"num_experts", U::Refused, "", "ftune's MLP is dense (no mixture of experts)"},
    {"hidden_activation", U::Refused, "\"silu\"", "ftune's MLP is SwiGLU (silu)"},

    // Bookkeeping, kernel choice and generation defaults: not in the forward's arithmetic.
    {"architectures", U::NoEffect, "", ""},
    {"transformers_version", U::NoEffect, "", ""},
    {"_name_or_path", U::NoEffect, "", ""},
    {"auto_map", U::NoEffect, "", ""},
    {"tokenizer_class", U::NoEffect, "", ""},
    {"use_cache", U::NoEffect, "", ""},
    {"pad_token_id", U::NoEffect, "", "padding is masked by the data layer"},
    {"sep_token_id", U::NoEffect, "", ""},
    {"decoder_start_token_id", U::NoEffect, "", ""},
    {"pretraining_tp", U::NoEffect, "",
     "transformers 4 split the projections into this many GEMMs: the same sums"},
    {"chunk_size_feed_forward", U::NoEffect, "", "unused by these decoders"},
    {"attn_implementation", U::NoEffect, "", "kernel choice"},
    {"_attn_implementation_autoset", U::NoEffect, "", "kernel choice"},
    {"id2label", U::NoEffect, "", "classification heads"},
    {"label2id", U::NoEffect, "", "classification heads"},
    {"problem_type", U::NoEffect, "", "classification heads"},
    {"finetuning_task", U::NoEffect, "", ""},
    {"task_specific_params", U::NoEffect, "", ""},
    {"prefix", U::NoEffect, "", ""},
    {"is_encoder_decoder", U::NoEffect, "", ""},
    {"is_decoder", U::NoEffect, "", ""},
    {"add_cross_attention", U::NoEffect, "", ""},
    {"cross_attention_hidden_size", U::NoEffect, "", ""},
    {"tie_encoder_decoder", U::NoEffect, "", ""},
    {"output_attentions", U::NoEffect, "", ""},
    {"output_hidden_states", U::NoEffect, "", ""},
    {"return_dict", U::NoEffect, "", ""},
    {"torchscript", U::NoEffect, "", ""},
    {"use_bfloat16", U::NoEffect, "", ""},
    {"tf_legacy_loss", U::NoEffect, "", ""},
    // transformers 4 generation defaults: ftune generate takes its own flags.
    {"max_length", U::NoEffect, "", "generation"},
    {"min_length", U::NoEffect, "", "generation"},
    {"do_sample", U::NoEffect, "", "generation"},
    {"early_stopping", U::NoEffect, "", "generation"},
    {"num_beams", U::NoEffect, "", "generation"},
    {"num_beam_groups", U::NoEffect, "", "generation"},
    {"diversity_penalty", U::NoEffect, "", "generation"},
    {"temperature", U::NoEffect, "", "generation"},
    {"top_k", U::NoEffect, "", "generation"},
    {"top_p", U::NoEffect, "", "generation"},
    {"typical_p", U::NoEffect, "", "generation"},
    {"repetition_penalty", U::NoEffect, "", "generation"},
    {"length_penalty", U::NoEffect, "", "generation"},
    {"no_repeat_ngram_size", U::NoEffect, "", "generation"},
    {"encoder_no_repeat_ngram_size", U::NoEffect, "", "generation"},
    {"bad_words_ids", U::NoEffect, "", "generation"},
    {"num_return_sequences", U::NoEffect, "", "generation"},
    {"output_scores", U::NoEffect, "", "generation"},
    {"return_dict_in_generate", U::NoEffect, "", "generation"},
    {"forced_bos_token_id", U::NoEffect, "", "generation"},
    {"forced_eos_token_id", U::NoEffect, "", "generation"},
    {"remove_invalid_values", U::NoEffect, "", "generation"},
    {"exponential_decay_length_penalty", U::NoEffect, "", "generation"},
    {"suppress_tokens", U::NoEffect, "", "generation"},
    {"begin_suppress_tokens", U::NoEffect, "", "generation"},
};

// A Refused key is accepted absent, null or holding exactly its `accepted` value (1 and 1.0 are
// equal JSON numbers).
void refuse_unimplemented(const nlohmann::json& j, const ConfigKey& k, const std::string& label) {
  auto it = j.find(k.name);
  if (it == j.end() || it->is_null()) return;
  if (*k.accepted && *it == nlohmann::json::parse(k.accepted)) return;
  throw Error(label + ": " + k.name + " " + json_excerpt(*it) + " is not supported: " + k.note +
              " (accepted: absent, null" + (*k.accepted ? std::string(" or ") + k.accepted : "") +
              ")");
}

// sliding_window: null or absent is none; a number must be a positive window.
int64_t get_window(const nlohmann::json& j, const std::string& label) {
  const int64_t w = get_int(j, "sliding_window", label, false, 0);
  if (j.contains("sliding_window") && !j["sliding_window"].is_null() && w <= 0)
    throw Error(label + ": sliding_window must be positive or null, got " + std::to_string(w));
  return w;
}

// Which qwen2 layers slide, as transformers 5's Qwen2Config: sliding_window counts only with
// use_sliding_window; layer_types, when given, names each layer's attention, otherwise layers
// from max_window_layers on slide.
void qwen2_window(const nlohmann::json& j, const std::string& label, ModelConfig* c) {
  const int64_t window = get_bool(j, "use_sliding_window", false, label) ? get_window(j, label) : 0;
  const int64_t first = get_int(j, "max_window_layers", label, false, 28);
  auto lt = j.find("layer_types");
  const bool listed = lt != j.end() && !lt->is_null();
  if (listed && (!lt->is_array() || int64_t(lt->size()) != c->num_layers))
    throw Error(label + ": layer_types must list one attention kind per layer (" +
                std::to_string(c->num_layers) + "), got " + json_excerpt(*lt));
  for (int64_t i = 0; i < c->num_layers; ++i) {
    bool slides = window > 0 && i >= first;
    if (listed) {
      const nlohmann::json& t = (*lt)[size_t(i)];
      if (t == "sliding_attention") {
        // transformers fails to build this layer's mask without a window.
        if (window == 0)
          throw Error(label + ": layer_types marks layer " + std::to_string(i) +
                      " sliding_attention but no sliding_window is on (use_sliding_window " +
                      "false or sliding_window null)");
        slides = true;
      } else if (t == "full_attention") {
        slides = false;
      } else {
        throw Error(label + ": layer_types entry " + json_excerpt(t) + " (layer " +
                    std::to_string(i) +
                    ") is not supported (ftune has full_attention and sliding_attention)");
      }
    }
    if (slides) c->sliding_layers.push_back(i);
  }
  if (!c->sliding_layers.empty()) c->sliding_window = window;
}

// Far above any released model (the largest have hidden 16384, intermediate 53248, 126 layers)
// and low enough that sizes ftune derives (layers x hidden x intermediate x bytes) fit in int64.
constexpr int64_t kMaxDim = int64_t(1) << 20;
constexpr int64_t kMaxVocab = INT32_MAX;  // token ids are int32

}  // namespace

ModelConfig parse_model_config(const nlohmann::json& j, const std::string& label) {
  if (!j.is_object()) throw Error(label + ": expected a JSON object");
  ModelConfig c;
  c.raw = j;
  c.model_type = get_str(j, "model_type", "", label);
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2")
    throw Error(label + ": model_type '" + c.model_type +
                "' is not supported (ftune trains llama, mistral, qwen2 and models built on them "
                "such as SmolLM and TinyLlama)");
  for (const ConfigKey& k : kConfigKeys)
    if (k.use == ConfigKeyUse::Refused) refuse_unimplemented(j, k, label);
  std::string act = get_str(j, "hidden_act", "silu", label);
  if (act != "silu" && act != "swish")
    throw Error(label + ": hidden_act '" + act +
                "' is not supported (ftune's MLP is SwiGLU: silu)");

  c.vocab_size = get_int(j, "vocab_size", label, true);
  c.hidden_size = get_int(j, "hidden_size", label, true);
  c.intermediate_size = get_int(j, "intermediate_size", label, true);
  c.num_layers = get_int(j, "num_hidden_layers", label, true);
  c.num_heads = get_int(j, "num_attention_heads", label, true);
  c.num_kv_heads = get_int(j, "num_key_value_heads", label, false, c.num_heads);
  c.head_dim = get_int(j, "head_dim", label, false, 0);
  if (c.head_dim == 0 && c.num_heads > 0) c.head_dim = c.hidden_size / c.num_heads;
  c.max_position_embeddings = get_int(j, "max_position_embeddings", label, false, 2048);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", 1e-6, label);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, label);
  c.bos_token_id = get_token_id(j, "bos_token_id", label);
  c.eos_token_id = get_token_id(j, "eos_token_id", label);

  for (auto [name, v] : {std::pair{"vocab_size", c.vocab_size},
                         {"hidden_size", c.hidden_size},
                         {"intermediate_size", c.intermediate_size},
                         {"num_hidden_layers", c.num_layers},
                         {"num_attention_heads", c.num_heads},
                         {"num_key_value_heads", c.num_kv_heads},
                         {"head_dim", c.head_dim}})
    if (v <= 0 || v > (std::string_view(name) == "vocab_size" ? kMaxVocab : kMaxDim))
      throw Error(label + ": '" + name + "' must be positive and at most " +
                  std::to_string(std::string_view(name) == "vocab_size" ? kMaxVocab : kMaxDim) +
                  ", got " + std::to_string(v));
  if (c.num_heads % c.num_kv_heads != 0)
    throw Error(label + ": num_attention_heads (" + std::to_string(c.num_heads) +
                ") must be a multiple of num_key_value_heads (" + std::to_string(c.num_kv_heads) +
                ")");
  if (c.head_dim % 2 != 0) throw Error(label + ": head_dim must be even for RoPE");

  c.attention_dropout = get_num(j, "attention_dropout", 0.0, label);
  // Per family as transformers builds it: qwen2 always has q/k/v biases and reads no bias key,
  // mistral has none, llama reads attention_bias and mlp_bias.
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;
    qwen2_window(j, label, &c);
  } else if (c.model_type == "mistral") {
    c.sliding_window = get_window(j, label);
    for (int64_t i = 0; c.sliding_window > 0 && i < c.num_layers; ++i)
      c.sliding_layers.push_back(i);
  } else {
    bool attn_bias = get_bool(j, "attention_bias", false, label);
    c.qkv_bias = c.o_bias = attn_bias;
    c.mlp_bias = get_bool(j, "mlp_bias", false, label);
  }

  std::string dt = get_str(j, "torch_dtype", get_str(j, "dtype", "float32", label), label);
  if (dt == "bfloat16")
    c.dtype = DType::BF16;
  else if (dt == "float16")
    c.dtype = DType::F16;
  else
    c.dtype = DType::F32;

  // RoPE: transformers < 5 writes rope_theta + rope_scaling; v5 writes rope_parameters.
  const nlohmann::json* rp = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object())
    rp = &j["rope_parameters"];
  else if (j.contains("rope_scaling") && j["rope_scaling"].is_object())
    rp = &j["rope_scaling"];
  c.rope_theta = get_num(j, "rope_theta", 10000.0, label);
  if (rp) {
    for (const auto& [key, v] : rp->items()) {
      if (v.is_object())
        throw Error(label + ": rope parameters per layer type ('" + key +
                    "') are not supported (ftune applies one RoPE to every layer)");
      if (key == "partial_rotary_factor" && !v.is_null() && v != 1.0)
        throw Error(label + ": rope partial_rotary_factor " + json_excerpt(v) +
                    " is not supported (ftune rotates the whole head_dim)");
    }
    c.rope_theta = get_num(*rp, "rope_theta", c.rope_theta, label + ": rope parameters");
    std::string type =
        get_str(*rp, "rope_type", get_str(*rp, "type", "default", label + ": rope parameters"),
                label + ": rope parameters");
    c.rope_scaling.type = type;
    if (type == "default") {
    } else if (type == "linear") {
      c.rope_scaling.factor = get_num(*rp, "factor", 1.0, label);
    } else if (type == "llama3") {
      c.rope_scaling.factor = get_num(*rp, "factor", 8.0, label);
      c.rope_scaling.low_freq_factor = get_num(*rp, "low_freq_factor", 1.0, label);
      c.rope_scaling.high_freq_factor = get_num(*rp, "high_freq_factor", 4.0, label);
      // transformers 5: a top-level value wins, then the rope parameters', then
      // max_position_embeddings.
      c.rope_scaling.original_max_position_embeddings =
          get_int(j, "original_max_position_embeddings", label, false,
                  get_int(*rp, "original_max_position_embeddings", label, false,
                          c.max_position_embeddings));
    } else {
      throw Error(label + ": rope scaling type '" + type +
                  "' is not supported (ftune handles default, linear and llama3)");
    }
  }
  return c;
}

ModelConfig load_model_config(const std::string& dir) {
  std::string path = dir + "/config.json";
  if (!path_exists(path))
    throw Error("model directory '" + dir +
                "' has no config.json: point model.path at a Hugging Face model directory");
  nlohmann::json j;
  try {
    j = parse_json_bounded(read_file(path), path);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": invalid JSON: " + e.what());
  }
  return parse_model_config(j, path);
}

void check_attention_window(const ModelConfig& cfg, int64_t tokens, const std::string& what) {
  if (cfg.sliding_window <= 0 || tokens <= cfg.sliding_window) return;
  const std::string w = std::to_string(cfg.sliding_window);
  const std::string layers = cfg.sliding_layers.size() == size_t(cfg.num_layers)
                                 ? "every layer"
                                 : std::to_string(cfg.sliding_layers.size()) + " of " +
                                       std::to_string(cfg.num_layers) + " layers (from layer " +
                                       std::to_string(cfg.sliding_layers.front()) + ")";
  const std::string keys = cfg.model_type == "qwen2"
                               ? "sliding_window (" + w + ", use_sliding_window true, on " +
                                     layers + " by max_window_layers / layer_types)"
                               : "sliding_window (" + w + ", on " + layers + ")";
  throw Error("config.json " + keys + " is shorter than " + what + " (" + std::to_string(tokens) +
              "): ftune's attention has no sliding window yet, so it would attend to tokens " +
              "transformers masks; lower " + what + " to " + w + " or less");
}

void check_trainable(const ModelConfig& cfg) {
  if (cfg.attention_dropout > 0)
    throw Error("config.json attention_dropout (" + nlohmann::json(cfg.attention_dropout).dump() +
                ") is not supported in training: ftune's attention has no dropout; set it to "
                "0.0 (eval and generation, which never drop, accept it)");
}

const std::vector<ConfigKey>& config_keys() {
  return kConfigKeys;
}

nlohmann::json model_config_json(const ModelConfig& cfg, DType stored) {
  nlohmann::json j = cfg.raw;
  const char* name = stored == DType::BF16  ? "bfloat16"
                     : stored == DType::F16 ? "float16"
                                            : "float32";
  if (j.contains("dtype")) j["dtype"] = name;
  j["torch_dtype"] = name;
  return j;
}

std::vector<float> rope_inv_freq(const ModelConfig& cfg) {
  const int64_t half = cfg.head_dim / 2;
  std::vector<float> out(half);
  const auto& rs = cfg.rope_scaling;
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(cfg.rope_theta, double(2 * i) / double(cfg.head_dim));
    if (rs.type == "linear") {
      f /= rs.factor;
    } else if (rs.type == "llama3") {
      // Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
      double low_wavelen = double(rs.original_max_position_embeddings) / rs.low_freq_factor;
      double high_wavelen = double(rs.original_max_position_embeddings) / rs.high_freq_factor;
      double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f /= rs.factor;
      } else if (wavelen >= high_wavelen) {
        double smooth =
            (double(rs.original_max_position_embeddings) / wavelen - rs.low_freq_factor) /
            (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
    }
    out[i] = float(f);
  }
  return out;
}

double flops_per_token(const ModelConfig& c, int64_t seq, bool frozen_base) {
  const double d = double(c.hidden_size), f = double(c.intermediate_size);
  const double per_layer = d * double(c.q_dim()) * 2 + d * double(c.kv_dim()) * 2 + 3 * d * f;
  const double n = per_layer * double(c.num_layers);
  return (frozen_base ? 4.0 : 6.0) * n +
         12.0 * double(c.num_layers) * double(c.num_heads) * double(c.head_dim) * double(seq);
}

}  // namespace ftune
