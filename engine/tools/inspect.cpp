#include "engine/tools/inspect.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"
#include "engine/formats/safetensors.h"
#include "engine/trust/encryption.h"
#include "engine/trust/manifest.h"

namespace ftune {

namespace {

// "6.74B", "124.44M", "12.35K" or the plain number: enough to recognise a model size at a glance.
std::string human_count(uint64_t n) {
  char buf[32];
  if (n >= 1000000000ull) {
    std::snprintf(buf, sizeof buf, "%.2fB", double(n) / 1e9);
  } else if (n >= 1000000ull) {
    std::snprintf(buf, sizeof buf, "%.2fM", double(n) / 1e6);
  } else if (n >= 1000ull) {
    std::snprintf(buf, sizeof buf, "%.2fK", double(n) / 1e3);
  } else {
    std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(n));
  }
  return buf;
}

std::string human_bytes(uint64_t n) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(n);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
  } else {
    std::snprintf(buf, sizeof buf, "%.2f %s", v, kUnits[u]);
  }
  return buf;
}

std::string base_name(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The config.json fields that identify a Llama-family model's size; absent ones are skipped.
void describe_config(const std::string& config_path, std::ostringstream& out) {
  nlohmann::json cfg;
  try {
    cfg = parse_json_bounded(read_file(config_path), config_path);
  } catch (const nlohmann::json::exception& e) {
    throw Error(config_path + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  if (!cfg.is_object()) throw Error(config_path + ": expected a JSON object");
  static const std::pair<const char*, const char*> kFields[] = {
      {"model_type", "model_type"},
      {"hidden_size", "hidden"},
      {"num_hidden_layers", "layers"},
      {"num_attention_heads", "heads"},
      {"num_key_value_heads", "kv_heads"},
      {"intermediate_size", "intermediate"},
      {"vocab_size", "vocab"},
  };
  std::string line;
  for (const auto& [key, label] : kFields) {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) continue;
    if (!line.empty()) line += ", ";
    line += std::string(label) + " " + (it->is_string() ? it->get<std::string>() : it->dump());
  }
  out << "config:     " << (line.empty() ? "(no model fields in config.json)" : line) << "\n";
}

struct Row {
  std::string name, dtype, shape, file;
};

// The metadata, tensor table and totals of one or more safetensors files.
void describe_tensors(const std::vector<const SafetensorsReader*>& readers,
                      std::ostringstream& out) {
  const bool multi = readers.size() > 1;
  if (multi) out << "shards:     " << readers.size() << "\n";
  // Shards usually repeat the same metadata; show it once unless they differ.
  bool same_metadata = true;
  for (const SafetensorsReader* r : readers)
    same_metadata = same_metadata && r->metadata() == readers[0]->metadata();
  for (const SafetensorsReader* r : readers) {
    if (r->metadata().empty()) continue;
    out << "metadata:   ";
    if (!same_metadata) out << "(" << base_name(r->path()) << ") ";
    bool first = true;
    for (const auto& [k, v] : r->metadata()) {
      out << (first ? "" : ", ") << k << "=" << v;
      first = false;
    }
    out << "\n";
    if (same_metadata) break;
  }

  std::vector<Row> rows;
  uint64_t params = 0, bytes = 0;
  struct PerType {
    uint64_t tensors = 0, params = 0;
  };
  std::map<std::string, PerType> per_type;
  for (const SafetensorsReader* r : readers) {
    for (const TensorInfo& t : r->tensors()) {
      rows.push_back({t.name, dtype_name(t.dtype), shape_str(t.shape), base_name(r->path())});
      const uint64_t n = uint64_t(t.numel());
      params += n;
      bytes += t.end - t.begin;
      auto& pt = per_type[dtype_name(t.dtype)];
      pt.tensors += 1;
      pt.params += n;
    }
  }

  size_t w_name = 4, w_dtype = 5, w_shape = 5;
  for (const Row& r : rows) {
    w_name = std::max(w_name, r.name.size());
    w_dtype = std::max(w_dtype, r.dtype.size());
    w_shape = std::max(w_shape, r.shape.size());
  }
  auto pad = [](const std::string& s, size_t w) { return s + std::string(w - s.size(), ' '); };
  out << "\n" << pad("name", w_name) << "  " << pad("dtype", w_dtype) << "  ";
  out << (multi ? pad("shape", w_shape) + "  file" : std::string("shape")) << "\n";
  for (const Row& r : rows) {
    out << pad(r.name, w_name) << "  " << pad(r.dtype, w_dtype) << "  ";
    out << (multi ? pad(r.shape, w_shape) + "  " + r.file : r.shape) << "\n";
  }

  out << "\ntensors:    " << rows.size() << "\n";
  out << "parameters: " << human_count(params) << " (" << params << ")\n";
  out << "bytes:      " << human_bytes(bytes) << " (" << bytes << ")\n";
  out << "dtypes:     ";
  bool first = true;
  for (const auto& [name, pt] : per_type) {
    out << (first ? "" : ", ") << name << " " << pt.tensors
        << (pt.tensors == 1 ? " tensor (" : " tensors (") << human_count(pt.params)
        << (pt.params == 1 ? " param)" : " params)");
    first = false;
  }
  out << (per_type.empty() ? "none\n" : "\n");
}

nlohmann::json parse_json_file(const std::string& path) {
  try {
    return parse_json_bounded(read_file(path), path);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON (" + std::string(e.what()) + ")");
  }
}

std::string json_text(const nlohmann::json& v) {
  return v.is_string() ? v.get<std::string>() : v.dump();
}

// Encrypted weights: what the authenticated-on-read header lists, readable without the key.
void describe_encrypted(const std::vector<std::string>& files, std::ostream& out) {
  int64_t tensors = 0, params = 0;
  std::string key;
  for (const std::string& f : files) {
    const nlohmann::json h = read_encrypted_header(f);
    key = h.value("key_id", std::string("?"));
    for (const auto& t : h.value("tensors", nlohmann::json::array())) {
      int64_t n = 1;
      for (const auto& d : t.value("shape", nlohmann::json::array())) n *= d.get<int64_t>();
      params += n;
      ++tensors;
    }
  }
  out << "weights:    encrypted (AES-256-GCM, key id " << key << "), " << files.size()
      << (files.size() == 1 ? " file, " : " files, ") << tensors << " tensors, " << params
      << " parameters; read them with --key-file/--key-env, or `ftune decrypt`\n";
}

// The weight files of a model directory, when they are encrypted (empty otherwise).
std::vector<std::string> encrypted_weight_files(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string p = e.path().string();
    if (e.path().extension() == ".safetensors" && is_encrypted_file(p)) out.push_back(p);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A PEFT LoRA adapter directory: adapter_config.json plus adapter_model.safetensors whose
// tensors are named base_model.model.<module path>.lora_{A,B}.weight.
void describe_adapter(const std::string& dir, std::ostringstream& out) {
  const std::string config_path = dir + "/adapter_config.json";
  const nlohmann::json cfg = parse_json_file(config_path);
  if (!cfg.is_object()) throw Error(config_path + ": expected a JSON object");
  out << "adapter:    " << dir << "\n";
  const nlohmann::json type = cfg.value("peft_type", nlohmann::json("?"));
  const nlohmann::json r = cfg.value("r", nlohmann::json());
  const nlohmann::json alpha = cfg.value("lora_alpha", nlohmann::json());
  const bool rslora = cfg.value("use_rslora", nlohmann::json()) == true;
  out << "peft:       " << json_text(type) << ", rank " << (r.is_null() ? "?" : json_text(r))
      << ", alpha " << (alpha.is_null() ? "?" : json_text(alpha));
  // The update is B·A·scale; rsLoRA divides by sqrt(r) instead of r.
  if (r.is_number() && alpha.is_number() && r.get<double>() > 0) {
    const double rank = r.get<double>();
    char buf[64];
    std::snprintf(buf, sizeof buf, ", scale %.4g%s",
                  alpha.get<double>() / (rslora ? std::sqrt(rank) : rank),
                  rslora ? " (rsLoRA)" : "");
    out << buf;
  }
  out << "\n";
  const nlohmann::json targets = cfg.value("target_modules", nlohmann::json());
  out << "targets:    ";
  if (targets.is_array()) {
    std::vector<std::string> names;
    for (const auto& t : targets) names.push_back(json_text(t));
    std::sort(names.begin(), names.end());
    for (size_t i = 0; i < names.size(); ++i) out << (i ? ", " : "") << names[i];
    out << (names.empty() ? "none\n" : "\n");
  } else {
    out << (targets.is_null() ? "(not set)" : json_text(targets)) << "\n";
  }
  const nlohmann::json base = cfg.value("base_model_name_or_path", nlohmann::json());
  if (!base.is_null()) out << "base model: " << json_text(base) << "\n";

  const std::string weights = dir + "/adapter_model.safetensors";
  if (!path_exists(weights)) {
    out << "weights:    "
        << (path_exists(dir + "/adapter_model.bin")
                ? "adapter_model.bin (PyTorch pickle; ftune reads adapter_model.safetensors)"
                : "none (no adapter_model.safetensors)")
        << "\n";
    return;
  }
  if (is_encrypted_file(weights)) {
    describe_encrypted({weights}, out);
    return;
  }
  const SafetensorsReader reader = SafetensorsReader::open(weights);
  // Which modules in which layers carry an adapter, and at what rank (lora_A is [r, in]).
  std::map<std::string, int> modules;
  std::map<int64_t, int> ranks;
  std::set<long> layers;
  for (const TensorInfo& t : reader.tensors()) {
    const std::string suffix = ".lora_A.weight";
    if (t.name.size() <= suffix.size() ||
        t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string mod = t.name.substr(0, t.name.size() - suffix.size());
    modules[mod.substr(mod.find_last_of('.') + 1)] += 1;
    if (!t.shape.empty()) ranks[t.shape[0]] += 1;
    const size_t at = mod.find(".layers.");
    if (at != std::string::npos) layers.insert(std::strtol(mod.c_str() + at + 8, nullptr, 10));
  }
  int pairs = 0;
  std::string mods;
  for (const auto& [m, n] : modules) {
    pairs += n;
    mods += (mods.empty() ? "" : ", ") + m;
  }
  out << "adapted:    " << pairs << (pairs == 1 ? " module" : " modules");
  if (!mods.empty()) out << " (" << mods << ")";
  if (!layers.empty())
    out << " in " << layers.size() << (layers.size() == 1 ? " layer" : " layers");
  out << "\n";
  if (!ranks.empty() &&
      !(ranks.size() == 1 && r.is_number_integer() && ranks.begin()->first == r.get<int64_t>())) {
    out << "tensor rank:";
    bool first = true;
    for (const auto& [k, n] : ranks) {
      out << (first ? " " : ", ") << k << " (" << n << ")";
      first = false;
    }
    out << " (adapter_config.json says r=" << (r.is_null() ? "?" : json_text(r)) << ")\n";
  }
  describe_tensors({&reader}, out);
}

std::string loss_text(const nlohmann::json& v) {
  if (!v.is_number()) return v.is_null() ? "n/a" : json_text(v);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", v.get<double>());
  return buf;
}

// What a provenance manifest says about the run; `ftune verify` checks it, this only reads it.
void describe_manifest(const std::string& dir, std::ostringstream& out) {
  out << "\nmanifest:   " << kManifestName;
  nlohmann::json m;
  try {
    m = parse_json_bounded(read_file(dir + "/" + kManifestName), kManifestName);
  } catch (const std::exception&) {  // invalid or absurdly nested: reported as unreadable below
  }
  if (!m.is_object()) {
    out << " is not a valid manifest; run 'ftune verify " << dir << "'\n";
    return;
  }
  out << " (" << json_text(m.value("format", nlohmann::json("unknown format"))) << ")\n";
  const nlohmann::json engine = m.value("engine", nlohmann::json::object());
  if (engine.is_object())
    out << "engine:     " << json_text(engine.value("name", nlohmann::json("?"))) << " "
        << json_text(engine.value("version", nlohmann::json("?"))) << " (commit "
        << json_text(engine.value("commit", nlohmann::json("?"))) << ")\n";
  const nlohmann::json base = m.value("base_model", nlohmann::json());
  if (base.is_object() && base.contains("path")) {
    out << "base model: " << json_text(base["path"]);
    if (base.contains("files") && base["files"].is_array())
      out << " (" << base["files"].size() << " files)";
    out << "\n";
  }
  if (m.contains("method")) out << "method:     " << json_text(m["method"]) << "\n";
  if (m.contains("steps") || m.contains("tokens_seen")) {
    out << "steps:      " << json_text(m.value("steps", nlohmann::json("?")));
    const nlohmann::json tokens = m.value("tokens_seen", nlohmann::json());
    if (tokens.is_number_unsigned())
      out << ", " << human_count(tokens.get<uint64_t>()) << " tokens";
    out << "\n";
  }
  if (m.contains("final_train_loss") || m.contains("final_val_loss"))
    out << "loss:       train " << loss_text(m.value("final_train_loss", nlohmann::json()))
        << ", val " << loss_text(m.value("final_val_loss", nlohmann::json())) << "\n";
  if (m.contains("start_time") || m.contains("end_time"))
    out << "time:       " << json_text(m.value("start_time", nlohmann::json("?"))) << " to "
        << json_text(m.value("end_time", nlohmann::json("?"))) << "\n";
  const nlohmann::json outputs = m.value("outputs", nlohmann::json());
  if (outputs.is_object()) {
    uint64_t bytes = 0;
    for (const auto& [rel, e] : outputs.items())
      if (e.is_object() && e.value("size", nlohmann::json()).is_number_unsigned())
        bytes += e["size"].get<uint64_t>();
    out << "outputs:    " << outputs.size() << (outputs.size() == 1 ? " file, " : " files, ")
        << human_bytes(bytes) << "\n";
  }
  const std::string sig_path = dir + "/" + kSignatureName;
  out << "signed:     ";
  if (path_exists(sig_path)) {
    out << "yes (" << kSignatureName;
    try {
      const nlohmann::json sig = parse_json_bounded(read_file(sig_path), sig_path);
      const std::string key = sig.value("public_key_sha256", "");
      if (!key.empty()) out << ", public key sha256 " << key.substr(0, 16);
    } catch (const std::exception&) {
    }
    out << ")\n";
  } else {
    out << "no\n";
  }
  out << "            run 'ftune verify " << dir
      << (path_exists(sig_path) ? " --pubkey PUB.pem" : "") << "' to check hashes"
      << (path_exists(sig_path) ? " and signature" : "") << "\n";
}

bool is_model_dir(const std::string& dir) {
  return path_exists(dir + "/model.safetensors") ||
         path_exists(dir + "/model.safetensors.index.json");
}

}  // namespace

std::string inspect_path(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    throw Error("'" + path + "' does not exist; give a model directory or a .safetensors file");

  std::ostringstream out;
  if (!S_ISDIR(st.st_mode)) {
    out << "file:       " << path << "\n";
    if (is_encrypted_file(path)) {
      describe_encrypted({path}, out);
      return out.str();
    }
    const SafetensorsReader single = SafetensorsReader::open(path);
    describe_tensors({&single}, out);
    return out.str();
  }
  const bool has_manifest = path_exists(path + "/" + kManifestName);
  if (path_exists(path + "/adapter_config.json")) {
    describe_adapter(path, out);
  } else if (is_model_dir(path) || !has_manifest) {
    // A plain directory without weights still gets WeightStore's error naming what is missing.
    out << "model:      " << path << "\n";
    const std::string config = path + "/config.json";
    if (path_exists(config)) describe_config(config, out);
    if (const auto enc = encrypted_weight_files(path); !enc.empty()) {
      describe_encrypted(enc, out);
      if (has_manifest) describe_manifest(path, out);
      return out.str();
    }
    const WeightStore store = WeightStore::open_dir(path);
    std::vector<const SafetensorsReader*> readers;
    for (const SafetensorsReader& r : store.files()) readers.push_back(&r);
    describe_tensors(readers, out);
  } else {
    // A run's output directory: the weights live in subdirectories (model/, checkpoints/...).
    out << "output:     " << path << "\n";
    std::vector<std::string> inner;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(path, ec)) {
      std::error_code sec;
      const std::string p = e.path().string();
      if (e.is_directory(sec) && (is_model_dir(p) || path_exists(p + "/adapter_config.json")))
        inner.push_back(e.path().filename().string());
    }
    std::sort(inner.begin(), inner.end());
    if (!inner.empty()) {
      out << "contains:   ";
      for (size_t i = 0; i < inner.size(); ++i) out << (i ? ", " : "") << inner[i] << "/";
      out << " (ftune inspect " << path << "/" << inner[0] << " for its tensors)\n";
    }
  }
  if (has_manifest) describe_manifest(path, out);
  return out.str();
}

}  // namespace ftune
