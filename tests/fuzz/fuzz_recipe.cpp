// Recipe YAML through load_recipe_text; text after the first NUL byte is `key=value` command
// line overrides, one per line. A recipe that loads must load again from its own resolved YAML
// to the same result (print-config output and manifests rely on that).
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/recipe/recipe.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ftune;
  const std::string_view in = fuzz::as_text(data, size);
  const size_t nul = in.find('\0');
  const std::string yaml(in.substr(0, nul));
  std::vector<std::string> overrides;
  if (nul != std::string_view::npos) {
    std::istringstream lines{std::string(in.substr(nul + 1))};
    for (std::string line; std::getline(lines, line);) overrides.push_back(line);
  }
  Recipe r;
  try {
    r = load_recipe_text(yaml, "fuzz.yaml", fuzz::scratch_dir(), overrides);
    for (const DataSource& s : recipe_data_sources(r.cfg)) recipe_for_source(r.cfg, s);
  } catch (const Error&) {
    return 0;
  }
  // Not in the try: an Error here is a round-trip bug, so it must crash the fuzzer.
  const Recipe again = load_recipe_text(r.resolved_yaml, "resolved.yaml", fuzz::scratch_dir());
  if (again.resolved_yaml != r.resolved_yaml) {
    std::fprintf(stderr, "resolved YAML does not round-trip:\n%s\n---- reloaded:\n%s\n",
                 r.resolved_yaml.c_str(), again.resolved_yaml.c_str());
    std::abort();
  }
  return 0;
}
