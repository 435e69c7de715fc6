#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/cli/commands.h"

namespace ftune::cli {

// `ftune launch -n N train recipe.yaml ...` starts N local ranks through mpirun: each rank runs
// this same ftune with the rest of the command line, and finds its place from mpirun's
// environment (launch_env.h).
void add_launch(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand("launch", "Run an ftune command as N local ranks (mpirun)");
  auto n = std::make_shared<int>(2);
  cmd->add_option("-n,--ranks", *n, "Number of ranks")->check(CLI::Range(1, 4096));
  cmd->allow_extras();
  cmd->prefix_command();
  cmd->footer(
      "Everything after the options is the ftune command each rank runs.\n"
      "Examples:\n"
      "  ftune launch -n 2 train recipes/quickstart.yaml data.packing=pack\n"
      "  ftune launch -n 4 train my.yaml threads=8");
  cmd->callback([n, cmd, action] {
    std::vector<std::string> rest = cmd->remaining();
    *action = [n, rest]() -> int {
      if (rest.empty()) throw Error("launch: give the ftune command to run, e.g. `train r.yaml`");
      std::vector<std::string> args = {"mpirun", "-np", std::to_string(*n), "--bind-to", "none"};
      // OpenMPI refuses root without this, and more ranks than cores without oversubscribe.
      if (geteuid() == 0) args.push_back("--allow-run-as-root");
      args.push_back("--oversubscribe");
      args.push_back(self_binary());
      args.insert(args.end(), rest.begin(), rest.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execvp("mpirun", argv.data());
      throw Error(std::string("launch: cannot run mpirun: ") + std::strerror(errno) +
                  " (Debian: apt-get install openmpi-bin)");
    };
  });
}

}  // namespace ftune::cli
