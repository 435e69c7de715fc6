// Writes the binary seeds of the fuzz corpora (tests/fuzz/corpus/README.md lists every seed):
// small safetensors files and FTENC001 files encrypted with the fuzzing key (32 bytes of 0x11,
// as in fuzz_encrypted_header.cpp). Usage: fuzz_make_seeds tests/fuzz/corpus
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/base/dtype.h"
#include "engine/base/error.h"
#include "engine/formats/safetensors.h"
#include "engine/trust/encryption.h"

int main(int argc, char** argv) {
  using namespace ftune;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  const std::string root = argv[1];
  try {
    const float f[6] = {1.5f, -2.f, 0.f, 3.25f, 1e-3f, -7.f};
    const uint16_t h[4] = {0x3c00, 0xc000, 0x7bff, 0x0001};
    const int64_t ids[3] = {7, -1, 1 << 20};
    const double d[2] = {0.1, -2.5};

    // Every dtype, a converted store, an empty tensor and metadata.
    SafetensorsWriter all;
    all.set_metadata("format", "pt");
    all.add("f32", {2, 3}, f, DType::F32, DType::F32);
    all.add("bf16", {6}, f, DType::F32, DType::BF16);
    all.add("f16", {2, 2}, h, DType::F16, DType::F16);
    all.add("f64", {2}, d, DType::F64, DType::F64);
    all.add("i64", {3}, ids, DType::I64, DType::I64);
    all.add("empty", {0, 4}, nullptr, DType::F32, DType::F32);
    all.write(root + "/safetensors/all_dtypes.safetensors");

    SafetensorsWriter one;
    one.add("w", {1}, f, DType::F32, DType::F32);
    one.write(root + "/safetensors/one_tensor.safetensors");

    WeightKey key;
    std::memset(key.bytes.data(), 0x11, key.bytes.size());
    key.origin = "the fuzzing key";
    one.write(root + "/encrypted_header/one_tensor.enc", &key);
    SafetensorsWriter two;
    two.set_metadata("format", "pt");
    two.add("a", {2}, f, DType::F32, DType::F16);
    two.add("b", {2, 2}, h, DType::F16, DType::F16);
    two.write(root + "/encrypted_header/two_tensors.enc", &key);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
