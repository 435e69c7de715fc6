// The recipe schema table (internal to the recipe loader, its docs generator and its tests).
// Each entry binds one dotted key to one RecipeConfig member; a key's type follows from the
// member's C++ type and its default from RecipeConfig's initialiser, so neither can drift.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "engine/recipe/recipe.h"

namespace ftune::recipe {

enum class ValueType { kString, kInt, kFloat, kBool, kEnum };

// A key that selects behaviour: an enum member of RecipeConfig, written in YAML as one of the
// key's `allowed` names. `index` gives the name of the current value, `set` stores the value the
// name at an index stands for (several names may stand for one value: data.packing's true).
struct EnumField {
  int (*index)(const RecipeConfig&) = nullptr;
  void (*set)(RecipeConfig&, int name_index) = nullptr;
};

// The plain case: the enum's value is the index of its name.
template <auto Member>
EnumField enum_field() {
  return {[](const RecipeConfig& c) { return int(c.*Member); },
          [](RecipeConfig& c, int i) { c.*Member = std::remove_cvref_t<decltype(c.*Member)>(i); }};
}

using FieldRef = std::variant<std::string RecipeConfig::*, int64_t RecipeConfig::*,
                              double RecipeConfig::*, bool RecipeConfig::*, EnumField>;

// The DataSource member a data.* key can be overridden by in a `data.train` list entry.
using SourceFieldRef =
    std::variant<std::monostate, std::optional<std::string> DataSource::*,
                 std::optional<bool> DataSource::*, std::optional<DataFormat> DataSource::*>;

struct Limit {
  double value = 0.0;
  bool inclusive = true;
};

struct KeySpec {
  std::string_view key;  // dotted: "train.seq_len"; top-level keys have no dot
  FieldRef field;
  std::string_view doc;  // one line, lower-case start: it is also quoted inside messages
  bool required = false;
  bool is_path = false;                        // resolved to an absolute, normalized path
  std::vector<std::string_view> allowed = {};  // non-empty: the value must be one of these
  std::optional<Limit> min = {};
  std::optional<Limit> max = {};
  // The key also takes a YAML list of dataset entries ({path, weight, per-source keys}), kept in
  // RecipeConfig::data_sources; `field` then holds the first entry's path.
  bool source_list = false;
  // A string key that also takes a YAML list of names, stored comma-separated.
  bool name_list = false;
  // Set: a data.train list entry may override this key under its last component ("format").
  SourceFieldRef per_source = {};
  // How the run is watched, logged, checkpointed and exported, not what it computes: it may
  // differ when a run is resumed (recipe_identity_yaml leaves it out).
  bool run_control = false;

  ValueType type() const { return static_cast<ValueType>(field.index()); }
  std::string_view section() const;  // "train" for "train.seq_len", "" for top-level keys
};

struct SectionSpec {
  std::string_view name;   // "" is the top level
  std::string_view title;  // heading in docs/recipes.md
  std::string_view doc;
};

// Every key, sections contiguous, in the order print-config and the docs use.
const std::vector<KeySpec>& schema();
// One entry per section of schema(), same order.
const std::vector<SectionSpec>& sections();
const KeySpec* find_key(std::string_view key);
// The key a data.train entry overrides by `name` ("format" -> data.format), or null.
const KeySpec* find_source_key(std::string_view name);
// Names a data.train entry accepts: path, weight, then the per-source keys in schema order.
std::vector<std::string_view> source_entry_keys();
// A top-level section (train) or a group of keys inside one (export.encrypt): what a YAML map
// may stand for.
bool is_section(std::string_view name);

// "string", "path", "int", "float", "bool"; "path or list" for a source_list key.
std::string_view type_name(const KeySpec& k);
// The field's value as plain text (no YAML quoting); floats round-trip exactly.
std::string value_text(const KeySpec& k, const RecipeConfig& cfg);
// "constant, linear, cosine" / ">= 1" / "[0, 1)" / "" when unconstrained.
std::string constraint_text(const KeySpec& k);
// Shortest decimal text that reads back to exactly `v`.
std::string format_double(double v);

}  // namespace ftune::recipe
