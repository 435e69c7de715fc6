// `ftune data preview`: what the model will be trained on, record by record — the rendered
// text with the trained spans marked, and token counts — before any training starts.
#pragma once
#include <cstdint>
#include <string>

#include "engine/recipe/recipe.h"

namespace ftune {

struct PreviewOptions {
  int64_t count = 3;   // records to show
  bool color = false;  // mark trained spans with ANSI colour instead of [[ ]] brackets
};

// Renders the first `count` records of data.train as the recipe formats them.
std::string preview_data(const RecipeConfig& c, const PreviewOptions& opt);

}  // namespace ftune
