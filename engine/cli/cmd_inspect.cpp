#include <cstdio>

#include "engine/cli/commands.h"
#include "engine/tools/inspect.h"

namespace ftune::cli {

void add_inspect(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand("inspect", "Summarise a .safetensors file or a model directory");
  auto path = std::make_shared<std::string>();
  cmd->add_option("path", *path, "A .safetensors file or a Hugging Face model directory")
      ->required();
  cmd->footer("Example:\n  ftune inspect runs/quickstart/model");
  cmd->callback([path, action] {
    *action = [path] {
      std::fputs(inspect_path(*path).c_str(), stdout);
      return 0;
    };
  });
}

}  // namespace ftune::cli
