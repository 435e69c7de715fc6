// LoRA adapters: the settings, where each adapter tensor lives in its own flat buffer, and the
// PEFT on-disk form (adapter_config.json + adapter_model.safetensors with PEFT's tensor names),
// so adapters ftune trains load in PEFT and adapters PEFT wrote load in ftune.
// A targeted linear y = x W^T (+ b) becomes y + s * (drop(x) A^T) B^T with A [r, in], B [out, r]
// and s = alpha / r (alpha / sqrt(r) with rsLoRA); the base weights stay frozen.
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/model/model_config.h"
#include "engine/model/param_layout.h"
#include "engine/recipe/recipe.h"

namespace ftune {

// The linear layers an adapter can target, in layer order.
enum class LoraTarget { Q, K, V, O, Gate, Up, Down };
constexpr int kLoraTargets = 7;
const char* lora_target_name(LoraTarget t);  // "q_proj", ...

struct LoraConfig {
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  std::array<bool, kLoraTargets> targets{};  // which linears carry an adapter
  bool rslora = false;
  LoraInit init = LoraInit::Kaiming;  // Kaiming: A Kaiming-uniform, B zero; Gaussian: A ~ N(0, 1/r)
  float scale() const;
};

// Parses target names (q_proj ... down_proj, or "all-linear"); `key` names the setting in errors.
std::array<bool, kLoraTargets> parse_lora_targets(const std::vector<std::string>& names,
                                                  const std::string& key);
std::vector<std::string> lora_target_names(const std::array<bool, kLoraTargets>& t);

// One adapter's tensors: offsets (floats) into the adapter buffer.
struct LoraSlot {
  size_t a = kNoParam, b = kNoParam;  // kNoParam: this linear has no adapter
  int64_t in = 0, out = 0;
  bool active() const { return a != kNoParam; }
};

class LoraLayout {
 public:
  LoraLayout() = default;
  LoraLayout(const ModelConfig& mc, const LoraConfig& lc);
  // Entries carry PEFT names ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").
  const std::vector<ParamEntry>& entries() const { return entries_; }
  const ParamEntry* find(const std::string& name) const;
  size_t total() const { return total_; }
  const LoraSlot& slot(int layer, LoraTarget t) const {
    return slots_[size_t(layer) * kLoraTargets + size_t(t)];
  }
  int num_layers() const { return int(slots_.size() / kLoraTargets); }

 private:
  std::vector<ParamEntry> entries_;
  std::vector<LoraSlot> slots_;  // [layer][target]
  size_t total_ = 0;
};

// PEFT's name of the base linear a slot adapts, e.g. "model.layers.3.mlp.up_proj".
std::string lora_module_name(int layer, LoraTarget t);

// adapter_config.json as PEFT writes it for a causal LM.
nlohmann::json peft_adapter_config(const LoraConfig& lc, const std::string& base_model);
// Reads an adapter_config.json; features ftune does not implement (DoRA, per-layer ranks,
// biases, modules_to_save, regex targets, fan_in_fan_out, ...) are errors naming the key.
LoraConfig lora_config_from_peft(const nlohmann::json& j, const std::string& file);

// The adapter settings of a `method: lora` recipe (nullopt for full fine-tuning); bad target
// names are errors naming lora.targets.
std::optional<LoraConfig> recipe_lora_config(const RecipeConfig& c);

}  // namespace ftune
