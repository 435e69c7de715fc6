// BPE from a Hugging Face tokenizer.json, byte-level (GPT-2, Llama 3, Qwen2) or SentencePiece
// style (Llama 2, Mistral: metaspace "\u2581" for spaces, <0xXX> byte fallback). The pipeline
// follows the tokenizers library: split off added tokens (non-normalized ones on the raw text,
// then normalized ones on the normalized text), pre-tokenize each remaining piece (regex splits,
// Metaspace, ByteLevel), BPE each pre-token, and decode through the decoder chain.
// With a ByteLevel pre-tokenizer BPE runs on raw bytes: a byte's symbol is the vocab id of its
// byte-level character, so no mapped copy of the text is ever built. Otherwise the initial symbols
// are the characters themselves, with byte fallback or <unk> for those not in the vocabulary.
#include "engine/text/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <climits>
#include <filesystem>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>
#include <utility>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"
#include "engine/text/unicode.h"

namespace ftune {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr char kScope[] =
    "ftune reads BPE tokenizers, byte-level (GPT-2, Llama 3, Qwen2, SmolLM style) or "
    "SentencePiece-style with byte fallback (Llama 2, Mistral, TinyLlama); convert other "
    "tokenizers with Hugging Face tokenizers or pick a model that ships one of these";

// Tables are sized by the largest id (32+ bytes per id), so a 60-byte file claiming id 2^31 asked
// for 64 GB and died of bad_alloc. Real vocabularies stay below 300k.
constexpr int64_t kMaxTokenId = (int64_t(1) << 22) - 1;

// GPT-2's ByteLevel split, used when ByteLevel has use_regex=true.
constexpr char kGpt2Pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

[[noreturn]] void unsupported(const std::string& file, const std::string& what) {
  throw Error(file + ": " + what + " is not supported: " + kScope);
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// PCRE2's \s also matches U+180E MONGOLIAN VOWEL SEPARATOR, which left Unicode's White_Space in
// 6.3; the Oniguruma engine behind tokenizers follows White_Space. This rewrites every \s and \S
// (alone or inside a character class) so U+180E lands on the same side as in tokenizers.
std::string align_white_space(const std::string& p) {
  constexpr char kNotMvs[] = "(?!\\x{180E})";
  constexpr char kOrMvs[] = "|\\x{180E})";
  std::string out;
  out.reserve(p.size() + 32);
  for (size_t i = 0; i < p.size();) {
    if (p.compare(i, 2, "\\Q") == 0) {  // literal text up to \E
      size_t e = p.find("\\E", i + 2);
      e = e == std::string::npos ? p.size() : e + 2;
      out.append(p, i, e - i);
      i = e;
    } else if (p[i] == '\\' && i + 1 < p.size()) {
      if (p[i + 1] == 's') {
        out += std::string("(?:") + kNotMvs + "\\s)";
      } else if (p[i + 1] == 'S') {
        out += std::string("(?:\\S") + kOrMvs;
      } else {
        out.append(p, i, 2);
      }
      i += 2;
    } else if (p[i] == '[') {
      // Find the end of the class: a ']' right after '[' or '[^' is a literal, as are escapes.
      size_t j = i + 1;
      bool negated = j < p.size() && p[j] == '^';
      if (negated) ++j;
      if (j < p.size() && p[j] == ']') ++j;
      bool has_s = false, has_not_s = false;
      while (j < p.size() && p[j] != ']') {
        if (p[j] == '\\' && j + 1 < p.size()) {
          has_s |= p[j + 1] == 's';
          has_not_s |= p[j + 1] == 'S';
          j += 2;
        } else if (p.compare(j, 2, "[:") == 0 && p.find(":]", j + 2) != std::string::npos) {
          j = p.find(":]", j + 2) + 2;
        } else {
          ++j;
        }
      }
      size_t end = std::min(j + 1, p.size());
      std::string cls = p.substr(i, end - i);
      // Does the class as written match U+180E (PCRE2 puts it in \s), and should it?
      if (has_s != has_not_s) {
        bool pcre_matches = negated ? has_not_s : has_s;
        out += pcre_matches ? std::string("(?:") + kNotMvs + cls + ")" : "(?:" + cls + kOrMvs;
      } else {
        out += cls;
      }
      i = end;
    } else {
      out.push_back(p[i++]);
    }
  }
  return out;
}

// A compiled PCRE2 pattern (UTF + Unicode properties), read-only and shared across threads.
class Regex {
 public:
  Regex(const std::string& source, bool literal, const std::string& where) {
    int err = 0;
    PCRE2_SIZE off = 0;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    const std::string pattern = literal ? source : align_white_space(source);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), opts, &err,
                          &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw Error(where + ": cannot compile the pattern (" + reinterpret_cast<const char*>(msg) +
                  "): " + source);
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls fn(start, end) for each match, left to right. An empty match splits there and the
  // search moves on one character, as the regex engines behind tokenizers do.
  template <class F>
  void for_each_match(std::string_view subject, pcre2_match_data* md, F&& fn) const {
    const auto* subj = reinterpret_cast<PCRE2_SPTR>(subject.data());
    const size_t n = subject.size();
    size_t pos = 0;
    while (pos <= n) {
      int rc = jit_ ? pcre2_jit_match(code_, subj, n, pos, 0, md, nullptr)
                    : pcre2_match(code_, subj, n, pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // the interpreter keeps its frames on the heap
        rc = pcre2_match(code_, subj, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw Error(std::string("tokenizer: pre-tokenizer pattern failed on a ") +
                    std::to_string(n) +
                    "-byte piece of text: " + reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t s = ov[0], e = ov[1];
      fn(s, e);
      if (e > s) {
        pos = e;
      } else {
        if (s >= n) return;
        size_t len;
        unicode::decode_utf8(subject, s, &len);
        pos = s + len;
      }
    }
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

struct MatchData {
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  MatchData() { FTUNE_CHECK(md != nullptr, "out of memory for regex match data"); }
  ~MatchData() { pcre2_match_data_free(md); }
  MatchData(const MatchData&) = delete;
  MatchData& operator=(const MatchData&) = delete;
};

// (left id, right id) -> (rank, merged id), open addressing: merge lookups are the BPE inner loop.
class PairMap {
 public:
  struct Slot {
    uint64_t key = kEmpty;
    int32_t rank = 0;
    int32_t id = 0;
  };

  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
  }
  // A later entry for the same pair replaces the earlier one, as in tokenizers.
  void insert(int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t key = make_key(a, b);
    size_t i = hash(key) & mask_;
    while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
    slots_[i] = Slot{key, rank, id};
  }
  const Slot* find(int32_t a, int32_t b) const {
    uint64_t key = make_key(a, b);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == key) return &s;
      if (s.key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t make_key(int32_t a, int32_t b) {
    return uint64_t(uint32_t(a)) << 32 | uint32_t(b);
  }
  static size_t hash(uint64_t k) { return size_t((k * 0x9E3779B97F4A7C15ull) >> 20); }
  std::vector<Slot> slots_{Slot{}};
  size_t mask_ = 0;
};

struct AddedToken {
  std::string content;
  std::string match;  // what is looked for in text: content, NFC'd when normalized under NFC
  int32_t id = 0;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// Leftmost-longest matching of added tokens, as tokenizers' Aho-Corasick set does.
class AddedMatcher {
 public:
  void add(const AddedToken* tok) {
    if (tok->match.empty()) return;
    int32_t node = 0;
    for (unsigned char b : tok->match) {
      auto [it, fresh] = edges_.try_emplace(edge_key(node, b), int32_t(terminal_.size()));
      if (fresh) terminal_.push_back(nullptr);
      node = it->second;
    }
    terminal_[node] = tok;
    first_[static_cast<unsigned char>(tok->match[0])] = true;
    empty_ = false;
  }
  bool empty() const { return empty_; }
  bool may_start(unsigned char b) const { return first_[b]; }
  // The longest token starting at text[pos], or nullptr.
  const AddedToken* longest_at(std::string_view text, size_t pos) const {
    const AddedToken* best = nullptr;
    int32_t node = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      auto it = edges_.find(edge_key(node, static_cast<unsigned char>(text[i])));
      if (it == edges_.end()) break;
      node = it->second;
      if (terminal_[node]) best = terminal_[node];
    }
    return best;
  }

 private:
  static uint64_t edge_key(int32_t node, unsigned char b) { return uint64_t(node) << 8 | b; }
  std::unordered_map<uint64_t, int32_t> edges_;
  std::vector<const AddedToken*> terminal_{nullptr};  // node 0 is the root
  std::array<bool, 256> first_{};
  bool empty_ = true;
};

enum class Prepend { kAlways, kFirst, kNever };

// One pre-tokenizer stage. Split: isolate the matches of `split`. ByteLevel: optional prefix
// space, then (use_regex) the GPT-2 split; its byte mapping is implicit in the byte-level BPE.
// Metaspace: spaces become `metaspace`, which is prepended as `prepend` says; with
// metaspace_split every metaspace starts a new pre-token.
struct PreStep {
  const Regex* split = nullptr;
  bool add_prefix_space = false;
  std::string metaspace;  // empty: not a Metaspace stage
  Prepend prepend = Prepend::kAlways;
  bool metaspace_split = true;
};

// One normalizer of a Sequence, applied in order.
struct NormStep {
  enum Kind { kNfc, kPrepend, kReplace } kind;
  std::string text;         // Prepend: the prefix; Replace: the literal pattern
  std::string replacement;  // Replace only
};

// One decoder of a Sequence, applied in order to the list of token strings.
struct DecStep {
  enum Kind { kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
  std::string from, to;  // Replace: literal pattern and content; Metaspace: from = replacement
  char32_t strip_char = 0;
  size_t strip_start = 0, strip_stop = 0;
  bool drop_first_metaspace = false;  // Metaspace with a prepend scheme other than never
};

// Per-word BPE results, sharded so concurrent encoders rarely share a lock. Bounded: a shard
// that fills up starts over, which keeps memory flat on long runs over varied text.
class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 64;

  bool lookup(std::string_view word, std::vector<int32_t>* out) {
    Shard& sh = shard(word);
    std::lock_guard<std::mutex> lock(sh.mu);
    auto it = sh.map.find(word);
    if (it == sh.map.end()) return false;
    out->insert(out->end(), sh.pool.begin() + it->second.first,
                sh.pool.begin() + it->second.first + it->second.second);
    return true;
  }
  void insert(std::string_view word, const int32_t* ids, size_t n) {
    Shard& sh = shard(word);
    std::lock_guard<std::mutex> lock(sh.mu);
    if (sh.map.size() >= kShardEntries) {
      sh.map.clear();
      sh.pool.clear();
    }
    auto [it, fresh] = sh.map.try_emplace(std::string(word), uint32_t(sh.pool.size()), uint32_t(n));
    if (fresh) sh.pool.insert(sh.pool.end(), ids, ids + n);
  }

 private:
  static constexpr size_t kShards = 16;
  static constexpr size_t kShardEntries = 8192;
  struct Shard {
    std::mutex mu;
    StringMap<std::pair<uint32_t, uint32_t>> map;  // word -> (offset, count) in pool
    std::vector<int32_t> pool;
  };
  Shard& shard(std::string_view w) { return shards_[StringHash{}(w) % kShards]; }
  std::array<Shard, kShards> shards_;
};

const json* find_key(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

bool get_flag(const json& j, const char* key, bool fallback, const std::string& where) {
  const json* v = find_key(j, key);
  if (!v) return fallback;
  if (!v->is_boolean()) throw Error(where + ": '" + key + "' must be true or false");
  return v->get<bool>();
}

std::string type_of(const json& j) {
  const json* t = find_key(j, "type");
  return t && t->is_string() ? t->get<std::string>() : std::string("(no type)");
}

// Flattens nested {"type": "Sequence", <list_key>: [...]} into the plain components.
void flatten(const json& j, const char* list_key, std::vector<const json*>* out) {
  if (j.is_null()) return;
  if (type_of(j) == "Sequence") {
    const json* items = find_key(j, list_key);
    if (items && items->is_array())
      for (const json& item : *items) flatten(item, list_key, out);
    return;
  }
  out->push_back(&j);
}

std::string get_string(const json& j, const char* key, const std::string& where) {
  const json* v = find_key(j, key);
  if (!v || !v->is_string()) throw Error(where + ": '" + key + "' must be a string");
  return v->get<std::string>();
}

// A field that tokenizers reads as one Unicode character.
char32_t get_char(const json& j, const char* key, const std::string& where) {
  std::string s = get_string(j, key, where);
  size_t len = 0;
  char32_t c = s.empty() || !unicode::is_valid_utf8(s) ? 0 : unicode::decode_utf8(s, 0, &len);
  if (s.empty() || len != s.size())
    throw Error(where + ": '" + key + "' must be a single character, got \"" + s + "\"");
  return c;
}

// Metaspace's prepend_scheme, or the older add_prefix_space flag it replaced.
Prepend get_prepend_scheme(const json& j, const std::string& where) {
  Prepend p = Prepend::kAlways;
  const json* v = find_key(j, "prepend_scheme");
  if (v) {
    std::string s = v->is_string() ? v->get<std::string>() : v->dump();
    if (s == "first") {
      p = Prepend::kFirst;
    } else if (s == "never") {
      p = Prepend::kNever;
    } else if (s != "always") {
      throw Error(where + ": 'prepend_scheme' must be always, first or never, got " + s);
    }
  }
  if (!get_flag(j, "add_prefix_space", true, where)) {
    if (v && p != Prepend::kNever)
      throw Error(where + ": add_prefix_space=false contradicts prepend_scheme; drop one of them");
    p = Prepend::kNever;
  }
  return p;
}

size_t get_count(const json& j, const char* key, const std::string& where) {
  const json* v = find_key(j, key);
  if (!v) return 0;
  if (!v->is_number_unsigned()) throw Error(where + ": '" + key + "' must be a count >= 0");
  return v->get<size_t>();
}

// Replaces every non-overlapping occurrence of `from` (not empty), left to right.
std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out.append(to);
  }
  out.append(s, pos);
  return out;
}

}  // namespace

struct Tokenizer::Impl {
  std::string file;              // tokenizer.json, for messages
  StringMap<int32_t> vocab;      // model vocabulary, token text (byte-level characters) -> id
  StringMap<int32_t> raw_vocab;  // the same tokens as raw bytes, for ignore_merges
  StringMap<int32_t> added_by_content;
  std::vector<std::unique_ptr<AddedToken>> added;
  AddedMatcher raw_matcher, normalized_matcher;
  PairMap merges;
  std::array<int32_t, 256> byte_id{};  // vocab id of each byte's character, -1 when absent
  // Character-level symbols (no ByteLevel pre-tokenizer): the vocab id of each one-character
  // token, in a table for the common low code points and a map for the rest.
  static constexpr char32_t kCharTable = 0x3000;
  std::vector<int32_t> char_id_low;
  std::unordered_map<char32_t, int32_t> char_id_high;
  std::array<int32_t, 256> fallback_id{};  // vocab id of "<0xXX>", -1 when absent
  // Known characters that tokens hold inside only after the few listed ones (none: only at
  // the start), for cutting long words into parts BPE can merge independently.
  struct SplitPreds {
    uint8_t n = 0;
    char32_t preds[4] = {};
  };
  std::vector<int32_t> split_index;  // per low code point, into split_sets; -1: never split
  std::vector<SplitPreds> split_sets;
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  bool byte_level = false;  // the pre-tokenizer ends in ByteLevel
  std::vector<NormStep> norm_steps;
  std::vector<std::unique_ptr<Regex>> regexes;
  std::vector<PreStep> steps;
  // Decoding: ByteLevel alone maps through the byte table below; otherwise dec_steps run in
  // order, and with no decoder at all the tokens are joined with spaces.
  bool byte_level_decoder = false;
  bool no_decoder = false;
  std::vector<DecStep> dec_steps;
  std::vector<int32_t> prefix_ids, suffix_ids;  // post-processor template around the text
  int32_t bos = -1, eos = -1;
  int64_t size = 0;
  // Decoding: the bytes of every id (tokens[] mapped back through the byte alphabet).
  std::vector<std::string> tokens;
  std::vector<uint8_t> id_flags;  // kPresent | kSpecial
  std::vector<uint32_t> dec_offset;
  std::string dec_pool;
  mutable WordCache cache;

  static constexpr uint8_t kPresent = 1, kSpecial = 2;

  struct Ctx {
    std::vector<int32_t>* out;
    pcre2_match_data* md;
    std::vector<int32_t> word;  // scratch for one pre-token's BPE
    std::string normalized;     // the normalized current piece, when it differs
  };

  void load_model(const json& model);
  void load_added_tokens(const json& j);
  void load_normalizer(const json& j);
  void load_pre_tokenizer(const json& j);
  void load_decoder(const json& j);
  void load_post_processor(const json& j);
  void build_char_table();
  void build_decode_table();
  void load_special_ids(const fs::path& dir);

  int32_t lookup_vocab(const std::string& tok, const std::string& where) const {
    auto it = vocab.find(tok);
    if (it == vocab.end())
      throw Error(file + ": " + where + ": '" + tok + "' is not in model.vocab");
    return it->second;
  }

  int32_t char_id(char32_t c) const {
    if (c < kCharTable) return char_id_low[c];
    auto it = char_id_high.find(c);
    return it == char_id_high.end() ? -1 : it->second;
  }

  bool normalize(std::string_view in, std::string* out) const;
  void encode(std::string_view text, Ctx& ctx) const;
  // on_text(piece, offset of the piece in text) for the text between added tokens.
  void split_added(std::string_view text, const AddedMatcher& m, Ctx& ctx,
                   const std::function<void(std::string_view, size_t)>& on_text) const;
  // at_origin: the piece starts at offset 0 of the input (Metaspace's "first" scheme).
  void pre_tokenize(size_t step, std::string_view piece, bool at_origin, Ctx& ctx) const;
  std::string decode_chain(std::vector<std::string> tokens) const;
  void bpe(std::string_view word, Ctx& ctx) const;
  void merge_word(std::string_view word, Ctx& ctx) const;
  template <class F>
  void independent_parts(std::string_view word, F&& fn) const;
  void merge_small(std::string_view word, std::vector<int32_t>* out) const;
  void merge_large(std::string_view word, std::vector<int32_t>* out) const;
  void initial_symbols(std::string_view word, std::vector<int32_t>* out) const;
};

void Tokenizer::Impl::load_model(const json& model) {
  if (!model.is_object()) throw Error(file + ": 'model' must be an object");
  const json* type = find_key(model, "type");
  // Files written before tokenizers tagged its models carry no type; theirs is BPE when merges
  // are present.
  std::string t = type ? type_of(model) : (find_key(model, "merges") ? "BPE" : "(no type)");
  if (t != "BPE") unsupported(file, "model.type '" + t + "'");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (const json* v = find_key(model, key);
        v && !(v->is_string() && v->get<std::string>().empty()))
      unsupported(file, std::string("model.") + key + " (word-suffix BPE, as in BERT-era models)");
  if (const json* d = find_key(model, "dropout"); d && (!d->is_number() || d->get<double>() != 0))
    unsupported(file, "model.dropout (BPE dropout randomizes encoding; set it to null)");
  ignore_merges = get_flag(model, "ignore_merges", false, file + ": model");
  fuse_unk = get_flag(model, "fuse_unk", false, file + ": model");
  byte_fallback = get_flag(model, "byte_fallback", false, file + ": model");

  const json* v = find_key(model, "vocab");
  if (!v || !v->is_object()) throw Error(file + ": model.vocab must be an object of token -> id");
  vocab.reserve(v->size());
  for (auto it = v->begin(); it != v->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > kMaxTokenId)
      throw Error(file + ": model.vocab['" + it.key() + "'] must be an integer id from 0 to " +
                  std::to_string(kMaxTokenId));
    int32_t id = it.value().get<int32_t>();
    vocab[it.key()] = id;
    size = std::max<int64_t>(size, int64_t(id) + 1);
    // The raw bytes of the token, when every character is in the byte-level alphabet.
    std::string raw;
    bool byte_level = true;
    const std::string& s = it.key();
    for (size_t i = 0; i < s.size() && byte_level;) {
      size_t len;
      int b = unicode::char_to_byte(unicode::decode_utf8(s, i, &len));
      if (b < 0) byte_level = false;
      raw.push_back(char(b));
      i += len;
    }
    if (byte_level && !raw.empty()) raw_vocab.emplace(std::move(raw), id);
  }
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    unicode::append_utf8(unicode::byte_to_char(uint8_t(b)), &ch);
    auto it = vocab.find(ch);
    byte_id[b] = it == vocab.end() ? -1 : it->second;
    static constexpr char kHex[] = "0123456789ABCDEF";
    const char code[] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>', '\0'};
    auto jt = vocab.find(std::string_view(code, 6));
    fallback_id[b] = jt == vocab.end() ? -1 : jt->second;
  }
  if (const json* u = find_key(model, "unk_token")) {
    if (!u->is_string()) throw Error(file + ": model.unk_token must be a string");
    unk_id = lookup_vocab(u->get<std::string>(), "model.unk_token");
  }

  const json* m = find_key(model, "merges");
  if (!m || !m->is_array()) throw Error(file + ": model.merges must be a list");
  merges.reserve(m->size());
  std::string left, right;
  for (size_t r = 0; r < m->size(); ++r) {
    const json& e = (*m)[r];
    std::string where = "model.merges[" + std::to_string(r) + "]";
    if (e.is_string()) {
      // Legacy form "a b": byte-level tokens never contain a space (it maps to U+0120).
      const std::string& s = e.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        throw Error(file + ": " + where + " '" + s + "' must be two tokens separated by a space");
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      left = e[0].get<std::string>();
      right = e[1].get<std::string>();
    } else {
      throw Error(file + ": " + where + " must be \"a b\" or [\"a\", \"b\"], got " + e.dump());
    }
    int32_t a = lookup_vocab(left, where);
    int32_t b = lookup_vocab(right, where);
    int32_t merged = lookup_vocab(left + right, where + " result");
    merges.insert(a, b, int32_t(r), merged);
  }
}

void Tokenizer::Impl::load_added_tokens(const json& j) {
  if (j.is_null()) return;
  if (!j.is_array()) throw Error(file + ": 'added_tokens' must be a list");
  for (size_t i = 0; i < j.size(); ++i) {
    const json& e = j[i];
    std::string where = file + ": added_tokens[" + std::to_string(i) + "]";
    const json* id = find_key(e, "id");
    const json* content = find_key(e, "content");
    if (!id || !id->is_number_integer() || id->get<int64_t>() < 0 ||
        id->get<int64_t>() > kMaxTokenId)
      throw Error(where + ": 'id' must be an integer from 0 to " + std::to_string(kMaxTokenId));
    if (!content || !content->is_string()) throw Error(where + ": 'content' must be a string");
    auto t = std::make_unique<AddedToken>();
    t->content = content->get<std::string>();
    t->id = id->get<int32_t>();
    t->special = get_flag(e, "special", false, where);
    t->single_word = get_flag(e, "single_word", false, where);
    t->lstrip = get_flag(e, "lstrip", false, where);
    t->rstrip = get_flag(e, "rstrip", false, where);
    t->normalized = get_flag(e, "normalized", !t->special, where);
    if (!unicode::is_valid_utf8(t->content)) throw Error(where + ": 'content' is not valid UTF-8");
    size = std::max<int64_t>(size, int64_t(t->id) + 1);
    if (t->content.empty()) continue;
    added_by_content[t->content] = t->id;
    added.push_back(std::move(t));
  }
}

void Tokenizer::Impl::load_normalizer(const json& j) {
  std::vector<const json*> parts;
  flatten(j, "normalizers", &parts);
  for (const json* p : parts) {
    std::string t = type_of(*p);
    std::string where = file + ": normalizer " + t;
    if (t == "NFC") {
      norm_steps.push_back(NormStep{NormStep::kNfc, "", ""});
    } else if (t == "Prepend") {
      norm_steps.push_back(NormStep{NormStep::kPrepend, get_string(*p, "prepend", where), ""});
    } else if (t == "Replace") {
      const json* pat = find_key(*p, "pattern");
      const json* lit = pat ? find_key(*pat, "String") : nullptr;
      if (pat && find_key(*pat, "Regex"))
        unsupported(file, "normalizer Replace with a Regex pattern (String patterns are)");
      if (!lit || !lit->is_string() || lit->get<std::string>().empty())
        throw Error(where + ": 'pattern' must be {\"String\": \"<non-empty text>\"}");
      norm_steps.push_back(
          NormStep{NormStep::kReplace, lit->get<std::string>(), get_string(*p, "content", where)});
    } else {
      unsupported(file, "normalizer '" + t + "' (ftune applies NFC, Prepend and Replace)");
    }
  }
}

void Tokenizer::Impl::load_pre_tokenizer(const json& j) {
  std::vector<const json*> parts;
  flatten(j, "pretokenizers", &parts);
  const Regex* gpt2 = nullptr;
  bool metaspace = false;
  for (const json* p : parts) {
    std::string t = type_of(*p);
    std::string where = file + ": pre_tokenizer " + t;
    if (byte_level) unsupported(file, "pre_tokenizer '" + t + "' after ByteLevel");
    if (t == "ByteLevel") {
      if (metaspace) unsupported(file, "pre_tokenizer ByteLevel after Metaspace");
      byte_level = true;
      PreStep st;
      st.add_prefix_space = get_flag(*p, "add_prefix_space", true, where);
      if (get_flag(*p, "use_regex", true, where)) {
        if (!gpt2) {
          regexes.push_back(std::make_unique<Regex>(kGpt2Pattern, false, where));
          gpt2 = regexes.back().get();
        }
        st.split = gpt2;
      }
      steps.push_back(st);
    } else if (t == "Split") {
      const json* pat = find_key(*p, "pattern");
      const json* rx = pat ? find_key(*pat, "Regex") : nullptr;
      const json* lit = pat ? find_key(*pat, "String") : nullptr;
      if (!(rx && rx->is_string()) && !(lit && lit->is_string()))
        throw Error(where + ": 'pattern' must be {\"Regex\": ...} or {\"String\": ...}");
      const json* behavior = find_key(*p, "behavior");
      std::string b = behavior && behavior->is_string() ? behavior->get<std::string>() : "?";
      if (b != "Isolated") unsupported(file, "pre_tokenizer Split with behavior '" + b + "'");
      if (get_flag(*p, "invert", false, where))
        unsupported(file, "pre_tokenizer Split with invert=true");
      regexes.push_back(std::make_unique<Regex>(
          rx ? rx->get<std::string>() : lit->get<std::string>(), rx == nullptr, where));
      PreStep st;
      st.split = regexes.back().get();
      steps.push_back(st);
    } else if (t == "Metaspace") {
      metaspace = true;
      PreStep st;
      unicode::append_utf8(get_char(*p, "replacement", where), &st.metaspace);
      st.prepend = get_prepend_scheme(*p, where);
      st.metaspace_split = get_flag(*p, "split", true, where);
      steps.push_back(st);
    } else {
      unsupported(file, "pre_tokenizer '" + t + "'");
    }
  }
  if (!byte_level) {
    raw_vocab.clear();  // only byte-level BPE looks words up by their raw bytes
    build_char_table();
  }
}

void Tokenizer::Impl::build_char_table() {
  char_id_low.assign(kCharTable, -1);
  // Which characters may precede each character inside a token; only short lists are kept.
  constexpr size_t kMaxPreds = 4;
  std::unordered_map<char32_t, std::vector<char32_t>> preds;
  std::vector<uint8_t> wide(kCharTable, 0);
  for (const auto& [tok, id] : vocab) {
    if (tok.empty()) continue;
    size_t len = 0;
    char32_t c = unicode::decode_utf8(tok, 0, &len);
    if (len == tok.size()) {
      if (c < kCharTable)
        char_id_low[c] = id;
      else
        char_id_high[c] = id;
      continue;
    }
    for (size_t i = len; i < tok.size(); i += len) {
      char32_t prev = c;
      c = unicode::decode_utf8(tok, i, &len);
      if (c >= kCharTable || wide[c]) continue;
      std::vector<char32_t>& p = preds[c];
      if (std::find(p.begin(), p.end(), prev) != p.end()) continue;
      p.push_back(prev);
      if (p.size() > kMaxPreds) {
        wide[c] = 1;
        preds.erase(c);
      }
    }
  }
  // Characters that no token has inside (or only after a few others) can start independent
  // parts of a long word; the metaspace of SentencePiece vocabularies is the one that matters.
  split_index.assign(kCharTable, -1);
  split_sets.clear();
  for (char32_t c = 0; c < kCharTable; ++c) {
    if (wide[c] || char_id_low[c] < 0) continue;
    SplitPreds sp;
    if (auto it = preds.find(c); it != preds.end()) {
      std::copy(it->second.begin(), it->second.end(), sp.preds);
      sp.n = uint8_t(it->second.size());
    }
    split_index[c] = int32_t(split_sets.size());
    split_sets.push_back(sp);
  }
}

// Calls fn on consecutive parts of a word that BPE can merge independently: a boundary between
// known characters d and c where no vocabulary token contains "dc" is never merged across
// (every merge result is a vocabulary token), so the merges on either side do not interact.
template <class F>
void Tokenizer::Impl::independent_parts(std::string_view word, F&& fn) const {
  size_t begin = 0;
  char32_t prev = 0;
  for (size_t i = 0; i < word.size();) {
    size_t len = 1;
    unsigned char b = static_cast<unsigned char>(word[i]);
    char32_t c = b < 0x80 ? b : unicode::decode_utf8(word, i, &len);
    if (i > 0 && c < kCharTable && split_index[c] >= 0 && char_id(prev) >= 0) {
      const SplitPreds& sp = split_sets[split_index[c]];
      if (std::find(sp.preds, sp.preds + sp.n, prev) == sp.preds + sp.n) {
        fn(word.substr(begin, i - begin));
        begin = i;
      }
    }
    prev = c;
    i += len;
  }
  fn(word.substr(begin));
}

void Tokenizer::Impl::load_decoder(const json& j) {
  std::vector<const json*> parts;
  flatten(j, "decoders", &parts);
  if (parts.empty()) {
    if (byte_level) unsupported(file, "decoder null (byte-level BPE needs the ByteLevel decoder)");
    no_decoder = true;
    return;
  }
  byte_level_decoder = std::all_of(parts.begin(), parts.end(),
                                   [](const json* p) { return type_of(*p) == "ByteLevel"; });
  if (byte_level_decoder) return;
  for (const json* p : parts) {
    std::string t = type_of(*p);
    std::string where = file + ": decoder " + t;
    DecStep st{};
    if (t == "Replace") {
      const json* pat = find_key(*p, "pattern");
      const json* lit = pat ? find_key(*pat, "String") : nullptr;
      if (pat && find_key(*pat, "Regex"))
        unsupported(file, "decoder Replace with a Regex pattern (String patterns are)");
      if (!lit || !lit->is_string() || lit->get<std::string>().empty())
        throw Error(where + ": 'pattern' must be {\"String\": \"<non-empty text>\"}");
      st.kind = DecStep::kReplace;
      st.from = lit->get<std::string>();
      st.to = get_string(*p, "content", where);
    } else if (t == "ByteFallback") {
      st.kind = DecStep::kByteFallback;
    } else if (t == "Fuse") {
      st.kind = DecStep::kFuse;
    } else if (t == "Strip") {
      st.kind = DecStep::kStrip;
      st.strip_char = get_char(*p, "content", where);
      st.strip_start = get_count(*p, "start", where);
      st.strip_stop = get_count(*p, "stop", where);
    } else if (t == "Metaspace") {
      st.kind = DecStep::kMetaspace;
      unicode::append_utf8(get_char(*p, "replacement", where), &st.from);
      st.drop_first_metaspace = get_prepend_scheme(*p, where) != Prepend::kNever;
    } else if (t == "ByteLevel") {
      unsupported(file, "decoder ByteLevel combined with other decoders");
    } else {
      unsupported(file, "decoder '" + t + "'");
    }
    dec_steps.push_back(std::move(st));
  }
}

void Tokenizer::Impl::load_post_processor(const json& j) {
  std::vector<const json*> parts;
  flatten(j, "processors", &parts);
  for (const json* p : parts) {
    std::string t = type_of(*p);
    if (t == "ByteLevel") continue;  // only adjusts offsets
    if (t != "TemplateProcessing") unsupported(file, "post_processor '" + t + "'");
    std::string where = file + ": post_processor TemplateProcessing";
    const json* single = find_key(*p, "single");
    const json* specials = find_key(*p, "special_tokens");
    if (!single || !single->is_array()) throw Error(where + ": 'single' must be a list");
    bool seen_text = false;
    for (const json& item : *single) {
      if (const json* seq = find_key(item, "Sequence")) {
        const json* id = find_key(*seq, "id");
        if (!id || *id != "A") throw Error(where + ": 'single' may only use sequence A");
        seen_text = true;
        continue;
      }
      const json* st = find_key(item, "SpecialToken");
      const json* name = st ? find_key(*st, "id") : nullptr;
      if (!name || !name->is_string())
        throw Error(where + ": 'single' entries must be Sequence or SpecialToken, got " +
                    item.dump());
      const json* entry =
          specials ? find_key(*specials, name->get<std::string>().c_str()) : nullptr;
      const json* ids = entry ? find_key(*entry, "ids") : nullptr;
      if (!ids || !ids->is_array())
        throw Error(where + ": special_tokens has no ids for '" + name->get<std::string>() + "'");
      for (const json& id : *ids) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId)
          throw Error(where + ": special_tokens['" + name->get<std::string>() + "'] has a bad id");
        (seen_text ? suffix_ids : prefix_ids).push_back(id.get<int32_t>());
      }
    }
  }
}

void Tokenizer::Impl::build_decode_table() {
  tokens.assign(size_t(size), std::string());
  id_flags.assign(size_t(size), 0);
  for (const auto& [tok, id] : vocab) {
    tokens[id] = tok;
    id_flags[id] = kPresent;
  }
  // Added tokens win over the model vocabulary for the same id, as in tokenizers, which also
  // reports a normalized added token by its normalized text.
  StringMap<bool> special_text;
  for (const auto& t : added) {
    tokens[t->id] = t->match;
    id_flags[t->id] = kPresent;
    if (t->special) special_text[t->content] = true;
  }
  // skip_special drops a token whose text is a special token's content, as tokenizers decides.
  for (size_t id = 0; id < size_t(size); ++id)
    if ((id_flags[id] & kPresent) && special_text.count(tokens[id])) id_flags[id] |= kSpecial;
  if (!byte_level_decoder) return;
  // Every token, added ones included, goes through the ByteLevel decoder: characters of the
  // byte alphabet become their bytes; a token with any other character keeps its own text.
  dec_offset.assign(size_t(size) + 1, 0);
  dec_pool.clear();
  for (size_t id = 0; id < size_t(size); ++id) {
    dec_offset[id] = uint32_t(dec_pool.size());
    const std::string& s = tokens[id];
    size_t start = dec_pool.size();
    bool mapped = true;
    for (size_t i = 0; i < s.size();) {
      size_t len;
      int b = unicode::char_to_byte(unicode::decode_utf8(s, i, &len));
      if (b < 0) {
        mapped = false;
        break;
      }
      dec_pool.push_back(char(b));
      i += len;
    }
    if (!mapped) {
      dec_pool.resize(start);
      dec_pool += s;
    }
  }
  dec_offset[size_t(size)] = uint32_t(dec_pool.size());
}

void Tokenizer::Impl::load_special_ids(const fs::path& dir) {
  auto read_json = [](const fs::path& p) {
    try {
      return parse_json_bounded(read_file(p.string()), p.string());
    } catch (const json::exception& e) {  // parse_error, or out_of_range for 1e999
      throw Error(p.string() + ": not valid JSON (" + e.what() + ")");
    }
  };
  auto token_id = [&](const json& cfg, const char* key, const fs::path& p) -> int32_t {
    const json* v = find_key(cfg, key);
    if (v && v->is_object()) v = find_key(*v, "content");
    if (!v) return -1;
    if (!v->is_string())
      throw Error(p.string() + ": '" + key + "' must be a string or {\"content\": ...}");
    std::string tok = v->get<std::string>();
    auto it = added_by_content.find(tok);
    if (it != added_by_content.end()) return it->second;
    auto jt = vocab.find(tok);
    if (jt != vocab.end()) return jt->second;
    throw Error(p.string() + ": " + key + " '" + tok + "' is not a token of " + file);
  };
  fs::path tc = dir / "tokenizer_config.json";
  if (fs::exists(tc)) {
    json cfg = read_json(tc);
    bos = token_id(cfg, "bos_token", tc);
    eos = token_id(cfg, "eos_token", tc);
  }
  fs::path mc = dir / "config.json";
  if ((bos < 0 || eos < 0) && fs::exists(mc)) {
    json cfg = read_json(mc);
    auto id_from = [&](const char* key) -> int32_t {
      const json* v = find_key(cfg, key);
      // eos_token_id may be a list (Llama 3 instruct); its first entry is the document end.
      if (v && v->is_array() && !v->empty()) v = &(*v)[0];
      if (!v) return -1;
      if (!v->is_number_integer() || v->get<int64_t>() < 0 || v->get<int64_t>() >= size)
        throw Error(mc.string() + ": '" + key + "' must be a token id below the vocabulary size " +
                    std::to_string(size) + ", got " + v->dump());
      return v->get<int32_t>();
    };
    if (bos < 0) bos = id_from("bos_token_id");
    if (eos < 0) eos = id_from("eos_token_id");
  }
}

// ---- encoding ----

// Runs the normalizer chain. Returns false, leaving *out alone, when nothing changes (the usual
// case for NFC, which then costs no copy); otherwise *out holds the normalized text.
bool Tokenizer::Impl::normalize(std::string_view in, std::string* out) const {
  std::string cur, next;
  bool changed = false;
  for (const NormStep& st : norm_steps) {
    std::string_view src = changed ? std::string_view(cur) : in;
    switch (st.kind) {
      case NormStep::kNfc:
        if (!unicode::nfc_normalize(src, &next)) continue;
        break;
      case NormStep::kPrepend:
        if (src.empty()) continue;  // tokenizers prepends to non-empty text only
        next.assign(st.text);
        next.append(src);
        break;
      case NormStep::kReplace:
        if (src.find(st.text) == std::string_view::npos) continue;
        next = replace_all(src, st.text, st.replacement);
        break;
    }
    cur.swap(next);
    changed = true;
  }
  if (changed) out->swap(cur);
  return changed;
}

void Tokenizer::Impl::encode(std::string_view text, Ctx& ctx) const {
  // Pass 1: non-normalized added tokens on the raw text; pass 2 on each normalized remainder.
  split_added(text, raw_matcher, ctx, [&](std::string_view piece, size_t raw_offset) {
    std::string_view norm = piece;
    if (!norm_steps.empty() && normalize(piece, &ctx.normalized)) norm = ctx.normalized;
    split_added(norm, normalized_matcher, ctx, [&](std::string_view rest, size_t offset) {
      pre_tokenize(0, rest, raw_offset == 0 && offset == 0, ctx);
    });
  });
}

void Tokenizer::Impl::split_added(
    std::string_view text, const AddedMatcher& m, Ctx& ctx,
    const std::function<void(std::string_view, size_t)>& on_text) const {
  if (text.empty()) return;
  if (m.empty()) {
    on_text(text, 0);
    return;
  }
  auto char_before = [&](size_t end, size_t* start) {  // the code point ending at text[end)
    size_t i = end - 1;
    while (i > 0 && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) --i;
    *start = i;
    size_t len;
    return unicode::decode_utf8(text, i, &len);
  };
  size_t start_offset = 0;
  for (size_t pos = 0; pos < text.size();) {
    if (!m.may_start(static_cast<unsigned char>(text[pos]))) {
      ++pos;
      continue;
    }
    const AddedToken* tok = m.longest_at(text, pos);
    if (!tok) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + tok->match.size();
    pos = stop;
    if (tok->single_word) {
      size_t len;
      bool word_before = start > 0 && unicode::is_word_char(char_before(start, &len));
      bool word_after =
          stop < text.size() && unicode::is_word_char(unicode::decode_utf8(text, stop, &len));
      if (word_before || word_after) continue;
    }
    if (tok->lstrip) {
      size_t s = start, before;
      while (s > 0 && unicode::is_white_space(char_before(s, &before))) s = before;
      start = std::max(s, start_offset);  // spaces an earlier token took stay with it
    }
    if (tok->rstrip) {
      size_t len;
      while (stop < text.size() && unicode::is_white_space(unicode::decode_utf8(text, stop, &len)))
        stop += len;
      pos = stop;
    }
    if (start_offset < start)
      on_text(text.substr(start_offset, start - start_offset), start_offset);
    ctx.out->push_back(tok->id);
    start_offset = stop;
  }
  if (start_offset < text.size()) on_text(text.substr(start_offset), start_offset);
}

void Tokenizer::Impl::pre_tokenize(size_t step, std::string_view piece, bool at_origin,
                                   Ctx& ctx) const {
  if (piece.empty()) return;
  if (step == steps.size()) {
    bpe(piece, ctx);
    return;
  }
  const PreStep& st = steps[step];
  if (!st.metaspace.empty()) {
    const std::string& ms = st.metaspace;
    std::string text = replace_all(piece, " ", ms);
    bool prepend = st.prepend == Prepend::kAlways || (st.prepend == Prepend::kFirst && at_origin);
    if (prepend && text.compare(0, ms.size(), ms) != 0) text.insert(0, ms);
    if (!st.metaspace_split) {
      pre_tokenize(step + 1, text, at_origin, ctx);
      return;
    }
    // Every metaspace starts a pre-token (tokenizers' MergedWithNext split).
    std::string_view v = text;
    size_t begin = 0;
    for (size_t hit = v.find(ms, 1); hit != std::string_view::npos; hit = v.find(ms, hit + 1)) {
      pre_tokenize(step + 1, v.substr(begin, hit - begin), at_origin && begin == 0, ctx);
      begin = hit;
    }
    pre_tokenize(step + 1, v.substr(begin), at_origin && begin == 0, ctx);
    return;
  }
  std::string prefixed;
  if (st.add_prefix_space && piece.front() != ' ') {
    prefixed.reserve(piece.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(piece);
    piece = prefixed;
  }
  if (!st.split) {
    pre_tokenize(step + 1, piece, at_origin, ctx);
    return;
  }
  size_t offset = 0;
  st.split->for_each_match(piece, ctx.md, [&](size_t s, size_t e) {
    if (offset < s)
      pre_tokenize(step + 1, piece.substr(offset, s - offset), at_origin && offset == 0, ctx);
    if (s < e) pre_tokenize(step + 1, piece.substr(s, e - s), at_origin && s == 0, ctx);
    offset = e;
  });
  if (offset < piece.size())
    pre_tokenize(step + 1, piece.substr(offset), at_origin && offset == 0, ctx);
}

// The symbols BPE starts from: one per byte (byte-level) or per character. A symbol missing
// from the vocabulary becomes its bytes' <0xXX> tokens under byte_fallback when all exist, else
// unk when there is one (consecutive ones fused if asked), else nothing. As in tokenizers an unk
// is held back until the next known symbol or the end, so byte tokens can overtake it.
void Tokenizer::Impl::initial_symbols(std::string_view word, std::vector<int32_t>* out) const {
  out->clear();
  bool pending_unk = false;
  auto known = [&](int32_t id) {
    if (pending_unk) out->push_back(unk_id);
    pending_unk = false;
    out->push_back(id);
  };
  auto unknown = [&](std::string_view bytes) {
    if (byte_fallback && std::all_of(bytes.begin(), bytes.end(), [&](char b) {
          return fallback_id[static_cast<unsigned char>(b)] >= 0;
        })) {
      for (char b : bytes) out->push_back(fallback_id[static_cast<unsigned char>(b)]);
      return;
    }
    if (unk_id < 0) return;
    if (pending_unk && !fuse_unk) out->push_back(unk_id);
    pending_unk = true;
  };
  if (byte_level) {
    for (unsigned char b : word) {
      if (byte_id[b] >= 0) {
        known(byte_id[b]);
      } else {
        std::string ch;  // the byte's character is what tokenizers would spell out in bytes
        unicode::append_utf8(unicode::byte_to_char(b), &ch);
        unknown(ch);
      }
    }
  } else {
    for (size_t i = 0; i < word.size();) {
      size_t len = 1;
      unsigned char b = static_cast<unsigned char>(word[i]);
      int32_t id = b < 0x80 ? char_id_low[b] : char_id(unicode::decode_utf8(word, i, &len));
      if (id >= 0)
        known(id);
      else
        unknown(word.substr(i, len));
      i += len;
    }
  }
  if (pending_unk) out->push_back(unk_id);
}

void Tokenizer::Impl::bpe(std::string_view word, Ctx& ctx) const {
  if (ignore_merges) {
    const StringMap<int32_t>& whole = byte_level ? raw_vocab : vocab;
    auto it = whole.find(word);
    if (it != whole.end()) {
      ctx.out->push_back(it->second);
      return;
    }
  }
  // Whole lines reach BPE as one word in the Llama 2 layout (no pre-tokenizer); in parts they
  // fit the word cache and the short-word merge. Only whole pre-tokens skip merges above.
  if (!byte_level && word.size() > WordCache::kMaxWordBytes) {
    independent_parts(word, [&](std::string_view part) { merge_word(part, ctx); });
    return;
  }
  merge_word(word, ctx);
}

// BPE merges of one word (or independent part), through the word cache.
void Tokenizer::Impl::merge_word(std::string_view word, Ctx& ctx) const {
  if (word.size() == 1) {
    initial_symbols(word, &ctx.word);
    ctx.out->insert(ctx.out->end(), ctx.word.begin(), ctx.word.end());
    return;
  }
  const bool cacheable = word.size() <= WordCache::kMaxWordBytes;
  if (cacheable && cache.lookup(word, ctx.out)) return;
  if (word.size() <= 48)
    merge_small(word, &ctx.word);
  else
    merge_large(word, &ctx.word);
  if (cacheable) cache.insert(word, ctx.word.data(), ctx.word.size());
  ctx.out->insert(ctx.out->end(), ctx.word.begin(), ctx.word.end());
}

// Short words: repeatedly merge the lowest-ranked adjacent pair (leftmost on ties). Quadratic,
// but on a handful of symbols in registers it beats any heap.
void Tokenizer::Impl::merge_small(std::string_view word, std::vector<int32_t>* out) const {
  initial_symbols(word, out);
  int32_t* ids = out->data();
  size_t n = out->size();
  if (n < 2) return;
  int32_t rank[64], merged[64];
  auto look = [&](size_t i) {
    const PairMap::Slot* s = merges.find(ids[i], ids[i + 1]);
    rank[i] = s ? s->rank : INT32_MAX;
    merged[i] = s ? s->id : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) look(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i)
      if (rank[i] < rank[best]) best = i;
    if (rank[best] == INT32_MAX) break;
    ids[best] = merged[best];
    for (size_t i = best + 1; i + 1 < n; ++i) ids[i] = ids[i + 1];
    for (size_t i = best + 1; i + 2 < n; ++i) {
      rank[i] = rank[i + 1];
      merged[i] = merged[i + 1];
    }
    --n;
    if (best > 0) look(best - 1);
    if (best + 1 < n) look(best);
  }
  out->resize(n);
}

// Long words (digit runs, CJK runs, whitespace): a linked list of symbols and a heap of
// candidate merges ordered by (rank, position). Stale entries are skipped when the ids at
// their position no longer match.
void Tokenizer::Impl::merge_large(std::string_view word, std::vector<int32_t>* out) const {
  initial_symbols(word, out);
  const int32_t n = int32_t(out->size());
  if (n < 2) return;
  std::vector<int32_t>& ids = *out;
  std::vector<int32_t> prev(n), next(n);
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    int32_t rank, pos, left, right, merged;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int32_t i) {
    if (i < 0 || next[i] < 0) return;
    if (const PairMap::Slot* s = merges.find(ids[i], ids[next[i]]))
      heap.push(Cand{s->rank, i, ids[i], ids[next[i]], s->id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  std::vector<bool> alive(n, true);
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    int32_t i = c.pos;
    if (!alive[i] || next[i] < 0 || ids[i] != c.left || ids[next[i]] != c.right) continue;
    int32_t j = next[i];
    ids[i] = c.merged;
    alive[j] = false;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    push(prev[i]);
    push(i);
  }
  size_t w = 0;
  for (int32_t i = 0; i >= 0 && i < n; i = next[i]) ids[w++] = ids[i];
  out->resize(w);
}

// ---- decoding ----

namespace {

// <0xXX> -> the byte, as tokenizers' ByteFallback decoder reads it (either case of hex digit).
int byte_token_value(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// The characters of valid UTF-8 text.
std::vector<std::string_view> characters(std::string_view s) {
  std::vector<std::string_view> out;
  for (size_t i = 0; i < s.size();) {
    size_t len;
    unicode::decode_utf8(s, i, &len);
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

}  // namespace

std::string Tokenizer::Impl::decode_chain(std::vector<std::string> tokens) const {
  if (no_decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const DecStep& st : dec_steps) {
    std::vector<std::string> next;
    next.reserve(tokens.size());
    switch (st.kind) {
      case DecStep::kReplace:
        for (auto& t : tokens) t = replace_all(t, st.from, st.to);
        continue;
      case DecStep::kByteFallback: {
        // Runs of byte tokens become their text when it is valid UTF-8, else one U+FFFD per token.
        std::string bytes;
        size_t run = 0;
        auto flush = [&] {
          if (run == 0) return;
          if (unicode::is_valid_utf8(bytes)) {
            next.push_back(bytes);
          } else {
            for (size_t k = 0; k < run; ++k) next.emplace_back("\xEF\xBF\xBD");
          }
          bytes.clear();
          run = 0;
        };
        for (auto& t : tokens) {
          int b = byte_token_value(t);
          if (b >= 0) {
            bytes.push_back(char(b));
            ++run;
          } else {
            flush();
            next.push_back(std::move(t));
          }
        }
        flush();
        break;
      }
      case DecStep::kFuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        next.push_back(std::move(all));
        break;
      }
      case DecStep::kStrip:
        for (auto& t : tokens) {
          std::vector<std::string_view> chars = characters(t);
          auto is_strip = [&](std::string_view c) {
            size_t len;
            return unicode::decode_utf8(c, 0, &len) == st.strip_char;
          };
          size_t begin = 0, end = chars.size();
          while (begin < std::min(st.strip_start, chars.size()) && is_strip(chars[begin])) ++begin;
          while (end > begin && chars.size() - end < st.strip_stop && is_strip(chars[end - 1]))
            --end;
          std::string s;
          for (size_t k = begin; k < end; ++k) s.append(chars[k]);
          next.push_back(std::move(s));
        }
        break;
      case DecStep::kMetaspace:
        // The first token loses its metaspaces (the prepended one), the others turn them to spaces.
        for (size_t i = 0; i < tokens.size(); ++i)
          next.push_back(
              replace_all(tokens[i], st.from, i == 0 && st.drop_first_metaspace ? "" : " "));
        break;
    }
    tokens.swap(next);
  }
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load(const std::string& path) {
  fs::path p(path);
  std::error_code ec;
  fs::path file = fs::is_directory(p, ec) ? p / "tokenizer.json" : p;
  if (!fs::exists(file, ec)) {
    throw Error(file.string() +
                ": not found; point model.path at a Hugging Face model directory "
                "holding tokenizer.json, or at the tokenizer.json file itself");
  }
  auto impl = std::make_unique<Impl>();
  impl->file = file.string();
  json j;
  try {
    j = parse_json_bounded(read_file(impl->file), impl->file);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for 1e999
    throw Error(impl->file + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw Error(impl->file + ": expected a JSON object");
  try {
    const json* model = find_key(j, "model");
    if (!model) throw Error(impl->file + ": missing 'model'");
    impl->load_model(*model);
    impl->load_added_tokens(j.value("added_tokens", json()));
    impl->load_normalizer(j.value("normalizer", json()));
    impl->load_pre_tokenizer(j.value("pre_tokenizer", json()));
    impl->load_decoder(j.value("decoder", json()));
    impl->load_post_processor(j.value("post_processor", json()));
  } catch (const json::exception& e) {
    throw Error(impl->file + ": unexpected structure (" + e.what() + ")");
  }
  for (const auto& t : impl->added) {
    // Normalized added tokens are looked for in normalized text, so match their normalized form.
    t->match = t->content;
    if (t->normalized) impl->normalize(t->content, &t->match);
    (t->normalized ? impl->normalized_matcher : impl->raw_matcher).add(t.get());
  }
  for (int32_t id : impl->prefix_ids) impl->size = std::max<int64_t>(impl->size, int64_t(id) + 1);
  for (int32_t id : impl->suffix_ids) impl->size = std::max<int64_t>(impl->size, int64_t(id) + 1);
  impl->build_decode_table();
  impl->load_special_ids(file.has_parent_path() ? file.parent_path() : fs::path("."));
  Tokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  FTUNE_CHECK(impl_, "Tokenizer used before Tokenizer::load");
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 8);
  if (add_special) out = impl_->prefix_ids;
  // Rust strings are valid UTF-8 by construction; raw bytes here may not be. Repairing them the
  // way Python decodes with errors="replace" keeps both tools in step and PCRE2 safe.
  std::string repaired;
  if (!unicode::is_valid_utf8(text)) {
    repaired = unicode::repair_utf8(text);
    text = repaired;
  }
  MatchData md;
  Impl::Ctx ctx{&out, md.md, {}, {}};
  impl_->encode(text, ctx);
  if (add_special) out.insert(out.end(), impl_->suffix_ids.begin(), impl_->suffix_ids.end());
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  FTUNE_CHECK(impl_, "Tokenizer used before Tokenizer::load");
  const Impl& m = *impl_;
  // Ids outside the vocabulary are skipped, as tokenizers does.
  auto keep = [&](int32_t id) {
    if (id < 0 || id >= m.size) return false;
    uint8_t f = m.id_flags[id];
    return (f & Impl::kPresent) && !(skip_special && (f & Impl::kSpecial));
  };
  if (!m.byte_level_decoder) {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids)
      if (keep(id)) tokens.push_back(m.tokens[id]);
    return m.decode_chain(std::move(tokens));
  }
  // Byte sequences that do not form valid UTF-8 on their own (a token sequence cut
  // mid-character) are kept as they are.
  std::string out;
  for (int32_t id : ids)
    if (keep(id)) out.append(m.dec_pool, m.dec_offset[id], m.dec_offset[id + 1] - m.dec_offset[id]);
  return out;
}

std::optional<int32_t> Tokenizer::token_to_id(const std::string& token) const {
  FTUNE_CHECK(impl_, "Tokenizer used before Tokenizer::load");
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end())
    return it->second;
  if (auto it = impl_->vocab.find(token); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  FTUNE_CHECK(impl_, "Tokenizer used before Tokenizer::load");
  if (id < 0 || id >= impl_->size || !(impl_->id_flags[id] & Impl::kPresent))
    throw Error("token id " + std::to_string(id) + " is not in the vocabulary of " + impl_->file +
                " (size " + std::to_string(impl_->size) + ")");
  return impl_->tokens[id];
}

int64_t Tokenizer::vocab_size() const {
  return impl_ ? impl_->size : 0;
}
int32_t Tokenizer::bos_id() const {
  return impl_ ? impl_->bos : -1;
}
int32_t Tokenizer::eos_id() const {
  return impl_ ? impl_->eos : -1;
}

}  // namespace ftune
