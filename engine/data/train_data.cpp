#include "engine/data/train_data.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <random>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/data/data_format.h"
#include "engine/data/sample_cache.h"
#include "engine/data/sample_loader.h"
#include "engine/recipe/recipe_schema.h"

namespace fs = std::filesystem;

namespace ftune {
namespace {

// The sources are mixed (rather than read once each) when there are several or a weight is set.
bool is_mix(const std::vector<DataSource>& sources) {
  return sources.size() > 1 || sources[0].weight != 1.0;
}

// How messages name a source: its key in a list, else plain data.train.
std::string source_key(const std::vector<DataSource>& sources, size_t i) {
  return sources.size() > 1 ? "data.train[" + std::to_string(i) + "]" : "data.train";
}

// The trainer checks data.train (the first source) up front; the others are checked here.
void check_sources_exist(const std::vector<DataSource>& sources) {
  for (size_t i = 0; i < sources.size(); ++i)
    if (!fs::is_regular_file(sources[i].path))
      throw Error(source_key(sources, i) + ": file '" + sources[i].path + "' does not exist");
}

std::string source_name(const DataSource& d) {
  return fs::path(d.path).filename().string();
}

std::string default_cache_dir() {
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/ftune/data";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/ftune/data";
  return (fs::temp_directory_path() / "ftune-data").string();
}

// One data file tokenized into samples, mapped from its cache file (built first when absent or
// stale). With data.cache off the file is still written, so nothing large is held in memory,
// but under a private name and unlinked once mapped.
struct Loaded {
  std::shared_ptr<const MappedSamples> samples;
  BuildStats stats;
  bool from_cache = false;
};

Loaded load_samples(const RecipeConfig& c, const std::string& path, const FormatOptions& fo,
                    const Tokenizer& tok, const ChatTemplate* t, int threads, bool progress) {
  Loaded out;
  const nlohmann::json settings = {
      {"format", data_format_name(c.data_format)}, {"text_field", c.data_text_field},
      {"text_specials", fo.text_specials},         {"instruction_field", c.data_instruction_field},
      {"input_field", c.data_input_field},         {"output_field", c.data_output_field},
      {"messages_field", c.data_messages_field},   {"role_field", c.data_role_field},
      {"content_field", c.data_content_field},     {"system_prompt", c.data_system_prompt},
      {"train_on_inputs", c.data_train_on_inputs}, {"template", t ? t->describe() : ""},
      {"skip_bad", c.data_skip_bad_lines}};
  const std::string dir = c.data_cache_dir.empty() ? default_cache_dir() : c.data_cache_dir;
  std::string key = "uncached", file;
  if (c.data_cache) {
    std::vector<std::string> files = {path};
    for (const char* f : {"/tokenizer.json", "/tokenizer_config.json", "/chat_template.jinja"})
      if (path_exists(c.model_path + f)) files.push_back(c.model_path + f);
    key = sample_cache_key(settings, files);
    file = dir + "/" + key.substr(0, 32) + ".samples";
    if (auto hit = open_sample_cache(file, key)) {
      out.stats.jsonl.skipped = hit->meta().value("skipped", int64_t(0));
      out.stats.samples = hit->size();
      out.stats.tokens = hit->num_tokens();
      out.samples = std::move(hit);
      out.from_cache = true;
      return out;
    }
  } else {
    file = dir + "/uncached-" + std::to_string(::getpid()) + "-" +
           sha256_hex(path + settings.dump()).substr(0, 16) + ".samples";
  }
  try {
    fs::create_directories(dir);
  } catch (const fs::filesystem_error& e) {
    throw Error("data.cache_dir: cannot create '" + dir + "': " + e.code().message() +
                " (set data.cache_dir to a writable directory)");
  }
  const bool tty = isatty(fileno(stderr)) != 0;
  const double total = double(fs::file_size(path));
  const auto t0 = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  BuildProgress report = nullptr;
  if (progress && tty)
    report = [&](const BuildStats& b, int64_t bytes) {
      std::fprintf(stderr, "\r\033[Ktokenizing %s: %lld records, %.0f%%, %.1f MB/s",
                   fs::path(path).filename().c_str(), static_cast<long long>(b.samples),
                   total > 0 ? 100.0 * double(bytes) / total : 100.0,
                   double(bytes) / 1e6 / std::max(seconds(), 1e-6));
    };
  {
    SampleCacheWriter w(file);
    append_samples(path, fo, tok, t, c.data_skip_bad_lines, threads, &w, &out.stats, report);
    w.finish(key, {{"skipped", out.stats.jsonl.skipped}, {"source", path}});
  }
  if (progress)
    std::fprintf(stderr, "%stokenized %s: %lld samples, %lld tokens in %.2f s (%.1f MB/s)\n",
                 tty ? "\r\033[K" : "", path.c_str(), static_cast<long long>(out.stats.samples),
                 static_cast<long long>(out.stats.tokens), seconds(),
                 total / 1e6 / std::max(seconds(), 1e-6));
  out.samples = open_sample_cache(file, key);
  if (!c.data_cache) ::unlink(file.c_str());  // the mapping keeps the data until the run ends
  if (!out.samples) throw Error("cannot read back the data cache '" + file + "' just written");
  return out;
}

// Pre-training layout: the existing block dataset and sampler.
class StreamData final : public TrainData {
 public:
  StreamData(const RecipeConfig& c, const Tokenizer& tok, int threads, bool progress)
      : rows_(c.micro_batch_size) {
    auto train = std::make_shared<SampleSelection>(), val = std::make_shared<SampleSelection>();
    const std::vector<DataSource> sources = recipe_data_sources(c);
    // Each source's documents go in once per unit of its (whole) weight; the held-out share is
    // taken per source, before the repetition, so no validation document is trained on.
    for (size_t i = 0; i < sources.size(); ++i) {
      const RecipeConfig sc = recipe_for_source(c, sources[i]);
      Loaded l = load(sc, sc.data_train, tok, threads, progress);
      const int part = train->part_index(l.samples), vpart = val->part_index(l.samples);
      const size_t n = size_t(l.samples->size());
      const std::vector<uint8_t> is_val =
          c.data_validation.empty() ? validation_mask(n, c.data_val_fraction, uint64_t(c.seed) + i)
                                    : std::vector<uint8_t>(n, 0);
      const int64_t copies = int64_t(sources[i].weight);
      for (int64_t k = 0; k < copies; ++k)
        for (size_t j = 0; j < n; ++j)
          if (!is_val[j]) train->add(part, int64_t(j));
      int64_t n_train = 0;
      for (size_t j = 0; j < n; ++j) {
        if (is_val[j])
          val->add(vpart, int64_t(j));
        else
          n_train++;
      }
      if (is_mix(sources))
        mix_ += std::string(mix_.empty() ? "" : ", ") + source_name(sources[i]) + " " +
                std::to_string(n_train) + " documents x" + std::to_string(copies);
    }
    if (!c.data_validation.empty())
      val->add_all(val->part_index(load(c, c.data_validation, tok, threads, progress).samples));
    train_ = BlockDataset(train, c.seq_len);
    val_ = BlockDataset(val, c.seq_len);
    sampler_ = std::make_unique<BlockSampler>(train_.num_blocks(), rows_, c.data_shuffle,
                                              uint64_t(c.seed));
  }
  Batch next() override { return train_.make_batch(sampler_->next()); }
  DataPosition position() const override { return sampler_->position(); }
  void set_position(const DataPosition& p) override { sampler_->set_position(p); }
  int64_t batches_per_epoch() const override { return sampler_->batches_per_epoch(); }
  int64_t val_batches() const override { return (val_.num_blocks() + rows_ - 1) / rows_; }
  Batch val_batch(int64_t i) const override {
    std::vector<int64_t> ids;
    for (int64_t b = i * rows_; b < std::min((i + 1) * rows_, val_.num_blocks()); ++b)
      ids.push_back(b);
    return val_.make_batch(ids);
  }
  std::string describe() const override {
    return "stream layout: " + std::to_string(train_.num_tokens()) + " train tokens in " +
           std::to_string(train_.num_blocks()) + " blocks, " + std::to_string(val_.num_tokens()) +
           " validation tokens" + (mix_.empty() ? "" : "; mix: " + mix_) +
           (skipped_ ? ", " + std::to_string(skipped_) + " bad lines skipped" : "") +
           (cache_hits_ ? ", from cache" : "");
  }

