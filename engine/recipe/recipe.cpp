// Recipe loading: YAML file -> schema-checked RecipeConfig, then `key=value` overrides.
#include "engine/recipe/recipe.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <variant>

#include "engine/base/error.h"
#include "engine/recipe/recipe_schema.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
using recipe::KeySpec;
using recipe::ValueType;

// ---- did-you-mean ----

// Optimal-string-alignment distance: Levenshtein plus adjacent transpositions ("lenght").
size_t edit_distance(std::string_view a, std::string_view b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

// How many edits still count as a typo of a word this long: one for short words, a third of
// the length beyond that, so "sed" finds "seed" but "x" finds nothing.
size_t typo_budget(std::string_view s) {
  return std::max<size_t>(1, s.size() / 3);
}

std::string_view last_component(std::string_view key) {
  size_t dot = key.rfind('.');
  return dot == std::string_view::npos ? key : key.substr(dot + 1);
}

std::string quote_list(const std::vector<std::string_view>& names) {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i) s += i + 1 == names.size() ? " or " : ", ";
    s += "'" + std::string(names[i]) + "'";
  }
  return s;
}

// "; did you mean 'train.seq_len'?" or "" when no key is close. Compares the whole dotted key
// (typos) and the last component alone (a key put in the wrong section, or without one); all
// equally close keys are offered, since "every" may be meant for any section that has one.
// `section`: the unknown name holds a map, so only section names are candidates.
std::string suggest_key(std::string_view input, bool section) {
  std::vector<std::string_view> candidates;
  if (section) {
    for (const recipe::SectionSpec& s : recipe::sections())
      if (!s.name.empty()) candidates.push_back(s.name);
  } else {
    for (const KeySpec& k : recipe::schema()) candidates.push_back(k.key);
  }
  const std::string_view input_last = last_component(input);
  size_t best = SIZE_MAX;
  std::vector<std::string_view> picks;
  for (std::string_view c : candidates) {
    size_t full = edit_distance(input, c);
    size_t last = edit_distance(input_last, last_component(c));
    bool close = full <= typo_budget(input) || last <= typo_budget(input_last);
    if (!close) continue;
    size_t score = std::min(full, last);
    if (score < best) {
      best = score;
      picks.clear();
    }
    if (score == best) picks.push_back(c);
  }
  if (picks.empty()) return "";
  if (picks.size() > 3) picks.resize(3);
  return "; did you mean " + quote_list(picks) + "?";
}

