// What the step loop draws batches from. Two layouts behind one interface:
//  - stream: text documents concatenated (EOS between) and cut into seq_len blocks — the
//    pre-training layout;
//  - samples: each record one sample with a loss mask (instruction, chat, preference or text),
//    packed whole into rows with per-sample attention, or one per row with padding.
// Both give deterministic, resumable, rank-sharded batch orders.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/data/data_format.h"
#include "engine/data/token_stream.h"
#include "engine/recipe/recipe.h"
#include "engine/text/tokenizer.h"

namespace ftune {

class TrainData {
 public:
  virtual ~TrainData() = default;
  virtual Batch next() = 0;  // the next training micro-batch for this rank
  virtual DataPosition position() const = 0;
  virtual void set_position(const DataPosition& p) = 0;
  virtual int64_t batches_per_epoch() const = 0;
  virtual int64_t val_batches() const = 0;
  virtual Batch val_batch(int64_t i) const = 0;
  virtual std::string describe() const = 0;  // one line for the run log
};

// The recipe's record format settings, and the chat template its data needs (none for text).
FormatOptions recipe_format_options(const RecipeConfig& c);
std::optional<ChatTemplate> recipe_chat_template(const RecipeConfig& c,
                                                 const std::string& tokenizer_dir,
                                                 const Tokenizer& tok);

// Builds the recipe's training and validation data (reading, tokenizing, caching, packing).
// show_progress: report tokenization progress on stderr (a live line on a terminal).
std::unique_ptr<TrainData> make_train_data(const RecipeConfig& c, const std::string& tokenizer_dir,
                                           const Tokenizer& tok, int threads, int rank, int world,
                                           bool show_progress = false);

}  // namespace ftune
