#include "engine/formats/jsonl.h"

#include <fstream>

#include "engine/base/error.h"
#include "engine/base/json_limits.h"

namespace ftune {

void for_each_jsonl(const std::string& path, bool skip_bad, const JsonlVisitor& visit,
                    JsonlStats* stats, const JsonlMalformed& on_malformed) {
  std::ifstream in(path);
  if (!in) throw Error("cannot open data file '" + path + "': check the data paths in the recipe");
  JsonlStats local;
  JsonlStats& st = stats ? *stats : local;
  auto reject = [&](int64_t lineno, const std::string& why) {
    std::string where = path + ":" + std::to_string(lineno) + ": " + why;
    if (!skip_bad) throw Error(where + " (set data.skip_bad_lines: true to skip such lines)");
    st.skipped++;
    if (st.examples.size() < 5) st.examples.push_back(where);
  };
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    st.bytes += int64_t(line.size()) + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    st.lines++;
    nlohmann::json j;
    std::string bad;
    try {
      // Records are copied and compared later, which recurses once per nesting level.
      if (json_nesting_depth(line) > kMaxJsonDepth) {
        bad = "JSON nested more than " + std::to_string(kMaxJsonDepth) +
              " levels deep; each line must be one plain {...} record";
      } else {
        j = nlohmann::json::parse(line);
        if (!j.is_object()) bad = "not a JSON object; each line must be one {...} record";
      }
    } catch (const nlohmann::json::exception& e) {
      bad = std::string("not valid JSON (") + e.what() + "); each line must be one JSON object";
    }
    if (!bad.empty()) {
      if (on_malformed)
        on_malformed(lineno, bad);
      else
        reject(lineno, bad);
      continue;
    }
    std::string why = visit(j, lineno);
    if (!why.empty()) {
      reject(lineno, why);
      continue;
    }
    st.records++;
  }
  if (in.bad()) throw Error("read error in data file '" + path + "'");
}

}  // namespace ftune
