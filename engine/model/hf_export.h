// Writes a model as a Hugging Face directory: config.json, safetensors (sharded above a size),
// the tokenizer files copied from the base model, generation_config.json when the base had one.
#pragma once
#include <cstddef>
#include <functional>
#include <string>

#include "engine/model/model.h"

namespace ftune {

struct WeightKey;

// dtype_name: "auto" (the base model's on-disk dtype), "f32", "bf16" or "f16".
DType resolve_export_dtype(const std::string& dtype_name, DType base_dtype);
// The same for the recipe's export.dtype.
DType resolve_export_dtype(ExportDtype dtype, DType base_dtype);
// Writes into `dir` (created); every file atomic. Copies tokenizer files from `source_dir`.
// With `key`, every weight file is written encrypted (AES-256-GCM, see encryption.h).
// The weights stream one unit (ParamLayout::unit: the embedding, a decoder layer, the tail) at a
// time, so the host never holds more than the largest unit of them.
void export_model_dir(const Model& model, const std::string& source_dir, const std::string& dir,
                      DType dtype, size_t max_shard_bytes, const WeightKey* key = nullptr);

// Unit u's weights as fp32 in host memory (unit-local: the unit's first float first), valid until
// the next call. The export asks for units in increasing order, each at most once (a caller
// serving a collective per unit finishes the ones not asked for; see ExportUnits).
using UnitWeights = std::function<const float*(int u)>;
// The same export from weights no process holds whole (ZeRO-3: rank 0 writes while each unit is
// gathered to it in turn).
void export_weights_dir(const ModelConfig& cfg, const ParamLayout& layout,
                        const UnitWeights& unit_weights, const std::string& source_dir,
                        const std::string& dir, DType dtype, size_t max_shard_bytes,
                        const WeightKey* key = nullptr);

}  // namespace ftune
