// Human-readable summary of weights on disk, for `ftune inspect`: lets a user check what a
// model directory or .safetensors file holds before pointing a recipe at it.
#pragma once
#include <string>

namespace ftune {

// `path` is a .safetensors file, a model directory (model.safetensors or a sharded index, plus
// config.json when present), a PEFT LoRA adapter directory (adapter_config.json and
// adapter_model.safetensors) or a run's output directory. A directory holding
// ftune-manifest.json also gets the manifest's summary (engine, method, steps, losses,
// outputs, signed or not). Returns the report text; throws ftune::Error naming the path when it
// is missing or its weights are malformed.
std::string inspect_path(const std::string& path);

}  // namespace ftune
