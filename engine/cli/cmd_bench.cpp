#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "engine/backend/cpu/blas_core.h"
#include "engine/base/error.h"
#include "engine/base/threads.h"
#include "engine/cli/commands.h"
#include "engine/tools/bench.h"

namespace ftune::cli {

namespace {

// Runs one bench in a child process, so each method's peak RSS is its own.
BenchResult run_in_child(const BenchOptions& o) {
  static_assert(std::is_trivially_copyable_v<BenchResult>);
  int fds[2];
  if (pipe(fds) != 0) throw Error("bench: cannot create a pipe");
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) throw Error("bench: cannot fork");
  if (pid == 0) {
    close(fds[0]);
    int code = 0;
    try {
      BenchResult r = run_bench(o);
      code = write(fds[1], &r, sizeof r) == ssize_t(sizeof r) ? 0 : 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ftune: error: %s\n", e.what());
      code = 1;
    }
    _exit(code);
  }
  close(fds[1]);
  BenchResult r;
  const ssize_t got = read(fds[0], &r, sizeof r);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (got != ssize_t(sizeof r) || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw Error("bench: the " + o.method + " run failed");
  return r;
}

nlohmann::json result_json(const BenchOptions& o, const BenchResult& r) {
  return {{"impl", "ftune"},
          {"method", o.method},
          {"threads", o.threads},
          {"shape",
           {{"hidden", o.hidden},
            {"layers", o.layers},
            {"heads", o.heads},
            {"kv_heads", o.kv_heads},
            {"intermediate", o.intermediate},
            {"vocab", o.vocab},
            {"seq", o.seq},
            {"batch", o.batch},
            {"tied", o.tied}}},
          {"params", r.params},
          {"trained_params", r.trained_params},
          {"tokens_per_step", o.batch * o.seq},
          {"step_s", r.step_s},
          {"tokens_per_s", r.tokens_per_s},
          {"gflops_per_s", r.gflops_per_s},
          {"state_mb", r.state_mb},
          {"recompute", o.recompute},
          {"precision", r.bf16 ? "bf16" : "fp32"},
          {"device", o.device},
          {"peak_device_mb", r.peak_device_mb},
          {"peak_tflops", o.peak_tflops},
          {"mfu", r.mfu},
          {"peak_rss_mb", r.peak_rss_mb}};
}

}  // namespace

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
  cmd->add_option("--precision", o->precision,
                  "auto (bf16 on cuda, fp32 on cpu), fp32 or bf16 (bf16 operands on tensor cores, "
                  "fp32 accumulation and master weights)")
      ->check(CLI::IsMember({"auto", "fp32", "bf16"}));
  auto preset = std::make_shared<std::string>();
  cmd->add_option("--preset", *preset,
                  "Named shape (llama-3.2-1b: seq 2048, batch 1); explicit shape flags still win");
  cmd->add_option("--peak-tflops", o->peak_tflops,
                  "The device's dense peak TFLOP/s for this precision, to report MFU");
  cmd->add_option("--method", o->method, "full, lora, or both (each in its own process)")
      ->check(CLI::IsMember({"full", "lora", "both"}));
  cmd->add_option("--recompute", o->recompute, "none, mlp or full (activation recomputation)")
      ->check(CLI::IsMember({"none", "mlp", "full"}));
  cmd->add_option("--lora-rank", o->lora_rank, "Adapter rank for --method lora");
  cmd->add_option("--lora-targets", o->lora_targets, "Adapted linears (all-linear or one name)");
  cmd->add_flag("--untied", *untied, "Separate LM head (default: tied to the embedding)");
  cmd->add_flag("--json", *json, "Print one JSON line");
  cmd->footer(
      "Default shape: ~22M parameters (hidden 512, 6 layers, 8 heads, 4 KV heads, MLP 1408,\n"
      "vocab 8192), seq 256, batch 4. Compare with bench/pytorch_step.py on the same flags.\n"
      "Examples:\n  ftune bench --threads 2\n  ftune bench --method both --lora-rank 16");
  cmd->callback([o, json, untied, preset, cmd, action] {
    // A preset sets the shape; a shape flag given explicitly still wins.
    if (!preset->empty()) {
      BenchOptions shape;
      apply_bench_preset(*preset, &shape);
      auto keep = [&](const char* flag, int64_t* field, int64_t value) {
        if (cmd->count(flag) == 0) *field = value;
      };
      keep("--hidden", &o->hidden, shape.hidden);
      keep("--layers", &o->layers, shape.layers);
      keep("--heads", &o->heads, shape.heads);
      keep("--kv-heads", &o->kv_heads, shape.kv_heads);
      keep("--intermediate", &o->intermediate, shape.intermediate);
      keep("--vocab", &o->vocab, shape.vocab);
      keep("--seq", &o->seq, shape.seq);
      keep("--batch", &o->batch, shape.batch);
      o->rope_theta = shape.rope_theta;
      if (cmd->count("--untied") == 0) *untied = !shape.tied;
    }
    *action = [o, json, untied] {
      o->tied = !*untied;
      std::vector<std::string> methods = {o->method};
      if (o->method == "both") methods = {"full", "lora"};
      std::vector<std::pair<BenchOptions, BenchResult>> runs;
      for (const std::string& m : methods) {
        BenchOptions bo = *o;
        bo.method = m;
        runs.emplace_back(bo, methods.size() > 1 ? run_in_child(bo) : run_bench(bo));
      }
      if (*json) {
        for (const auto& [bo, r] : runs) {
          nlohmann::json j = result_json(bo, r);
          if (bo.device == "cpu") j["gemm"] = gemm_path_line(resolve_threads(bo.threads));
          std::printf("%s\n", j.dump().c_str());
        }
        return 0;
      }
      // Which kernels ran: a generic OpenBLAS core explains a slow number.
      if (o->device == "cpu")
        std::printf("%s\n", gemm_path_line(resolve_threads(o->threads)).c_str());
      std::printf("%-16s", "");
      for (const auto& [bo, r] : runs)
        std::printf(
            " %14s",
            (bo.method == "lora" ? "lora r" + std::to_string(bo.lora_rank) : bo.method).c_str());
      std::printf("\n");
      auto row = [&](const char* name, auto get, const char* f) {
        std::printf("%-16s", name);
        for (const auto& [bo, r] : runs) std::printf(f, get(r));
        std::printf("\n");
      };
      row(
          "parameters", [](const BenchResult& r) { return double(r.params); }, " %14.0f");
      row(
          "trained", [](const BenchResult& r) { return double(r.trained_params); }, " %14.0f");
      row(
          "tokens/step", [&](const BenchResult&) { return double(o->batch * o->seq); }, " %14.0f");
      row(
          "step time (s)", [](const BenchResult& r) { return r.step_s; }, " %14.3f");
      row(
          "tokens/s", [](const BenchResult& r) { return r.tokens_per_s; }, " %14.1f");
      row(
          "GFLOP/s", [](const BenchResult& r) { return r.gflops_per_s; }, " %14.1f");
      row(
          "state (MiB)", [](const BenchResult& r) { return r.state_mb; }, " %14.1f");
      row(
          "peak RSS (MiB)", [](const BenchResult& r) { return r.peak_rss_mb; }, " %14.1f");
      if (o->device != "cpu")
        row(
            "device peak MiB", [](const BenchResult& r) { return r.peak_device_mb; }, " %14.1f");
      if (o->peak_tflops > 0)
        row(
            "MFU (%)", [](const BenchResult& r) { return 100.0 * r.mfu; }, " %14.1f");
      return 0;
    };
  });
}

}  // namespace ftune::cli
