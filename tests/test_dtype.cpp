// Scalar 16-bit conversions and convert(), checked against an independent reference: exact
// round-to-nearest-even computed in double arithmetic, not the bit tricks dtype.h uses.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engine/base/dtype.h"
#include "engine/base/error.h"

namespace ftune {
namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A binary format with `frac_bits` stored fraction bits, smallest normal 2^min_exp and
// largest finite value max_finite (f16: 10, -14, 65504; bf16: 7, -126, (2-2^-7)*2^127).
struct Format {
  int frac_bits;
  int min_exp;
  double max_finite;
};
const Format kF16{10, -14, 65504.0};
const Format kBF16{7, -126, std::ldexp(2.0 - std::ldexp(1.0, -7), 127)};

// Correctly rounded (nearest, ties to even) value of x in `fmt`, overflowing to infinity.
double ref_round(double x, const Format& fmt) {
  if (std::isnan(x) || std::isinf(x)) return x;
  int e;
  std::frexp(std::fabs(x), &e);  // |x| in [2^(e-1), 2^e)
  const int quantum = std::max(e - 1, fmt.min_exp) - fmt.frac_bits;
  // Scaling by a power of two is exact, so nearbyint (ties-to-even mode) does the only rounding.
  double r = std::ldexp(std::nearbyint(std::ldexp(std::fabs(x), -quantum)), quantum);
  if (r > fmt.max_finite) r = INFINITY;
  return std::copysign(r, x);
}

// Reference decoding of an IEEE half from its fields.
double ref_f16_value(uint16_t h) {
  const int exp = (h >> 10) & 0x1f;
  const int frac = h & 0x3ff;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exp == 0) return sign * std::ldexp(double(frac), -24);
  if (exp == 31) return frac ? NAN : sign * INFINITY;
  return sign * std::ldexp(double(1024 + frac), exp - 25);
}

// Compares decoded bits so that -0 and +0 count as different.
::testing::AssertionResult same_value(float got, double want, float input) {
  if (std::isnan(want)) {
    if (std::isnan(got)) return ::testing::AssertionSuccess();
  } else if (bits_of(got) == bits_of(float(want))) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "input " << input << " (bits 0x" << std::hex << bits_of(input) << ") gave " << got
         << " (0x" << bits_of(got) << "), want " << want << " (0x" << bits_of(float(want)) << ")";
}

// Inputs that stress rounding: random bit patterns, random values in the 16-bit ranges, and
// every exact halfway point between neighbouring 16-bit values with its two float neighbours.
std::vector<float> rounding_inputs(bool bf16) {
  std::vector<float> xs;
  std::mt19937 rng(bf16 ? 7 : 11);
  for (int i = 0; i < 200000; ++i) xs.push_back(float_of(rng()));
  std::uniform_int_distribution<uint32_t> exp_dist(bf16 ? 0 : 90, bf16 ? 254 : 145);
  for (int i = 0; i < 200000; ++i)
    xs.push_back(float_of((rng() & 0x807fffffu) | (exp_dist(rng) << 23)));
  for (uint32_t h = 0; !bf16 && h < 0x7bffu; ++h) {
    const double mid = (ref_f16_value(uint16_t(h)) + ref_f16_value(uint16_t(h + 1))) / 2;
    const float m = float(mid);  // 12 significant bits: exact in float
    for (float x : {m, std::nextafter(m, 0.f), std::nextafter(m, INFINITY)}) {
      xs.push_back(x);
      xs.push_back(-x);
    }
  }
  for (uint32_t h = 0; bf16 && h < 0x7f80u; ++h) {
    const uint32_t mid = (h << 16) | 0x8000u;
    for (uint32_t u : {mid, mid - 1, mid + 1}) {
      xs.push_back(float_of(u));
      xs.push_back(float_of(u | 0x80000000u));
    }
  }
  for (float x : {0.f, -0.f, INFINITY, -INFINITY, NAN, FLT_MAX, -FLT_MAX, FLT_MIN, FLT_TRUE_MIN})
    xs.push_back(x);
  return xs;
}

TEST(DTypeF16, DecodeMatchesReferenceForAllHalves) {
  int bad = 0;
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    auto r = same_value(f16_to_f32(uint16_t(h)), ref_f16_value(uint16_t(h)), 0.f);
    if (!r && bad++ < 5) ADD_FAILURE() << "half 0x" << std::hex << h << ": " << r.message();
  }
  EXPECT_EQ(bad, 0);
}

TEST(DTypeF16, EncodeOfDecodeIsIdentityForAllNonNaN) {
  int bad = 0;
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const bool nan = ((h >> 10) & 0x1f) == 31 && (h & 0x3ff);
    const uint16_t back = f32_to_f16(f16_to_f32(uint16_t(h)));
    const bool ok = nan ? ((back & 0x7c00) == 0x7c00 && (back & 0x3ff)) : back == h;
    if (!ok && bad++ < 5) ADD_FAILURE() << std::hex << "half 0x" << h << " came back 0x" << back;
  }
  EXPECT_EQ(bad, 0);
}

