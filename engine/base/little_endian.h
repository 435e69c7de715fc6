// Little-endian integers in files ftune reads and writes (safetensors' and FTENC001's header
// lengths), byte by byte so the host's own byte order never matters.
#pragma once
#include <cstdint>

namespace ftune {

inline uint64_t load_le64(const uint8_t* b) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

inline void store_le64(uint64_t v, uint8_t* b) {
  for (int i = 0; i < 8; ++i) b[i] = uint8_t(v >> (8 * i));
}

}  // namespace ftune
