// Tokenizer parity with Hugging Face tokenizers: the fixtures under fixtures/tokenizer hold three
// small byte-level BPE tokenizers, two SentencePiece-style ones (byte fallback, metaspace) and
// the ids / decodes tokenizers produced for each test case (see make_fixtures.py there).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/text/tokenizer.h"
#include "engine/text/unicode.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

std::string fixture_dir(const std::string& name) {
  return testing::fixtures_dir() + "/tokenizer/" + name;
}

json load_json(const std::string& path) {
  return json::parse(read_file(path));
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(char(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::vector<int32_t> ids_of(const json& j) {
  return j.get<std::vector<int32_t>>();
}

std::string input_of(const json& c) {
  return c.contains("input_hex") ? from_hex(c["input_hex"].get<std::string>())
                                 : c["text"].get<std::string>();
}

// Writes an edited copy of a fixture's tokenizer.json to a fresh directory and returns the path.
std::string write_variant(const std::string& name, const std::string& tag,
                          const std::function<void(json&)>& edit) {
  json j = load_json(fixture_dir(name) + "/tokenizer.json");
  edit(j);
  std::string dir = testing::make_temp_dir("tok-" + tag);
  std::ofstream(dir + "/tokenizer.json") << j.dump();
  return dir;
}

std::string write_raw(const std::string& tag, const std::string& text) {
  std::string dir = testing::make_temp_dir("tok-" + tag);
  std::ofstream(dir + "/tokenizer.json") << text;
  return dir;
}

std::string load_error(const std::string& path) {
  try {
    Tokenizer::load(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Which decodes must give back the input text exactly.
enum class RoundTrip {
  kByteLevel,       // all but lstrip / rstrip / normalized added tokens
  kNormalized,      // the same, compared with the NFC text
  kSentencePiece,   // texts without added tokens, <unk> or a literal U+2581 (decoded as space)
  kMetaspaceFirst,  // the same, for texts not starting with a space (the decoder drops it)
};

// Compares every case of a fixture: ids with and without special tokens, both decodes, and the
// round trip. Run twice so the second pass goes through the word cache.
void check_parity(const std::string& name, RoundTrip round_trip) {
  Tokenizer tok = Tokenizer::load(fixture_dir(name));
  json cases = load_json(fixture_dir(name) + "/cases.json");
  ASSERT_GT(cases["cases"].size(), 30u);
  const bool sentencepiece =
      round_trip == RoundTrip::kSentencePiece || round_trip == RoundTrip::kMetaspaceFirst;
  // Added tokens that strip whitespace or match normalized text do not round-trip the input;
  // in SentencePiece-style tokenizers no added token does (the piece after it gains a space).
  std::set<int32_t> lossy;
  const json tok_json = load_json(fixture_dir(name) + "/tokenizer.json");
  for (const json& t : tok_json["added_tokens"])
    if (sentencepiece || t["lstrip"].get<bool>() || t["rstrip"].get<bool>() ||
        t["normalized"].get<bool>())
      lossy.insert(t["id"].get<int32_t>());
  int round_trips = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (const json& c : cases["cases"]) {
      const std::string text = c["text"].get<std::string>();
      SCOPED_TRACE(name + " case: " + json(text).dump());
      const std::string input = input_of(c);
      const std::vector<int32_t> ids = ids_of(c["ids"]);
      EXPECT_EQ(tok.encode(input), ids);
      if (c.contains("ids_with_special")) {
        EXPECT_EQ(tok.encode(input, true), ids_of(c["ids_with_special"]));
      }
      if (c.contains("decoded_with_special")) {
        EXPECT_EQ(tok.decode(ids_of(c["ids_with_special"])),
                  c["decoded_with_special"].get<std::string>());
      }
      EXPECT_EQ(tok.decode(ids), c["decoded"].get<std::string>());
      EXPECT_EQ(tok.decode(ids, true), c["decoded_skip_special"].get<std::string>());
      // BPE loses nothing except what the normalizer, lstrip/rstrip and metaspaces remove.
      if (std::none_of(ids.begin(), ids.end(), [&](int32_t id) { return lossy.count(id); }) &&
          !(sentencepiece && text.find("\u2581") != std::string::npos) &&
          !(round_trip == RoundTrip::kMetaspaceFirst && text.starts_with(" "))) {
        EXPECT_EQ(tok.decode(ids),
                  round_trip == RoundTrip::kNormalized ? c["normalized"].get<std::string>() : text);
        ++round_trips;
      }
    }
  }
  EXPECT_GT(round_trips, 40);
  EXPECT_EQ(tok.vocab_size(), cases["meta"]["vocab_size"].get<int64_t>());
}

TEST(TokenizerParity, Gpt2StyleByteLevelRegex) {
  check_parity("gpt2_style", RoundTrip::kByteLevel);
}
TEST(TokenizerParity, Llama3StyleSplitIgnoreMerges) {
  check_parity("llama3_style", RoundTrip::kByteLevel);
}
TEST(TokenizerParity, Qwen2StyleNfc) {
  check_parity("qwen2_style", RoundTrip::kNormalized);
}
TEST(TokenizerParity, Llama2StyleByteFallback) {
  check_parity("llama2_style", RoundTrip::kSentencePiece);
}
TEST(TokenizerParity, MetaspaceStyleFirstScheme) {
  check_parity("metaspace_style", RoundTrip::kMetaspaceFirst);
}

// Id sequences encoding never produces: partial characters in byte tokens (U+FFFD per byte),
// special tokens and metaspace-only tokens first, ids outside the vocabulary.
TEST(TokenizerParity, SentencePieceDecodeOnlyCases) {
  for (const char* name : {"llama2_style", "metaspace_style"}) {
    Tokenizer tok = Tokenizer::load(fixture_dir(name));
    json cases = load_json(fixture_dir(name) + "/cases.json");
    ASSERT_GE(cases["decode_cases"].size(), 8u);
    for (const json& c : cases["decode_cases"]) {
      SCOPED_TRACE(std::string(name) + " ids " + c["ids"].dump());
      EXPECT_EQ(tok.decode(ids_of(c["ids"])), c["decoded"].get<std::string>());
      EXPECT_EQ(tok.decode(ids_of(c["ids"]), true), c["decoded_skip_special"].get<std::string>());
    }
  }
}

// A fixture variant: the same edit make_fixtures.py made, checked against the ids and decodes
// tokenizers gave for it (stored where they differ from the fixture's own). Variants recorded
// without decodes have theirs checked where the ids match the fixture's.
void check_variant(const std::string& name, const std::string& key, bool decodes_recorded,
                   const std::function<void(json&)>& edit) {
  SCOPED_TRACE(name + " variant " + key);
  std::string dir = write_variant(name, key, edit);
  Tokenizer tok = Tokenizer::load(dir);
  json cases = load_json(fixture_dir(name) + "/cases.json");
  int differing = 0;
  for (const json& c : cases["cases"]) {
    SCOPED_TRACE(c["text"].dump());
    const bool own_ids = c.contains("ids_" + key), own_text = c.contains("decoded_" + key);
    const std::vector<int32_t> ids = ids_of(c[own_ids ? "ids_" + key : "ids"]);
    EXPECT_EQ(tok.encode(input_of(c)), ids);
    if (decodes_recorded || !own_ids) {
      EXPECT_EQ(tok.decode(ids), c[own_text ? "decoded_" + key : "decoded"].get<std::string>());
    }
    differing += own_ids || own_text;
  }
  EXPECT_GT(differing, 0) << "the variant must change some case, or this tests nothing";
  fs::remove_all(dir);
}

TEST(TokenizerParity, ByteFallbackAndUnkVariants) {
  check_variant("llama2_style", "no_byte_fallback", true,
                [](json& j) { j["model"]["byte_fallback"] = false; });
  check_variant("llama2_style", "no_fuse_unk", false, [](json& j) {
    j["model"]["byte_fallback"] = false;
    j["model"]["fuse_unk"] = false;
  });
  // Four-byte characters lose their first byte token and fall back to <unk>, which tokenizers
  // emits after the byte tokens of the characters that follow.
  check_variant("llama2_style", "missing_byte_f0", false, [](json& j) {
    json& vocab = j["model"]["vocab"];
    vocab["<0xF0:absent>"] = vocab["<0xF0>"];
    vocab.erase("<0xF0>");
  });
}

TEST(TokenizerParity, MetaspaceVariants) {
  for (const char* scheme : {"always", "never"}) {
    check_variant("metaspace_style", std::string("prepend_") + scheme, true, [&](json& j) {
      j["pre_tokenizer"]["prepend_scheme"] = scheme;
      j["decoder"]["decoders"][1]["prepend_scheme"] = scheme;
    });
  }
  // The Mistral v0.3 layout: one pre-token per piece, so whitespace runs merge.
  check_variant("metaspace_style", "no_split", false,
                [](json& j) { j["pre_tokenizer"]["split"] = false; });
  check_variant("metaspace_style", "metaspace_decoder", true,
                [](json& j) { j["decoder"] = json(j["decoder"]["decoders"][1]); });
}

// Files written before prepend_scheme existed say add_prefix_space instead.
TEST(TokenizerParity, MetaspaceLegacyAddPrefixSpace) {
  for (bool add : {true, false}) {
    std::string dir = write_variant("metaspace_style", "legacy", [&](json& j) {
      for (json* m : {&j["pre_tokenizer"], &j["decoder"]["decoders"][1]}) {
        m->erase("prepend_scheme");
        (*m)["add_prefix_space"] = add;
        (*m)["str_rep"] = "\u2581";
      }
    });
    Tokenizer tok = Tokenizer::load(dir);
    const std::string key = add ? "ids_prepend_always" : "ids_prepend_never";
    json cases = load_json(fixture_dir("metaspace_style") + "/cases.json");
    for (const json& c : cases["cases"]) {
      SCOPED_TRACE(c["text"].dump());
      EXPECT_EQ(tok.encode(input_of(c)), ids_of(c[c.contains(key) ? key : "ids"]));
    }
    fs::remove_all(dir);
  }
}

TEST(Tokenizer, SentencePieceTokensAndSpecialIds) {
  Tokenizer tok = Tokenizer::load(fixture_dir("llama2_style"));
  EXPECT_EQ(tok.bos_id(), *tok.token_to_id("<s>"));
  EXPECT_EQ(tok.eos_id(), *tok.token_to_id("</s>"));
  EXPECT_EQ(tok.encode("", true), std::vector<int32_t>{tok.bos_id()});
  // Byte tokens sit at 3 + byte, as in SentencePiece conversions; B is not in the alphabet
  // (make_fixtures.py keeps only the most frequent characters), so it comes out as <0x42>.
  EXPECT_EQ(tok.token_to_id("<0x42>"), 3 + 0x42);
  EXPECT_EQ(tok.id_to_token(3 + 0x42), "<0x42>");
  EXPECT_FALSE(tok.token_to_id("B"));
  std::vector<int32_t> ids = tok.encode("Bob");
  EXPECT_NE(std::find(ids.begin(), ids.end(), 3 + 0x42), ids.end());
  EXPECT_EQ(tok.decode(ids), "Bob");
  // A normalized added token is reported by its normalized text, as tokenizers does.
  auto name = tok.token_to_id("[NAME]");
  ASSERT_TRUE(name);
  EXPECT_EQ(tok.id_to_token(*name), "\u2581[NAME]");

  Tokenizer ms = Tokenizer::load(fixture_dir("metaspace_style"));
  const std::vector<int32_t> hi = ms.encode("hi");
  std::vector<int32_t> framed = {ms.bos_id()};
  framed.insert(framed.end(), hi.begin(), hi.end());
  framed.push_back(ms.eos_id());
  EXPECT_EQ(ms.encode("hi", true), framed);  // "<s> $A </s>"
}

TEST(TokenizerParity, AddPrefixSpaceMatchesTokenizers) {
  std::string dir = write_variant("gpt2_style", "prefix",
                                  [](json& j) { j["pre_tokenizer"]["add_prefix_space"] = true; });
  Tokenizer tok = Tokenizer::load(dir);
  json cases = load_json(fixture_dir("gpt2_style") + "/cases.json");
  for (const json& c : cases["cases"]) {
    SCOPED_TRACE(c["text"].dump());
    EXPECT_EQ(tok.encode(input_of(c)), ids_of(c["ids_add_prefix_space"]));
  }
  fs::remove_all(dir);
}

TEST(TokenizerParity, IgnoreMergesDecidesWholeWordTokens) {
  std::string dir =
      write_variant("llama3_style", "merges", [](json& j) { j["model"]["ignore_merges"] = false; });
  Tokenizer merging = Tokenizer::load(dir);
  Tokenizer whole = Tokenizer::load(fixture_dir("llama3_style"));
  json cases = load_json(fixture_dir("llama3_style") + "/cases.json");
  int differing = 0;
  for (const json& c : cases["cases"]) {
    SCOPED_TRACE(c["text"].dump());
    std::vector<int32_t> expect = ids_of(c["ids_without_ignore_merges"]);
    EXPECT_EQ(merging.encode(input_of(c)), expect);
    differing += whole.encode(input_of(c)) != expect;
  }
  EXPECT_GT(differing, 0) << "the fixture must contain a word only ignore_merges emits whole";
  fs::remove_all(dir);
}

TEST(TokenizerParity, NfcMatchesTokenizersNormalizer) {
  json cases = load_json(fixture_dir("qwen2_style") + "/cases.json");
  int changed = 0;
  for (const json& c : cases["cases"]) {
    std::string text = c["text"].get<std::string>();
    SCOPED_TRACE(json(text).dump());
    EXPECT_EQ(unicode::nfc(text), c["normalized"].get<std::string>());
    changed += c["normalized"].get<std::string>() != text;
  }
  EXPECT_GE(changed, 2);
}

TEST(Tokenizer, RepairsInvalidUtf8LikePython) {
  json cases = load_json(fixture_dir("gpt2_style") + "/cases.json");
  int seen = 0;
  for (const json& c : cases["cases"]) {
    if (!c.contains("input_hex")) continue;
    std::string raw = from_hex(c["input_hex"].get<std::string>());
    EXPECT_FALSE(unicode::is_valid_utf8(raw));
    EXPECT_EQ(unicode::repair_utf8(raw), c["text"].get<std::string>());
    ++seen;
  }
  EXPECT_EQ(seen, 3);
  EXPECT_TRUE(unicode::is_valid_utf8("plain \xE2\x82\xAC \xF0\x9F\x98\x80"));
}

TEST(Tokenizer, SpecialTokenIdsFromConfigFiles) {
  Tokenizer gpt2 = Tokenizer::load(fixture_dir("gpt2_style"));
  ASSERT_TRUE(gpt2.token_to_id("<|endoftext|>"));
  EXPECT_EQ(gpt2.bos_id(), *gpt2.token_to_id("<|endoftext|>"));
  EXPECT_EQ(gpt2.eos_id(), *gpt2.token_to_id("<|endoftext|>"));

  // {"content": ...} form in tokenizer_config.json, and the file path instead of the directory.
  Tokenizer llama = Tokenizer::load(fixture_dir("llama3_style") + "/tokenizer.json");
  EXPECT_EQ(llama.bos_id(), *llama.token_to_id("<|begin_of_text|>"));
  EXPECT_EQ(llama.eos_id(), *llama.token_to_id("<|end_of_text|>"));
  EXPECT_EQ(llama.encode("", true), std::vector<int32_t>{llama.bos_id()});

  // bos_token null: config.json's bos_token_id; eos_token from tokenizer_config.json.
  Tokenizer qwen = Tokenizer::load(fixture_dir("qwen2_style"));
  json cfg = load_json(fixture_dir("qwen2_style") + "/config.json");
  EXPECT_EQ(qwen.bos_id(), cfg["bos_token_id"].get<int32_t>());
  EXPECT_EQ(qwen.eos_id(), *qwen.token_to_id("<|im_end|>"));
  EXPECT_EQ(qwen.encode("hi", true), qwen.encode("hi", false));  // no template: nothing added

  // Neither file: no BOS/EOS.
  std::string dir = write_variant("gpt2_style", "nocfg", [](json&) {});
  Tokenizer bare = Tokenizer::load(dir);
  EXPECT_EQ(bare.bos_id(), -1);
  EXPECT_EQ(bare.eos_id(), -1);
  fs::remove_all(dir);
}

TEST(Tokenizer, TokenLookupsAndByteAlphabet) {
  Tokenizer tok = Tokenizer::load(fixture_dir("gpt2_style"));
  // GPT-2's alphabet: space is U+0120 'Ġ', newline U+010A 'Ċ', printable bytes are themselves.
  EXPECT_EQ(unicode::byte_to_char(' '), U'\u0120');
  EXPECT_EQ(unicode::byte_to_char('\n'), U'\u010A');
  EXPECT_EQ(unicode::byte_to_char('A'), U'A');
  EXPECT_EQ(unicode::byte_to_char(0xAD), U'\u0143');
  for (int b = 0; b < 256; ++b) EXPECT_EQ(unicode::char_to_byte(unicode::byte_to_char(b)), b);
  EXPECT_EQ(unicode::char_to_byte(U'\u4E00'), -1);

  auto space = tok.token_to_id("\xC4\xA0");  // "Ġ"
  ASSERT_TRUE(space);
  EXPECT_EQ(tok.id_to_token(*space), "\xC4\xA0");
  EXPECT_EQ(tok.decode({*space}), " ");
  EXPECT_FALSE(tok.token_to_id("not a token"));
  auto mask = tok.token_to_id("<mask>");
  ASSERT_TRUE(mask);
  EXPECT_EQ(tok.id_to_token(*mask), "<mask>");
  EXPECT_THROW(tok.id_to_token(int32_t(tok.vocab_size())), Error);
  EXPECT_THROW(tok.id_to_token(-1), Error);
}

TEST(Tokenizer, DecodeKeepsPartialCharactersAndSkipsUnknownIds) {
  Tokenizer tok = Tokenizer::load(fixture_dir("gpt2_style"));
  // U+1F980 is not in the training corpus, so its four bytes span several tokens.
  const std::string crab = "\xF0\x9F\xA6\x80";
  std::vector<int32_t> ids = tok.encode(crab);
  ASSERT_GE(ids.size(), 2u);
  std::string first = tok.decode({ids[0]});
  EXPECT_FALSE(first.empty());
  EXPECT_FALSE(unicode::is_valid_utf8(first));
  EXPECT_EQ(crab.substr(0, first.size()), first);
  std::string pieces;
  for (int32_t id : ids) pieces += tok.decode({id});
  EXPECT_EQ(pieces, crab);
  std::vector<int32_t> noisy = {-100, ids[0], int32_t(tok.vocab_size()) + 5};
  noisy.insert(noisy.end(), ids.begin() + 1, ids.end());
  EXPECT_EQ(tok.decode(noisy), crab);
}

TEST(Tokenizer, ConcurrentEncodesAgree) {
  Tokenizer tok = Tokenizer::load(fixture_dir("llama3_style"));
  json cases = load_json(fixture_dir("llama3_style") + "/cases.json");
  std::string text;
  for (const json& c : cases["cases"]) text += input_of(c) + "\n";
  for (int i = 0; i < 5; ++i) text += text;
  const std::vector<int32_t> expect = tok.encode(text);
  EXPECT_EQ(tok.decode(expect), tok.decode(tok.encode(text)));
  std::vector<std::vector<int32_t>> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { got[t] = tok.encode(text); });
  for (auto& th : threads) th.join();
  for (const auto& g : got) EXPECT_EQ(g, expect);
}

TEST(TokenizerErrors, UnsupportedModelTypeIsNamed) {
  std::string dir = write_variant("gpt2_style", "unigram", [](json& j) {
    j["model"] = {{"type", "Unigram"}, {"unk_id", 0}, {"vocab", json::array({{"<unk>", 0.0}})}};
  });
  std::string msg = load_error(dir);
  EXPECT_NE(msg.find("Unigram"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir + "/tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("SentencePiece-style"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(TokenizerErrors, UnsupportedComponentsAreNamed) {
  struct Case {
    const char* tag;
    std::function<void(json&)> edit;
    const char* expect;
  };
  std::vector<Case> cases = {
      {"wordpiece", [](json& j) { j["model"]["type"] = "WordPiece"; }, "WordPiece"},
      {"whitespace",
       [](json& j) {
         j["pre_tokenizer"] = {{"type", "Whitespace"}};
       },
       "Whitespace"},
      {"ms-after-bl",
       [](json& j) {
         j["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "ByteLevel"}}, {{"type", "Metaspace"}, {"replacement", "_"}}}}};
       },
       "Metaspace' after ByteLevel"},
      {"bl-after-ms",
       [](json& j) {
         j["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "Metaspace"}, {"replacement", "_"}}, {{"type", "ByteLevel"}}}}};
       },
       "ByteLevel after Metaspace"},
      {"ms-scheme",
       [](json& j) {
         j["pre_tokenizer"] = {
             {"type", "Metaspace"}, {"replacement", "_"}, {"prepend_scheme", "sometimes"}};
       },
       "sometimes"},
      {"ms-replacement",
       [](json& j) {
         j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "__"}};
       },
       "single character"},
      {"regex-replace",
       [](json& j) {
         j["normalizer"] = {
             {"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", "_"}};
       },
       "Replace with a Regex"},
      {"precompiled",
       [](json& j) {
         j["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}};
       },
       "Precompiled"},
      {"nfkc",
       [](json& j) {
         j["normalizer"] = {{"type", "NFKC"}};
       },
       "NFKC"},
      {"seqnorm",
       [](json& j) {
         j["normalizer"] = {{"type", "Sequence"},
                            {"normalizers", {{{"type", "NFC"}}, {{"type", "Lowercase"}}}}};
       },
       "Lowercase"},
      {"decoder",
       [](json& j) {
         j["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}};
       },
       "decoder 'WordPiece'"},
      {"mixed-decoder",
       [](json& j) {
         j["decoder"] = {{"type", "Sequence"},
                         {"decoders", {{{"type", "ByteLevel"}}, {{"type", "Fuse"}}}}};
       },
       "ByteLevel combined"},
      {"strip",
       [](json& j) {
         j["decoder"] = {{"type", "Strip"}, {"content", "ab"}, {"start", 1}, {"stop", 0}};
       },
       "single character"},
      {"suffix", [](json& j) { j["model"]["end_of_word_suffix"] = "</w>"; }, "end_of_word_suffix"},
      {"roberta",
       [](json& j) {
         j["post_processor"] = {{"type", "RobertaProcessing"}};
       },
       "RobertaProcessing"},
      {"removed",
       [](json& j) {
         j["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "Split"},
                {"pattern", {{"Regex", "\\s"}}},
                {"behavior", "Removed"},
                {"invert", false}},
               {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
       },
       "Removed"},
      {"badmerge", [](json& j) { j["model"]["merges"].push_back("Ġ qqqq"); }, "qqqq"},
      {"badregex",
       [](json& j) {
         j["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "Split"},
                {"pattern", {{"Regex", "(unclosed"}}},
                {"behavior", "Isolated"},
                {"invert", false}},
               {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
       },
       "(unclosed"},
  };
  for (const auto& c : cases) {
    std::string dir = write_variant("gpt2_style", c.tag, c.edit);
    std::string msg = load_error(dir);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.tag << ": " << msg;
    EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << c.tag << ": " << msg;
    fs::remove_all(dir);
  }
}

TEST(TokenizerErrors, MalformedJsonNamesTheFile) {
  std::string dir = write_raw("badjson", "{\"model\": {\"type\": \"BPE\", ");
  std::string msg = load_error(dir);
  EXPECT_NE(msg.find(dir + "/tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("JSON"), std::string::npos) << msg;
  fs::remove_all(dir);

  dir = write_variant("gpt2_style", "badcfg", [](json&) {});
  std::ofstream(dir + "/tokenizer_config.json") << "{\"bos_token\": ";
  msg = load_error(dir);
  EXPECT_NE(msg.find("tokenizer_config.json"), std::string::npos) << msg;
  fs::remove_all(dir);

  dir = write_variant("gpt2_style", "badtok", [](json&) {});
  std::ofstream(dir + "/tokenizer_config.json") << "{\"eos_token\": \"<|nope|>\"}";
  msg = load_error(dir);
  EXPECT_NE(msg.find("<|nope|>"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(TokenizerErrors, MissingFileNamesThePath) {
  std::string dir = testing::make_temp_dir("tok-missing");
  std::string msg = load_error(dir);
  EXPECT_NE(msg.find(dir + "/tokenizer.json"), std::string::npos) << msg;
  msg = load_error(dir + "/nowhere/tokenizer.json");
  EXPECT_NE(msg.find(dir + "/nowhere/tokenizer.json"), std::string::npos) << msg;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ftune
