#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/cli/commands.h"
#include "engine/trust/encryption.h"

namespace ftune::cli {

namespace {

namespace fs = std::filesystem;

struct DecryptOpts {
  std::string in, out, key_file, key_env;
  bool force = false;
};

// Streams src to dst atomically: other files of a model directory (config, tokenizer, plain
// shards) can be large too.
void copy_file_atomic(const std::string& src, const std::string& dst) {
  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) throw Error("cannot open '" + src + "': " + std::strerror(errno));
  try {
    write_file_atomic_with(dst, [&](int fd) {
      std::vector<char> buf(1 << 20);
      for (;;) {
        ssize_t got = ::read(in, buf.data(), buf.size());
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) throw Error("cannot read '" + src + "': " + std::strerror(errno));
        if (got == 0) break;
        write_all(fd, buf.data(), size_t(got), dst);
      }
    });
  } catch (...) {
    ::close(in);
    throw;
  }
  ::close(in);
}

// The whole file is authenticated in memory before the plain copy is written.
void decrypt_file(const std::string& src, const std::string& dst, const WeightKey& key) {
  auto plain = open_encrypted_file(src, key);
  write_file_atomic(dst,
                    std::string_view(reinterpret_cast<const char*>(plain->data()), plain->size()));
}

int run_decrypt(const DecryptOpts& o) {
  const std::optional<WeightKey> key = load_key_option(o.key_file, o.key_env);
  if (!key) throw Error("ftune decrypt needs the key: --key-file FILE or --key-env VAR");
  std::error_code ec;
  const fs::file_status in_st = fs::status(o.in, ec);
  if (!fs::exists(in_st)) throw Error("'" + o.in + "' does not exist");
  const bool out_exists = fs::exists(fs::status(o.out, ec));
  if (out_exists && !o.force)
    throw Error("'" + o.out + "' already exists; pass --force to overwrite it");
  if (out_exists && fs::equivalent(o.in, o.out, ec))
    throw Error("'" + o.out + "' is the input itself; write the plain copy somewhere else");

  if (!fs::is_directory(in_st)) {
    if (out_exists && fs::is_directory(o.out, ec))
      throw Error("'" + o.out + "' is a directory; give the name of the plain file to write");
    decrypt_file(o.in, o.out, *key);
    std::printf("decrypted %s -> %s\n", o.in.c_str(), o.out.c_str());
    return 0;
  }

  if (out_exists && !fs::is_directory(o.out, ec))
    throw Error("'" + o.out + "' is a file but '" + o.in +
                "' is a directory; give a directory to write into");
  // Writing into the tree being walked would copy the copies.
  const fs::path in_abs = fs::weakly_canonical(o.in), out_abs = fs::weakly_canonical(o.out);
  const auto [mismatch, _] =
      std::mismatch(in_abs.begin(), in_abs.end(), out_abs.begin(), out_abs.end());
  if (mismatch == in_abs.end())
    throw Error("'" + o.out + "' lies inside '" + o.in + "'; write the plain copy somewhere else");
  fs::create_directories(o.out, ec);
  if (ec) throw Error("cannot create directory '" + o.out + "': " + ec.message());

  size_t decrypted = 0, copied = 0;
  for (auto it = fs::recursive_directory_iterator(o.in, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    const fs::path rel = fs::relative(it->path(), o.in);
    const std::string dst = (fs::path(o.out) / rel).string();
    if (it->is_directory()) {
      fs::create_directories(dst, ec);
      if (ec) throw Error("cannot create directory '" + dst + "': " + ec.message());
      continue;
    }
    if (!it->is_regular_file()) continue;
    const std::string src = it->path().string();
    if (is_encrypted_file(src)) {
      decrypt_file(src, dst, *key);
      ++decrypted;
    } else {
      copy_file_atomic(src, dst);
      ++copied;
    }
  }
  if (ec) throw Error("cannot list '" + o.in + "': " + ec.message());
  std::printf("decrypted %zu file%s and copied %zu other%s: %s -> %s\n", decrypted,
              decrypted == 1 ? "" : "s", copied, copied == 1 ? "" : "s", o.in.c_str(),
              o.out.c_str());
  if (decrypted == 0)
    std::printf("note: '%s' held no encrypted files; the copy is the same as the input\n",
                o.in.c_str());
  return 0;
}

}  // namespace

void add_decrypt(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand(
      "decrypt",
      "Write a plain copy of encrypted weights (a .safetensors file or model directory)");
  auto o = std::make_shared<DecryptOpts>();
  cmd->add_option("in", o->in, "Encrypted .safetensors file or model directory")->required();
  cmd->add_option("out", o->out, "Where the plain copy goes; must not exist unless --force")
      ->required();
  auto* kf = cmd->add_option("--key-file", o->key_file, "File holding the key (64 hex characters)");
  auto* ke = cmd->add_option("--key-env", o->key_env, "Environment variable holding the key");
  kf->excludes(ke);
  cmd->add_flag("--force", o->force, "Overwrite OUT (file by file) if it exists");
  cmd->footer(
      "Every encrypted weight file (export.encrypt) is authenticated, then written plain;\n"
      "other files are copied. A file that fails authentication (wrong key, damaged\n"
      "or truncated) is never written.\n"
      "Examples:\n"
      "  ftune decrypt runs/secret/model /tmp/model-plain --key-file secret.key\n"
      "  FTUNE_KEY=... ftune decrypt model.safetensors plain.safetensors --key-env FTUNE_KEY");
  cmd->callback([o, action] { *action = [o] { return run_decrypt(*o); }; });
}

}  // namespace ftune::cli
