// ftune: fine-tune Llama-family models from YAML recipes.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "engine/backend/cpu/blas_core.h"
#include "engine/base/error.h"
#include "engine/cli/commands.h"

int main(int argc, char** argv) {
  // OpenMP workers that spin between parallel regions steal the cores from OpenBLAS and from
  // anything else on the machine; on a loaded 2-core box that cost up to 10x in tokens/s, while
  // passive waiting measured the same speed on an idle one. libgomp reads the policy before
  // main() runs, so set it and start again (once; the user's own setting always wins).
  bool restart = false;
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    restart = true;
  }
  // OpenBLAS picks its kernels when it loads, too: a CPU newer than the library gets generic
  // ones (4x slower). One restart serves both settings; the restarted process keeps both.
  if (ftune::prepare_blas_core_restart()) restart = true;
  if (restart) {
    execv("/proc/self/exe", argv);  // returns only on failure: carry on with the defaults
    ftune::blas_core_restart_failed();
  }
  CLI::App app{"ftune " FTUNE_VERSION " — fine-tune Llama-family language models from YAML recipes",
               "ftune"};
  app.set_version_flag("--version", std::string("ftune " FTUNE_VERSION " (" FTUNE_GIT_COMMIT ")"));
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  ftune train recipes/quickstart.yaml\n"
      "  ftune train recipes/quickstart.yaml train.max_steps=20 --print-config\n"
      "  ftune eval runs/quickstart/model data/quickstart/val.jsonl\n"
      "  ftune generate runs/quickstart/model --prompt 'Plant: Tomato'\n"
      "  ftune inspect runs/quickstart/model\n"
      "  ftune data preview recipes/quickstart.yaml -n 2\n"
      "  ftune bench --threads 2\n"
      "  ftune plan recipes/quickstart.yaml --gpus 8\n"
      "Run 'ftune COMMAND --help' for each command's options.");
  ftune::cli::Action action;
  ftune::cli::add_train(app, &action);
  ftune::cli::add_eval(app, &action);
  ftune::cli::add_generate(app, &action);
  ftune::cli::add_inspect(app, &action);
  ftune::cli::add_bench(app, &action);
  ftune::cli::add_plan(app, &action);
  ftune::cli::add_diff(app, &action);
  ftune::cli::add_report(app, &action);
  ftune::cli::add_data(app, &action);
  ftune::cli::add_recipe_docs(app, &action);
  ftune::cli::add_tokenize(app, &action);
  ftune::cli::add_merge(app, &action);
  ftune::cli::add_verify(app, &action);
  ftune::cli::add_keygen(app, &action);
  ftune::cli::add_decrypt(app, &action);
  ftune::cli::add_launch(app, &action);
  ftune::cli::add_submit(app, &action);
  ftune::cli::add_status(app, &action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return action ? action() : 0;
  } catch (const ftune::Error& e) {
    std::fprintf(stderr, "ftune: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr,
                 "ftune: error: out of memory; lower train.micro_batch_size or train.seq_len\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ftune: error: %s\n", e.what());
    return 1;
  }
}
