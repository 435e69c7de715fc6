// An FTENC001 file: header read without the key (what `ftune inspect` shows), then opened with
// the fuzzing key and, when it authenticates (the seeds do), read as safetensors.
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/base/error.h"
#include "engine/formats/safetensors.h"
#include "engine/trust/encryption.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ftune;
  static const WeightKey key = [] {
    WeightKey k;
    std::memset(k.bytes.data(), 0x11, k.bytes.size());  // tests/fuzz/make_seeds.cpp uses it too
    k.origin = "the fuzzing key";
    return k;
  }();
  const std::string path = fuzz::scratch_file("weights.safetensors", fuzz::as_text(data, size));
  try {
    read_encrypted_header(path).dump();
  } catch (const Error&) {
  }
  try {
    const SafetensorsReader r = SafetensorsReader::open(path, &key);
    for (const TensorInfo& t : r.tensors()) {
      std::string raw(t.end - t.begin, '\0');
      r.read_raw(t, raw.data());
    }
  } catch (const Error&) {
  }
  return 0;
}