 private:
  // Documents as they are: text with EOS after each, no BOS, nothing masked.
  Loaded load(const RecipeConfig& c, const std::string& path, const Tokenizer& tok, int threads,
              bool progress) {
    FormatOptions fo = recipe_format_options(c);
    fo.text_specials = false;
    Loaded l = load_samples(c, path, fo, tok, nullptr, threads, progress);
    if (l.samples->size() == 0) throw Error("data file '" + path + "' holds no documents");
    skipped_ += l.stats.jsonl.skipped;
    cache_hits_ += l.from_cache;
    return l;
  }

  std::string mix_;
  int64_t rows_;
  int64_t skipped_ = 0;
  int cache_hits_ = 0;
  BlockDataset train_, val_;
  std::unique_ptr<BlockSampler> sampler_;
};

// Sample layout: records formatted into masked samples, cached, then packed or padded.
class SampleData final : public TrainData {
 public:
  SampleData(const RecipeConfig& c, const std::string& tok_dir, const Tokenizer& tok, int threads,
             int rank, int world, bool show_progress)
      : seq_(c.seq_len),
        rows_(c.micro_batch_size),
        pad_(std::max(tok.eos_id(), 0)),
        progress_(show_progress) {
    sources_ = recipe_data_sources(c);
    // One template for every source: chosen as if the recipe's format were the most
    // template-hungry one among the sources (messages/preference need the model's or a named one).
    // data.validation is read with the recipe's own data.format, so that format counts too.
    RecipeConfig tc = c;
    tc.data_format = c.data_validation.empty() ? DataFormat::Text : c.data_format;
    for (const DataSource& d : sources_) {
      const DataFormat f = recipe_for_source(c, d).data_format;
      if (f != DataFormat::Text &&
          (tc.data_format == DataFormat::Text || tc.data_format == DataFormat::Instruction))
        tc.data_format = f;
    }
    std::optional<ChatTemplate> tmpl = recipe_chat_template(tc, tok_dir, tok);
    const ChatTemplate* t = tmpl ? &*tmpl : nullptr;

    std::vector<SourceRange> ranges;
    for (size_t i = 0; i < sources_.size(); ++i) {
      const RecipeConfig sc = recipe_for_source(c, sources_[i]);
      const FormatOptions fo = recipe_format_options(sc);
      Loaded all = load_samples(sc, sc.data_train, fo, tok,
                                fo.format == DataFormat::Text ? nullptr : t, threads, progress_);
      train_stats_.jsonl.skipped += all.stats.jsonl.skipped;
      cache_hits_ += all.from_cache;
      const int64_t begin = train_.size();
      // Held out per source, so each one is represented in validation as in training.
      split(all.samples, c.data_validation.empty() ? c.data_val_fraction : 0.0,
            uint64_t(c.seed) + i);
      if (train_.size() == begin)
        throw Error(source_key(sources_, i) + ": '" + sources_[i].path + "' gives no samples");
      ranges.push_back({begin, train_.size(), sources_[i].weight});
    }
    if (!c.data_validation.empty()) {
      Loaded v =
          load_samples(c, c.data_validation, recipe_format_options(c), tok, t, threads, progress_);
      val_stats_ = v.stats;
      cache_hits_ += v.from_cache;
      val_.add_all(val_.part_index(v.samples));
    }
    // Count what training will actually see: tokens past the first of each sample, within
    // train.seq_len (truncation keeps the start), dropped samples excluded.
    int64_t trainable = 0;
    const bool drop = c.data_overlong == Overlong::Drop;
    for (int64_t i = 0; i < train_.size(); ++i) {
      const int64_t len = train_.length(i);
      if (drop && len > seq_) continue;
      const uint8_t* m = train_.trainable_of(i);
      for (int64_t k = 1; k < std::min(len, seq_); ++k) trainable += m[k];
    }
    if (trainable == 0)
      throw Error("data.train: '" + c.data_train + "' leaves no tokens to train on within " +
                  "train.seq_len (every response is masked, empty or cut off); check data.format " +
                  "and its fields, raise train.seq_len, or set data.train_on_inputs: true");

    LoaderOptions lo;
    lo.seq_len = c.seq_len;
    lo.rows_per_batch = c.micro_batch_size;
    lo.packing = c.data_packing != Packing::Pad;
    lo.shuffle = c.data_shuffle;
    lo.overlong = c.data_overlong;
    lo.bucket = c.data_bucket;
    lo.seed = uint64_t(c.seed);
    lo.rank = rank;
    lo.world = world;
    if (is_mix(sources_)) lo.sources = ranges;
    ranges_ = ranges;
    loader_ = std::make_unique<SampleLoader>(train_, lo);
    std::vector<int64_t> order(size_t(val_.size()));
    std::iota(order.begin(), order.end(), int64_t(0));
    val_rows_ = lo.packing ? pack_rows(val_, order, seq_, lo.overlong, &val_pack_)
                           : single_rows(val_, order, seq_, lo.overlong, &val_pack_);
    template_name_ = t ? t->name() : "";
    packing_ = lo.packing;
  }