// "; did you mean 'format'?" for an unknown key of a data.train entry, or "".
std::string suggest_entry_key(std::string_view input) {
  size_t best = SIZE_MAX;
  std::vector<std::string_view> picks;
  for (std::string_view c : recipe::source_entry_keys()) {
    size_t d = edit_distance(input, c);
    if (d > typo_budget(input) || d > best) continue;
    if (d < best) picks.clear();
    best = d;
    picks.push_back(c);
  }
  return picks.empty() ? "" : "; did you mean " + quote_list(picks) + "?";
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Allowed values are short words where one edit can name a different choice ("gpu" is not a
// typo of "cpu"), so only a letter per four counts here; case differences are free.
std::string suggest_value(const KeySpec& k, std::string_view value) {
  std::string v = lower(value);
  std::string_view best;
  size_t best_d = SIZE_MAX;
  for (std::string_view a : k.allowed) {
    size_t d = edit_distance(v, a);
    if (d <= a.size() / 4 && d < best_d) {
      best_d = d;
      best = a;
    }
  }
  return best.empty() ? "" : "; did you mean '" + std::string(best) + "'?";
}

DataSource plain_source(const std::string& path) {
  DataSource d;
  d.path = path;
  return d;
}

// ---- scalar parsing ----

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

bool parse_int(std::string_view s, int64_t* out, bool* overflow) {
  *overflow = false;
  if (s.size() > 1 && s[0] == '+' && s[1] != '-') s.remove_prefix(1);
  auto res = std::from_chars(s.data(), s.data() + s.size(), *out);
  if (res.ptr != s.data() + s.size()) return false;
  if (res.ec == std::errc::result_out_of_range) {
    *overflow = true;
    return false;
  }
  return res.ec == std::errc();
}

bool parse_float(std::string_view s, double* out) {
  // from_chars takes no '+' sign, which YAML and people both write.
  if (s.size() > 1 && s[0] == '+' && s[1] != '-') s.remove_prefix(1);
  auto res = std::from_chars(s.data(), s.data() + s.size(), *out);
  return res.ec == std::errc() && res.ptr == s.data() + s.size() && std::isfinite(*out);
}

bool parse_bool(std::string_view s, bool* out) {
  std::string v = lower(s);
  if (v == "true" || v == "yes" || v == "on") {
    *out = true;
    return true;
  }
  if (v == "false" || v == "no" || v == "off") {
    *out = false;
    return true;
  }
  return false;
}

std::string_view expected_text(ValueType t) {
  switch (t) {
    case ValueType::kString:
    case ValueType::kEnum:
      return "a string";
    case ValueType::kInt:
      return "an integer";
    case ValueType::kFloat:
      return "a number";
    case ValueType::kBool:
      return "true or false";
  }
  return "a value";
}

void check_range(const KeySpec& k, double v, const std::string& text, const std::string& where,
                 const std::string& name) {
  bool ok = true;
  if (k.min) ok = ok && (k.min->inclusive ? v >= k.min->value : v > k.min->value);
  if (k.max) ok = ok && (k.max->inclusive ? v <= k.max->value : v < k.max->value);
  if (ok) return;
  std::string range = recipe::constraint_text(k);
  std::string rule =
      range[0] == '[' || range[0] == '(' ? "must be in " + range : "must be " + range;
  throw Error(where + ": " + name + ": " + text + " is out of range; it " + rule);
}

// How a value is being set: where (for messages) and what relative paths resolve against.
struct Source {
  std::string where;
  fs::path base_dir;
};

fs::path normalize_path(const std::string& p, const fs::path& base) {
  fs::path path(p);
  if (path.is_relative()) path = base / path;
  path = path.lexically_normal();
  // "runs/x/" and "runs/x" name the same directory; keep one spelling.
  if (!path.has_filename() && path.has_relative_path()) path = path.parent_path();
  return path;
}

// Parses `text` with the key's type and stores it. `is_null`: YAML `key:` with no value.
// `name`: how messages call the key when not k.key ("data.train[1].format").
void assign(const KeySpec& k, const std::string& text, bool is_null, const Source& src,
            RecipeConfig* cfg, const std::string& name = "") {
  const std::string key = name.empty() ? std::string(k.key) : name;
  auto type_error = [&]() -> Error {
    std::string got = is_null ? "an empty value" : "'" + text + "'";
    return Error(src.where + ": " + key + ": expected " + std::string(expected_text(k.type())) +
                 ", got " + got);
  };
  switch (k.type()) {
    case ValueType::kString: {
      std::string v = is_null ? std::string() : text;
      if (!k.allowed.empty() &&
          std::find(k.allowed.begin(), k.allowed.end(), v) == k.allowed.end()) {
        throw Error(src.where + ": " + key + ": '" + v + "' is not one of " +
                    recipe::constraint_text(k) + suggest_value(k, v));
      }
      if (k.is_path && !v.empty()) v = normalize_path(v, src.base_dir).string();
      cfg->*std::get<std::string RecipeConfig::*>(k.field) = v;
      return;
    }
    case ValueType::kEnum: {
      const std::string v = is_null ? std::string() : text;
      const auto it = std::find(k.allowed.begin(), k.allowed.end(), v);
      if (it == k.allowed.end())
        throw Error(src.where + ": " + key + ": '" + v + "' is not one of " +
                    recipe::constraint_text(k) + suggest_value(k, v));
      std::get<recipe::EnumField>(k.field).set(*cfg, int(it - k.allowed.begin()));
      return;
    }
    case ValueType::kInt: {
      int64_t v = 0;
      bool overflow = false;
      std::string t = trim(text);
      if (is_null || !parse_int(t, &v, &overflow)) {
        if (overflow)
          throw Error(src.where + ": " + key + ": " + t +
                      " is out of range; it must fit in a 64-bit integer");
        throw type_error();
      }
      check_range(k, double(v), t, src.where, key);
      cfg->*std::get<int64_t RecipeConfig::*>(k.field) = v;
      return;
    }
    case ValueType::kFloat: {
      double v = 0;
      std::string t = trim(text);
      if (is_null || !parse_float(t, &v)) throw type_error();
      check_range(k, v, t, src.where, key);
      cfg->*std::get<double RecipeConfig::*>(k.field) = v;
      return;
    }
    case ValueType::kBool: {
      bool v = false;
      if (is_null || !parse_bool(trim(text), &v)) throw type_error();
      cfg->*std::get<bool RecipeConfig::*>(k.field) = v;
      return;
    }
  }
}

// ---- YAML walking ----

struct Loader {
  RecipeConfig cfg;
  std::string label;
  fs::path base_dir;
  std::map<std::string, std::string> set_at;  // key -> where it was last set

  std::string where(const YAML::Mark& m) const {
    if (m.is_null()) return label;
    return label + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
  }

  static std::string describe(const YAML::Node& n) {
    switch (n.Type()) {
      case YAML::NodeType::Map:
        return "a map";
      case YAML::NodeType::Sequence:
        return "a list";
      case YAML::NodeType::Null:
        return "an empty value";
      default:
        return "'" + n.Scalar() + "'";
    }
  }

  // One example key of a section, to show what belongs inside it.
  static std::string example_key(std::string_view section) {
    for (const KeySpec& k : recipe::schema())
      if (k.key.size() > section.size() && k.key.substr(0, section.size()) == section &&
          k.key[section.size()] == '.')
        return std::string(k.key);
    return std::string(section);
  }

  void walk_map(const YAML::Node& map, const std::string& prefix) {
    for (const auto& entry : map) {
      const YAML::Node key_node = entry.first;
      const YAML::Node value = entry.second;
      const std::string at = where(key_node.Mark());
      if (!key_node.IsScalar())
        throw Error(at + ": a recipe key must be a plain name, got " + describe(key_node));
      const std::string name = key_node.Scalar();
      const std::string full = prefix.empty() ? name : prefix + "." + name;
      if (const KeySpec* k = recipe::find_key(full)) {
        set_value(*k, value, key_node);
      } else if (recipe::is_section(full)) {
        if (value.IsNull()) continue;  // "eval:" with nothing under it: all defaults
        if (!value.IsMap())
          throw Error(at + ": " + full + ": expected a map of " + full + ".* keys (such as " +
                      example_key(full) + "), got " + describe(value));
        walk_map(value, full);
      } else {
        throw Error(at + ": unknown key '" + full + "'" + suggest_key(full, value.IsMap()));
      }
    }
  }

  void set_value(const KeySpec& k, const YAML::Node& value, const YAML::Node& key_node) {
    const std::string key(k.key);
    const std::string at = where(key_node.Mark());
    auto prev = set_at.find(key);
    if (prev != set_at.end())
      throw Error(at + ": duplicate key '" + key + "' (already set at " + prev->second +
                  "); keep one of them");
    if (k.source_list && value.IsSequence()) {
      set_sources(k, value, at);
      set_at[key] = at;
      return;
    }
    if (k.name_list && value.IsSequence()) {  // [q_proj, v_proj] is the text "q_proj,v_proj"
      std::string joined;
      for (size_t i = 0; i < value.size(); ++i) {
        if (!value[i].IsScalar())
          throw Error(where(value[i].Mark()) + ": " + key + ": list entries must be names, got " +
                      describe(value[i]));
        joined += (i ? "," : "") + value[i].Scalar();
      }
      assign(k, joined, false, Source{where(value.Mark()), base_dir}, &cfg);
      set_at[key] = at;
      return;
    }
    if (value.IsMap() || value.IsSequence())
      throw Error(at + ": " + key + ": expected " + std::string(expected_text(k.type())) +
                  (k.source_list ? " or a list of {path, weight, ...} entries" : "") + ", got " +
                  describe(value));
    // A null value's mark points past the key; the key's position is the useful one.
    const std::string value_at = value.IsNull() ? at : where(value.Mark());
    const std::string text = value.IsNull() ? std::string() : value.Scalar();
    assign(k, text, value.IsNull(), Source{value_at, base_dir}, &cfg);
    if (k.source_list) reset_sources();
    set_at[key] = value_at;
  }

  // A plain path stands for one dataset with weight 1 and the recipe's settings.
  void reset_sources() {
    cfg.data_sources.clear();
    if (!cfg.data_train.empty()) cfg.data_sources.push_back(plain_source(cfg.data_train));
  }

  // data.train as a list: each entry a map of path, weight and per-source data.* keys.
  void set_sources(const KeySpec& k, const YAML::Node& list, const std::string& at) {
    const std::string key(k.key);
    if (list.size() == 0)
      throw Error(at + ": " + key + ": the list is empty; name at least one dataset, for " +
                  "example - {path: train.jsonl}");
    std::vector<DataSource> sources;
    for (size_t i = 0; i < list.size(); ++i) {
      const YAML::Node entry = list[i];
      const std::string name = key + "[" + std::to_string(i) + "]";
      const std::string entry_at = where(entry.Mark());
      if (!entry.IsMap())
        throw Error(entry_at + ": " + name + ": expected a map such as {path: a.jsonl, " +
                    "weight: 2.0}, got " + describe(entry));
      DataSource d;
      std::map<std::string, std::string> seen;
      for (const auto& kv : entry) {
        const std::string kat = where(kv.first.Mark());
        if (!kv.first.IsScalar())
          throw Error(kat + ": " + name + ": a dataset key must be a plain name, got " +
                      describe(kv.first));
        const std::string ek = kv.first.Scalar();
        const std::string full = name + "." + ek;
        if (auto prev = seen.find(ek); prev != seen.end())
          throw Error(kat + ": duplicate key '" + full + "' (already set at " + prev->second +
                      "); keep one of them");
        seen[ek] = kat;
        const YAML::Node v = kv.second;
        const KeySpec* sk = recipe::find_source_key(ek);
        if (ek != "path" && ek != "weight" && !sk)
          throw Error(kat + ": unknown key '" + full + "'; a dataset entry takes " +
                      quote_list(recipe::source_entry_keys()) + suggest_entry_key(ek));
        if (v.IsMap() || v.IsSequence())
          throw Error(kat + ": " + full + ": expected a single value, got " + describe(v));
        const std::string vat = v.IsNull() ? kat : where(v.Mark());
        const std::string text = v.IsNull() ? std::string() : v.Scalar();
        if (ek == "path") {
          if (trim(text).empty())
            throw Error(vat + ": " + full + " is empty; it must name the dataset's JSONL file");
          d.path = normalize_path(text, base_dir).string();
        } else if (ek == "weight") {
          const std::string t = trim(text);
          if (v.IsNull() || !parse_float(t, &d.weight))
            throw Error(vat + ": " + full + ": expected a number, got " +
                        (v.IsNull() ? std::string("an empty value") : "'" + text + "'"));
          if (!(d.weight > 0))
            throw Error(vat + ": " + full + ": " + t + " is out of range; it must be > 0 " +
                        "(leave the dataset out to skip it)");
        } else {
          // Parse with the key's own rules (type, allowed values), then keep it as an override.
          RecipeConfig scratch;
          assign(*sk, text, v.IsNull(), Source{vat, base_dir}, &scratch, full);
          std::visit(
              [&](auto m) {
                if constexpr (!std::is_same_v<decltype(m), std::monostate>) {
                  using T = typename std::decay_t<decltype(d.*m)>::value_type;
                  if constexpr (std::is_same_v<T, DataFormat>)
                    d.*m = scratch.data_format;  // the one enum a dataset may override
                  else
                    d.*m = scratch.*std::get<T RecipeConfig::*>(sk->field);
                }
              },
              sk->per_source);
        }
      }
      if (d.path.empty())
        throw Error(entry_at + ": " + name + ": missing required key 'path' (the dataset's " +
                    "JSONL file)");
      sources.push_back(std::move(d));
    }
    cfg.data_sources = std::move(sources);
    cfg.data_train = cfg.data_sources[0].path;
  }

  void apply_override(const std::string& ov) {
    const std::string label_ov = "command line override '" + ov + "'";
    size_t eq = ov.find('=');
    if (eq == std::string::npos)
      throw Error(label_ov + ": expected key=value, for example train.max_steps=20");
    const std::string key = trim(std::string_view(ov).substr(0, eq));
    const std::string value = std::string(ov.substr(eq + 1));
    if (key.empty()) throw Error(label_ov + ": the key before '=' is empty");
    const KeySpec* k = recipe::find_key(key);
    if (!k) {
      if (recipe::is_section(key))
        throw Error(label_ov + ": '" + key + "' is a section, not a key; override one of its " +
                    "keys, for example " + example_key(key) + "=...");
      throw Error(label_ov + ": unknown key '" + key + "'" + suggest_key(key, false));
    }
    // The shell already stripped any quoting, so the text after '=' is the value itself.
    assign(*k, value, false, Source{label_ov, fs::current_path()}, &cfg);
    if (k->source_list) reset_sources();
    set_at[key] = label_ov;
  }

  void check_complete() const {
    for (const KeySpec& k : recipe::schema()) {
      if (!k.required) continue;
      const std::string key(k.key);
      if (!recipe::value_text(k, cfg).empty()) continue;
      auto at = set_at.find(key);
      if (at == set_at.end())
        throw Error(label + ": missing required key '" + key + "' (" + std::string(k.doc) + ")");
      throw Error(at->second + ": " + key + " is empty; it must name " + std::string(k.doc));
    }
    if (cfg.max_steps > 0 && cfg.warmup_steps >= cfg.max_steps) {
      auto at = set_at.find("schedule.warmup_steps");
      std::string where = at == set_at.end() ? label : at->second;
      throw Error(where + ": schedule.warmup_steps (" + std::to_string(cfg.warmup_steps) +
                  ") must be less than train.max_steps (" + std::to_string(cfg.max_steps) +
                  "); shorten the warmup or raise train.max_steps");
    }
  }
};

// Walks a YAML stream's documents without building them. yaml-cpp 0.7's LoadAll never returns
// on a stream whose document starts with ',' ("," or ",a}"): it yields an empty document
// without consuming the token, again and again, allocating until memory runs out (yaml-cpp issue
// #1040, fixed after 0.8 by PR #1319). A document starting where the previous one did is that
// loop, and is reported as the syntax error it is; found by tests/fuzz/fuzz_recipe.cpp.
struct DocumentWalk : YAML::EventHandler {
  std::optional<int> last_start;
  std::optional<YAML::Mark> stuck;
  void OnDocumentStart(const YAML::Mark& m) override {
    if (last_start == m.pos) stuck = m;
    last_start = m.pos;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

Recipe load_impl(const std::string& yaml, const std::string& label, const fs::path& base_dir,
                 const std::vector<std::string>& overrides) {
  Loader ld;
  ld.label = label;
  ld.base_dir = base_dir;
  std::vector<YAML::Node> docs;
  try {
    std::istringstream in(yaml);
    YAML::Parser parser(in);
    DocumentWalk walk;
    while (parser.HandleNextDocument(walk)) {
      if (walk.stuck) {
        const size_t at = size_t(walk.stuck->pos);
        const std::string what = at < yaml.size() ? "'" + yaml.substr(at, 1) + "'" : "text";
        throw Error(ld.where(*walk.stuck) + ": YAML syntax error: unexpected " + what +
                    " where a value should start");
      }
    }
    docs = YAML::LoadAll(yaml);
  } catch (const YAML::Exception& e) {
    throw Error(ld.where(e.mark) + ": YAML syntax error: " + e.msg);
  }
  if (docs.size() > 1)
    throw Error(label + ": holds " + std::to_string(docs.size()) +
                " YAML documents ('---' separators); a recipe is a single document");
  if (!docs.empty() && !docs[0].IsNull()) {
    const YAML::Node& root = docs[0];
    if (!root.IsMap())
      throw Error(ld.where(root.Mark()) +
                  ": expected a map of recipe keys (such as "
                  "model.path, data.train, output_dir), got " +
                  Loader::describe(root));
    ld.walk_map(root, "");
  }
  for (const std::string& ov : overrides) ld.apply_override(ov);
  ld.check_complete();
  Recipe r;
  r.cfg = ld.cfg;
  r.resolved_yaml = recipe_to_yaml(r.cfg);
  r.identity_yaml = recipe_identity_yaml(r.cfg);
  return r;
}

// Plain YAML scalars that a YAML 1.1 reader would take for null, bool or a number.
bool looks_non_string(const std::string& s) {
  static const char* const kWords[] = {"~",   "null", "true", "false", "yes",   "no",    "on",
                                       "off", "y",    "n",    ".inf",  "-.inf", "+.inf", ".nan"};
  std::string v = lower(s);
  for (const char* w : kWords)
    if (v == w) return true;
  double d;
  if (parse_float(v, &d)) return true;
  return v.size() > 2 && v[0] == '0' && (v[1] == 'x' || v[1] == 'o');
}

std::string yaml_string(const std::string& s) {
  // yaml-cpp writes a string holding a carriage return (or another control character) plain,
  // and a YAML reader takes \r for a line break: such strings are double-quoted, escaped.
  const bool control = std::any_of(s.begin(), s.end(), [](char ch) {
    const auto u = static_cast<unsigned char>(ch);
    return u < 0x20 || u == 0x7f;
  });
  YAML::Emitter e;
  if (control) e << YAML::DoubleQuoted;
  e << s;
  std::string out = e.c_str();
  if (out == s && looks_non_string(s)) {
    YAML::Emitter q;
    q << YAML::DoubleQuoted << s;
    out = q.c_str();
  }
  return out;
}

}  // namespace

std::string recipe_identity_yaml(const RecipeConfig& cfg) {
  const RecipeConfig defaults;
  RecipeConfig c = cfg;
  for (const KeySpec& k : recipe::schema()) {
    if (!k.run_control) continue;
    if (const recipe::EnumField* e = std::get_if<recipe::EnumField>(&k.field))
      e->set(c, e->index(defaults));
    else
      std::visit(
          [&](auto m) {
            if constexpr (!std::is_same_v<decltype(m), recipe::EnumField>) c.*m = defaults.*m;
          },
          k.field);
  }
  return recipe_to_yaml(c);
}

std::vector<std::string> recipe_differences(const RecipeConfig& before, const RecipeConfig& after,
                                            bool run_control) {
  std::vector<std::string> out;
  for (const KeySpec& k : recipe::schema()) {
    if (k.run_control != run_control) continue;
    const std::string a = recipe::value_text(k, before), b = recipe::value_text(k, after);
    if (a != b) {
      out.push_back(std::string(k.key) + ": " + a + " -> " + b);
    } else if (k.source_list && recipe_to_yaml(before) != recipe_to_yaml(after)) {
      // The first path agrees but the list (weights, other entries, their overrides) may not.
      RecipeConfig x = before, y = after;
      x.data_sources.clear();
      y.data_sources.clear();
      if (recipe_to_yaml(x) == recipe_to_yaml(y)) out.push_back(std::string(k.key) + " entries");
    }
  }
  return out;
}

Recipe load_recipe_text(const std::string& yaml, const std::string& label,
                        const std::string& base_dir, const std::vector<std::string>& overrides) {
  fs::path base = base_dir.empty() ? fs::current_path() : fs::absolute(base_dir);
  return load_impl(yaml, label, base.lexically_normal(), overrides);
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw Error("recipe file '" + path + "' is a directory; pass the path of a YAML file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open recipe file '" + path + "': " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error("cannot read recipe file '" + path + "': " + std::strerror(errno));
  fs::path abs = fs::absolute(path).lexically_normal();
  Recipe r = load_impl(text.str(), path, abs.parent_path(), overrides);
  r.source = abs.string();
  return r;
}

const char* method_name(Method m) {
  return m == Method::Lora ? "lora" : "full";
}

const char* sharding_name(Sharding s) {
  switch (s) {
    case Sharding::None:
      return "none";
    case Sharding::Zero1:
      return "zero1";
    case Sharding::Zero2:
      return "zero2";
    case Sharding::Zero3:
      return "zero3";
  }
  return "?";
}

const char* data_format_name(DataFormat f) {
  switch (f) {
    case DataFormat::Text:
      return "text";
    case DataFormat::Instruction:
      return "instruction";
    case DataFormat::Messages:
      return "messages";
    case DataFormat::Preference:
      return "preference";
  }
  return "?";
}

const char* chat_template_name(ChatTemplateChoice t) {
  constexpr const char* kNames[] = {"auto",    "chatml", "llama3", "llama2",
                                    "mistral", "alpaca", "plain"};
  return kNames[int(t)];
}

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::None:
      return "none";
    case Recompute::Mlp:
      return "mlp";
    case Recompute::Full:
      return "full";
  }
  return "?";
}

int64_t recipe_grad_accum(const RecipeConfig& c, int world_size, const std::string& fix) {
  if (c.global_batch_size <= 0) return c.grad_accum;
  const int64_t per = c.micro_batch_size * world_size;
  if (c.global_batch_size % per != 0)
    throw Error("train.global_batch_size (" + std::to_string(c.global_batch_size) +
                " rows) is not a multiple of train.micro_batch_size x ranks (" +
                std::to_string(c.micro_batch_size) + " x " + std::to_string(world_size) +
                "): " + fix);
  return c.global_batch_size / per;
}

bool DataSource::has_overrides() const {
  for (const KeySpec& k : recipe::schema()) {
    const bool set = std::visit(
        [&](auto m) {
          if constexpr (std::is_same_v<decltype(m), std::monostate>) {
            return false;
          } else {
            return (this->*m).has_value();
          }
        },
        k.per_source);
    if (set) return true;
  }
  return false;
}

std::vector<DataSource> recipe_data_sources(const RecipeConfig& cfg) {
  if (!cfg.data_sources.empty() && cfg.data_sources[0].path == cfg.data_train)
    return cfg.data_sources;
  return {plain_source(cfg.data_train)};
}

RecipeConfig recipe_for_source(const RecipeConfig& cfg, const DataSource& src) {
  RecipeConfig out = cfg;
  out.data_train = src.path;
  out.data_sources = {src};
  for (const KeySpec& k : recipe::schema()) {
    std::visit(
        [&](auto m) {
          if constexpr (!std::is_same_v<decltype(m), std::monostate>) {
            using T = typename std::decay_t<decltype(src.*m)>::value_type;
            if constexpr (std::is_same_v<T, DataFormat>) {
              if (src.*m) out.data_format = *(src.*m);
            } else {
              if (src.*m) out.*std::get<T RecipeConfig::*>(k.field) = *(src.*m);
            }
          }
        },
        k.per_source);
  }
  return out;
}

namespace {

// data.train as a YAML list, one map per dataset (weight always, overrides when set).
std::string sources_yaml(const std::vector<DataSource>& sources, const std::string& indent) {
  std::string out;
  for (const DataSource& d : sources) {
    out += indent + "- path: " + yaml_string(d.path) + "\n";
    out += indent + "  weight: " + recipe::format_double(d.weight) + "\n";
    for (const KeySpec& k : recipe::schema()) {
      std::visit(
          [&](auto m) {
            if constexpr (!std::is_same_v<decltype(m), std::monostate>) {
              if (!(d.*m)) return;
              const std::string_view name = k.key.substr(k.key.rfind('.') + 1);
              std::string v;
              if constexpr (std::is_same_v<decltype(*(d.*m)), const bool&>)
                v = *(d.*m) ? "true" : "false";
              else if constexpr (std::is_same_v<decltype(*(d.*m)), const DataFormat&>)
                v = yaml_string(data_format_name(*(d.*m)));
              else
                v = yaml_string(*(d.*m));
              out += indent + "  " + std::string(name) + ": " + v + "\n";
            }
          },
          k.per_source);
    }
  }
  return out;
}

}  // namespace

std::string recipe_to_yaml(const RecipeConfig& cfg) {
  std::string out;
  std::string_view open_section;
  for (const KeySpec& k : recipe::schema()) {
    std::string_view sec = k.section();
    if (!sec.empty() && sec != open_section) out += std::string(sec) + ":\n";
    open_section = sec;
    if (k.source_list) {
      const std::vector<DataSource> sources = recipe_data_sources(cfg);
      if (sources.size() > 1 || sources[0].weight != 1.0 || sources[0].has_overrides()) {
        const std::string indent = sec.empty() ? "  " : "    ";
        out += (sec.empty() ? "" : "  ") + std::string(k.key.substr(sec.size() + !sec.empty())) +
               ":\n" + sources_yaml(sources, indent);
        continue;
      }
    }
    std::string text = recipe::value_text(k, cfg);
    const bool quoted = k.type() == ValueType::kString || k.type() == ValueType::kEnum;
    std::string scalar = quoted ? yaml_string(text) : text;
    if (!sec.empty())
      out += "  " + std::string(k.key.substr(sec.size() + 1));
    else
      out += std::string(k.key);
    out += ": " + scalar + "\n";
  }
  return out;
}

}  // namespace ftune
