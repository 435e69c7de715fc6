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

  if (c.model_type == "qwen2") {
    c.qkv_bias = true;
    if (get_bool(j, "use_sliding_window", false, label))
      c.sliding_window = get_int(j, "sliding_window", label, false, 0);
  } else {
    bool attn_bias = get_bool(j, "attention_bias", false, label);
    c.qkv_bias = c.o_bias = attn_bias;
    c.mlp_bias = get_bool(j, "mlp_bias", false, label);
    if (c.model_type == "mistral") c.sliding_window = get_int(j, "sliding_window", label, false, 0);
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
      c.rope_scaling.original_max_position_embeddings =
          get_int(*rp, "original_max_position_embeddings", label, false, 8192);
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
