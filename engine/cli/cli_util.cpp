#include <unistd.h>

#include "engine/base/error.h"
#include "engine/cli/commands.h"

namespace ftune::cli {

std::shared_ptr<KeyOptions> add_key_options(CLI::App* cmd) {
  auto k = std::make_shared<KeyOptions>();
  cmd->add_option("--key-file", k->file, "Key file of encrypted weights (64 hex characters)");
  cmd->add_option("--key-env", k->env, "Environment variable holding that key");
  return k;
}

std::string self_binary() {
  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len <= 0) throw Error("cannot find the ftune binary (/proc/self/exe)");
  return std::string(self, size_t(len));
}

}  // namespace ftune::cli
