#include "engine/base/dtype.h"

#include <cmath>

#include "engine/base/error.h"

namespace ftune {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::BF16:
      return 2;
    case DType::F16:
      return 2;
    case DType::F64:
      return 8;
    case DType::I32:
      return 4;
    case DType::I64:
      return 8;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
    case DType::F64:
      return "F64";
    case DType::I32:
      return "I32";
    case DType::I64:
      return "I64";
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

// Finite or infinite double (bits u) to a 16-bit binary float with mant_bits stored mantissa
// bits, exponent bias `bias` and all-ones exponent field max_exp, rounded once to nearest even.
// Going through float first would round twice: a double just above a 16-bit tie can become the
// tie itself in float and then round to even, down instead of up.
uint16_t f64_round_to_16(uint64_t u, int mant_bits, int bias, int max_exp) {
  const auto sign = uint16_t((u >> 48) & 0x8000);
  const int exp_field = int((u >> 52) & 0x7ff);
  // |x| = sig * 2^(e - 52)
  uint64_t sig = u & ((uint64_t(1) << 52) - 1);
  int e = -1022;
  if (exp_field != 0) {
    sig |= uint64_t(1) << 52;
    e = exp_field - 1023;
  }
  const int te = e + bias;  // the target's exponent field, were the result normal
  if (te >= max_exp) return uint16_t(sign | max_exp << mant_bits);  // includes inf
  // sig bits that fall below the target's last mantissa bit; a target subnormal loses 1 - te more.
  const int shift = 52 - mant_bits + (te < 1 ? 1 - te : 0);
  if (shift > 53) return sign;  // |x| < half the smallest subnormal (sig < 2^53 <= the half)
  uint64_t q = sig >> shift;
  const uint64_t rem = sig & ((uint64_t(1) << shift) - 1);
  const uint64_t half = uint64_t(1) << (shift - 1);
  if (rem > half || (rem == half && (q & 1))) ++q;
  // q holds the implicit bit for normals, so adding (te - 1) << mant_bits forms the exponent; a
  // carry out of the mantissa moves to the next binade, or to inf from the largest one.
  const uint32_t exp_part = te < 1 ? 0 : uint32_t(te - 1) << mant_bits;
  return uint16_t(sign | (exp_part + uint32_t(q)));
}

bool is_nan_bits(uint64_t u) {
  return (u & 0x7fffffffffffffffULL) > 0x7ff0000000000000ULL;
}

// NaNs as the float route produced them: bf16 keeps the top payload bits with the quiet bit set,
// f16 becomes the quiet NaN of the same sign.
uint16_t f64_to_bf16(double x) {
  uint64_t u;
  std::memcpy(&u, &x, 8);
  if (is_nan_bits(u)) return uint16_t(((u >> 48) & 0x8000) | 0x7fc0 | ((u >> 45) & 0x7f));
  return f64_round_to_16(u, 7, 127, 0xff);
}

uint16_t f64_to_f16(double x) {
  uint64_t u;
  std::memcpy(&u, &x, 8);
  if (is_nan_bits(u)) return uint16_t(((u >> 48) & 0x8000) | 0x7e00);
  return f64_round_to_16(u, 10, 15, 0x1f);
}

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
    default:
      throw Error(std::string("cannot convert to ") + dtype_name(dst_t));
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
      // Other sources are exact in float, so store_all's float route rounds them only once.
      if (dst_t == DType::BF16) {
        auto* d = static_cast<uint16_t*>(dst);
        for (size_t i = 0; i < n; ++i) d[i] = f64_to_bf16(s[i]);
        return;
      }
      if (dst_t == DType::F16) {
        auto* d = static_cast<uint16_t*>(dst);
        for (size_t i = 0; i < n; ++i) d[i] = f64_to_f16(s[i]);
        return;
      }
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
    default:
      throw Error(std::string("cannot convert from ") + dtype_name(src_t));
  }
}

}  // namespace ftune
