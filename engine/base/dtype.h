// Element types ftune reads, writes and computes in, with scalar conversions. The CPU backend
// computes in fp32; bf16/fp16 appear on disk and (later) on the GPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace ftune {

enum class DType : uint8_t { F32, BF16, F16, F64, I32, I64 };

size_t dtype_size(DType t);
// Safetensors spelling: "F32", "BF16", "F16", "F64", "I32", "I64".
const char* dtype_name(DType t);
// Throws ftune::Error for names ftune does not handle.
DType dtype_from_name(const std::string& name);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements between any two floating dtypes (F32/BF16/F16/F64).
void convert(const void* src, DType src_t, void* dst, DType dst_t, size_t n);

}  // namespace ftune
