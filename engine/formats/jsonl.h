// Streaming JSONL: one JSON object per line, read a line at a time so multi-GB files never sit
// in memory. A malformed line is an error naming file:line, or, with skip_bad, is counted and
// skipped (the first few reasons kept for the run summary).
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ftune {

struct JsonlStats {
  int64_t lines = 0;                  // non-blank lines seen
  int64_t records = 0;                // lines handed to the callback and accepted
  int64_t skipped = 0;                // bad lines skipped (skip_bad)
  int64_t bytes = 0;                  // bytes of the file consumed so far
  std::vector<std::string> examples;  // up to 5 "file:line: reason"
};

// The callback returns an empty string to accept a record, or a reason to reject it (a missing
// or mistyped field); rejections follow the same skip_bad rule as malformed JSON.
using JsonlVisitor = std::function<std::string(const nlohmann::json& record, int64_t line)>;

// When on_malformed is given, malformed lines go to it (in file order, with the reason) instead of
// being thrown or counted — for callers that judge records later and must keep file order.
using JsonlMalformed = std::function<void(int64_t line, const std::string& why)>;

void for_each_jsonl(const std::string& path, bool skip_bad, const JsonlVisitor& visit,
                    JsonlStats* stats, const JsonlMalformed& on_malformed = nullptr);

}  // namespace ftune
