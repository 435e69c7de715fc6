#include "engine/tools/bench.h"

#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <random>

#include "engine/base/error.h"
#include "engine/base/threads.h"
#include "engine/device/device.h"
#include "engine/infer/evaluate.h"
#include "engine/model/lora.h"
#include "engine/zero/memory_plan.h"

namespace ftune {

ModelConfig bench_model_config(const BenchOptions& o) {
  nlohmann::json j = {{"model_type", "llama"},
                      {"vocab_size", o.vocab},
                      {"hidden_size", o.hidden},
                      {"intermediate_size", o.intermediate},
                      {"num_hidden_layers", o.layers},
                      {"num_attention_heads", o.heads},
                      {"num_key_value_heads", o.kv_heads},
                      {"max_position_embeddings", std::max<int64_t>(o.seq, 2048)},
                      {"rms_norm_eps", 1e-5},
                      {"rope_theta", o.rope_theta},
                      {"tie_word_embeddings", o.tied},
                      {"initializer_range", 0.02}};
  return parse_model_config(j, "bench shape");
}

void apply_bench_preset(const std::string& name, BenchOptions* o) {
  if (name == "llama-3.2-1b") {
    o->hidden = 2048;
    o->layers = 16;
    o->heads = 32;
    o->kv_heads = 8;
    o->intermediate = 8192;
    o->vocab = 128256;
    o->tied = true;
    o->rope_theta = 500000.0;
    o->seq = 2048;
    o->batch = 1;
    return;
  }
  if (name == "default" || name.empty()) return;
  throw Error("--preset: unknown shape '" + name + "' (known: llama-3.2-1b, default)");
}

BenchResult run_bench(const BenchOptions& o) {
  ModelConfig mc = bench_model_config(o);
  const DeviceChoice dev = resolve_device(o.device);
  auto be = make_backend(dev);
  const Precision precision = resolve_precision(o.precision, dev.kind, "--precision");
  if (precision == Precision::Bf16 && !be->set_bf16_compute(true))
    throw Error("--precision bf16: this GPU has no bf16 tensor cores (sm_80 or newer needed)");
  const int threads = resolve_threads(o.threads);
  omp_set_num_threads(threads);
  std::optional<LoraConfig> lc;
  if (o.method == "lora") {
    lc.emplace();
    lc->rank = o.lora_rank;
    lc->alpha = double(2 * o.lora_rank);
    lc->targets = parse_lora_targets({o.lora_targets}, "--lora-targets");
  } else if (o.method != "full") {
    throw Error("--method: use full or lora");
  }
  Model model(be.get(), mc, o.batch * o.seq, true, lc ? &*lc : nullptr,
              parse_recompute(o.recompute));
  if (precision == Precision::Bf16) be->set_weight_mirror(model.params(), model.num_params());
  model.init_random(1);
  if (lc) model.init_lora(1);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, int32_t(o.vocab - 1));
  std::vector<int32_t> ids(size_t(o.batch * o.seq)), targets(ids.size());
  for (auto& x : ids) x = tok(rng);
  for (auto& x : targets) x = tok(rng);
  Batch b = Batch::from_rows(o.batch, o.seq, ids, targets);
  ExecContext ctx;
  ctx.threads = threads;

  const size_t n_train = model.num_train_params();
  DeviceBuffer<float> m(be.get(), n_train), v(be.get(), n_train);
  ParamSpan span{0, n_train, 0.f};
  std::vector<double> times;
  for (int64_t s = 0; s < o.warmup + o.steps; ++s) {
    if (s == o.warmup) be->take_op_profile();  // only the timed steps count
    auto t0 = std::chrono::steady_clock::now();
    be->zero(model.train_grads(), n_train * sizeof(float));
    model.forward_backward(ctx, b, 1.f / float(b.tokens()));
    AdamWHyper h;
    h.lr = 1e-4f;
    h.step = s + 1;
    be->adamw_step(ctx, model.train_params(), model.train_grads(), m.get(), v.get(), &span, 1, h);
    be->synchronize(ctx);
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s >= o.warmup) times.push_back(dt);
  }
  std::sort(times.begin(), times.end());
  // FTUNE_PROFILE=1: where a step's device time goes, per backend op (stderr, beside the JSON).
  const std::vector<OpTime> prof = be->take_op_profile();
  if (!prof.empty() && o.steps > 0) {
    double total = 0;
    for (const OpTime& t : prof) total += t.ms;
    const double steps = double(o.steps);
    std::fprintf(stderr, "%-20s %10s %10s %7s\n", "op (per step)", "calls", "ms", "share");
    for (const OpTime& t : prof)
      std::fprintf(stderr, "%-20s %10.1f %10.3f %6.1f%%\n", t.op.c_str(), double(t.calls) / steps,
                   t.ms / steps, total > 0 ? 100.0 * t.ms / total : 0.0);
    std::fprintf(stderr, "%-20s %10s %10.3f  (median step %.3f ms)\n", "all ops", "", total / steps,
                 times.empty() ? 0.0 : 1e3 * times[times.size() / 2]);
  }
  BenchResult r;
  r.bf16 = precision == Precision::Bf16;
  for (const auto& e : model.layout().entries()) r.params += int64_t(e.count);
  r.non_embedding_params = r.params - mc.vocab_size * mc.hidden_size * (o.tied ? 1 : 2);
  r.step_s = times.empty() ? 0 : times[times.size() / 2];
  r.tokens_per_s = r.step_s > 0 ? double(b.tokens()) / r.step_s : 0;
  r.gflops_per_s = r.tokens_per_s * flops_per_token(mc, o.seq, lc.has_value()) / 1e9;
  r.trained_params = int64_t(n_train);
  // Base parameters always; one gradient and two moments per trained parameter; with LoRA the
  // adapters themselves too.
  r.state_mb = double(model.num_params() + 3 * n_train + (lc ? n_train : 0)) * 4.0 / (1 << 20);
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  r.peak_rss_mb = double(ru.ru_maxrss) / 1024.0;
  r.peak_device_mb = double(be->peak_allocated_bytes()) / double(1 << 20);
  if (o.peak_tflops > 0) r.mfu = r.gflops_per_s / (o.peak_tflops * 1000.0);
  return r;
}

}  // namespace ftune