  // Packed rows fill seq_len; padded rows stop at the batch's longest sample (dynamic padding).
  Batch batch_of(const Samples& s, const std::vector<Row>& rows) const {
    return make_row_batch(s, rows, packing_ ? seq_ : batch_row_length(rows, seq_), pad_);
  }
  Batch next() override { return batch_of(train_, loader_->next()); }
  DataPosition position() const override { return loader_->position(); }
  void set_position(const DataPosition& p) override { loader_->set_position(p); }
  int64_t batches_per_epoch() const override { return loader_->batches_per_epoch(); }
  int64_t val_batches() const override { return (int64_t(val_rows_.size()) + rows_ - 1) / rows_; }
  Batch val_batch(int64_t i) const override {
    auto first = val_rows_.begin() + i * rows_;
    auto last = val_rows_.begin() + std::min<int64_t>((i + 1) * rows_, int64_t(val_rows_.size()));
    return batch_of(val_, std::vector<Row>(first, last));
  }
  std::string describe() const override {
    const PackStats& p = loader_->stats();
    std::string s =
        std::string(packing_ ? "packed" : "padded") + " samples" +
        (template_name_.empty() ? "" : " (chat template " + template_name_ + ")") + ": " +
        std::to_string(train_.size()) + " train / " + std::to_string(val_.size()) +
        " validation samples, " + std::to_string(train_.num_tokens()) + " train tokens in " +
        std::to_string(p.rows) + " rows (" +
        std::to_string(p.rows > 0 ? 100 * p.pad_tokens / (p.rows * seq_) : 0) + "% padding)";
    if (p.truncated) s += ", " + std::to_string(p.truncated) + " truncated";
    if (p.dropped) s += ", " + std::to_string(p.dropped) + " dropped";
    const int64_t skipped = train_stats_.jsonl.skipped + val_stats_.jsonl.skipped;
    if (skipped) s += ", " + std::to_string(skipped) + " bad lines skipped";
    if (cache_hits_) s += ", from cache";
    if (is_mix(sources_)) {
      s += "; mix per epoch:";
      for (size_t i = 0; i < sources_.size(); ++i) {
        const int64_t n = ranges_[i].end - ranges_[i].begin;
        s += std::string(i ? "," : "") + " " + source_name(sources_[i]) + " " + std::to_string(n) +
             " samples x" + recipe::format_double(sources_[i].weight) + " = " +
             std::to_string(weighted_count(n, sources_[i].weight));
      }
    }
    return s;
  }

