// How many OpenMP threads a CPU op uses for a given amount of work.
#pragma once
#include <algorithm>
#include <cstdint>

namespace ftune::cpu {

// Below this many elements a fork/join costs more than the second core saves.
constexpr int64_t kParallelMin = int64_t(1) << 15;

inline int team(int threads, int64_t work) {
  return work >= kParallelMin ? std::max(threads, 1) : 1;
}

}  // namespace ftune::cpu
