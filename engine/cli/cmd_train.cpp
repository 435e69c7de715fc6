#include <cstdio>

#include "engine/cli/commands.h"
#include "engine/recipe/recipe.h"
#include "engine/train/trainer.h"

namespace ftune::cli {

void add_train(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand("train", "Fine-tune a model as a YAML recipe describes");
  struct Opts {
    std::string recipe;
    std::vector<std::string> overrides;
    bool resume = false, auto_resume = false, force = false, print_config = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("recipe", o->recipe, "Recipe YAML file")->required();
  cmd->add_option("overrides", o->overrides, "Overrides as key=value (e.g. train.max_steps=20)");
  cmd->add_flag("--resume", o->resume, "Continue from output_dir's latest checkpoint");
  cmd->add_flag("--auto-resume", o->auto_resume,
                "Resume if output_dir holds a run of this recipe, else start (batch jobs)");
  cmd->add_flag("--force", o->force, "Replace an earlier run in output_dir");
  cmd->add_flag("--print-config", o->print_config,
                "Print the resolved recipe (every key, overrides applied) and exit");
  cmd->footer(
      "Examples:\n"
      "  ftune train recipes/quickstart.yaml\n"
      "  ftune train recipes/quickstart.yaml optim.lr=1e-4 train.max_steps=50\n"
      "  ftune train recipes/quickstart.yaml --resume\n"
      "Exit status: 0 trained and exported; 75 stopped by SIGTERM, SIGUSR1 or Ctrl-C after\n"
      "writing a checkpoint (resume with --resume; EX_TEMPFAIL, which schedulers requeue);\n"
      "1 an error (a failed checkpoint with checkpoint.on_error: stop, a numeric guard that\n"
      "stops, bad input), the last checkpoint left intact.\n"
      "See docs/recipes.md for every recipe key and docs/reliability.md for crash safety.");
  *action = nullptr;
  cmd->callback([o, action] {
    *action = [o] {
      Recipe r = load_recipe(o->recipe, o->overrides);
      if (o->print_config) {
        std::fputs(r.resolved_yaml.c_str(), stdout);
        return 0;
      }
      TrainOptions t;
      t.resume = o->resume;
      t.auto_resume = o->auto_resume;
      t.force = o->force;
      TrainResult res = run_training(r, t);
      // Stopped by a signal after writing a checkpoint: 75 (EX_TEMPFAIL) tells a scheduler or
      // script that the run is resumable with --resume.
      if (res.stop_signal != 0) return 75;
      if (res.lead && !r.cfg.generate_prompt.empty())
        std::printf("\n--- sample (greedy=%s) ---\n%s%s\n---\n",
                    r.cfg.generate_temperature > 0 ? "no" : "yes", r.cfg.generate_prompt.c_str(),
                    res.generation.c_str());
      return 0;
    };
  });
}

}  // namespace ftune::cli
