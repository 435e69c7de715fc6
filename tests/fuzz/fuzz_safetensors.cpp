// Safetensors: the input is read twice, as a whole .safetensors file (header validation, then
// every tensor read raw and converted, so a header that slips past validation reads out of
// bounds under ASan) and as model.safetensors.index.json beside two fixed valid shards.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/base/byte_source.h"
#include "engine/base/dtype.h"
#include "engine/base/error.h"
#include "engine/formats/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using namespace ftune;

bool is_float(DType t) {
  return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F64;
}

// The shards the fuzzed index points into (tests/fuzz/corpus/safetensors/index-* name them).
const std::string& index_dir() {
  static const std::string dir = [] {
    const std::string d = fuzz::scratch_dir() + "/model";
    std::filesystem::create_directory(d);
    const float a[6] = {1, 2, 3, 4, 5, 6};
    const uint16_t b[2] = {0x3c00, 0xc000};
    SafetensorsWriter s1, s2;
    s1.add("x", {2, 3}, a, DType::F32, DType::F32);
    s1.add("y", {3}, a, DType::F32, DType::BF16);
    s2.add("z", {2}, b, DType::F16, DType::F16);
    s1.write(d + "/model-00001-of-00002.safetensors");
    s2.write(d + "/model-00002-of-00002.safetensors");
    return d;
  }();
  return dir;
}

void read_every_tensor(const SafetensorsReader& r) {
  for (const TensorInfo& t : r.tensors()) {
    std::vector<uint8_t> raw(t.end - t.begin);
    r.read_raw(t, raw.data());
    if (is_float(t.dtype)) {
      std::vector<float> f(size_t(t.numel()));
      r.read_as(t, DType::F32, f.data());
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(fuzz::as_text(data, size));
  try {
    read_every_tensor(SafetensorsReader(open_memory(bytes, "fuzz.safetensors")));
  } catch (const Error&) {
  }
  const std::string& dir = index_dir();
  fuzz::scratch_file("model/model.safetensors.index.json", bytes);
  try {
    const WeightStore ws = WeightStore::open_dir(dir);
    for (const std::string& name : ws.names()) read_every_tensor(ws.reader_of(name));
  } catch (const Error&) {
  }
  return 0;
}
