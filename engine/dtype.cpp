#include "engine/dtype.h"

#include <cmath>

#include "engine/error.h"

namespace ftune {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::F64: return 8;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::F64: return "F64";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

DType dtype_from_name(const std::string& s) {
  if (s == "F32" || s == "float32" || s == "fp32") return DType::F32;
  if (s == "BF16" || s == "bfloat16" || s == "bf16") return DType::BF16;
  if (s == "F16" || s == "float16" || s == "fp16") return DType::F16;
  if (s == "F64" || s == "float64") return DType::F64;
  if (s == "I32" || s == "int32") return DType::I32;
  if (s == "I64" || s == "int64") return DType::I64;
  throw Error("unsupported dtype '" + s + "' (ftune handles F32, BF16, F16, F64, I32, I64)");
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do {
        e++;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      mant &= 0x3ff;
      u = sign | uint32_t(127 - 15 - e) << 23 | mant << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | mant << 13;
  } else {
    u = sign | (exp + 112) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  int32_t exp = int32_t((u >> 23) & 0xff);
  uint32_t mant = u & 0x7fffff;
  if (exp == 255) return uint16_t(sign | 0x7c00 | (mant ? 0x200 : 0));
  int32_t e = exp - 127 + 15;
  if (e >= 31) return uint16_t(sign | 0x7c00);
  if (e <= 0) {
    if (e < -10) return uint16_t(sign);
    mant |= 0x800000;
    uint32_t shift = uint32_t(14 - e);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) half++;
    return uint16_t(sign | half);
  }
  uint32_t half = sign | uint32_t(e) << 10 | mant >> 13;
  uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;  // may carry into exponent: correct
  return uint16_t(half);
}

namespace {
template <class Load>
void store_all(Load load, void* dst, DType dst_t, size_t n) {
  switch (dst_t) {
    case DType::F32: {
      auto* d = static_cast<float*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = float(load(i));
      return;
    }
    case DType::F64: {
      auto* d = static_cast<double*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = load(i);
      return;
    }
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(float(load(i)));
      return;
    }
    case DType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(float(load(i)));
      return;
    }
    default: throw Error(std::string("cannot convert to ") + dtype_name(dst_t));
  }
}
}  // namespace

void convert(const void* src, DType src_t, void* dst, DType dst_t, size_t n) {
  if (src_t == dst_t) {
    std::memcpy(dst, src, n * dtype_size(src_t));
    return;
  }
  switch (src_t) {
    case DType::F32: {
      auto* s = static_cast<const float*>(src);
      return store_all([s](size_t i) { return double(s[i]); }, dst, dst_t, n);
    }
    case DType::F64: {
      auto* s = static_cast<const double*>(src);
      return store_all([s](size_t i) { return s[i]; }, dst, dst_t, n);
    }
    case DType::BF16: {
      auto* s = static_cast<const uint16_t*>(src);
      return store_all([s](size_t i) { return double(bf16_to_f32(s[i])); }, dst, dst_t, n);
    }
    case DType::F16: {
      auto* s = static_cast<const uint16_t*>(src);
      return store_all([s](size_t i) { return double(f16_to_f32(s[i])); }, dst, dst_t, n);
    }
    default: throw Error(std::string("cannot convert from ") + dtype_name(src_t));
  }
}

}  // namespace ftune
