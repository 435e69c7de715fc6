#include <cstdio>
#include <optional>

#include "engine/cli/commands.h"
#include "engine/report/diff.h"
#include "engine/trust/encryption.h"

namespace ftune::cli {

void add_diff(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand(
      "diff", "What a fine-tune changed: per-tensor, per-layer and per-module weight changes");
  struct Opts {
    std::string base, derived;
    bool json = false;
    int top = 10, top_singular = 8;
    int64_t svd_max = 4 * 1024 * 1024;
  };
  auto o = std::make_shared<Opts>();
  auto keys = add_key_options(cmd);
  cmd->add_option("base", o->base, "Base model directory")->required();
  cmd->add_option("derived", o->derived, "Fine-tuned model directory or PEFT LoRA adapter")
      ->required();
  cmd->add_flag("--json", o->json, "Machine-readable output (every tensor, groups, heatmap)");
  cmd->add_option("--top", o->top, "Most changed tensors to list")->check(CLI::NonNegativeNumber);
  cmd->add_option("--singular", o->top_singular, "Singular values kept per matrix")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--svd-max-elements", o->svd_max,
                  "Full fine-tunes: spectra of matrices up to this many elements (0: none)")
      ->check(CLI::NonNegativeNumber);
  cmd->footer(
      "Per tensor: ||dW||, ||dW||/||W||, cosine(W, W+dW), max|dW|, and for matrices the top\n"
      "singular values of dW and its effective rank (90% of the energy). A LoRA adapter's\n"
      "dW = scale B A is analysed through its r x r core, never formed whole.\n"
      "Examples:\n"
      "  ftune diff base/ runs/full/model\n"
      "  ftune diff base/ runs/lora/adapter --json > diff.json");
  cmd->callback([o, keys, action] {
    *action = [o, keys] {
      const std::optional<WeightKey> key = load_key_option(keys->file, keys->env);
      DiffOptions opt;
      opt.svd_max_elements = o->svd_max;
      opt.top_singular = o->top_singular;
      opt.base_key = opt.derived_key = key ? &*key : nullptr;
      const DiffReport r = diff_models(o->base, o->derived, opt);
      if (o->json)
        std::printf("%s\n", diff_to_json(r).dump(2).c_str());
      else
        std::printf("%s", diff_to_text(r, o->top).c_str());
      return 0;
    };
  });
}

}  // namespace ftune::cli