TEST(DTypeF16, EncodeRoundsToNearestEven) {
  int bad = 0;
  for (float x : rounding_inputs(false)) {
    auto r = same_value(f16_to_f32(f32_to_f16(x)), ref_round(x, kF16), x);
    if (!r && bad++ < 5) ADD_FAILURE() << r.message();
  }
  EXPECT_EQ(bad, 0);
}

TEST(DTypeF16, EncodeEdgeCases) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);                  // largest finite
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);                  // below the overflow tie
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);                  // tie rounds up to inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -14)), 0x0400);      // smallest normal
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.f, -24)), 0x03ff);   // largest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.5f, -24)), 0x0400);  // rounds into the normals
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -24)), 0x0001);      // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -25)), 0x0000);      // tie to even: zero
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.f, -25)), 0x0002);        // 1.5 ulp: tie to even (2)
  EXPECT_EQ(f32_to_f16(1.f + std::ldexp(1.f, -11)), 0x3c00);  // tie, even stays
  EXPECT_EQ(f32_to_f16(1.f + std::ldexp(3.f, -11)), 0x3c02);  // tie, odd rounds up
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(INFINITY), 0x7c00);
  EXPECT_EQ(f32_to_f16(-INFINITY), 0xfc00);
  EXPECT_EQ(f32_to_f16(1e-30f), 0x0000);
  EXPECT_EQ(f32_to_f16(-1e30f), 0xfc00);
  // A NaN whose payload sits only in low bits must not collapse into infinity.
  for (uint32_t nan_bits : {0x7fc00000u, 0x7f800001u, 0xff800001u}) {
    const uint16_t h = f32_to_f16(float_of(nan_bits));
    EXPECT_EQ(h & 0x7c00, 0x7c00) << std::hex << nan_bits;
    EXPECT_NE(h & 0x3ff, 0) << std::hex << nan_bits;
  }
}

TEST(DTypeBF16, DecodeIsExactWidening) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = bf16_to_f32(uint16_t(h));
    ASSERT_EQ(bits_of(f), h << 16);
  }
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.f, -133));  // smallest subnormal
}

TEST(DTypeBF16, EncodeRoundsToNearestEven) {
  int bad = 0;
  for (float x : rounding_inputs(true)) {
    auto r = same_value(bf16_to_f32(f32_to_bf16(x)), ref_round(x, kBF16), x);
    if (!r && bad++ < 5) ADD_FAILURE() << r.message();
  }
  EXPECT_EQ(bad, 0);
}

