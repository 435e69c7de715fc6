#include "engine/model/peft_adapter.h"

#include <unistd.h>

#include <filesystem>
#include <optional>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"
#include "engine/formats/safetensors.h"

namespace fs = std::filesystem;

namespace ftune {

bool is_adapter_dir(const std::string& dir) {
  return path_exists(dir + "/" + kAdapterConfig);
}

LoraConfig read_adapter_config(const std::string& dir) {
  const std::string file = dir + "/" + kAdapterConfig;
  if (!path_exists(file))
    throw Error("'" + dir + "' is not a LoRA adapter directory (no " + kAdapterConfig + ")");
  nlohmann::json j;
  try {
    j = parse_json_bounded(read_file(file), file);
  } catch (const nlohmann::json::exception& e) {
    throw Error(file + ": invalid JSON (" + e.what() + ")");
  }
  return lora_config_from_peft(j, file);
}

void write_adapter_files(const Model& model, const std::string& dir, const std::string& base_model,
                         DType dtype, const WeightKey* key) {
  FTUNE_CHECK(model.has_lora(), "model has no adapters to write");
  fs::create_directories(dir);
  const std::vector<float> host = model.lora_to_host();
  SafetensorsWriter w;
  for (const auto& e : model.lora_layout().entries())
    w.add(e.name, e.shape, host.data() + e.offset, DType::F32, dtype);
  w.set_metadata("format", "pt");
  w.write(dir + "/" + kAdapterWeights, key);
  write_file_atomic(dir + "/" + kAdapterConfig,
                    peft_adapter_config(model.lora_config(), base_model).dump(2) + "\n");
}

void export_adapter_dir(const Model& model, const std::string& final_dir,
                        const std::string& base_model, DType dtype, const WeightKey* key) {
  const std::string dir = final_dir + ".tmp." + std::to_string(getpid());
  fs::remove_all(dir);
  write_adapter_files(model, dir, base_model, dtype, key);
  fsync_dir(dir);
  const std::string old = final_dir + ".old." + std::to_string(getpid());
  if (fs::exists(final_dir)) fs::rename(final_dir, old);
  fs::rename(dir, final_dir);
  const std::string parent = fs::path(final_dir).parent_path().string();
  fsync_dir(parent.empty() ? "." : parent);
  fs::remove_all(old);
}

void load_adapter(Model& model, const std::string& dir, const WeightKey* key) {
  const std::string file = dir + "/" + kAdapterWeights;
  if (!path_exists(file))
    throw Error("'" + dir + "' has " + kAdapterConfig + " but no " + kAdapterWeights +
                " (ftune reads adapters in safetensors form only)");
  model.load_lora(SafetensorsReader::open(file, key));
}

std::unique_ptr<Model> open_inference_model(Backend* be, const std::string& base_dir,
                                            const std::string& adapter_dir, int64_t max_tokens,
                                            bool merge, DType* base_dtype, const WeightKey* key) {
  if (is_adapter_dir(base_dir))
    throw Error("'" + base_dir + "' is a LoRA adapter, not a model: give the base model and " +
                "pass the adapter with --adapter");
  const ModelConfig mc = load_model_config(base_dir);
  std::optional<LoraConfig> lc;
  if (!adapter_dir.empty()) lc = read_adapter_config(adapter_dir);
  auto m = std::make_unique<Model>(be, mc, max_tokens, false, lc ? &*lc : nullptr);
  const DType found = m->load_weights(WeightStore::open_dir(base_dir, key));
  if (base_dtype) *base_dtype = found;
  if (lc) {
    load_adapter(*m, adapter_dir, key);
    if (merge) m->merge_lora();
  }
  return m;
}

}  // namespace ftune
