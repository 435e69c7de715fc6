#include "engine/text/unicode.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <vector>

#include "engine/base/error.h"
#include "engine/text/unicode_nfc_tables.h"

namespace ftune::unicode {
namespace {

namespace tables = ::ftune::unicode_tables;

// Length of the well-formed UTF-8 sequence at s[i], or 0 when it is ill-formed. *consumed gets
// the length of the maximal prefix of a well-formed sequence (at least 1), for repair.
size_t utf8_sequence(std::string_view s, size_t i, size_t* consumed) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  unsigned char b = p[i];
  *consumed = 1;
  if (b < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte (RFC 3629 table)
  if (b >= 0xC2 && b <= 0xDF) {
    need = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;  // no surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  for (size_t k = 1; k < need; ++k) {
    if (i + k >= n) return 0;
    unsigned char c = p[i + k];
    bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) return 0;
    *consumed = k + 1;
  }
  return need;
}

bool is_ascii(std::string_view s) {
  size_t i = 0;
  // Eight bytes at a time: the common case of plain English text is decided quickly.
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    if (w & 0x8080808080808080ull) return false;
  }
  for (; i < s.size(); ++i)
    if (static_cast<unsigned char>(s[i]) & 0x80) return false;
  return true;
}

template <size_t N>
int range_lookup(const tables::CpRange (&ranges)[N], char32_t c) {
  auto it = std::upper_bound(std::begin(ranges), std::end(ranges), c,
                             [](char32_t v, const tables::CpRange& r) { return v < r.first; });
  if (it == std::begin(ranges)) return 0;
  --it;
  return c <= it->last ? it->value : 0;
}

// Hangul syllables decompose and compose arithmetically (Unicode 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount;
constexpr char32_t kSCount = kLCount * kNCount;

enum QuickCheck : uint8_t { kQcYes = 0, kQcNo = 1, kQcMaybe = 2 };

// Per 256-code-point block: does any character in it have a nonzero combining class, a
// quick-check value other than Yes, or a decomposition? Most text (CJK, Cyrillic, emoji) lives
// in blocks without, and then needs no table search at all.
class BlockIndex {
 public:
  BlockIndex() : has_(0x1100, 0) {
    auto mark = [&](char32_t a, char32_t b) {
      for (char32_t blk = a >> 8; blk <= (b >> 8); ++blk) has_[blk] = 1;
    };
    for (const auto& r : tables::kCombiningClass) mark(r.first, r.last);
    for (const auto& r : tables::kQuickCheck) mark(r.first, r.last);
    for (const auto& d : tables::kDecompositions) mark(d.cp, d.cp);
  }
  // Below U+0300 nothing combines and the quick check is Yes, but Latin-1 letters decompose.
  bool plain(char32_t c) const { return c < 0x300 || !has_[c >> 8]; }
  bool may_decompose(char32_t c) const { return has_[c >> 8]; }

 private:
  std::vector<uint8_t> has_;
};

const BlockIndex& block_index() {
  static const BlockIndex index;
  return index;
}

int combining_class(char32_t c) {
  if (block_index().plain(c)) return 0;
  return range_lookup(tables::kCombiningClass, c);
}

int quick_check(char32_t c) {
  if (block_index().plain(c)) return kQcYes;
  return range_lookup(tables::kQuickCheck, c);
}

void decompose(char32_t c, std::vector<char32_t>* out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    char32_t s = c - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out->push_back(kTBase + s % kTCount);
    return;
  }
  if (block_index().may_decompose(c)) {
    auto it =
        std::lower_bound(std::begin(tables::kDecompositions), std::end(tables::kDecompositions), c,
                         [](const tables::Decomp& d, char32_t v) { return d.cp < v; });
    if (it != std::end(tables::kDecompositions) && it->cp == c) {
      out->insert(out->end(), tables::kDecompositionPool + it->offset,
                  tables::kDecompositionPool + it->offset + it->len);
      return;
    }
  }
  out->push_back(c);
}

// The primary composite of (a, b), or 0 when there is none.
char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  auto it =
      std::lower_bound(std::begin(tables::kCompositions), std::end(tables::kCompositions),
                       std::pair{a, b}, [](const tables::Comp& c, std::pair<char32_t, char32_t> v) {
                         return c.first != v.first ? c.first < v.first : c.second < v.second;
                       });
  if (it != std::end(tables::kCompositions) && it->first == a && it->second == b)
    return it->composite;
  return 0;
}

// Full NFC of one span: decompose, order combining marks, recompose (UAX #15).
void normalize_span(std::string_view s, std::string* out) {
  std::vector<char32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t len;
    decompose(decode_utf8(s, i, &len), &cps);
    i += len;
  }
  std::vector<uint8_t> ccc(cps.size());
  for (size_t i = 0; i < cps.size(); ++i) ccc[i] = uint8_t(combining_class(cps[i]));
  // Canonical ordering: a stable sort of each run of non-starters by combining class. Runs are
  // a few marks long, so insertion sort.
  for (size_t i = 1; i < cps.size(); ++i) {
    if (ccc[i] == 0) continue;
    for (size_t j = i; j > 0 && ccc[j - 1] > ccc[j]; --j) {
      std::swap(ccc[j - 1], ccc[j]);
      std::swap(cps[j - 1], cps[j]);
    }
  }
  std::vector<char32_t> res;
  res.reserve(cps.size());
  ptrdiff_t starter = -1;
  int last_ccc = 0;
  for (size_t i = 0; i < cps.size(); ++i) {
    const char32_t c = cps[i];
    const int cc = ccc[i];
    if (starter >= 0) {
      const bool adjacent = res.size() == size_t(starter) + 1;
      // Blocked when a character in between is a starter or has a class >= this one's; after
      // canonical ordering the last one in between has the largest class.
      if (adjacent || (last_ccc != 0 && last_ccc < cc)) {
        if (char32_t comp = compose(res[starter], c)) {
          res[starter] = comp;
          continue;
        }
      }
    }
    if (cc == 0) starter = ptrdiff_t(res.size());
    res.push_back(c);
    last_ccc = cc;
  }
  for (char32_t c : res) append_utf8(c, out);
}

