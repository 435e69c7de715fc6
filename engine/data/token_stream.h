// The minimum data pipeline (issue #3 extends it): JSONL documents with a text field, tokenized
// with the model's tokenizer, EOS after each document, concatenated and cut into fixed-length
// blocks; train/validation split by document; a seeded, resumable block order.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/data/batch.h"
#include "engine/data/samples.h"

namespace ftune {

class Tokenizer;

// Reads a JSONL file: one JSON object per line, `field` a string. Blank lines are skipped.
// Errors name file:line and what to do.
std::vector<std::string> read_jsonl_texts(const std::string& path, const std::string& field);

// Token stream cut into blocks of seq+1 tokens overlapping by one (inputs and shifted targets).
// The stream is the concatenation of documents' tokens, read in place (a mapped cache in real
// runs), so only 8 bytes per document are held here.
class BlockDataset {
 public:
  BlockDataset() = default;
  // Documents tokenized here, EOS after each (eval, tests).
  BlockDataset(const std::vector<std::string>& docs, const Tokenizer& tok, int64_t seq);
  // Documents already tokenized (EOS included), in stream order.
  BlockDataset(std::shared_ptr<const Samples> docs, int64_t seq);
  int64_t num_blocks() const { return num_tokens() > 0 ? (num_tokens() - 1) / seq_ : 0; }
  int64_t num_tokens() const { return starts_.empty() ? 0 : starts_.back(); }
  int64_t seq() const { return seq_; }
  // Rows are blocks `block_ids` (each row one document for attention, positions 0..seq-1).
  Batch make_batch(const std::vector<int64_t>& block_ids) const;

 private:
  void copy_stream(int64_t from, int64_t n, int32_t* dst) const;
  std::shared_ptr<const Samples> docs_;
  std::vector<int64_t> starts_;  // stream offset of each document, then the total
  int64_t seq_ = 0;
};

// Which of n items go to validation: a seeded shuffle, the last val_fraction of it (at least
// one item each side when n >= 2 and val_fraction > 0). is_val[i] is 1 for validation items.
std::vector<uint8_t> validation_mask(size_t n, double val_fraction, uint64_t seed);

// Splits documents into train and validation deterministically (seeded shuffle of indices,
// the last val_fraction of them go to validation; at least one each when there are ≥ 2).
void split_documents(const std::vector<std::string>& all, double val_fraction, uint64_t seed,
                     std::vector<std::string>* train, std::vector<std::string>* val);

// Where the loader stands: which epoch, which position inside that epoch's block order.
struct DataPosition {
  int64_t epoch = 0;
  int64_t index = 0;  // next block slot in this epoch's order
};

// Yields micro-batches in an order that depends only on (seed, epoch), so a resumed run sees
// exactly the blocks the uninterrupted one would have.
class BlockSampler {
 public:
  BlockSampler(int64_t num_blocks, int64_t batch_rows, bool shuffle, uint64_t seed);
  // Next `batch_rows` block ids; wraps into the next epoch (a partial last batch is dropped).
  std::vector<int64_t> next();
  const DataPosition& position() const { return pos_; }
  void set_position(const DataPosition& p);
  int64_t batches_per_epoch() const { return num_blocks_ / rows_; }

 private:
  void build_order();
  int64_t num_blocks_, rows_;
  bool shuffle_;
  uint64_t seed_;
  DataPosition pos_;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
};

}  // namespace ftune
