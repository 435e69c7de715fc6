// Training-step throughput for a Llama shape on a backend, with random weights and tokens:
// tokens/s, achieved GFLOP/s (6N + attention, see flops_per_token) and peak RSS.
#pragma once
#include <cstdint>
#include <string>

#include "engine/model/model_config.h"

namespace ftune {

struct BenchOptions {
  int64_t hidden = 512, layers = 6, heads = 8, kv_heads = 4, intermediate = 1408, vocab = 8192;
  int64_t seq = 256, batch = 4, steps = 5, warmup = 2;
  bool tied = true;
  int threads = 0;
  std::string device = "cpu";
  std::string method = "full";  // full | lora (frozen base, adapters on lora_targets)
  int64_t lora_rank = 16;
  std::string lora_targets = "all-linear";
  double rope_theta = 10000.0;
  std::string recompute = "none";  // train.recompute
  std::string precision = "auto";  // precision (auto: bf16 on cuda, fp32 on cpu)
  double peak_tflops = 0;  // the device's dense peak for this precision: MFU is reported when set
};

// Named shapes: "llama-3.2-1b" (hidden 2048, 16 layers, 32/8 heads, MLP 8192, vocab 128256, tied,
// seq 2048, batch 1). Throws ftune::Error naming the known presets.
void apply_bench_preset(const std::string& name, BenchOptions* o);

struct BenchResult {
  bool bf16 = false;  // the precision that ran (trivially copyable: sent back from a child)
  int64_t params = 0, non_embedding_params = 0;
  double step_s = 0;  // median over timed steps
  double tokens_per_s = 0;
  double gflops_per_s = 0;
  double peak_rss_mb = 0;
  int64_t trained_params = 0;  // what the optimizer updates
  double state_mb = 0;         // parameters + gradients + AdamW moments, as allocated
  double peak_device_mb = 0;   // backend buffers' high-water mark (GPU); 0 on the CPU
  double mfu = 0;              // achieved / peak FLOP/s (0 unless peak_tflops is set)
};

ModelConfig bench_model_config(const BenchOptions& o);
BenchResult run_bench(const BenchOptions& o);

}  // namespace ftune
