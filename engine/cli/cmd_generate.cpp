#include <cstdio>
#include <optional>

#include "engine/base/threads.h"
#include "engine/cli/commands.h"
#include "engine/device/device.h"
#include "engine/formats/safetensors.h"
#include "engine/infer/evaluate.h"
#include "engine/infer/generate.h"
#include "engine/model/lora.h"
#include "engine/model/peft_adapter.h"
#include "engine/trust/encryption.h"

namespace ftune::cli {

void add_generate(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand("generate", "Continue a prompt with a model");
  struct Opts {
    std::string model, adapter, prompt, device = "auto";
    bool merged = false;
    int64_t max_new = 64, threads = 0, context = 512;
    double temperature = 0.0, top_p = 1.0;
    uint64_t seed = 0;
  };
  auto o = std::make_shared<Opts>();
  auto keys = add_key_options(cmd);
  cmd->add_option("model", o->model, "Hugging Face model directory")->required();
  cmd->add_option("-p,--prompt", o->prompt, "Prompt text")->required();
  cmd->add_option("--adapter", o->adapter, "LoRA adapter directory (PEFT) applied to the model");
  cmd->add_flag("--merged", o->merged, "Merge the adapter into the weights first");
  cmd->add_option("-n,--max-new-tokens", o->max_new, "Tokens to generate");
  cmd->add_option("-t,--temperature", o->temperature, "0 for greedy decoding");
  cmd->add_option("--top-p", o->top_p, "Nucleus sampling mass");
  cmd->add_option("--seed", o->seed, "Sampling seed");
  cmd->add_option("--context", o->context, "Context window in tokens");
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)");
  cmd->add_option("--device", o->device, "auto, cpu or cuda");
  cmd->footer(
      "Examples:\n"
      "  ftune generate runs/quickstart/model -p 'Plant: Tomato'\n"
      "  ftune generate runs/quickstart/model -p 'Once upon a time' -t 0.8 --top-p 0.95\n"
      "  ftune generate base/ --adapter runs/lora/adapter -p 'Plant: Basil'");
  cmd->callback([o, keys, action] {
    *action = [o, keys] {
      const std::optional<WeightKey> key = load_key_option(keys->file, keys->env);
      auto be = make_backend(resolve_device(o->device));
      ModelConfig mc = load_model_config(o->model);
      Tokenizer tok = Tokenizer::load(o->model);
      const int64_t window = std::min<int64_t>(o->context, mc.max_position_embeddings);
      auto m = open_inference_model(be.get(), o->model, o->adapter, window, o->merged, nullptr,
                                    key ? &*key : nullptr);
      Model& model = *m;
      GenerateOptions g;
      g.max_new_tokens = o->max_new;
      g.temperature = o->temperature;
      g.top_p = o->top_p;
      g.seed = o->seed;
      g.context_window = window;
      std::string text = generate_text(model, tok, o->prompt, g, resolve_threads(o->threads));
      std::printf("%s%s\n", o->prompt.c_str(), text.c_str());
      return 0;
    };
  });
}

}  // namespace ftune::cli
