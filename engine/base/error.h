// One exception type for every user-facing failure. The message is what the user reads: it
// names the file, line, key or tensor and says what to do. main() prints it and exits non-zero.
#pragma once
#include <stdexcept>
#include <string>

namespace ftune {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Internal invariant broken: a bug in ftune, not in the user's input.
#define FTUNE_CHECK(cond, msg)                                                           \
  do {                                                                                   \
    if (!(cond))                                                                         \
      throw ::ftune::Error(std::string("internal error: ") + (msg) + " (" __FILE__ ":" + \
                           std::to_string(__LINE__) + ")");                              \
  } while (0)

}  // namespace ftune