TEST(DTypeBF16, EncodeEdgeCases) {
  EXPECT_EQ(f32_to_bf16(float_of(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(f32_to_bf16(float_of(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(f32_to_bf16(float_of(0x3f808001u)), 0x3f81);  // just above the tie
  EXPECT_EQ(f32_to_bf16(float_of(0x3f807fffu)), 0x3f80);  // just below the tie
  EXPECT_EQ(f32_to_bf16(FLT_MAX), 0x7f80);                // overflows to inf
  EXPECT_EQ(f32_to_bf16(-FLT_MAX), 0xff80);
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(float_of(0x00010000u)), 0x0001);  // subnormal, exact
  EXPECT_EQ(f32_to_bf16(float_of(0x00008000u)), 0x0000);  // subnormal tie to even
  EXPECT_EQ(f32_to_bf16(float_of(0x00018000u)), 0x0002);
  EXPECT_EQ(f32_to_bf16(FLT_TRUE_MIN), 0x0000);
  EXPECT_EQ(f32_to_bf16(float_of(0x007fffffu)), 0x0080);  // largest subnormal -> FLT_MIN
  for (uint32_t nan_bits : {0x7fc00000u, 0x7f800001u, 0xffffffffu}) {
    const uint16_t h = f32_to_bf16(float_of(nan_bits));
    EXPECT_TRUE(std::isnan(bf16_to_f32(h))) << std::hex << nan_bits << " -> " << h;
  }
}

TEST(DTypeConvert, FloatPairsMatchReferenceRounding) {
  std::vector<float> src = rounding_inputs(false);
  const size_t n = src.size();

  std::vector<uint16_t> bf(n), hf(n);
  std::vector<float> back(n);
  convert(src.data(), DType::F32, bf.data(), DType::BF16, n);
  convert(bf.data(), DType::BF16, back.data(), DType::F32, n);
  for (size_t i = 0; i < n; ++i) ASSERT_TRUE(same_value(back[i], ref_round(src[i], kBF16), src[i]));

  convert(src.data(), DType::F32, hf.data(), DType::F16, n);
  std::vector<double> wide(n);
  convert(hf.data(), DType::F16, wide.data(), DType::F64, n);
  for (size_t i = 0; i < n; ++i)
    ASSERT_TRUE(same_value(float(wide[i]), ref_round(src[i], kF16), src[i]));

  // BF16 -> F16 is a single rounding of the (exactly widened) bf16 value.
  std::vector<uint16_t> hf2(n);
  convert(bf.data(), DType::BF16, hf2.data(), DType::F16, n);
  for (size_t i = 0; i < n; ++i) {
    const float b = bf16_to_f32(bf[i]);
    ASSERT_TRUE(same_value(f16_to_f32(hf2[i]), ref_round(b, kF16), b));
  }

  // F16 -> BF16 likewise.
  std::vector<uint16_t> bf2(n);
  convert(hf.data(), DType::F16, bf2.data(), DType::BF16, n);
  for (size_t i = 0; i < n; ++i) {
    const float h = f16_to_f32(hf[i]);
    ASSERT_TRUE(same_value(bf16_to_f32(bf2[i]), ref_round(h, kBF16), h));
  }
}

TEST(DTypeConvert, F64ToF32RoundsOnce) {
  const std::vector<double> src = {
      0.1, -1e-300, 1e300, 3.141592653589793, -0.0, std::ldexp(1.0, -149), std::nan("")};
  std::vector<float> dst(src.size());
  convert(src.data(), DType::F64, dst.data(), DType::F32, src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    if (std::isnan(src[i])) {
      EXPECT_TRUE(std::isnan(dst[i]));
    } else {
      EXPECT_EQ(bits_of(dst[i]), bits_of(static_cast<float>(src[i]))) << src[i];
    }
  }
}

uint16_t f64_to(DType t, double x) {
  uint16_t h = 0;
  convert(&x, DType::F64, &h, t, 1);
  return h;
}

// Each input lies just above (or below) a 16-bit tie by less than float precision, so a detour
// through float would land on the tie and round to even, the wrong way.
TEST(DTypeConvert, F64ToF16RoundsOnce) {
  EXPECT_EQ(f64_to(DType::F16, 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)), 0x3c01);
  EXPECT_EQ(f64_to(DType::F16, -(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40))), 0xbc01);
  EXPECT_EQ(f64_to(DType::F16, 1.0 + std::ldexp(3.0, -11) - std::ldexp(1.0, -40)), 0x3c01);
  // Subnormal: just above half the smallest subnormal.
  EXPECT_EQ(f64_to(DType::F16, std::ldexp(1.0, -25) + std::ldexp(1.0, -60)), 0x0001);
  // Just below the overflow tie 65520 stays finite.
  EXPECT_EQ(f64_to(DType::F16, 65520.0 - std::ldexp(1.0, -30)), 0x7bff);
  EXPECT_EQ(f64_to(DType::F16, 65520.0), 0x7c00);
  EXPECT_EQ(f64_to(DType::F16, 1e300), 0x7c00);
  EXPECT_EQ(f64_to(DType::F16, -INFINITY), 0xfc00);
  EXPECT_EQ(f64_to(DType::F16, -1e-300), 0x8000);
  EXPECT_EQ(f64_to(DType::F16, std::ldexp(1.0, -1074)), 0x0000);  // smallest double subnormal
  const uint16_t nan = f64_to(DType::F16, std::nan(""));
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x3ff, 0);
}

TEST(DTypeConvert, F64ToBF16RoundsOnce) {
  EXPECT_EQ(f64_to(DType::BF16, 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40)), 0x3f81);
  EXPECT_EQ(f64_to(DType::BF16, -(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40))), 0xbf81);
  EXPECT_EQ(f64_to(DType::BF16, 1.0 + std::ldexp(3.0, -8) - std::ldexp(1.0, -40)), 0x3f81);
  // Subnormal (float itself is subnormal here too).
  EXPECT_EQ(f64_to(DType::BF16, std::ldexp(1.0, -134) + std::ldexp(1.0, -170)), 0x0001);
  // Just below the overflow tie (2 - 2^-8) * 2^127 stays finite.
  const double overflow_tie = std::ldexp(2.0 - std::ldexp(1.0, -8), 127);
  EXPECT_EQ(f64_to(DType::BF16, overflow_tie - std::ldexp(1.0, 80)), 0x7f7f);
  EXPECT_EQ(f64_to(DType::BF16, overflow_tie), 0x7f80);
  EXPECT_EQ(f64_to(DType::BF16, -1e300), 0xff80);
  EXPECT_EQ(f64_to(DType::BF16, INFINITY), 0x7f80);
  EXPECT_EQ(f64_to(DType::BF16, -0.0), 0x8000);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f64_to(DType::BF16, std::nan("")))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f64_to(DType::BF16, -std::nan("")))));
}

