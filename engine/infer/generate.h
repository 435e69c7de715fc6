// Text generation from a model: greedy (temperature 0) or temperature + top-p sampling.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "engine/model/model.h"
#include "engine/text/tokenizer.h"

namespace ftune {

struct GenerateOptions {
  int64_t max_new_tokens = 48;
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;
  uint64_t seed = 0;
  bool stop_at_eos = true;
  int64_t context_window = 0;  // tokens of context kept (0: the model's buffer size)
  // Set: each sampled token passes through it before use (sharded generation: every rank takes
  // rank 0's token, so all run the same collective forwards).
  std::function<int32_t(int32_t)> agree;
};

// Returns only the generated continuation (not the prompt). The model must have been built
// with max_tokens ≥ prompt tokens + max_new_tokens (older context is dropped beyond that).
std::string generate_text(Model& model, const Tokenizer& tok, const std::string& prompt,
                          const GenerateOptions& opt, int threads);
// Picks the next token from logits (exposed for tests).
int32_t sample_token(const std::vector<float>& logits, double temperature, double top_p,
                     uint64_t* rng_state);

}  // namespace ftune
