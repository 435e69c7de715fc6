#include <cstdio>
#include <optional>

#include "engine/base/error.h"
#include "engine/base/threads.h"
#include "engine/cli/commands.h"
#include "engine/data/token_stream.h"
#include "engine/device/device.h"
#include "engine/formats/safetensors.h"
#include "engine/infer/evaluate.h"
#include "engine/model/lora.h"
#include "engine/model/peft_adapter.h"
#include "engine/text/tokenizer.h"
#include "engine/trust/encryption.h"

namespace ftune::cli {

void add_eval(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand("eval", "Loss and perplexity of a model on a JSONL dataset");
  struct Opts {
    std::string model, data, adapter, field = "text", device = "auto";
    bool merged = false;
    int64_t seq = 256, batch = 4, max_batches = 0, threads = 0;
  };
  auto o = std::make_shared<Opts>();
  auto keys = add_key_options(cmd);
  cmd->add_option("model", o->model, "Hugging Face model directory")->required();
  cmd->add_option("data", o->data, "JSONL file, one {\"text\": ...} per line")->required();
  cmd->add_option("--adapter", o->adapter, "LoRA adapter directory (PEFT) applied to the model");
  cmd->add_flag("--merged", o->merged, "Merge the adapter into the weights first");
  cmd->add_option("--text-field", o->field, "JSON field holding the text");
  cmd->add_option("--seq-len", o->seq, "Block length in tokens");
  cmd->add_option("--batch", o->batch, "Blocks per forward pass");
  cmd->add_option("--max-batches", o->max_batches, "Stop after this many batches (0: all)");
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)");
  cmd->add_option("--device", o->device, "auto, cpu or cuda");
  cmd->footer(
      "Examples:\n  ftune eval runs/quickstart/model data/quickstart/val.jsonl --seq-len 128\n"
      "  ftune eval base/ val.jsonl --adapter runs/lora/adapter");
  cmd->callback([o, keys, action] {
    *action = [o, keys] {
      const std::optional<WeightKey> key = load_key_option(keys->file, keys->env);
      auto be = make_backend(resolve_device(o->device));
      ModelConfig mc = load_model_config(o->model);
      check_attention_window(mc, o->seq, "--seq-len");
      Tokenizer tok = Tokenizer::load(o->model);
      auto m = open_inference_model(be.get(), o->model, o->adapter, o->batch * o->seq, o->merged,
                                    nullptr, key ? &*key : nullptr);
      Model& model = *m;
      BlockDataset data(read_jsonl_texts(o->data, o->field), tok, o->seq);
      if (data.num_blocks() == 0)
        throw ftune::Error("'" + o->data + "' holds fewer than --seq-len tokens; lower --seq-len");
      EvalResult r = evaluate(model, data, o->batch, o->max_batches, resolve_threads(o->threads));
      std::printf("loss %.4f  perplexity %.3f  tokens %lld\n", r.loss, r.perplexity,
                  static_cast<long long>(r.tokens));
      return 0;
    };
  });
}

}  // namespace ftune::cli
