#include <cctype>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/cli/commands.h"
#include "engine/recipe/recipe.h"
#include "engine/zero/memory_plan.h"

namespace ftune::cli {

namespace {

// "80GiB", "80 GB", "512MiB", "1.5T", "1073741824": binary units (KiB..TiB, or a bare K/M/G/T),
// decimal ones (kB..TB), or bytes.
uint64_t parse_size(const std::string& text, const std::string& flag) {
  size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  std::string unit;
  for (size_t i = pos; i < text.size(); ++i)
    if (!std::isspace(static_cast<unsigned char>(text[i])))
      unit += char(std::tolower(static_cast<unsigned char>(text[i])));
  const std::pair<const char*, double> units[] = {
      {"", 1},       {"b", 1},        {"k", 0x1p10},   {"kib", 0x1p10}, {"kb", 1e3},
      {"m", 0x1p20}, {"mib", 0x1p20}, {"mb", 1e6},     {"g", 0x1p30},   {"gib", 0x1p30},
      {"gb", 1e9},   {"t", 0x1p40},   {"tib", 0x1p40}, {"tb", 1e12}};
  if (pos > 0 && value > 0 && std::isfinite(value))
    for (const auto& [name, scale] : units)
      if (unit == name) return uint64_t(value * scale);
  throw Error(flag + ": cannot read '" + text + "' as a memory size; write e.g. 80GiB, 141GB or " +
              "40960MiB");
}

std::string human_bytes(double b) {
  char buf[32];
  if (b >= 0x1p30)
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / 0x1p30);
  else if (b >= 0x1p20)
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / 0x1p20);
  else if (b > 0)
    std::snprintf(buf, sizeof buf, "%.1f KiB", b / 0x1p10);
  else
    std::snprintf(buf, sizeof buf, "0");
  return buf;
}

