#include <cstdio>
#include <nlohmann/json.hpp>

#include "engine/bench.h"
#include "engine/cli/commands.h"

namespace ftune::cli {

void add_bench(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand("bench", "Training-step throughput for a Llama shape");
  auto o = std::make_shared<BenchOptions>();
  auto json = std::make_shared<bool>(false);
  auto untied = std::make_shared<bool>(false);
  cmd->add_option("--hidden", o->hidden, "Hidden size");
  cmd->add_option("--layers", o->layers, "Decoder layers");
  cmd->add_option("--heads", o->heads, "Attention heads");
  cmd->add_option("--kv-heads", o->kv_heads, "Key/value heads");
  cmd->add_option("--intermediate", o->intermediate, "MLP width");
  cmd->add_option("--vocab", o->vocab, "Vocabulary size");
  cmd->add_option("--seq", o->seq, "Sequence length");
  cmd->add_option("--batch", o->batch, "Rows per step");
  cmd->add_option("--steps", o->steps, "Timed steps");
  cmd->add_option("--warmup", o->warmup, "Untimed warmup steps");
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)");
  cmd->add_option("--device", o->device, "cpu or cuda");
  cmd->add_flag("--untied", *untied, "Separate LM head (default: tied to the embedding)");
  cmd->add_flag("--json", *json, "Print one JSON line");
  cmd->footer(
      "Default shape: ~22M parameters (hidden 512, 6 layers, 8 heads, 4 KV heads, MLP 1408,\n"
      "vocab 8192), seq 256, batch 4. Compare with bench/pytorch_step.py on the same flags.\n"
      "Example:\n  ftune bench --threads 2");
  cmd->callback([o, json, untied, action] {
    *action = [o, json, untied] {
      o->tied = !*untied;
      BenchResult r = run_bench(*o);
      if (*json) {
        nlohmann::json j = {{"impl", "ftune"},
                            {"threads", o->threads},
                            {"shape",
                             {{"hidden", o->hidden},
                              {"layers", o->layers},
                              {"heads", o->heads},
                              {"kv_heads", o->kv_heads},
                              {"intermediate", o->intermediate},
                              {"vocab", o->vocab},
                              {"seq", o->seq},
                              {"batch", o->batch},
                              {"tied", o->tied}}},
                            {"params", r.params},
                            {"tokens_per_step", o->batch * o->seq},
                            {"step_s", r.step_s},
                            {"tokens_per_s", r.tokens_per_s},
                            {"gflops_per_s", r.gflops_per_s},
                            {"peak_rss_mb", r.peak_rss_mb}};
        std::printf("%s\n", j.dump().c_str());
      } else {
        std::printf("parameters      %lld\n", static_cast<long long>(r.params));
        std::printf("tokens/step     %lld\n", static_cast<long long>(o->batch * o->seq));
        std::printf("step time       %.3f s (median of %lld)\n", r.step_s,
                    static_cast<long long>(o->steps));
        std::printf("tokens/s        %.1f\n", r.tokens_per_s);
        std::printf("GFLOP/s         %.1f\n", r.gflops_per_s);
        std::printf("peak RSS        %.1f MiB\n", r.peak_rss_mb);
      }
      return 0;
    };
  });
}

}  // namespace ftune::cli
