#include <cstdio>
#include <filesystem>

#include "engine/cli/commands.h"
#include "engine/report/report.h"

namespace ftune::cli {

void add_report(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand(
      "report", "Write OUTPUT_DIR/report.html: curves, weight-change heatmap, provenance, recipe");
  struct Opts {
    std::string dir, pubkey;
    bool no_verify = false, no_diff = false;
  };
  auto o = std::make_shared<Opts>();
  auto keys = add_key_options(cmd);
  cmd->add_option("output_dir", o->dir, "A training run's output_dir")->required();
  cmd->add_option("--pubkey", o->pubkey,
                  "Ed25519 public key (PEM) to check the manifests' signatures against");
  cmd->add_flag("--no-verify", o->no_verify, "Do not recompute the output hashes");
  cmd->add_flag("--no-diff", o->no_diff,
                "Skip the weight-change heatmap (it reads the base and output weights)");
  cmd->footer(
      "One self-contained HTML file (inline SVG, no scripts, no network): open it in any\n"
      "browser. Encrypted outputs need their key for the heatmap (--key-file / --key-env).\n"
      "Examples:\n"
      "  ftune report runs/quickstart\n"
      "  ftune report runs/secret --key-file keys/weights.key --pubkey keys/release.pub.pem");
  cmd->callback([o, keys, action] {
    *action = [o, keys] {
      ReportOptions opt;
      opt.key_file = keys->file;
      opt.key_env = keys->env;
      opt.pubkey = o->pubkey;
      opt.verify = !o->no_verify;
      opt.diff = !o->no_diff;
      const std::string path = write_report(o->dir, opt);
      std::error_code ec;
      const std::filesystem::path abs = std::filesystem::absolute(path, ec);
      std::printf("report written to %s\n", (ec ? path : abs.string()).c_str());
      return 0;
    };
  });
}

}  // namespace ftune::cli
