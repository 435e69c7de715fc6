// The one target convention every layer shares: a label position that counts for nothing.
#pragma once
#include <cstdint>

namespace ftune {

// A target that adds no loss and no gradient (PyTorch's ignore_index, so masks round-trip).
constexpr int32_t kIgnoreIndex = -100;

}  // namespace ftune