bool is_safe_boundary(char32_t c) {
  return quick_check(c) == kQcYes && combining_class(c) == 0;
}

}  // namespace

bool is_valid_utf8(std::string_view s) {
  if (is_ascii(s)) return true;
  size_t consumed;
  for (size_t i = 0; i < s.size();) {
    size_t len = utf8_sequence(s, i, &consumed);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

std::string repair_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  size_t consumed;
  for (size_t i = 0; i < s.size();) {
    size_t len = utf8_sequence(s, i, &consumed);
    if (len) {
      out.append(s.data() + i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += consumed;
    }
  }
  return out;
}

void append_utf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(char(cp));
  } else if (cp < 0x800) {
    out->push_back(char(0xC0 | (cp >> 6)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(char(0xE0 | (cp >> 12)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(char(0xF0 | (cp >> 18)));
    out->push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  }
}

char32_t decode_utf8(std::string_view s, size_t i, size_t* len) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  if (p[0] < 0x80) {
    *len = 1;
    return p[0];
  }
  if (p[0] < 0xE0) {
    *len = 2;
    return char32_t(p[0] & 0x1F) << 6 | (p[1] & 0x3F);
  }
  if (p[0] < 0xF0) {
    *len = 3;
    return char32_t(p[0] & 0x0F) << 12 | char32_t(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
  }
  *len = 4;
  return char32_t(p[0] & 0x07) << 18 | char32_t(p[1] & 0x3F) << 12 | char32_t(p[2] & 0x3F) << 6 |
         (p[3] & 0x3F);
}

namespace {

struct ByteAlphabet {
  std::array<char32_t, 256> to_char{};
  std::array<int16_t, 512> to_byte{};  // every alphabet character is below U+0200

  ByteAlphabet() {
    to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_char[b] = printable ? char32_t(b) : next++;
      to_byte[to_char[b]] = int16_t(b);
    }
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

}  // namespace

char32_t byte_to_char(uint8_t b) {
  return byte_alphabet().to_char[b];
}

int char_to_byte(char32_t c) {
  return c < 512 ? byte_alphabet().to_byte[c] : -1;
}

bool is_white_space(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_word_char(char32_t c) {
  if (c < 0x80) return std::isalnum(int(c)) || c == '_';
  // General categories come from PCRE2's own Unicode tables rather than another copy here.
  struct WordClass {
    pcre2_code* code = nullptr;
    WordClass() {
      int err;
      PCRE2_SIZE off;
      const char* pat = "^[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]";
      code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pat), PCRE2_ZERO_TERMINATED,
                           PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    }
    ~WordClass() { pcre2_code_free(code); }
  };
  static const WordClass word;
  FTUNE_CHECK(word.code != nullptr, "word-character pattern failed to compile");
  std::string buf;
  append_utf8(c, &buf);
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  int rc = pcre2_match(word.code, reinterpret_cast<PCRE2_SPTR>(buf.data()), buf.size(), 0, 0, md,
                       nullptr);
  pcre2_match_data_free(md);
  return rc >= 0;
}

bool nfc_normalize(std::string_view s, std::string* out) {
  if (is_ascii(s)) return false;
  size_t copied = 0;     // s[0, copied) is already in *out
  size_t last_safe = 0;  // start of the last character nothing later can change
  int last_ccc = 0;
  bool changed = false;
  for (size_t i = 0; i < s.size();) {
    size_t len;
    char32_t c = decode_utf8(s, i, &len);
    int qc = quick_check(c);
    int cc = combining_class(c);
    if (qc == kQcYes && cc == 0) {
      last_safe = i;
      last_ccc = 0;
      i += len;
      continue;
    }
    if (qc == kQcYes && cc >= last_ccc) {
      last_ccc = cc;
      i += len;
      continue;
    }
    // Something may change: normalize from the last safe character up to the next one.
    size_t end = i + len;
    while (end < s.size()) {
      size_t l;
      if (is_safe_boundary(decode_utf8(s, end, &l))) break;
      end += l;
    }
    if (!changed) {
      out->clear();
      out->reserve(s.size() + 16);
      changed = true;
    }
    out->append(s.data() + copied, last_safe - copied);
    normalize_span(s.substr(last_safe, end - last_safe), out);
    copied = end;
    last_safe = end;
    last_ccc = 0;
    i = end;
  }
  if (!changed) return false;
  out->append(s.data() + copied, s.size() - copied);
  return true;
}

std::string nfc(std::string_view s) {
  std::string out;
  if (!nfc_normalize(s, &out)) return std::string(s);
  return out;
}

}  // namespace ftune::unicode
