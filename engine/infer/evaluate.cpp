#include "engine/infer/evaluate.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/data/train_data.h"

namespace ftune {

EvalResult evaluate(Model& model, const BlockDataset& data, int64_t micro_batch,
                    int64_t max_batches, int threads) {
  ExecContext ctx;
  ctx.threads = threads;
  double loss = 0;
  int64_t tokens = 0, batches = 0;
  for (int64_t b0 = 0; b0 < data.num_blocks(); b0 += micro_batch) {
    if (max_batches > 0 && batches >= max_batches) break;
    std::vector<int64_t> ids;
    for (int64_t b = b0; b < std::min(b0 + micro_batch, data.num_blocks()); ++b) ids.push_back(b);
    LossSum ls = model.forward_loss(ctx, data.make_batch(ids));
    loss += ls.loss;
    tokens += ls.tokens;
    ++batches;
  }
  EvalResult r;
  r.tokens = tokens;
  r.loss = tokens > 0 ? loss / double(tokens) : NAN;
  r.perplexity = std::exp(r.loss);
  return r;
}

EvalResult evaluate(Model& model, const TrainData& data, int64_t max_batches, int threads) {
  ExecContext ctx;
  ctx.threads = threads;
  double loss = 0;
  int64_t tokens = 0;
  const int64_t n =
      max_batches > 0 ? std::min(max_batches, data.val_batches()) : data.val_batches();
  for (int64_t i = 0; i < n; ++i) {
    LossSum ls = model.forward_loss(ctx, data.val_batch(i));
    loss += ls.loss;
    tokens += ls.tokens;
  }
  EvalResult r;
  r.tokens = tokens;
  r.loss = tokens > 0 ? loss / double(tokens) : NAN;
  r.perplexity = std::exp(r.loss);
  return r;
}

}  // namespace ftune