 private:
  // Adds the samples of `all` to train_ and val_, holding `fraction` of them out for validation.
  void split(const std::shared_ptr<const MappedSamples>& all, double fraction, uint64_t seed) {
    const std::vector<uint8_t> is_val = validation_mask(size_t(all->size()), fraction, seed);
    const int tp = train_.part_index(all), vp = val_.part_index(all);
    for (int64_t i = 0; i < all->size(); ++i)
      if (is_val[size_t(i)])
        val_.add(vp, i);
      else
        train_.add(tp, i);
  }

  std::vector<DataSource> sources_;
  std::vector<SourceRange> ranges_;  // each source's samples in train_
  int64_t seq_, rows_;
  int32_t pad_;
  SampleSelection train_, val_;
  BuildStats train_stats_, val_stats_;
  std::unique_ptr<SampleLoader> loader_;
  std::vector<Row> val_rows_;
  PackStats val_pack_;
  std::string template_name_;
  bool packing_ = true;
  int cache_hits_ = 0;
  bool progress_ = false;
};

}  // namespace

FormatOptions recipe_format_options(const RecipeConfig& c) {
  FormatOptions fo;
  fo.format = c.data_format;
  fo.text_field = c.data_text_field;
  fo.instruction_field = c.data_instruction_field;
  fo.input_field = c.data_input_field;
  fo.output_field = c.data_output_field;
  fo.messages_field = c.data_messages_field;
  fo.role_field = c.data_role_field;
  fo.content_field = c.data_content_field;
  fo.system_prompt = c.data_system_prompt;
  fo.train_on_inputs = c.data_train_on_inputs;
  return fo;
}

std::optional<ChatTemplate> recipe_chat_template(const RecipeConfig& c, const std::string& tok_dir,
                                                 const Tokenizer& tok) {
  if (c.data_format == DataFormat::Text) return std::nullopt;
  ChatSpecialTokens st;
  st.bos = tok.bos_id() >= 0 ? tok.id_to_token(tok.bos_id()) : std::string();
  st.eos = tok.eos_id() >= 0 ? tok.id_to_token(tok.eos_id()) : std::string();
  if (c.data_chat_template != ChatTemplateChoice::Auto)
    return ChatTemplate::builtin(chat_template_name(c.data_chat_template), st);
  const bool has_own = path_exists(tok_dir + "/chat_template.jinja") || [&] {
    const std::string cfg = tok_dir + "/tokenizer_config.json";
    return path_exists(cfg) && read_file(cfg).find("\"chat_template\"") != std::string::npos;
  }();
  if (has_own) return ChatTemplate::from_tokenizer_config(tok_dir);
  if (c.data_format == DataFormat::Instruction) return ChatTemplate::builtin("alpaca", st);
  throw Error("data.chat_template: the model in '" + tok_dir + "' has no chat template; set " +
              "data.chat_template to one of chatml, llama3, llama2, mistral, alpaca, plain");
}

std::unique_ptr<TrainData> make_train_data(const RecipeConfig& c, const std::string& tokenizer_dir,
                                           const Tokenizer& tok, int threads, int rank, int world,
                                           bool show_progress) {
  const std::vector<DataSource> sources = recipe_data_sources(c);
  check_sources_exist(sources);
  bool all_text = true;
  for (const DataSource& d : sources)
    all_text = all_text && recipe_for_source(c, d).data_format == DataFormat::Text;
  const bool stream =
      c.data_packing == Packing::Stream || (c.data_packing == Packing::Auto && all_text);
  if (stream) {
    if (!all_text)
      throw Error("data.packing: stream works only with data.format: text (use pack or pad)");
    for (size_t i = 0; i < sources.size(); ++i)
      if (sources[i].weight != std::floor(sources[i].weight))
        throw Error(source_key(sources, i) + ".weight: " +
                    recipe::format_double(sources[i].weight) + " is fractional, but the stream " +
                    "layout repeats documents whole; use a whole-number weight, or set " +
                    "data.packing: pack or pad to sample a fraction each epoch");
    if (world != 1)
      throw Error("data.packing: the stream layout (the default for text data) runs on one rank; " +
                  std::string("set data.packing: pack (or pad) to train on ") +
                  std::to_string(world) + " ranks");
    return std::make_unique<StreamData>(c, tok, threads, show_progress);
  }
  return std::make_unique<SampleData>(c, tokenizer_dir, tok, threads, rank, world, show_progress);
}

}  // namespace ftune
