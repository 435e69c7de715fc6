#include "engine/dataset.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "engine/error.h"
#include "engine/jsonl.h"
#include "engine/tokenizer.h"

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
  const int32_t eos = tok.eos_id();
  for (const auto& d : docs) {
    auto ids = tok.encode(d, false);
    tokens_.insert(tokens_.end(), ids.begin(), ids.end());
    if (eos >= 0) tokens_.push_back(eos);  // the model learns where documents end
  }
}

Batch BlockDataset::make_batch(const std::vector<int64_t>& block_ids) const {
  const int64_t rows = int64_t(block_ids.size());
  std::vector<int32_t> ids(size_t(rows * seq_)), targets(size_t(rows * seq_));
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* src = tokens_.data() + block_ids[size_t(r)] * seq_;
    std::copy(src, src + seq_, ids.begin() + r * seq_);
    std::copy(src + 1, src + seq_ + 1, targets.begin() + r * seq_);
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
