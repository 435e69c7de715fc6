// engine/base/little_endian.h: the byte order of the files' length fields, whatever the host's.
#include <gtest/gtest.h>

#include <cstdint>

#include "engine/base/little_endian.h"

namespace ftune {
namespace {

TEST(LittleEndian, LowByteFirstAndRoundTrip) {
  uint8_t b[8] = {};
  store_le64(0x0102030405060708ull, b);
  const uint8_t want[8] = {8, 7, 6, 5, 4, 3, 2, 1};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(b[i], want[i]) << i;
  EXPECT_EQ(load_le64(b), 0x0102030405060708ull);
  for (uint64_t v : {uint64_t(0), uint64_t(1), ~uint64_t(0), uint64_t(1) << 63}) {
    store_le64(v, b);
    EXPECT_EQ(load_le64(b), v);
  }
}

}  // namespace
}  // namespace ftune