std::string human_seconds(double s) {
  char buf[32];
  if (s == 0)
    std::snprintf(buf, sizeof buf, "0");
  else if (s < 1e-3)
    std::snprintf(buf, sizeof buf, "%.1f us", s * 1e6);
  else if (s < 1)
    std::snprintf(buf, sizeof buf, "%.1f ms", s * 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.2f s", s);
  return buf;
}

std::string grouped(uint64_t n) {
  std::string s = std::to_string(n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

nlohmann::json plan_json(const Plan& p, Sharding recipe_sharding) {
  const PlanInput& in = p.input;
  const bool timed = in.peak_tflops > 0;
  nlohmann::json stages = nlohmann::json::array();
  for (const StagePlan& s : p.stages) {
    nlohmann::json j = {{"stage", sharding_name(s.stage)},
                        {"supported", s.supported},
                        {"recipe", recipe_sharding == s.stage}};
    if (!s.supported) {
      j["why_not"] = s.why_not;
      stages.push_back(j);
      continue;
    }
    const StageMemory& m = s.memory;
    j["memory_bytes"] = {{"weights", m.weights},     {"grads", m.grads},
                         {"optimizer", m.optimizer}, {"activations", m.activations},
                         {"scratch", m.scratch},     {"workspace", m.workspace},
                         {"total", m.total()}};
    j["fits"] = s.fits;
    j["bytes_per_step"] = s.bytes_per_step;
    j["comm_s"] = s.comm_s;
    auto timed_or_null = [&](auto v) { return timed ? nlohmann::json(v) : nlohmann::json(); };
    j["compute_s"] = timed_or_null(s.compute_s);
    j["overlappable_s"] = timed_or_null(s.overlappable_s);
    j["hidden"] = timed_or_null(s.hidden);
    j["step_s"] = timed_or_null(s.step_s);
    stages.push_back(j);
  }
  const ModelConfig& c = in.model;
  return {{"model",
           {{"model_type", c.model_type},
            {"hidden_size", c.hidden_size},
            {"intermediate_size", c.intermediate_size},
            {"num_layers", c.num_layers},
            {"num_heads", c.num_heads},
            {"num_kv_heads", c.num_kv_heads},
            {"vocab_size", c.vocab_size},
            {"tie_word_embeddings", c.tie_word_embeddings}}},
          {"params", p.params},
          {"trained_params", p.trained_params},
          {"method", in.lora ? "lora" : "full"},
          {"world_size", in.world_size},
          {"device", in.device},
          {"precision", precision_name(in.precision)},
          {"micro_batch_size", in.micro_batch_size},
          {"seq_len", in.seq_len},
          {"grad_accum", in.grad_accum},
          {"recompute", in.recompute == Recompute::None  ? "none"
                        : in.recompute == Recompute::Mlp ? "mlp"
                                                         : "full"},
          {"tokens_per_step_per_rank", p.tokens_per_step},
          {"flops_per_step_per_rank", p.flops_per_step},
          {"mem_limit_bytes", in.mem_limit_bytes},
          {"reserve_bytes", p.reserve},
          {"link_gbps", in.link_gbps},
          {"peak_tflops", timed ? nlohmann::json(in.peak_tflops) : nlohmann::json()},
          {"mfu", in.mfu},
          {"stages", stages}};
}

void print_table(const Plan& p, Sharding recipe_sharding, const std::string& gpu,
                 const std::string& config_path) {
  const PlanInput& in = p.input;
  const bool timed = in.peak_tflops > 0;
  const char* rc = in.recompute == Recompute::None  ? "none"
                   : in.recompute == Recompute::Mlp ? "mlp"
                                                    : "full";
  std::printf("model     %s, %s parameters, %s (%s)\n", in.model.model_type.c_str(),
              grouped(p.params).c_str(),
              in.lora ? ("LoRA: " + grouped(p.trained_params) + " trained").c_str() : "all trained",
              config_path.c_str());
  std::printf("batch     per rank: micro-batch %lld x %lld tokens, grad_accum %lld; recompute %s\n",
              (long long)in.micro_batch_size, (long long)in.seq_len, (long long)in.grad_accum, rc);
  std::printf("ranks     %d x %s, %s each, link %g Gbit/s", in.world_size,
              in.device == "cuda" ? gpu.c_str() : "cpu",
              human_bytes(double(in.mem_limit_bytes)).c_str(), in.link_gbps);
  if (timed) std::printf(", %g TFLOP/s peak x MFU %.2f", in.peak_tflops, in.mfu);
  std::printf("\n");
  std::printf("precision %s%s\n", precision_name(in.precision),
              in.precision == Precision::Bf16
                  ? " (bf16 tensor-core compute from fp32 buffers; one rank adds a bf16 weight "
                    "copy)"
                  : "");
  std::printf("\n%-20s", "per rank");
  for (const StagePlan& s : p.stages)
    std::printf(
        " %13s",
        (std::string(sharding_name(s.stage)) + (recipe_sharding == s.stage ? "*" : "")).c_str());
  std::printf("\n");
  auto row = [&](const char* name, auto cell) {
    std::printf("%-20s", name);
    for (const StagePlan& s : p.stages) std::printf(" %13s", s.supported ? cell(s).c_str() : "n/a");
    std::printf("\n");
  };
  auto mem = [&](const char* name, uint64_t StageMemory::*field) {
    row(name, [&](const StagePlan& s) { return human_bytes(double(s.memory.*field)); });
  };
  mem("weights", &StageMemory::weights);
  mem("grads", &StageMemory::grads);
  mem("optimizer", &StageMemory::optimizer);
  mem("activations", &StageMemory::activations);
  mem("scratch", &StageMemory::scratch);
  if (in.device == "cuda") mem("workspace", &StageMemory::workspace);
  row("total", [](const StagePlan& s) { return human_bytes(double(s.memory.total())); });
  const std::string fits_label = "fits in " + human_bytes(double(in.mem_limit_bytes));
  row(fits_label.c_str(), [](const StagePlan& s) { return std::string(s.fits ? "yes" : "NO"); });
  row("bytes moved/step", [](const StagePlan& s) { return human_bytes(s.bytes_per_step); });
  row("comm", [](const StagePlan& s) { return human_seconds(s.comm_s); });
  auto maybe = [&](auto f) {
    return [&, f](const StagePlan& s) { return timed ? f(s) : std::string("-"); };
  };
  row("compute", maybe([](const StagePlan& s) { return human_seconds(s.compute_s); }));
  row("overlappable", maybe([](const StagePlan& s) { return human_seconds(s.overlappable_s); }));
  row("comm hidden?",
      maybe([](const StagePlan& s) { return std::string(s.hidden ? "yes" : "no"); }));
  row("step", maybe([](const StagePlan& s) { return human_seconds(s.step_s); }));

  std::printf("\n");
  for (const StagePlan& s : p.stages)
    if (!s.supported) std::printf("%s: %s\n", sharding_name(s.stage), s.why_not.c_str());
  std::printf("*: the recipe's sharding\n");
  std::printf(
      "export: rank 0 writes the model; a zero3 run streams the weights to it one unit at a "
      "time,\n  which adds nothing to the peak\n"
      "fits: rank 0's total%s within the memory given\n",
      p.reserve ? (" + " + human_bytes(double(p.reserve)) + " for the CUDA context").c_str() : "");
  if (timed)
    std::printf(
        "comm hidden?: whether the communication fits under the compute ftune runs it under "
        "(zero2/zero3\n  with dist.overlap; none and zero1 wait for their collectives); step = "
        "compute + what is not hidden\n");
  else
    std::printf("compute time: give --peak-tflops (the device's dense peak) to predict it\n");
}

}  // namespace

void add_plan(CLI::App& app, Action* action) {
  auto* cmd = app.add_subcommand(
      "plan", "Predict per-rank memory and communication of a recipe for each sharding stage");
  struct Opts {
    std::string recipe, gpu_mem = "80GiB", gpu = "h100", device, precision = "fp32";
    std::vector<std::string> overrides;
    int gpus = 1;
    double link_gbps = 400, peak_tflops = 0, mfu = 0.4;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("recipe", o->recipe, "Recipe YAML file (model.path needs config.json only)")
      ->required();
  cmd->add_option("overrides", o->overrides, "Overrides as key=value (e.g. train.seq_len=4096)");
  cmd->add_option("--gpus,--ranks", o->gpus, "Ranks (GPUs) the job runs on")
      ->required()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--gpu-mem", o->gpu_mem, "Memory per rank (e.g. 80GiB, 141GB)")
      ->capture_default_str();
  cmd->add_option("--link-gbps", o->link_gbps, "Bandwidth per rank between ranks, Gbit/s")
      ->capture_default_str();
  cmd->add_option("--gpu", o->gpu, "GPU kind for the default peak: h100, h200 or a100")
      ->capture_default_str();
  cmd->add_option("--peak-tflops", o->peak_tflops,
                  "Dense peak TFLOP/s per rank (default: the --gpu kind's at --precision)");
  cmd->add_option("--mfu", o->mfu, "Assumed model-FLOPs utilisation, (0, 1]")
      ->capture_default_str();
  cmd->add_option("--precision", o->precision,
                  "fp32, or bf16 (tensor-core compute from fp32 buffers, the CUDA default)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16"}));
  cmd->add_option("--device", o->device,
                  "cuda or cpu (CPU ranks: no GPU workspace); default: the recipe's device, "
                  "cuda when it is auto")
      ->check(CLI::IsMember({"cuda", "cpu"}));
  cmd->add_flag("--json", o->json, "Print the plan as one JSON object");
  cmd->footer(
      "Examples:\n"
      "  ftune plan recipes/quickstart.yaml --gpus 8\n"
      "  ftune plan my.yaml --gpus 16 --gpu-mem 141GiB --gpu h200 --link-gbps 900\n"
      "  ftune plan my.yaml --gpus 2 --device cpu --json\n"
      "See docs/plan.md for the formulas.");
  cmd->callback([o, cmd, action] {
    *action = [o, cmd] {
      Recipe r = load_recipe(o->recipe, o->overrides);
      PlanInput in = plan_input_from_recipe(r.cfg, o->gpus);
      in.device = !o->device.empty()                   ? o->device
                  : r.cfg.device == DeviceSetting::Cpu ? "cpu"
                                                       : "cuda";
      in.precision = parse_precision(o->precision, "--precision");
      in.mem_limit_bytes = parse_size(o->gpu_mem, "--gpu-mem");
      in.link_gbps = o->link_gbps;
      in.mfu = o->mfu;
      if (cmd->count("--peak-tflops") > 0) {
        if (!(o->peak_tflops > 0)) throw Error("--peak-tflops: must be above 0");
        in.peak_tflops = o->peak_tflops;
      } else if (in.device == "cuda") {
        in.peak_tflops = default_peak_tflops(o->gpu, in.precision);
      }
      const Plan p = make_plan(in);
      if (o->json) {
        std::printf("%s\n", plan_json(p, r.cfg.sharding).dump(2).c_str());
        return 0;
      }
      print_table(p, r.cfg.sharding, o->gpu, r.cfg.model_path + "/config.json");
      return 0;
    };
  });
}

}  // namespace ftune::cli
