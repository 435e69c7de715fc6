// ftune tokenize: a model's tokenizer from the command line, one input line per output line, so
// results can be compared with Hugging Face tokenizers or piped into other tools.
#include <charconv>
#include <climits>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/json_limits.h"
#include "engine/cli/commands.h"
#include "engine/text/tokenizer.h"

namespace ftune::cli {
namespace {

struct TokenizeOpts {
  std::string model, text, file;
  bool decode = false, add_special = false, skip_special = false;
};

enum class Source { kText, kFile, kStdin };

// Buffered stdout: printing each short line with its own write would dominate on big files.
class Output {
 public:
  ~Output() {
    if (!buf_.empty()) std::fwrite(buf_.data(), 1, buf_.size(), stdout);
    std::fflush(stdout);
  }
  std::string& buf() { return buf_; }
  void maybe_flush() {
    if (buf_.size() < (1u << 16)) return;
    if (std::fwrite(buf_.data(), 1, buf_.size(), stdout) != buf_.size())
      throw Error("cannot write to standard output");
    buf_.clear();
  }

 private:
  std::string buf_;
};

void append_ids(const std::vector<int32_t>& ids, std::string* out) {
  out->push_back('[');
  char num[16];
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out->push_back(',');
    auto res = std::to_chars(num, num + sizeof num, ids[i]);
    out->append(num, res.ptr);
  }
  out->append("]\n");
}

std::vector<int32_t> parse_ids(const std::string& line, const std::string& where) {
  std::vector<int32_t> ids;
  if (line.find_first_not_of(" \t") == std::string::npos) return ids;  // blank: nothing to decode
  nlohmann::json j;
  try {
    j = parse_json_bounded(line, where);
  } catch (const nlohmann::json::exception&) {  // parse_error, or out_of_range for 1e999
    throw Error(where + ": expected a JSON array of token ids such as [1, 15043], got: " + line);
  }
  if (!j.is_array()) throw Error(where + ": expected a JSON array of token ids, got: " + line);
  for (const auto& v : j) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
      throw Error(where + ": token ids are integers from 0 to " + std::to_string(INT32_MAX) +
                  ", got " + v.dump());
    ids.push_back(v.get<int32_t>());
  }
  return ids;
}

// Calls fn(line, line number) for each line: split at '\n', a trailing '\r' dropped (CRLF files),
// and no empty line after a final newline.
template <class F>
void for_each_line(std::istream& in, F&& fn) {
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    fn(line, ++n);
  }
}

int run_tokenize(const TokenizeOpts& o, Source source) {
  Tokenizer tok = Tokenizer::load(o.model);
  Output out;
  const std::string where = source == Source::kFile   ? o.file
                            : source == Source::kText ? std::string("--text")
                                                      : std::string("standard input");
  auto handle = [&](const std::string& line, size_t n) {
    if (o.decode) {
      out.buf() +=
          tok.decode(parse_ids(line, where + " line " + std::to_string(n)), o.skip_special);
      out.buf().push_back('\n');
    } else {
      append_ids(tok.encode(line, o.add_special), &out.buf());
    }
    out.maybe_flush();
  };
  switch (source) {
    case Source::kText:
      if (o.text.empty()) {
        handle(o.text, 1);  // --text '' asks about the empty string
      } else {
        std::istringstream in(o.text);
        for_each_line(in, handle);
      }
      break;
    case Source::kFile: {
      std::ifstream f(o.file, std::ios::binary);
      if (!f) throw Error(o.file + ": cannot open the --file input (check the path)");
      for_each_line(f, handle);
      if (f.bad()) throw Error(o.file + ": read error");
      break;
    }
    case Source::kStdin:
      std::ios::sync_with_stdio(false);  // only std::cin is used; C stdio does the writing
      for_each_line(std::cin, handle);
      break;
  }
  return 0;
}

}  // namespace

void add_tokenize(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand(
      "tokenize", "Encode text to token ids, or decode ids to text, with a model's tokenizer");
  auto o = std::make_shared<TokenizeOpts>();
  cmd->add_option("model", o->model,
                  "Hugging Face model directory holding tokenizer.json, or the file itself")
      ->required();
  auto* text =
      cmd->add_option("--text", o->text, "Input; each line is encoded (or decoded) on its own");
  auto* file = cmd->add_option("--file", o->file, "Read the input lines from this file");
  text->excludes(file);
  auto* decode = cmd->add_flag("--decode", o->decode,
                               "Read lines of JSON id arrays and print the text of each");
  cmd->add_flag("--add-special", o->add_special,
                "Add the special tokens the tokenizer's post-processor adds (BOS)")
      ->excludes(decode);
  cmd->add_flag("--skip-special", o->skip_special, "With --decode: leave special tokens out")
      ->needs(decode);
  cmd->footer(
      "Without --text or --file the input is read from standard input. Encoding prints one\n"
      "JSON array of ids per input line; decoding prints one line of text per array.\n"
      "Examples:\n"
      "  ftune tokenize runs/quickstart/model --text 'Hello world'\n"
      "  ftune tokenize runs/quickstart/model --file corpus.txt --add-special > ids.txt\n"
      "  echo '[15043, 3186]' | ftune tokenize runs/quickstart/model --decode\n"
      "  ftune tokenize path/to/tokenizer.json --text 'Hi' | ftune tokenize path/to --decode");
  cmd->callback([o, text, file, action] {
    Source source = text->count() ? Source::kText : file->count() ? Source::kFile : Source::kStdin;
    *action = [o, source] { return run_tokenize(*o, source); };
  });
}

}  // namespace ftune::cli
