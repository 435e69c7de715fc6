#include "engine/data/token_stream.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "engine/base/error.h"
#include "engine/formats/jsonl.h"
#include "engine/text/tokenizer.h"

namespace ftune {

std::vector<std::string> read_jsonl_texts(const std::string& path, const std::string& field) {
  std::vector<std::string> out;
  for_each_jsonl(
      path, false,
      [&](const nlohmann::json& j, int64_t) -> std::string {
        auto it = j.find(field);
        if (it == j.end())
          return "no \"" + field + "\" field; set data.text_field to the field holding the text";
        if (!it->is_string()) return "field \"" + field + "\" must be a string";
        out.push_back(it->get<std::string>());
        return "";
      },
      nullptr);
  if (out.empty()) throw Error("data file '" + path + "' holds no documents");
  return out;
}

BlockDataset::BlockDataset(const std::vector<std::string>& docs, const Tokenizer& tok, int64_t seq)
    : seq_(seq) {
  auto set = std::make_shared<SampleSet>();
  const int32_t eos = tok.eos_id();
  for (const auto& d : docs) {
    auto ids = tok.encode(d, false);
    if (eos >= 0) ids.push_back(eos);  // the model learns where documents end
    set->add(ids, std::vector<uint8_t>(ids.size(), 1));
  }
  *this = BlockDataset(std::move(set), seq);
}

BlockDataset::BlockDataset(std::shared_ptr<const Samples> docs, int64_t seq)
    : docs_(std::move(docs)), seq_(seq) {
  starts_.reserve(size_t(docs_->size()) + 1);
  starts_.push_back(0);
  for (int64_t i = 0; i < docs_->size(); ++i) starts_.push_back(starts_.back() + docs_->length(i));
}

void BlockDataset::copy_stream(int64_t from, int64_t n, int32_t* dst) const {
  // The document holding `from`: the last start at or before it (empty documents are skipped
  // because upper_bound lands past every equal start).
  auto it = std::upper_bound(starts_.begin(), starts_.end() - 1, from);
  int64_t doc = int64_t(it - starts_.begin()) - 1;
  while (n > 0) {
    const int64_t off = from - starts_[size_t(doc)];
    const int64_t take = std::min(n, docs_->length(doc) - off);
    if (take > 0) {
      std::copy_n(docs_->tokens_of(doc) + off, take, dst);
      dst += take;
      from += take;
      n -= take;
    }
    ++doc;
  }
}

Batch BlockDataset::make_batch(const std::vector<int64_t>& block_ids) const {
  const int64_t rows = int64_t(block_ids.size());
  std::vector<int32_t> ids(size_t(rows * seq_)), targets(size_t(rows * seq_));
  std::vector<int32_t> block(size_t(seq_ + 1));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = block_ids[size_t(r)];
    FTUNE_CHECK(b >= 0 && b < num_blocks(), "block id out of range");
    copy_stream(b * seq_, seq_ + 1, block.data());
    std::copy(block.begin(), block.end() - 1, ids.begin() + r * seq_);
    std::copy(block.begin() + 1, block.end(), targets.begin() + r * seq_);
  }
  return Batch::from_rows(rows, seq_, std::move(ids), std::move(targets));
}

std::vector<uint8_t> validation_mask(size_t n, double val_fraction, uint64_t seed) {
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t(0));
  std::mt19937_64 rng(seed ^ 0x5eed5a1177ull);
  std::shuffle(idx.begin(), idx.end(), rng);
  size_t n_val = size_t(double(n) * val_fraction + 0.5);
  if (n >= 2 && val_fraction > 0) n_val = std::clamp<size_t>(n_val, 1, n - 1);
  std::vector<uint8_t> is_val(n, 0);
  for (size_t i = n - n_val; i < n; ++i) is_val[idx[i]] = 1;
  return is_val;
}

void split_documents(const std::vector<std::string>& all, double val_fraction, uint64_t seed,
                     std::vector<std::string>* train, std::vector<std::string>* val) {
  // Each side keeps file order: splitting must not reorder what the user wrote.
  const std::vector<uint8_t> is_val = validation_mask(all.size(), val_fraction, seed);
  train->clear();
  val->clear();
  for (size_t i = 0; i < all.size(); ++i) (is_val[i] ? val : train)->push_back(all[i]);
}

BlockSampler::BlockSampler(int64_t num_blocks, int64_t batch_rows, bool shuffle, uint64_t seed)
    : num_blocks_(num_blocks), rows_(batch_rows), shuffle_(shuffle), seed_(seed) {
  if (num_blocks_ < rows_)
    throw Error("the training data gives " + std::to_string(num_blocks_) + " blocks of " +
                "train.seq_len tokens, fewer than one micro-batch (" + std::to_string(rows_) +
                " rows): add data or lower train.seq_len / train.micro_batch_size");
}

void BlockSampler::build_order() {
  order_.resize(size_t(num_blocks_));
  std::iota(order_.begin(), order_.end(), int64_t(0));
  if (shuffle_) {
    // A fresh stream per epoch keyed by (seed, epoch): no RNG state to carry across resume.
    std::mt19937_64 rng(seed_ * 0x9e3779b97f4a7c15ull + uint64_t(pos_.epoch) + 1);
    std::shuffle(order_.begin(), order_.end(), rng);
  }
  order_epoch_ = pos_.epoch;
}

std::vector<int64_t> BlockSampler::next() {
  if (pos_.index + rows_ > num_blocks_) {
    pos_.epoch++;
    pos_.index = 0;
  }
  if (order_epoch_ != pos_.epoch) build_order();
  std::vector<int64_t> out(order_.begin() + pos_.index, order_.begin() + pos_.index + rows_);
  pos_.index += rows_;
  return out;
}

void BlockSampler::set_position(const DataPosition& p) {
  pos_ = p;
  order_epoch_ = -1;
}

}  // namespace ftune
