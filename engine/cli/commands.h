// Each ftune subcommand registers itself on the CLI11 app; main() runs whichever was chosen.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>

namespace ftune::cli {

// --key-file / --key-env on a command that reads encrypted weights (load them with
// load_key_option(file, env), encryption.h).
struct KeyOptions {
  std::string file, env;
};
std::shared_ptr<KeyOptions> add_key_options(CLI::App* cmd);
// The running ftune binary (ranks and batch jobs start this same build).
std::string self_binary();

// Registers a subcommand; the returned action runs it and gives the process exit code.
using Action = std::function<int()>;
void add_train(CLI::App& app, Action* action);
void add_eval(CLI::App& app, Action* action);
void add_generate(CLI::App& app, Action* action);
void add_inspect(CLI::App& app, Action* action);
void add_bench(CLI::App& app, Action* action);
void add_plan(CLI::App& app, Action* action);
void add_diff(CLI::App& app, Action* action);
void add_report(CLI::App& app, Action* action);
void add_recipe_docs(CLI::App& app, Action* action);
void add_data(CLI::App& app, Action* action);
void add_tokenize(CLI::App& app, Action* action);
void add_merge(CLI::App& app, Action* action);
void add_verify(CLI::App& app, Action* action);
void add_keygen(CLI::App& app, Action* action);
void add_decrypt(CLI::App& app, Action* action);
void add_launch(CLI::App& app, Action* action);
void add_submit(CLI::App& app, Action* action);
void add_status(CLI::App& app, Action* action);

}  // namespace ftune::cli
