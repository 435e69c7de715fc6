#include "engine/tools/data_preview.h"

#include "engine/base/error.h"
#include "engine/data/data_format.h"
#include "engine/data/train_data.h"

namespace ftune {

namespace {

std::string preview_source(const RecipeConfig& c, const Tokenizer& tok, const PreviewOptions& opt) {
  const FormatOptions fo = recipe_format_options(c);
  std::optional<ChatTemplate> tmpl = recipe_chat_template(c, c.model_path, tok);
  // In the stream layout documents run together, so a document's first token is predicted too.
  const bool stream = c.data_packing == Packing::Stream ||
                      (c.data_packing == Packing::Auto && c.data_format == DataFormat::Text);
  const size_t first_target = stream ? 0 : 1;
  const char* open = opt.color ? "\033[1;32m" : "[[";
  const char* close = opt.color ? "\033[0m" : "]]";
  std::string out = "data.train: " + c.data_train + "  (format " + data_format_name(c.data_format) +
                    (tmpl ? ", chat template " + tmpl->name() : std::string()) + ")\n" +
                    "trained tokens are shown " +
                    (opt.color ? std::string("in green") : std::string("between [[ and ]]")) +
                    (stream ? "; stream layout: documents run together, EOS between them\n"
                            : "; the first token of a sample is never a target\n");
  int64_t shown = 0;
  JsonlStats st;
  for_each_jsonl(
      c.data_train, c.data_skip_bad_lines,
      [&](const nlohmann::json& rec, int64_t line) -> std::string {
        if (shown >= opt.count) return "";
        std::vector<int32_t> ids;
        std::vector<uint8_t> mask;
        std::string why = format_record(rec, fo, tok, tmpl ? &*tmpl : nullptr, &ids, &mask);
        if (!why.empty()) return why;
        int64_t trained = 0;
        for (size_t i = first_target; i < ids.size(); ++i) trained += mask[i];
        out += "\n--- record " + std::to_string(line) + ": " + std::to_string(ids.size()) +
               " tokens, " + std::to_string(trained) + " trained" +
               (int64_t(ids.size()) > c.seq_len
                    ? " (longer than train.seq_len " + std::to_string(c.seq_len) + ": " +
                          (c.data_overlong == Overlong::Drop ? "dropped" : "truncated") + ")"
                    : "") +
               " ---\n";
        // Decode runs of equal flag so multi-byte characters split across tokens stay whole.
        size_t i = 0;
        while (i < ids.size()) {
          size_t j = i;
          const bool t = i >= first_target && mask[i];
          while (j < ids.size() && (j >= first_target && mask[j]) == t) ++j;
          std::string text =
              tok.decode(std::vector<int32_t>(ids.begin() + long(i), ids.begin() + long(j)));
          out += t ? open + text + close : text;
          i = j;
        }
        out += "\n";
        ++shown;
        return "";
      },
      &st);
  if (shown == 0)
    throw Error("data.train: '" + c.data_train + "' holds no usable record to preview");
  return out;
}

}  // namespace

std::string preview_data(const RecipeConfig& c, const PreviewOptions& opt) {
  Tokenizer tok = Tokenizer::load(c.model_path);
  // Each training source with its own format settings, `count` records from each.
  std::string out;
  for (const DataSource& src : recipe_data_sources(c)) {
    if (!out.empty()) out += "\n";
    out += preview_source(recipe_for_source(c, src), tok, opt);
  }
  return out;
}

}  // namespace ftune
