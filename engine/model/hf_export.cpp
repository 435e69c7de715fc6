#include "engine/model/hf_export.h"

#include <unistd.h>

#include <filesystem>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/formats/safetensors.h"

namespace fs = std::filesystem;

namespace ftune {

DType resolve_export_dtype(ExportDtype dtype, DType base) {
  switch (dtype) {
    case ExportDtype::F32:
      return DType::F32;
    case ExportDtype::Bf16:
      return DType::BF16;
    case ExportDtype::F16:
      return DType::F16;
    case ExportDtype::Auto:
      break;
  }
  return base;
}

DType resolve_export_dtype(const std::string& name, DType base) {
  if (name == "auto") return resolve_export_dtype(ExportDtype::Auto, base);
  if (name == "f32") return resolve_export_dtype(ExportDtype::F32, base);
  if (name == "bf16") return resolve_export_dtype(ExportDtype::Bf16, base);
  if (name == "f16") return resolve_export_dtype(ExportDtype::F16, base);
  throw Error("export.dtype: unknown dtype '" + name + "' (use auto, f32, bf16 or f16)");
}

void export_weights_dir(const ModelConfig& cfg, const ParamLayout& layout,
                        const UnitWeights& unit_weights, const std::string& source_dir,
                        const std::string& final_dir, DType dtype, size_t max_shard_bytes,
                        const WeightKey* key) {
  // Build the whole directory beside the destination, then swap it in: a reader never sees a
  // mix of old and new shards, and a failure leaves the previous export untouched.
  const std::string dir = final_dir + ".tmp." + std::to_string(getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  try {
    // Tensors are written in layout order, which visits the units in order: each tensor's data
    // is asked for as it is written, and a unit is fetched when its first tensor comes up.
    int current = -1;
    const float* unit_data = nullptr;
    auto unit_of = [&](size_t offset) {
      for (int u = 0; u < layout.num_units(); ++u)
        if (offset < layout.unit(u).end) return u;
      throw Error("parameter offset outside the layout");
    };
    SafetensorsWriter w;
    for (const auto& e : layout.entries()) {
      const int u = unit_of(e.offset);
      const size_t local = e.offset - layout.unit(u).begin;
      w.add_deferred(
          e.name, e.shape,
          [&, u, local]() -> const void* {
            if (u != current) {
              FTUNE_CHECK(u > current, "export asked for the units out of order");
              unit_data = unit_weights(u);
              current = u;
            }
            return unit_data + local;
          },
          DType::F32, dtype);
    }
    w.set_metadata("format", "pt");
    write_sharded_model(w, dir, max_shard_bytes, key);
    write_file_atomic(dir + "/config.json", model_config_json(cfg, dtype).dump(2) + "\n");
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "generation_config.json", "tokenizer.model"}) {
      const std::string src = source_dir + "/" + f;
      if (path_exists(src)) write_file_atomic(dir + "/" + f, read_file(src));
    }
    fsync_dir(dir);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(dir, ec);
    throw;
  }
  const std::string old = final_dir + ".old." + std::to_string(getpid());
  if (fs::exists(final_dir)) fs::rename(final_dir, old);
  fs::rename(dir, final_dir);
  std::string parent = fs::path(final_dir).parent_path().string();
  fsync_dir(parent.empty() ? "." : parent);
  fs::remove_all(old);
}

void export_model_dir(const Model& model, const std::string& source_dir,
                      const std::string& final_dir, DType dtype, size_t max_shard_bytes,
                      const WeightKey* key) {
  FTUNE_CHECK(model.params() != nullptr,
              "export_model_dir needs whole weights (a ZeRO-3 model exports through "
              "export_weights_dir)");
  const ParamLayout& layout = model.layout();
  std::vector<float> host;
  auto unit_weights = [&](int u) -> const float* {
    const ParamUnit pu = layout.unit(u);
    host.resize(pu.size());
    model.backend()->download(host.data(), model.params() + pu.begin, pu.size() * sizeof(float));
    return host.data();
  };
  export_weights_dir(model.config(), layout, unit_weights, source_dir, final_dir, dtype,
                     max_shard_bytes, key);
}

}  // namespace ftune
