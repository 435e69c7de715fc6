#include "engine/infer/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/base/error.h"

namespace ftune {
namespace {

// splitmix64: a tiny, well-mixed generator whose whole state is one word.
uint64_t next_u64(uint64_t* s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

int32_t sample_token(const std::vector<float>& logits, double temperature, double top_p,
                     uint64_t* rng) {
  if (temperature <= 0.0)
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  const double mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double z = 0;
  for (size_t i = 0; i < p.size(); ++i) z += p[i] = std::exp((logits[i] - mx) / temperature);
  std::vector<int32_t> idx(p.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(),
            [&](int32_t a, int32_t b) { return p[size_t(a)] > p[size_t(b)]; });
  // Nucleus: the smallest prefix of the sorted distribution whose mass reaches top_p.
  double kept = 0;
  size_t n = 0;
  while (n < idx.size()) {
    kept += p[size_t(idx[n])] / z;
    ++n;
    if (kept >= top_p) break;
  }
  double r = double(next_u64(rng) >> 11) * 0x1.0p-53 * kept * z;
  for (size_t i = 0; i < n; ++i) {
    r -= p[size_t(idx[i])];
    if (r <= 0) return idx[i];
  }
  return idx[n - 1];
}

std::string generate_text(Model& model, const Tokenizer& tok, const std::string& prompt,
                          const GenerateOptions& opt, int threads) {
  std::vector<int32_t> ids = tok.encode(prompt, true);
  if (ids.empty()) throw Error("the prompt is empty after tokenization");
  ExecContext ctx;
  ctx.threads = threads;
  uint64_t rng = opt.seed;
  std::vector<int32_t> out;
  const int64_t window = opt.context_window > 0 ? std::min(opt.context_window, model.max_tokens())
                                                : model.max_tokens();
  // Checked here, where the prompt's length is known, so every caller (ftune generate, the
  // trainer's sample) is covered: the longest forward sees the prompt and all but the last new
  // token, at most the context window.
  if (opt.max_new_tokens > 0)
    check_attention_window(model.config(),
                           std::min(int64_t(ids.size()) + opt.max_new_tokens - 1, window),
                           "the generation context (prompt + max new tokens)");
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    std::vector<int32_t> ctx_ids = ids;
    if (int64_t(ctx_ids.size()) > window) ctx_ids.erase(ctx_ids.begin(), ctx_ids.end() - window);
    const int64_t n = int64_t(ctx_ids.size());
    Batch b = Batch::from_rows(1, n, std::move(ctx_ids), {});
    std::vector<float> logits = model.last_logits(ctx, b);
    int32_t next = sample_token(logits, opt.temperature, opt.top_p, &rng);
    if (opt.agree) next = opt.agree(next);
    if (opt.stop_at_eos && next == tok.eos_id()) break;
    ids.push_back(next);
    out.push_back(next);
  }
  // Decode prompt and continuation together, then cut the prompt off: decoders that strip a
  // leading space (SentencePiece style) would otherwise glue the continuation to the prompt.
  const std::vector<int32_t> prompt_ids(ids.begin(), ids.end() - long(out.size()));
  const std::string head = tok.decode(prompt_ids, true), all = tok.decode(ids, true);
  if (all.compare(0, head.size(), head) == 0) return all.substr(head.size());
  return tok.decode(out, true);
}

}  // namespace ftune
