#include "engine/base/json_limits.h"

#include "engine/base/error.h"

namespace ftune {

size_t json_nesting_depth(std::string_view text) {
  size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > deepest) {
        deepest = depth;
        if (deepest > kMaxJsonDepth) break;
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

nlohmann::json parse_json_bounded(std::string_view text, const std::string& label) {
  if (json_nesting_depth(text) > kMaxJsonDepth)
    throw Error(label + ": JSON nested more than " + std::to_string(kMaxJsonDepth) +
                " levels deep; no real file nests like that, so it is damaged or not what it "
                "claims to be");
  return nlohmann::json::parse(text);
}

std::string json_excerpt(const nlohmann::json& v, size_t max_chars) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > max_chars) s = s.substr(0, max_chars) + "...";
  return s;
}

}  // namespace ftune
