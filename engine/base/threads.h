// How many CPU worker threads a command uses.
#pragma once
#include <cstdint>

namespace ftune {

// `requested` if > 0, else every core.
int resolve_threads(int64_t requested);

}  // namespace ftune
