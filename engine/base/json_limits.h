// Limits on JSON read from files ftune does not control (config.json, tokenizer.json,
// safetensors and encryption headers, JSONL records). nlohmann parses any depth without
// recursion, but copying, comparing and printing a parsed value recurse once per level: about
// 60,000 levels (120 KB of '[') overflow an 8 MB stack. Parsers check depth before parsing.
#pragma once
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace ftune {

// Far deeper than any real file (a tokenizer.json nests about 6 levels), far below the stack.
constexpr size_t kMaxJsonDepth = 512;

// Deepest [ ] / { } nesting of JSON text, brackets inside strings not counted. Counting stops
// just past kMaxJsonDepth, so the cost is one pass whatever the text holds.
size_t json_nesting_depth(std::string_view text);

// json::parse after the depth check: text nested deeper than kMaxJsonDepth is an ftune::Error
// naming `label`. Syntax errors still throw nlohmann::json::parse_error for the caller to word.
nlohmann::json parse_json_bounded(std::string_view text, const std::string& label);

// A value as JSON text for an error message, cut to about max_chars (a hostile file must not
// turn one message into megabytes).
std::string json_excerpt(const nlohmann::json& v, size_t max_chars = 80);

}  // namespace ftune
