#include <unistd.h>

#include <cstdio>

#include "engine/base/threads.h"
#include "engine/cli/commands.h"
#include "engine/data/train_data.h"
#include "engine/infer/evaluate.h"
#include "engine/model/lora.h"
#include "engine/text/tokenizer.h"
#include "engine/tools/data_preview.h"

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

  // Tokenizing a big dataset can take a while; doing it ahead (on a CPU node, say) means the
  // training job finds the cache and starts at once.
  auto* prepare = cmd->add_subcommand(
      "prepare", "Tokenize a recipe's data into the cache ahead of training, and summarize it");
  auto p = std::make_shared<Opts>();
  prepare->add_option("recipe", p->recipe, "Recipe YAML file")->required();
  prepare->add_option("overrides", p->overrides, "Overrides as key=value");
  prepare->footer(
      "Examples:\n"
      "  ftune data prepare recipes/quickstart.yaml\n"
      "  ftune data prepare my.yaml data.cache_dir=/scratch/ftune-cache threads=32");
  prepare->callback([p, action] {
    *action = [p] {
      const RecipeConfig c = load_recipe(p->recipe, p->overrides).cfg;
      const Tokenizer tok = Tokenizer::load(c.model_path);
      auto data = make_train_data(c, c.model_path, tok, resolve_threads(c.threads), 0, 1, true);
      std::printf("%s; %lld batches per epoch\n", data->describe().c_str(),
                  static_cast<long long>(data->batches_per_epoch()));
      return 0;
    };
  });
}

}  // namespace ftune::cli
