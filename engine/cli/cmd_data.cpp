#include <unistd.h>

#include <cstdio>

#include "engine/cli/commands.h"
#include "engine/data_preview.h"

namespace ftune::cli {

void add_data(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand("data", "Inspect how a recipe's data will be trained on");
  cmd->require_subcommand(1);
  auto* preview = cmd->add_subcommand(
      "preview", "Show records rendered as the recipe formats them, trained spans marked");
  struct Opts {
    std::string recipe;
    std::vector<std::string> overrides;
    int64_t count = 3;
  };
  auto o = std::make_shared<Opts>();
  preview->add_option("recipe", o->recipe, "Recipe YAML file")->required();
  preview->add_option("overrides", o->overrides, "Overrides as key=value");
  preview->add_option("-n,--count", o->count, "Records to show");
  preview->footer(
      "Examples:\n"
      "  ftune data preview recipes/quickstart.yaml -n 2\n"
      "  ftune data preview my.yaml data.train_on_inputs=true");
  preview->callback([o, action] {
    *action = [o] {
      PreviewOptions p;
      p.count = o->count;
      p.color = isatty(fileno(stdout)) != 0;
      std::fputs(preview_data(load_recipe(o->recipe, o->overrides).cfg, p).c_str(), stdout);
      return 0;
    };
  });
}

}  // namespace ftune::cli
