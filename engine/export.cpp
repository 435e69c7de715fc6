#include "engine/export.h"

#include <unistd.h>

#include <filesystem>
#include <vector>

#include "engine/error.h"
#include "engine/fs_util.h"
#include "engine/safetensors.h"

namespace fs = std::filesystem;

namespace ftune {

DType resolve_export_dtype(const std::string& name, DType base) {
  if (name == "auto") return base;
  if (name == "f32") return DType::F32;
  if (name == "bf16") return DType::BF16;
  if (name == "f16") return DType::F16;
  throw Error("export.dtype: unknown dtype '" + name + "' (use auto, f32, bf16 or f16)");
}

void export_model_dir(const Model& model, const std::string& source_dir,
                      const std::string& final_dir, DType dtype, size_t max_shard_bytes,
                      const WeightKey* key) {
  // Build the whole directory beside the destination, then swap it in: a reader never sees a
  // mix of old and new shards, and a failure leaves the previous export untouched.
  const std::string dir = final_dir + ".tmp." + std::to_string(getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::vector<float> host = model.params_to_host();
  SafetensorsWriter w;
  for (const auto& e : model.layout().entries())
    w.add(e.name, e.shape, host.data() + e.offset, DType::F32, dtype);
  w.set_metadata("format", "pt");
  write_sharded_model(w, dir, max_shard_bytes, key);
  write_file_atomic(dir + "/config.json", model_config_json(model.config(), dtype).dump(2) + "\n");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                        "generation_config.json", "tokenizer.model"}) {
    const std::string src = source_dir + "/" + f;
    if (path_exists(src)) write_file_atomic(dir + "/" + f, read_file(src));
  }
  fsync_dir(dir);
  const std::string old = final_dir + ".old." + std::to_string(getpid());
  if (fs::exists(final_dir)) fs::rename(final_dir, old);
  fs::rename(dir, final_dir);
  std::string parent = fs::path(final_dir).parent_path().string();
  fsync_dir(parent.empty() ? "." : parent);
  fs::remove_all(old);
}

}  // namespace ftune
