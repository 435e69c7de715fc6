#include "engine/cli/commands.h"

namespace ftune::cli {

// Registered once implemented (issue #4).
void add_keygen(CLI::App&, Action*) {}

}  // namespace ftune::cli
