#include <cstdio>

#include "engine/base/error.h"
#include "engine/cli/commands.h"
#include "engine/trust/signing.h"

namespace ftune::cli {

void add_keygen(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand(
      "keygen", "Make an Ed25519 key pair for signing outputs, or an AES-256 key file");
  struct Opts {
    std::string sign, encrypt;
  };
  auto o = std::make_shared<Opts>();
  auto* sign = cmd->add_option(
      "--sign", o->sign, "Write an Ed25519 pair: PREFIX.pem (private, 0600) and PREFIX.pub.pem");
  cmd->add_option("--encrypt", o->encrypt,
                  "Write a 32-byte AES key as 64 hex characters to FILE (0600)")
      ->excludes(sign);
  cmd->footer(
      "Never overwrites an existing file.\n"
      "Examples:\n"
      "  ftune keygen --sign keys/release\n"
      "  ftune keygen --encrypt keys/data.key");
  cmd->callback([o, action] {
    *action = [o] {
      if (o->sign.empty() == o->encrypt.empty())
        throw Error(
            "keygen: give one of --sign PREFIX (an Ed25519 signing key pair) or "
            "--encrypt FILE (an AES-256 key file)");
      if (!o->encrypt.empty()) {
        generate_aes_key_file(o->encrypt);
        std::printf("wrote %s (AES-256 key, mode 0600; keep it secret)\n", o->encrypt.c_str());
        return 0;
      }
      // "--sign keys/release.pem" most likely means the prefix keys/release.
      std::string prefix = o->sign;
      if (prefix.size() > 4 && prefix.compare(prefix.size() - 4, 4, ".pem") == 0)
        prefix.resize(prefix.size() - 4);
      const std::string priv = prefix + ".pem", pub = prefix + ".pub.pem";
      generate_signing_keypair(priv, pub);
      std::printf(
          "wrote %s (private, mode 0600; keep it secret) and %s (public)\n"
          "public key sha256: %s\n"
          "sign outputs with the recipe key export.sign_key: %s\n"
          "check them with: ftune verify OUTPUT_DIR --pubkey %s\n",
          priv.c_str(), pub.c_str(), public_key_sha256(pub).c_str(), priv.c_str(), pub.c_str());
      return 0;
    };
  });
}

}  // namespace ftune::cli
