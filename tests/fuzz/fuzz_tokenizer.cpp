// tokenizer.json through Tokenizer::load, then a fixed text encoded and decoded with whatever
// vocabulary, merges, normalizer and pre-tokenizer it declared.
#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/text/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ftune;
  // Mixed scripts, digits, whitespace runs, a special-token spelling and bytes that are not
  // UTF-8, so byte fallback and every pre-tokenizer split get exercised.
  static const std::string kText =
      "Hello, world!  It's 2024:\tcaf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x99\x82 "
      "<s>x</s>\n\n  a\xff\xfe b<|endoftext|>";
  const std::string path = fuzz::scratch_file("tokenizer.json", fuzz::as_text(data, size));
  try {
    const Tokenizer tok = Tokenizer::load(path);
    for (bool special : {false, true}) {
      const std::vector<int32_t> ids = tok.encode(kText, special);
      tok.decode(ids, false);
      tok.decode(ids, true);
    }
    const int64_t n = tok.vocab_size();
    for (int64_t id = 0; id < n && id < 64; ++id) tok.token_to_id(tok.id_to_token(int32_t(id)));
    tok.decode({-1, int32_t(n), 0});
  } catch (const Error&) {
  }
  return 0;
}
