#include "engine/inspect.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "engine/error.h"
#include "engine/fs_util.h"
#include "engine/safetensors.h"

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
    cfg = nlohmann::json::parse(read_file(config_path));
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

}  // namespace

std::string inspect_path(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    throw Error("'" + path + "' does not exist; give a model directory or a .safetensors file");

  std::ostringstream out;
  std::vector<const SafetensorsReader*> readers;
  // Keep whichever owner applies alive for the rest of the function.
  std::unique_ptr<WeightStore> store;
  std::unique_ptr<SafetensorsReader> single;
  if (S_ISDIR(st.st_mode)) {
    out << "model:      " << path << "\n";
    const std::string config = path + "/config.json";
    if (path_exists(config)) describe_config(config, out);
    store = std::make_unique<WeightStore>(WeightStore::open_dir(path));
    for (const SafetensorsReader& r : store->files()) readers.push_back(&r);
  } else {
    out << "file:       " << path << "\n";
    single = std::make_unique<SafetensorsReader>(SafetensorsReader::open(path));
    readers.push_back(single.get());
  }
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
  return out.str();
}

}  // namespace ftune
