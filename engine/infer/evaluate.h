// Held-out loss and perplexity of a model over prepared data: what `ftune eval` prints and what
// a training run reports before and after.
#pragma once
#include <cstdint>

#include "engine/data/token_stream.h"
#include "engine/model/model.h"

namespace ftune {

struct EvalResult {
  double loss = 0;        // mean per-token cross-entropy
  double perplexity = 0;  // exp(loss)
  int64_t tokens = 0;
};

// Mean loss of `model` over a dataset's blocks, micro_batch rows at a time (max_batches 0: all).
EvalResult evaluate(Model& model, const BlockDataset& data, int64_t micro_batch,
                    int64_t max_batches, int threads);

class TrainData;
// Mean loss over the validation batches of a run's data (max_batches 0: all).
EvalResult evaluate(Model& model, const TrainData& data, int64_t max_batches, int threads);

}  // namespace ftune
