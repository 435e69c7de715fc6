#include <cstdio>

#include "engine/cli/commands.h"
#include "engine/trust/manifest.h"

namespace ftune::cli {

void add_verify(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand(
      "verify", "Check an output directory against its provenance manifest (and signature)");
  struct Opts {
    std::string dir, pubkey;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("dir", o->dir, "Output directory holding ftune-manifest.json")->required();
  cmd->add_option("--pubkey", o->pubkey,
                  "Ed25519 public key (PEM); the manifest must then be signed by its private key");
  cmd->footer(
      "Recomputes the SHA-256 of every file and reports missing, changed and unexpected ones;\n"
      "exits 0 only when everything checks out.\n"
      "Examples:\n"
      "  ftune verify runs/quickstart\n"
      "  ftune verify runs/quickstart --pubkey keys/release.pub.pem");
  cmd->callback([o, action] {
    *action = [o] {
      const VerifyReport r = verify_output(o->dir, o->pubkey);
      for (const std::string& p : r.problems) std::printf("%s\n", p.c_str());
      if (!r.ok) {
        std::printf("FAILED: %zu problem%s in %s\n", r.problems.size(),
                    r.problems.size() == 1 ? "" : "s", o->dir.c_str());
        return 1;
      }
      const char* sig = r.signature_ok ? ", signature ok"
                        : r.signed_    ? " (signed; give --pubkey to check the signature)"
                                       : " (unsigned)";
      std::printf("verified %d file%s in %s%s\n", r.files_checked, r.files_checked == 1 ? "" : "s",
                  o->dir.c_str(), sig);
      return 0;
    };
  });
}

}  // namespace ftune::cli
