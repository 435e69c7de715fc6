#include "engine/train/session.h"

#include <algorithm>
#include <cmath>

#include "engine/base/error.h"
#include "engine/formats/safetensors.h"
#include "engine/train/run_log.h"

namespace ftune {

namespace {

std::vector<ParamSpan> decay_spans(const Model& model, const RecipeConfig& c) {
  // Adapters are all matrices: one span, decayed like weights.
  if (model.has_lora()) return {{0, model.num_train_params(), float(c.weight_decay)}};
  const ParamLayout& lay = model.layout();
  std::vector<ParamSpan> spans;
  for (const auto& e : lay.entries()) {
    float wd = 0.f;
    switch (e.kind) {
      case ParamKind::Weight:
      case ParamKind::Head:
        wd = float(c.weight_decay);
        break;
      case ParamKind::Norm:
      case ParamKind::Bias:
        wd = c.decay_norms_and_biases ? float(c.weight_decay) : 0.f;
        break;
      case ParamKind::Embedding:
        wd = c.decay_embeddings ? float(c.weight_decay) : 0.f;
        break;
    }
    // Merge neighbours with the same decay (alignment padding between them is inert zeros).
    if (!spans.empty() && spans.back().weight_decay == wd) {
      spans.back().count = e.offset + e.count - spans.back().offset;
    } else {
      spans.push_back({e.offset, e.count, wd});
    }
  }
  return spans;
}

size_t lora_param_count(const Model& m) {
  size_t n = 0;
  for (const auto& e : m.lora_layout().entries()) n += e.count;
  return n;
}

}  // namespace

Session build_session(const Job& job, Communicator& comm) {
  const RecipeConfig& c = job.c();
  Backend* be = job.be.get();
  Session s;
  s.mc = load_model_config(c.model_path);
  const ModelConfig& mc = s.mc;
  check_attention_window(mc, c.seq_len, "train.seq_len");
  check_trainable(mc);
  s.tok = Tokenizer::load(c.model_path);
  if (s.tok.vocab_size() > mc.vocab_size)
    throw Error("the tokenizer in '" + c.model_path + "' has " +
                std::to_string(s.tok.vocab_size()) + " tokens but config.json vocab_size is " +
                std::to_string(mc.vocab_size));
  s.lora = recipe_lora_config(c);
  const std::optional<LoraConfig>& lora = s.lora;

  // ---- ranks: ZeRO stage and the global batch ----
  const int world = s.world = comm.world_size();
  const int stage = s.stage = int(c.sharding);  // Sharding::ZeroK is K
  if (stage >= 2 && lora)
    throw Error(std::string("sharding: ") + sharding_name(c.sharding) +
                " splits a full fine-tune's weights and gradients; " +
                "with method: lora use zero1 (the adapters' state is small) or none");
  s.grad_accum = recipe_grad_accum(c, world);

  // ---- model: allocated whole, up front ----
  // Running out of memory is one clear error now, with what to change, rather than a failure
  // mid-run. Where the device says how much is free, `ftune plan`'s prediction for this rank is
  // checked against it first, so the error names every part of what is needed.
  s.precision = resolve_precision(c.precision, job.dev.kind, "precision");
  if (size_t free_b = 0, total_b = 0; be->memory_info(&free_b, &total_b)) {
    PlanInput in = plan_input_from_recipe(c, world);
    in.device = job.dev.kind;
    in.precision = s.precision;
    check_memory_fits(stage_memory(in, c.sharding, comm.rank()), free_b, total_b, job.dev.detail);
  }
  try {
    if (stage >= 2)
      s.zero = std::make_unique<ZeroShards>(be, comm, ParamLayout(mc), stage, job.threads,
                                            c.dist_overlap);
    s.model = std::make_unique<Model>(be, mc, c.micro_batch_size * c.seq_len, true,
                                      lora ? &*lora : nullptr, c.recompute, s.zero.get());
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + "\nthe model does not fit on " + job.dev.detail +
                ": lower train.micro_batch_size or train.seq_len (raise train.grad_accum to keep " +
                "the batch), set train.recompute: full, or use method: lora");
  }
  Model& model = *s.model;
  // bf16 mixed precision: the backend computes products and attention in bf16 from the fp32
  // buffers; one rank keeps a bf16 copy of the weights that the optimizer step refreshes (with
  // several ranks collectives write the weights behind the backend's back, so each product
  // converts its weight instead).
  if (s.precision == Precision::Bf16) {
    if (!be->set_bf16_compute(true))
      throw Error("precision: bf16 needs bf16 tensor cores (an sm_80 or newer GPU), which " +
                  job.dev.detail + " lacks: set precision: fp32");
    if (world == 1 && model.params()) {
      be->set_weight_mirror(model.params(), model.num_params());
      s.bf16_copy_bytes = model.num_params() * 2;
    }
  }
  if (c.model_init == ModelInit::Pretrained) {
    s.base_dtype = model.load_weights(WeightStore::open_dir(c.model_path, job.base_weights_key()));
  } else {
    model.init_random(uint64_t(c.seed));
    s.base_dtype = mc.dtype;
  }
  if (lora) model.init_lora(uint64_t(c.seed));

