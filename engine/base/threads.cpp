#include "engine/base/threads.h"

#include <thread>

namespace ftune {

int resolve_threads(int64_t requested) {
  if (requested > 0) return int(requested);
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? int(n) : 1;
}

}  // namespace ftune
