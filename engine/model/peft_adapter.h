// PEFT adapter directories: what a LoRA run exports (and every LoRA checkpoint holds), and what
// `ftune merge`, eval and generate read. adapter_config.json + adapter_model.safetensors, the
// tensors under PEFT's names, so `PeftModel.from_pretrained(base, dir)` loads them as they are.
#pragma once
#include <memory>
#include <string>

#include "engine/model/lora.h"
#include "engine/model/model.h"

namespace ftune {

struct WeightKey;

constexpr const char* kAdapterConfig = "adapter_config.json";
constexpr const char* kAdapterWeights = "adapter_model.safetensors";

bool is_adapter_dir(const std::string& dir);
// The adapter settings in dir/adapter_config.json; errors name the file and the unsupported key.
LoraConfig read_adapter_config(const std::string& dir);
// Writes the model's adapters into dir (files written atomically; dir created if needed).
// base_model goes into base_model_name_or_path.
// With `key` the weights are written encrypted.
void write_adapter_files(const Model& model, const std::string& dir, const std::string& base_model,
                         DType dtype, const WeightKey* key = nullptr);
// Builds dir beside its destination and swaps it in, like export_model_dir.
void export_adapter_dir(const Model& model, const std::string& final_dir,
                        const std::string& base_model, DType dtype, const WeightKey* key = nullptr);
// Reads dir/adapter_model.safetensors into the model's adapters (`key` for an encrypted one).
void load_adapter(Model& model, const std::string& dir, const WeightKey* key = nullptr);

// A model for eval, generate and merge: the weights of base_dir plus, when adapter_dir is not
// empty, its adapters, applied unmerged or merged into the base (the same logits either way).
// `key` decrypts whichever of the weight files are encrypted.
std::unique_ptr<Model> open_inference_model(Backend* be, const std::string& base_dir,
                                            const std::string& adapter_dir, int64_t max_tokens,
                                            bool merge, DType* base_dtype = nullptr,
                                            const WeightKey* key = nullptr);

}  // namespace ftune