  // ---- data and schedule ----
  s.data = make_train_data(c, c.model_path, s.tok, job.threads, comm.rank(), comm.world_size(),
                           !job.opt.quiet);
  s.initial_pos = s.data->position();
  s.total_steps = c.max_steps;
  if (s.total_steps <= 0)
    s.total_steps = std::max<int64_t>(
        1,
        int64_t(std::ceil(c.epochs * double(s.data->batches_per_epoch()) / double(s.grad_accum))));
  s.sched = Schedule{c.schedule_kind, c.lr, c.warmup_steps, s.total_steps, c.min_lr_ratio};

  // ---- optimizer state: this rank's slice ----
  s.n_train = model.num_train_params();
  s.sharded = (stage == 1 && world > 1) || stage >= 2;
  s.shard = s.sharded ? shard_range(s.n_train, comm.rank(), world) : ShardRange{0, s.n_train};
  if (s.zero)
    FTUNE_CHECK(s.zero->shard().begin == s.shard.begin && s.zero->shard().end == s.shard.end,
                "ZeRO shard mismatch");
  s.m = DeviceBuffer<float>(be, s.shard.size());
  s.v = DeviceBuffer<float>(be, s.shard.size());
  for (const ParamSpan& p : decay_spans(model, c)) {
    const size_t b = std::max(p.offset, s.shard.begin);
    const size_t e = std::min(p.offset + p.count, s.shard.end);
    if (b < e) s.spans.push_back({b - s.shard.begin, e - b, p.weight_decay});
  }
  // A sharded run's checkpoint: each rank writes its slices, the lead publishes the directory
  // once all have (checkpoint.h); any rank count reads any other's.
  s.slice = ShardSlice{s.shard.begin, s.shard.end, s.n_train, comm.rank(), world};
  return s;
}

void Session::reinit_weights(const Job& job) {
  const RecipeConfig& c = job.c();
  if (lora) {
    model->init_lora(uint64_t(c.seed));  // the base is frozen: only the adapters moved
  } else if (c.model_init == ModelInit::Pretrained) {
    model->load_weights(WeightStore::open_dir(c.model_path, job.base_weights_key()));
  } else {
    model->init_random(uint64_t(c.seed));
  }
}

std::string Session::memory_line() const {
  ModelMemory mm = model->memory();
  if (zero) {
    const ZeroMemory zm = zero->memory();
    mm.weights += zm.weights;
    mm.gradients += zm.gradients;
  }
  const size_t opt_bytes = 2 * shard.size() * sizeof(float);
  auto mib = [](size_t b) { return fmt("%.1f", double(b) / double(1 << 20), 0); };
  return "memory: weights " + mib(mm.weights) + " MiB, gradients " + mib(mm.gradients) +
         " MiB, optimizer " + mib(opt_bytes) + " MiB, activations " + mib(mm.activations) +
         " MiB, scratch " + mib(mm.scratch) + " MiB" +
         (bf16_copy_bytes ? ", bf16 weight copy " + mib(bf16_copy_bytes) + " MiB" : "") + " = " +
         mib(mm.weights + mm.gradients + opt_bytes + mm.activations + mm.scratch +
             bf16_copy_bytes) +
         " MiB";
}

std::string Session::header_line(const Job& job) const {
  return "ftune: " + mc.model_type + " " + std::to_string(model->num_params()) + " parameters" +
         (lora ? " (LoRA: " + std::to_string(lora_param_count(*model)) + " trained)" : "") +
         " on " + job.dev.detail + " (" + std::to_string(job.threads) + " threads, " +
         precision_name(precision) + "); " + data->describe() + "; " + std::to_string(total_steps) +
         " steps";
}

}  // namespace ftune
