// config.json through load_model_config, then what the model builder derives from it first
// (projection widths, RoPE frequencies) and the config written back on export.
#include <cstdint>
#include <string>

#include "engine/base/error.h"
#include "engine/model/model_config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ftune;
  fuzz::scratch_file("config.json", fuzz::as_text(data, size));
  try {
    const ModelConfig c = load_model_config(fuzz::scratch_dir());
    volatile int64_t widths = c.q_dim() + c.kv_dim();
    (void)widths;
    rope_inv_freq(c);
    model_config_json(c, DType::BF16).dump();
  } catch (const Error&) {
  }
  return 0;
}
