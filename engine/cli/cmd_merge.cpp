#include <cstdio>
#include <filesystem>
#include <optional>

#include "engine/base/error.h"
#include "engine/cli/commands.h"
#include "engine/device/device.h"
#include "engine/model/hf_export.h"
#include "engine/model/peft_adapter.h"
#include "engine/trust/encryption.h"
#include "engine/trust/manifest.h"
#include "engine/trust/signing.h"

namespace fs = std::filesystem;

namespace ftune::cli {

void add_merge(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand(
      "merge", "Merge a LoRA adapter into its base model and write a Hugging Face model directory");
  struct Opts {
    std::string base, adapter, out, dtype = "auto", sign_key;
    int64_t max_shard_mb = 5000;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  auto keys = add_key_options(cmd);
  cmd->add_option("base", o->base, "Base model directory")->required();
  cmd->add_option("adapter", o->adapter, "PEFT LoRA adapter directory")->required();
  cmd->add_option("out", o->out, "Output model directory")->required();
  cmd->add_option("--dtype", o->dtype, "auto (the base's), f32, bf16 or f16");
  cmd->add_option("--max-shard-mb", o->max_shard_mb, "Largest safetensors shard, in MB");
  cmd->add_option("--sign-key", o->sign_key, "Ed25519 private key (PEM) signing the manifest");
  cmd->add_flag("--force", o->force, "Replace an existing output directory");
  cmd->footer(
      "Examples:\n"
      "  ftune merge base/ runs/lora/adapter merged/\n"
      "  ftune merge base/ runs/lora/adapter merged/ --dtype bf16 --sign-key me.pem");
  cmd->callback([o, keys, action] {
    *action = [o, keys] {
      const std::optional<WeightKey> key = load_key_option(keys->file, keys->env);
      if (fs::exists(o->out) && !(fs::is_directory(o->out) && fs::is_empty(o->out)) && !o->force)
        throw Error("'" + o->out + "' exists; choose another output directory or pass --force");
      if (!o->sign_key.empty()) (void)public_key_sha256(o->sign_key);  // fail before any work
      auto be = make_backend(resolve_device("cpu"));
      DType base_dtype = DType::F32;
      auto model = open_inference_model(be.get(), o->base, o->adapter, 1, true, &base_dtype,
                                        key ? &*key : nullptr);
      export_model_dir(*model, o->base, o->out, resolve_export_dtype(o->dtype, base_dtype),
                       size_t(o->max_shard_mb) * 1000 * 1000, key ? &*key : nullptr);
      nlohmann::json m = provenance_base(o->base, "", {});
      m["method"] = "merge";
      if (key) m["encryption"] = {{"cipher", "AES-256-GCM"}, {"key_id", key_id(*key)}};
      m["output"] = "merged";
      m["adapter"] = {{"path", o->adapter},
                      {"files", file_entries({o->adapter + "/" + kAdapterConfig,
                                              o->adapter + "/" + kAdapterWeights})}};
      write_manifest(o->out, m, o->sign_key);
      std::printf("merged %s into %s: %s\n", o->adapter.c_str(), o->base.c_str(), o->out.c_str());
      return 0;
    };
  });
}

}  // namespace ftune::cli
