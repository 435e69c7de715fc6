#include "engine/jsonl.h"

#include <fstream>

#include "engine/error.h"

namespace ftune {

void for_each_jsonl(const std::string& path, bool skip_bad, const JsonlVisitor& visit,
                    JsonlStats* stats) {
  std::ifstream in(path);
  if (!in) throw Error("cannot open data file '" + path + "': check the data paths in the recipe");
  JsonlStats local;
  JsonlStats& st = stats ? *stats : local;
  auto reject = [&](int64_t lineno, const std::string& why) {
    std::string where = path + ":" + std::to_string(lineno) + ": " + why;
    if (!skip_bad)
      throw Error(where + " (set data.skip_bad_lines: true to skip such lines)");
    st.skipped++;
    if (st.examples.size() < 5) st.examples.push_back(where);
  };
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    st.lines++;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      reject(lineno, std::string("not valid JSON (") + e.what() + "); each line must be one JSON object");
      continue;
    }
    if (!j.is_object()) {
      reject(lineno, "not a JSON object; each line must be one {...} record");
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
