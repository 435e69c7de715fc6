// Writes a model as a Hugging Face directory: config.json, safetensors (sharded above a size),
// the tokenizer files copied from the base model, generation_config.json when the base had one.
#pragma once
#include <cstddef>
#include <string>

#include "engine/model.h"

namespace ftune {

struct WeightKey;

// dtype_name: "auto" (the base model's on-disk dtype), "f32", "bf16" or "f16".
DType resolve_export_dtype(const std::string& dtype_name, DType base_dtype);
// Writes into `dir` (created); every file atomic. Copies tokenizer files from `source_dir`.
// With `key`, every weight file is written encrypted (AES-256-GCM, see encryption.h).
void export_model_dir(const Model& model, const std::string& source_dir, const std::string& dir,
                      DType dtype, size_t max_shard_bytes, const WeightKey* key = nullptr);

}  // namespace ftune