// Doubles around every 16-bit tie (offsets far below float precision) plus random bit patterns,
// against the reference rounding.
TEST(DTypeConvert, F64ToSixteenBitMatchesReferenceRounding) {
  for (bool bf16 : {false, true}) {
    const Format& fmt = bf16 ? kBF16 : kF16;
    const DType t = bf16 ? DType::BF16 : DType::F16;
    std::vector<double> xs;
    const uint32_t finite_end = bf16 ? 0x7f80u : 0x7c00u;
    for (uint32_t h = 0; h + 1 < finite_end; ++h) {
      const double lo = bf16 ? bf16_to_f32(uint16_t(h)) : ref_f16_value(uint16_t(h));
      const double hi = bf16 ? bf16_to_f32(uint16_t(h + 1)) : ref_f16_value(uint16_t(h + 1));
      const double mid = (lo + hi) / 2;
      const double tiny = (hi - lo) * std::ldexp(1.0, -30);
      for (double x :
           {mid, mid - tiny, mid + tiny, std::nextafter(mid, 0.0), std::nextafter(mid, INFINITY)}) {
        xs.push_back(x);
        xs.push_back(-x);
      }
    }
    std::mt19937_64 rng(bf16 ? 3 : 5);
    for (int i = 0; i < 200000; ++i) {
      const uint64_t u = rng();
      double x;
      std::memcpy(&x, &u, 8);
      xs.push_back(x);
    }
    // Random doubles with exponents in and around the 16-bit range.
    std::uniform_int_distribution<int> exp_dist(bf16 ? -140 : -30, bf16 ? 130 : 18);
    std::uniform_real_distribution<double> frac(1.0, 2.0);
    for (int i = 0; i < 200000; ++i)
      xs.push_back((rng() & 1 ? -1.0 : 1.0) * std::ldexp(frac(rng), exp_dist(rng)));

    std::vector<uint16_t> got(xs.size());
    convert(xs.data(), DType::F64, got.data(), t, xs.size());
    int bad = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      const double want = ref_round(xs[i], fmt);
      const double value = bf16 ? bf16_to_f32(got[i]) : ref_f16_value(got[i]);
      const bool ok = std::isnan(want) ? std::isnan(value)
                                       : bits_of(float(value)) == bits_of(float(want));  // -0 != +0
      if (!ok && bad++ < 5)
        ADD_FAILURE() << (bf16 ? "bf16" : "f16") << ": input " << std::hexfloat << xs[i] << " gave "
                      << value << ", want " << want;
    }
    EXPECT_EQ(bad, 0) << (bf16 ? "bf16" : "f16");
  }
}

TEST(DTypeConvert, SameTypeCopiesBytesExactly) {
  // NaN payloads and integer types survive untouched because no arithmetic happens.
  const std::vector<uint32_t> f = {0x7f800001u, 0xffc01234u, 0x00000001u, 0x3f800000u};
  std::vector<uint32_t> out(f.size());
  convert(f.data(), DType::F32, out.data(), DType::F32, f.size());
  EXPECT_EQ(out, f);
  const std::vector<int64_t> ints = {-1, INT64_MAX, 0, 42};
  std::vector<int64_t> iout(ints.size());
  convert(ints.data(), DType::I64, iout.data(), DType::I64, ints.size());
  EXPECT_EQ(iout, ints);
}

TEST(DTypeConvert, ZeroElementsTouchNothing) {
  float src = 1.f;
  uint16_t dst = 0xabcd;
  convert(&src, DType::F32, &dst, DType::BF16, 0);
  EXPECT_EQ(dst, 0xabcd);
}

TEST(DTypeConvert, IntegerConversionIsAnError) {
  int32_t i = 3;
  float f = 0;
  try {
    convert(&i, DType::I32, &f, DType::F32, 1);
    FAIL() << "expected ftune::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("I32"), std::string::npos) << e.what();
  }
  int64_t out = 0;
  try {
    convert(&f, DType::F32, &out, DType::I64, 1);
    FAIL() << "expected ftune::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("I64"), std::string::npos) << e.what();
  }
}

TEST(DTypeNames, RoundTripAndSizes) {
  const DType all[] = {DType::F32, DType::BF16, DType::F16, DType::F64, DType::I32, DType::I64};
  const size_t sizes[] = {4, 2, 2, 8, 4, 8};
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(dtype_from_name(dtype_name(all[i])), all[i]);
    EXPECT_EQ(dtype_size(all[i]), sizes[i]);
  }
  EXPECT_EQ(dtype_from_name("bfloat16"), DType::BF16);
  EXPECT_EQ(dtype_from_name("float16"), DType::F16);
  try {
    dtype_from_name("F8_E4M3");
    FAIL() << "expected ftune::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("F8_E4M3"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ftune
