#include "engine/model/lora.h"

#include <cmath>

#include "engine/base/error.h"
#include "engine/recipe/recipe.h"

namespace ftune {

namespace {

constexpr const char* kNames[kLoraTargets] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                              "gate_proj", "up_proj", "down_proj"};

std::string all_names() {
  std::string s;
  for (const char* n : kNames) s += std::string(s.empty() ? "" : ", ") + n;
  return s + ", all-linear";
}

}  // namespace

const char* lora_target_name(LoraTarget t) {
  return kNames[int(t)];
}

float LoraConfig::scale() const {
  return float(rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank));
}

std::array<bool, kLoraTargets> parse_lora_targets(const std::vector<std::string>& names,
                                                  const std::string& key) {
  std::array<bool, kLoraTargets> t{};
  if (names.empty()) throw Error(key + ": no target modules; use some of " + all_names());
  for (const std::string& n : names) {
    if (n == "all-linear") {
      t.fill(true);
      continue;
    }
    bool found = false;
    for (int i = 0; i < kLoraTargets; ++i)
      if (n == kNames[i]) t[size_t(i)] = found = true;
    if (!found) throw Error(key + ": unknown target module '" + n + "' (use " + all_names() + ")");
  }
  return t;
}

std::vector<std::string> lora_target_names(const std::array<bool, kLoraTargets>& t) {
  std::vector<std::string> out;
  for (int i = 0; i < kLoraTargets; ++i)
    if (t[size_t(i)]) out.push_back(kNames[i]);
  return out;
}

std::string lora_module_name(int layer, LoraTarget t) {
  const bool attn = int(t) <= int(LoraTarget::O);
  return "model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") +
         lora_target_name(t);
}

LoraLayout::LoraLayout(const ModelConfig& mc, const LoraConfig& lc) {
  if (lc.rank <= 0) throw Error("lora.rank must be positive");
  const int64_t d = mc.hidden_size, f = mc.intermediate_size, q = mc.q_dim(), kv = mc.kv_dim();
  const int64_t dims[kLoraTargets][2] = {{d, q}, {d, kv}, {d, kv}, {q, d},
                                         {d, f}, {d, f},  {f, d}};  // {in, out}
  auto add = [&](const std::string& name, std::vector<int64_t> shape, int layer) {
    ParamEntry e;
    e.name = name;
    e.count = size_t(shape[0] * shape[1]);
    e.shape = std::move(shape);
    e.kind = ParamKind::Weight;
    e.layer = layer;
    total_ = (total_ + 15) / 16 * 16;  // 64-byte aligned, as in ParamLayout
    e.offset = total_;
    total_ += e.count;
    entries_.push_back(e);
    return e.offset;
  };
  slots_.resize(size_t(mc.num_layers) * kLoraTargets);
  for (int l = 0; l < int(mc.num_layers); ++l)
    for (int t = 0; t < kLoraTargets; ++t) {
      if (!lc.targets[size_t(t)]) continue;
      LoraSlot& s = slots_[size_t(l) * kLoraTargets + size_t(t)];
      s.in = dims[t][0];
      s.out = dims[t][1];
      const std::string base = "base_model.model." + lora_module_name(l, LoraTarget(t));
      s.a = add(base + ".lora_A.weight", {lc.rank, s.in}, l);
      s.b = add(base + ".lora_B.weight", {s.out, lc.rank}, l);
    }
  total_ = (total_ + 15) / 16 * 16;
}

const ParamEntry* LoraLayout::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

nlohmann::json peft_adapter_config(const LoraConfig& lc, const std::string& base_model) {
  return {{"peft_type", "LORA"},
          {"task_type", "CAUSAL_LM"},
          {"base_model_name_or_path", base_model},
          {"r", lc.rank},
          {"lora_alpha", lc.alpha},
          {"lora_dropout", lc.dropout},
          {"target_modules", lora_target_names(lc.targets)},
          {"use_rslora", lc.rslora},
          {"use_dora", false},
          {"bias", "none"},
          {"fan_in_fan_out", false},
          {"inference_mode", true},
          {"init_lora_weights",
           lc.init == LoraInit::Gaussian ? nlohmann::json("gaussian") : nlohmann::json(true)},
          {"modules_to_save", nullptr},
          {"layers_to_transform", nullptr},
          {"layers_pattern", nullptr},
          {"rank_pattern", nlohmann::json::object()},
          {"alpha_pattern", nlohmann::json::object()},
          {"revision", nullptr}};
}

LoraConfig lora_config_from_peft(const nlohmann::json& j, const std::string& file) {
  auto bad = [&](const std::string& key, const std::string& why) {
    return Error(file + ": '" + key + "' " + why + "; ftune supports plain LoRA adapters");
  };
  if (!j.is_object()) throw Error(file + ": not a JSON object");
  if (j.value("peft_type", std::string("LORA")) != "LORA")
    throw bad("peft_type", "is '" + j.value("peft_type", std::string()) + "', not LORA");
  LoraConfig lc;
  try {
    lc.rank = j.at("r").get<int64_t>();
    lc.alpha = j.value("lora_alpha", double(lc.rank));
    lc.dropout = j.value("lora_dropout", 0.0);
    lc.rslora = j.value("use_rslora", false);
  } catch (const nlohmann::json::exception& e) {
    throw Error(file + ": " + e.what());
  }
  if (lc.rank <= 0) throw bad("r", "must be positive");
  if (j.value("use_dora", false)) throw bad("use_dora", "is true (DoRA is not implemented)");
  if (j.value("fan_in_fan_out", false)) throw bad("fan_in_fan_out", "is true");
  if (j.contains("bias") && j["bias"] != "none") throw bad("bias", "trains biases");
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (j.contains(k) && !j[k].is_null() && !j[k].empty()) throw bad(k, "sets per-layer values");
  for (const char* k : {"modules_to_save", "layers_to_transform"})
    if (j.contains(k) && !j[k].is_null()) throw bad(k, "is set");
  const nlohmann::json& tm = j.contains("target_modules") ? j["target_modules"] : nlohmann::json();
  std::vector<std::string> names;
  if (tm.is_string()) {
    if (tm != "all-linear") throw bad("target_modules", "is a regular expression");
    names.push_back("all-linear");
  } else if (tm.is_array()) {
    for (const auto& n : tm) {
      if (!n.is_string()) throw bad("target_modules", "holds a non-string");
      names.push_back(n.get<std::string>());
    }
  } else {
    throw bad("target_modules", "is missing");
  }
  lc.targets = parse_lora_targets(names, file + ": target_modules");
  return lc;
}

std::optional<LoraConfig> recipe_lora_config(const RecipeConfig& c) {
  if (c.method != Method::Lora) return std::nullopt;
  LoraConfig lc;
  lc.rank = c.lora_rank;
  lc.alpha = c.lora_alpha;
  lc.dropout = c.lora_dropout;
  lc.rslora = c.lora_rslora;
  lc.init = c.lora_init;
  std::vector<std::string> names;
  std::string cur;
  for (char ch : c.lora_targets + ",") {
    if (ch == ',') {
      while (!cur.empty() && cur.back() == ' ') cur.pop_back();
      if (!cur.empty()) names.push_back(cur);
      cur.clear();
    } else if (ch != ' ' || !cur.empty()) {
      cur += ch;
    }
  }
  lc.targets = parse_lora_targets(names, "lora.targets");
  return lc;
}

}  // namespace ftune
