// UTF-8 and Unicode helpers for the tokenizer: UTF-8 validation and repair, the GPT-2
// byte-level alphabet (every byte as one printable character) and NFC normalization (Qwen2's
// tokenizer.json asks for it). All strings are UTF-8 in std::string / std::string_view.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ftune::unicode {

bool is_valid_utf8(std::string_view s);
// Replaces each maximal ill-formed subsequence with U+FFFD, as Python's errors="replace" does,
// so text read with either tool turns into the same characters.
std::string repair_utf8(std::string_view s);
void append_utf8(char32_t cp, std::string* out);
// Decodes the code point at s[i] of valid UTF-8; *len gets its byte length.
char32_t decode_utf8(std::string_view s, size_t i, size_t* len);

// GPT-2 byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes
// for U+0100 onwards in byte order, so every token string is printable text.
char32_t byte_to_char(uint8_t b);
int char_to_byte(char32_t c);  // -1 when c is not in the alphabet

// Unicode White_Space and word characters (letters, marks, digits, connector punctuation),
// the classes the added-token lstrip/rstrip/single_word rules of tokenizers use.
bool is_white_space(char32_t c);
bool is_word_char(char32_t c);

// NFC of valid UTF-8. Returns false and leaves *out alone when s is already NFC (the usual case,
// found by the quick check without copying); otherwise writes the normalized text to *out.
bool nfc_normalize(std::string_view s, std::string* out);
std::string nfc(std::string_view s);

}  // namespace ftune::unicode
