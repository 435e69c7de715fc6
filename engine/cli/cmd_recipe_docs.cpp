#include <cstdio>

#include "engine/cli/commands.h"
#include "engine/recipe/recipe.h"

namespace ftune::cli {

void add_recipe_docs(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand("recipe-docs",
                                 "Print the recipe reference (Markdown) generated from the schema");
  cmd->footer("Example:\n  ftune recipe-docs > docs/recipes.md");
  cmd->callback([action] {
    *action = [] {
      std::fputs(recipe_schema_markdown().c_str(), stdout);
      return 0;
    };
  });
}

}  // namespace ftune::cli
