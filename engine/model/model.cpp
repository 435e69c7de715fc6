#include "engine/model/model.h"

#include <cmath>
#include <random>

#include "engine/base/error.h"
#include "engine/formats/safetensors.h"

namespace ftune {

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::None;
  if (name == "mlp") return Recompute::Mlp;
  if (name == "full") return Recompute::Full;
  throw Error("train.recompute: unknown value '" + name + "' (use none, mlp or full)");
}

// Saved activations (one slot per layer) and backward scratch, sized for max_tokens.
struct Model::Acts {
  int64_t L, N, d, f, q, kv, hq;
  // Layers whose internals (norm outputs, q/k/v, attention, MLP) stay stored for backward: all
  // of them, or one work slot that backward refills (recompute full). Likewise h (recompute mlp).
  int64_t Li, Lh;
  int64_t si(int l) const { return Li == L ? l : 0; }
  int64_t sh(int l) const { return Lh == L ? l : 0; }
  DeviceBuffer<int32_t> ids, targets, positions;
  // per layer, each [L][N x width]
  DeviceBuffer<float> resid, xn1, rstd1, qb, kb, vb, att, lse, resid_mid, xn2, rstd2, gate, up, h;
  DeviceBuffer<float> final_resid, xf, rstdf;
  // scratch
  DeviceBuffer<float> tmp, dres, dxn, datt, dq, dk, dv, dh, dgate, dup;

  Acts(Backend* be, const ModelConfig& c, int64_t n, bool grads, Recompute rc)
      : L(c.num_layers),
        N(n),
        d(c.hidden_size),
        f(c.intermediate_size),
        q(c.q_dim()),
        kv(c.kv_dim()),
        hq(c.num_heads),
        Li(rc == Recompute::Full ? 1 : c.num_layers),
        Lh(rc == Recompute::None ? c.num_layers : 1) {
    ids = DeviceBuffer<int32_t>(be, size_t(N));
    targets = DeviceBuffer<int32_t>(be, size_t(N));
    positions = DeviceBuffer<int32_t>(be, size_t(N));
    auto stored = [&](int64_t layers, int64_t width) {
      return DeviceBuffer<float>(be, size_t(layers * N * width));
    };
    resid = stored(L, d);  // each layer's input: what recomputation starts from
    xn1 = stored(Li, d);
    rstd1 = stored(Li, 1);
    qb = stored(Li, q);
    kb = stored(Li, kv);
    vb = stored(Li, kv);
    att = stored(Li, q);
    lse = stored(Li, hq);
    resid_mid = stored(Li, d);
    xn2 = stored(Li, d);
    rstd2 = stored(Li, 1);
    gate = stored(Li, f);
    up = stored(Li, f);
    h = stored(Lh, f);
    final_resid = DeviceBuffer<float>(be, size_t(N * d));
    xf = DeviceBuffer<float>(be, size_t(N * d));
    rstdf = DeviceBuffer<float>(be, size_t(N));
    tmp = DeviceBuffer<float>(be, size_t(N * std::max(d, q)));
    if (grads) {
      dres = DeviceBuffer<float>(be, size_t(N * d));
      dxn = DeviceBuffer<float>(be, size_t(N * d));
      datt = DeviceBuffer<float>(be, size_t(N * q));
      dq = DeviceBuffer<float>(be, size_t(N * q));
      dk = DeviceBuffer<float>(be, size_t(N * kv));
      dv = DeviceBuffer<float>(be, size_t(N * kv));
      dh = DeviceBuffer<float>(be, size_t(N * f));
      dgate = DeviceBuffer<float>(be, size_t(N * f));
      dup = DeviceBuffer<float>(be, size_t(N * f));
    }
  }
  float* at(const DeviceBuffer<float>& buf, int64_t layer, int64_t width) const {
    return buf.get() + layer * N * width;
  }
};

Model::Model(Backend* be, ModelConfig cfg, int64_t max_tokens, bool with_grads,
             const LoraConfig* lora, Recompute recompute, ShardHooks* shards)
    : be_(be),
      cfg_(std::move(cfg)),
      layout_(cfg_),
      max_tokens_(max_tokens),
      recompute_(recompute),
      shards_(shards) {
  FTUNE_CHECK(!shards || !lora, "sharded gradients are for full fine-tunes");
  if (!shards || !shards->shards_params()) params_ = DeviceBuffer<float>(be_, layout_.total());
  if (with_grads && !lora && !shards) grads_ = DeviceBuffer<float>(be_, layout_.total());
  if (lora) {
    lora_on_ = true;
    lora_cfg_ = *lora;
    lora_layout_ = LoraLayout(cfg_, lora_cfg_);
    lora_params_ = DeviceBuffer<float>(be_, lora_layout_.total());
    if (with_grads) lora_grads_ = DeviceBuffer<float>(be_, lora_layout_.total());
    const int64_t r = lora_cfg_.rank;
    lora_xa_ = DeviceBuffer<float>(be_, size_t(cfg_.num_layers * kLoraTargets * max_tokens * r));
    if (with_grads) lora_dxa_ = DeviceBuffer<float>(be_, size_t(max_tokens * r));
    if (lora_cfg_.dropout > 0) {
      const int64_t widest = std::max({cfg_.hidden_size, cfg_.intermediate_size, cfg_.q_dim()});
      lora_xd_ = DeviceBuffer<float>(be_, size_t(max_tokens * widest));
    }
  }
  std::vector<float> inv = rope_inv_freq(cfg_);
  inv_freq_ = DeviceBuffer<float>(be_, inv.size());
  be_->upload(inv_freq_.get(), inv.data(), inv.size() * sizeof(float));
  a_ = std::make_unique<Acts>(be_, cfg_, max_tokens, with_grads, recompute);
}

Model::~Model() = default;

ModelMemory Model::memory() const {
  ModelMemory m;
  m.weights = params_.bytes() + inv_freq_.bytes() + lora_params_.bytes();
  m.gradients = grads_.bytes() + lora_grads_.bytes();
  const Acts& a = *a_;
  for (const auto* b :
       {&a.resid, &a.xn1, &a.rstd1, &a.qb, &a.kb, &a.vb, &a.att, &a.lse, &a.resid_mid, &a.xn2,
        &a.rstd2, &a.gate, &a.up, &a.h, &a.final_resid, &a.xf, &a.rstdf, &lora_xa_})
    m.activations += b->bytes();
  m.activations += a.ids.bytes() + a.targets.bytes() + a.positions.bytes();
  for (const auto* b : {&a.tmp, &a.dres, &a.dxn, &a.datt, &a.dq, &a.dk, &a.dv, &a.dh, &a.dgate,
                        &a.dup, &lora_dxa_, &lora_xd_})
    m.scratch += b->bytes();
  return m;
}

DType Model::load_weights(const WeightStore& store) {
  std::vector<float> host(layout_.total(), 0.f);
  DType found = DType::F32;
  for (const auto& e : layout_.entries()) {
    const TensorInfo* t = store.find(e.name);
    if (!t && e.kind == ParamKind::Head)
      throw Error("tensor '" + e.name +
                  "' is missing from the model weights (config.json says "
                  "tie_word_embeddings is false, so the LM head must be stored)");
    if (!t) throw Error("tensor '" + e.name + "' is missing from the model weights");
    if (t->shape != e.shape)
      throw Error("tensor '" + e.name + "' has shape " + shape_str(t->shape) + " but config.json " +
                  "implies " + shape_str(e.shape));
    store.read_as(e.name, DType::F32, host.data() + e.offset);
    found = t->dtype;
  }
  params_from_host(host);
  return found;
}

void Model::init_random(uint64_t seed) {
  double std_dev = cfg_.raw.value("initializer_range", 0.02);
  std::vector<float> host(layout_.total(), 0.f);
  for (const auto& e : layout_.entries()) {
    // One stream per tensor, keyed by its position, so init does not depend on traversal order.
    std::mt19937_64 rng(seed * 1000003ull + e.offset);
    std::normal_distribution<float> nd(0.f, float(std_dev));
    float* p = host.data() + e.offset;
    switch (e.kind) {
      case ParamKind::Norm:
        for (size_t i = 0; i < e.count; ++i) p[i] = 1.f;
        break;
      case ParamKind::Bias:
        break;
      default:
        for (size_t i = 0; i < e.count; ++i) p[i] = nd(rng);
    }
  }
  params_from_host(host);
}

std::vector<float> Model::params_to_host() const {
  if (!params_.get() && shards_) return shards_->params_to_host();
  std::vector<float> host(layout_.total());
  be_->download(host.data(), params_.get(), host.size() * sizeof(float));
  return host;
}

void Model::params_from_host(const std::vector<float>& host) {
  FTUNE_CHECK(host.size() == layout_.total(), "parameter count mismatch");
  if (!params_.get() && shards_) return shards_->params_from_host(host);
  be_->upload(params_.get(), host.data(), host.size() * sizeof(float));
}

const float* Model::unit_params(int u) {
  if (!shards_) return params_.get();
  // Sharded runs work unit-local: ZeRO-3 gathers the unit, ZeRO-2 points into whole weights.
  return shards_->shards_params() ? shards_->acquire_params(u)
                                  : params_.get() + layout_.unit(u).begin;
}

void Model::release_unit(int u) {
  if (shards_ && shards_->shards_params()) shards_->release_params(u);
}

void Model::prefetch_unit(int u) {
  if (shards_ && shards_->shards_params()) shards_->prefetch_params(u);
}

float* Model::unit_grads(int u) {
  return shards_ ? shards_->acquire_grads(u) : grads_.get();
}

void Model::unit_grads_done(int u) {
  if (shards_) shards_->grads_done(u);
}

void Model::init_lora(uint64_t seed) {
  FTUNE_CHECK(lora_on_, "model has no adapters");
  std::vector<float> host(lora_layout_.total(), 0.f);
  for (const auto& e : lora_layout_.entries()) {
    if (e.name.find(".lora_A.") == std::string::npos) continue;  // B starts at zero
    std::mt19937_64 rng(seed * 1000003ull + e.offset + 0x10a);
    float* p = host.data() + e.offset;
    if (lora_cfg_.init == LoraInit::Gaussian) {
      std::normal_distribution<float> nd(0.f, float(1.0 / double(lora_cfg_.rank)));
      for (size_t i = 0; i < e.count; ++i) p[i] = nd(rng);
    } else {
      // Kaiming-uniform with a = sqrt(5): bound sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in).
      const float bound = float(1.0 / std::sqrt(double(e.shape[1])));
      std::uniform_real_distribution<float> ud(-bound, bound);
      for (size_t i = 0; i < e.count; ++i) p[i] = ud(rng);
    }
  }
  lora_from_host(host);
}

void Model::load_lora(const SafetensorsReader& r) {
  FTUNE_CHECK(lora_on_, "model has no adapters");
  std::vector<float> host(lora_layout_.total(), 0.f);
  for (const auto& e : lora_layout_.entries()) {
    const TensorInfo* t = r.find(e.name);
    if (!t)
      throw Error(r.path() + ": adapter tensor '" + e.name + "' is missing (does " +
                  "adapter_config.json list the same target_modules and the model the same " +
                  "number of layers?)");
    if (t->shape != e.shape)
      throw Error(r.path() + ": adapter tensor '" + e.name + "' has shape " + shape_str(t->shape) +
                  " but rank and model imply " + shape_str(e.shape));
    r.read_as(*t, DType::F32, host.data() + e.offset);
  }
  for (const auto& t : r.tensors())
    if (!lora_layout_.find(t.name))
      throw Error(r.path() + ": unexpected tensor '" + t.name + "' (not an adapter of this " +
                  "model with these target_modules)");
  lora_from_host(host);
}

std::vector<float> Model::lora_to_host() const {
  std::vector<float> host(lora_layout_.total());
  be_->download(host.data(), lora_params_.get(), host.size() * sizeof(float));
  return host;
}

void Model::lora_from_host(const std::vector<float>& host) {
  FTUNE_CHECK(host.size() == lora_layout_.total(), "adapter parameter count mismatch");
  be_->upload(lora_params_.get(), host.data(), host.size() * sizeof(float));
}

void Model::merge_lora() {
  FTUNE_CHECK(lora_on_, "model has no adapters");
  ExecContext ctx;
  const float s = lora_cfg_.scale();
  const int64_t r = lora_cfg_.rank;
  float* P = params_.get();
  const float* AP = lora_params_.get();
  for (int l = 0; l < lora_layout_.num_layers(); ++l) {
    const LayerOffsets& o = layout_.layer(l);
    const size_t w[kLoraTargets] = {o.q_w, o.k_w, o.v_w, o.o_w, o.gate_w, o.up_w, o.down_w};
    for (int t = 0; t < kLoraTargets; ++t) {
      const LoraSlot& sl = lora_layout_.slot(l, LoraTarget(t));
      if (!sl.active()) continue;
      // W[out, in] += s * B[out, r] A[r, in]
      be_->gemm(ctx, false, false, sl.out, sl.in, r, s, AP + sl.b, r, AP + sl.a, sl.in, 1.f,
                P + w[t], sl.in);
    }
  }
  lora_on_ = false;
  lora_params_.reset();
  lora_grads_.reset();
  lora_xa_.reset();
  lora_dxa_.reset();
  lora_xd_.reset();
}

void Model::upload_batch(const Batch& b) {
  const int64_t n = b.tokens();
  if (n > max_tokens_)
    throw Error("batch of " + std::to_string(n) + " tokens exceeds the model's buffers (" +
                std::to_string(max_tokens_) + ")");
  FTUNE_CHECK(b.ids.size() == size_t(n) && b.positions.size() == size_t(n), "batch shape");
  for (int32_t id : b.ids)
    if (id < 0 || id >= cfg_.vocab_size)
      throw Error("token id " + std::to_string(id) + " is outside the model's vocabulary (" +
                  std::to_string(cfg_.vocab_size) + ")");
  be_->upload(a_->ids.get(), b.ids.data(), size_t(n) * 4);
  be_->upload(a_->positions.get(), b.positions.data(), size_t(n) * 4);
  if (!b.targets.empty()) be_->upload(a_->targets.get(), b.targets.data(), size_t(n) * 4);
}

AttentionShape Model::attn_shape(const Batch& b) const {
  AttentionShape s;
  s.tokens = b.tokens();
  s.q_heads = int(cfg_.num_heads);
  s.kv_heads = int(cfg_.num_kv_heads);
  s.head_dim = int(cfg_.head_dim);
  s.doc_offsets = b.doc_offsets.data();
  s.n_docs = int(b.doc_offsets.size()) - 1;
  s.scale = float(1.0 / std::sqrt(double(cfg_.head_dim)));
  return s;
}

namespace {

// The one place a linear layer is applied, forward and backward: adapters (LoRA) and frozen or
// quantized weights hook in here rather than at every call site.
struct LinearRef {
  size_t w, b;  // offsets into the flat buffers; b may be kNoParam
  int64_t in, out;
  int layer;
  LoraTarget target;
};

}  // namespace

// What a linear call needs to apply adapters: buffers, sizes, and the dropout stream.
struct LoraRun {
  const LoraLayout* layout = nullptr;  // null: no adapters
  const float* params = nullptr;
  float* grads = nullptr;
  float* xa = nullptr;   // saved x A^T, [layer][target][N x r]
  float* dxa = nullptr;  // backward scratch [N x r]
  float* xd = nullptr;   // dropped-out input scratch
  int64_t rank = 0, max_tokens = 0;
  float scale = 1.f, dropout = 0.f;
  uint64_t seed = 0;
  bool training = false;

  const LoraSlot* slot(const LinearRef& l) const {
    if (!layout) return nullptr;
    const LoraSlot& s = layout->slot(l.layer, l.target);
    return s.active() ? &s : nullptr;
  }
  float* saved(const LinearRef& l) const {
    return xa + (size_t(l.layer) * kLoraTargets + size_t(l.target)) * size_t(max_tokens * rank);
  }
  bool drops() const { return training && dropout > 0.f; }
  // One dropout stream per (micro-batch seed, layer, target), recomputed in backward.
  uint64_t drop_seed(const LinearRef& l) const {
    return seed * 0x100000001b3ull + uint64_t(l.layer) * kLoraTargets + uint64_t(l.target) + 1;
  }
};

namespace {

// A layer's offsets relative to `base` (where its unit starts in a sharded run, else 0).
LayerOffsets rebase(LayerOffsets o, size_t base) {
  for (size_t* f :
       {&o.attn_norm, &o.q_w, &o.q_b, &o.k_w, &o.k_b, &o.v_w, &o.v_b, &o.o_w, &o.o_b, &o.mlp_norm,
        &o.gate_w, &o.gate_b, &o.up_w, &o.up_b, &o.down_w, &o.down_b, &o.begin, &o.end})
    if (*f != kNoParam) *f -= base;
  return o;
}

void linear_fwd(Backend* be, const ExecContext& ctx, const float* params, const LoraRun& lr,
                const LinearRef& l, const float* x, float* y, int64_t n) {
  be->linear_forward(ctx, x, params + l.w, l.b == kNoParam ? nullptr : params + l.b, y, n, l.in,
                     l.out);
  const LoraSlot* s = lr.slot(l);
  if (!s) return;
  // y += scale * (drop(x) A^T) B^T, never forming B A.
  const float* xin = x;
  if (lr.drops()) {
    be->dropout(ctx, x, lr.xd, size_t(n * l.in), lr.dropout, lr.drop_seed(l), false);
    xin = lr.xd;
  }
  float* xa = lr.saved(l);
  // The base product above is the base model's call; with B = 0 (fresh adapters) the term added
  // below is exact zeros, so the output is bitwise the base model's.
  be->linear_forward(ctx, xin, lr.params + s->a, nullptr, xa, n, l.in, lr.rank);
  be->gemm(ctx, false, true, n, l.out, lr.rank, lr.scale, xa, lr.rank, lr.params + s->b, lr.rank,
           1.f, y, l.out);
}

// grads may be null (a frozen base): then only dx (and adapter gradients) are computed.
void linear_bwd(Backend* be, const ExecContext& ctx, const float* params, float* grads,
                const LoraRun& lr, const LinearRef& l, const float* dy, const float* x, float* dx,
                int64_t n, bool accumulate_dx) {
  be->linear_backward(ctx, dy, x, params + l.w, dx, grads ? grads + l.w : nullptr,
                      grads && l.b != kNoParam ? grads + l.b : nullptr, n, l.in, l.out,
                      accumulate_dx);
  const LoraSlot* s = lr.slot(l);
  if (!s) return;
  const int64_t r = lr.rank;
  const float* A = lr.params + s->a;
  const float* B = lr.params + s->b;
  const float* xa = lr.saved(l);
  // dB += scale * dy^T (xA^T);  d(xA^T) = scale * dy B
  be->gemm(ctx, true, false, l.out, r, n, lr.scale, dy, l.out, xa, r, 1.f, lr.grads + s->b, r);
  be->gemm(ctx, false, false, n, r, l.out, lr.scale, dy, l.out, B, r, 0.f, lr.dxa, r);
  // dA += d(xA^T)^T drop(x)
  const float* xin = x;
  if (lr.drops()) {
    be->dropout(ctx, x, lr.xd, size_t(n * l.in), lr.dropout, lr.drop_seed(l), false);
    xin = lr.xd;
  }
  be->gemm(ctx, true, false, r, l.in, n, 1.f, lr.dxa, r, xin, l.in, 1.f, lr.grads + s->a, l.in);
  // dx += drop'(d(xA^T) A): the mask applies to the gradient as it did to the input.
  if (lr.drops()) {
    be->gemm(ctx, false, false, n, l.in, r, 1.f, lr.dxa, r, A, l.in, 0.f, lr.xd, l.in);
    be->dropout(ctx, lr.xd, dx, size_t(n * l.in), lr.dropout, lr.drop_seed(l), true);
  } else {
    be->gemm(ctx, false, false, n, l.in, r, 1.f, lr.dxa, r, A, l.in, 1.f, dx, l.in);
  }
}

}  // namespace

LoraRun Model::lora_run(const ExecContext& ctx, bool training) const {
  LoraRun r;
  if (!lora_on_) return r;
  r.layout = &lora_layout_;
  r.params = lora_params_.get();
  r.grads = lora_grads_.get();
  r.xa = lora_xa_.get();
  r.dxa = lora_dxa_.get();
  r.xd = lora_xd_.get();
  r.rank = lora_cfg_.rank;
  r.max_tokens = max_tokens_;
  r.scale = lora_cfg_.scale();
  r.dropout = float(lora_cfg_.dropout);
  r.seed = ctx.seed;
  r.training = training;
  return r;
}

// One decoder layer's forward from its stored input resid[l]; backward calls it again to refill
// the work slots when activations are recomputed: the same calls on the same shapes and inputs,
// so the refilled values (and the gradients) are bitwise those of a run that kept them.
void Model::forward_layer(const ExecContext& ctx, const Batch& b, const LoraRun& lr, int l) {
  Acts& a = *a_;
  const int64_t N = b.tokens(), d = a.d, f = a.f, q = a.q, kv = a.kv;
  const int u = ParamLayout::layer_unit(l);
  const float* P = unit_params(u);
  const float eps = float(cfg_.rms_norm_eps);
  const AttentionShape as = attn_shape(b);
  const int hq = int(cfg_.num_heads), hkv = int(cfg_.num_kv_heads), hd = int(cfg_.head_dim);
  const LayerOffsets o = rebase(layout_.layer(l), unit_begin(u));
  float* x = a.at(a.resid, l, d);
  float* xn1 = a.at(a.xn1, a.si(l), d);
  float* qb = a.at(a.qb, a.si(l), q);
  float* kb = a.at(a.kb, a.si(l), kv);
  float* vb = a.at(a.vb, a.si(l), kv);
  float* att = a.at(a.att, a.si(l), q);
  float* mid = a.at(a.resid_mid, a.si(l), d);
  float* xn2 = a.at(a.xn2, a.si(l), d);
  float* gate = a.at(a.gate, a.si(l), f);
  float* up = a.at(a.up, a.si(l), f);
  float* h = a.at(a.h, a.sh(l), f);
  float* next = l + 1 < a.L ? a.at(a.resid, l + 1, d) : a.final_resid.get();

  be_->rmsnorm_forward(ctx, x, P + o.attn_norm, xn1, a.at(a.rstd1, a.si(l), 1), N, d, eps);
  linear_fwd(be_, ctx, P, lr, {o.q_w, o.q_b, d, q, l, LoraTarget::Q}, xn1, qb, N);
  linear_fwd(be_, ctx, P, lr, {o.k_w, o.k_b, d, kv, l, LoraTarget::K}, xn1, kb, N);
  linear_fwd(be_, ctx, P, lr, {o.v_w, o.v_b, d, kv, l, LoraTarget::V}, xn1, vb, N);
  be_->rope_forward(ctx, qb, a.positions.get(), inv_freq_.get(), N, hq, hd);
  be_->rope_forward(ctx, kb, a.positions.get(), inv_freq_.get(), N, hkv, hd);
  be_->attention_forward(ctx, as, qb, kb, vb, att, a.at(a.lse, a.si(l), hq));
  linear_fwd(be_, ctx, P, lr, {o.o_w, o.o_b, q, d, l, LoraTarget::O}, att, mid, N);
  be_->add_inplace(ctx, mid, x, size_t(N * d));

  be_->rmsnorm_forward(ctx, mid, P + o.mlp_norm, xn2, a.at(a.rstd2, a.si(l), 1), N, d, eps);
  linear_fwd(be_, ctx, P, lr, {o.gate_w, o.gate_b, d, f, l, LoraTarget::Gate}, xn2, gate, N);
  linear_fwd(be_, ctx, P, lr, {o.up_w, o.up_b, d, f, l, LoraTarget::Up}, xn2, up, N);
  be_->swiglu_forward(ctx, gate, up, h, size_t(N * f));
  linear_fwd(be_, ctx, P, lr, {o.down_w, o.down_b, f, d, l, LoraTarget::Down}, h, next, N);
  be_->add_inplace(ctx, next, mid, size_t(N * d));
  release_unit(u);
}

void Model::forward(const ExecContext& ctx, const Batch& b, bool training) {
  upload_batch(b);
  const LoraRun lr = lora_run(ctx, training);
  Acts& a = *a_;
  const int64_t N = b.tokens(), d = a.d;
  const float eps = float(cfg_.rms_norm_eps);
  const int tail = layout_.tail_unit();

  const float* P0 = unit_params(0);
  // Sharded, each unit's gather starts one unit ahead (the hint is the caller's, so a layer
  // recomputed in backward does not prefetch forward).
  prefetch_unit(a.L > 0 ? ParamLayout::layer_unit(0) : tail);
  be_->embedding_forward(ctx, a.ids.get(), P0 + layout_.embed() - unit_begin(0),
                         a.at(a.resid, 0, d), N, d);
  release_unit(0);
  for (int l = 0; l < int(a.L); ++l) {
    prefetch_unit(l + 1 < int(a.L) ? ParamLayout::layer_unit(l + 1) : tail);
    forward_layer(ctx, b, lr, l);
  }
  be_->rmsnorm_forward(ctx, a.final_resid.get(),
                       unit_params(tail) + layout_.final_norm() - unit_begin(tail), a.xf.get(),
                       a.rstdf.get(), N, d, eps);
  release_unit(tail);
}

void Model::backward(const ExecContext& ctx, const Batch& b) {
  Acts& a = *a_;
  const LoraRun lr = lora_run(ctx, true);
  const int64_t N = b.tokens(), d = a.d, f = a.f, q = a.q, kv = a.kv;
  const bool frozen = lora_on_;  // the base has no gradients then, only the adapters
  const AttentionShape as = attn_shape(b);
  const int hq = int(cfg_.num_heads), hkv = int(cfg_.num_kv_heads), hd = int(cfg_.head_dim);
  float* dres = a.dres.get();  // gradient w.r.t. the residual stream, carried down the layers
  float* tmp = a.tmp.get();

  // dres holds d(loss)/d(stream) after the final norm (forward_backward).
  for (int l = int(a.L) - 1; l >= 0; --l) {
    const int u = ParamLayout::layer_unit(l);
    const float* P = unit_params(u);
    if (l > 0) prefetch_unit(ParamLayout::layer_unit(l - 1));
    float* G = frozen ? nullptr : unit_grads(u);
    auto g = [G](size_t off) { return G ? G + off : nullptr; };
    const LayerOffsets o = rebase(layout_.layer(l), unit_begin(u));
    // Recomputation refills what was not kept: the whole layer from its input, or just h.
    if (a.Li != a.L) {
      forward_layer(ctx, b, lr, l);
    } else if (a.Lh != a.L) {
      be_->swiglu_forward(ctx, a.at(a.gate, a.si(l), f), a.at(a.up, a.si(l), f),
                          a.at(a.h, a.sh(l), f), size_t(N * f));
    }
    // MLP block: next = mid + down(swiglu(gate(xn2), up(xn2)))
    linear_bwd(be_, ctx, P, G, lr, {o.down_w, o.down_b, f, d, l, LoraTarget::Down}, dres,
               a.at(a.h, a.sh(l), f), a.dh.get(), N, false);
    be_->swiglu_backward(ctx, a.dh.get(), a.at(a.gate, a.si(l), f), a.at(a.up, a.si(l), f),
                         a.dgate.get(), a.dup.get(), size_t(N * f));
    linear_bwd(be_, ctx, P, G, lr, {o.gate_w, o.gate_b, d, f, l, LoraTarget::Gate}, a.dgate.get(),
               a.at(a.xn2, a.si(l), d), a.dxn.get(), N, false);
    linear_bwd(be_, ctx, P, G, lr, {o.up_w, o.up_b, d, f, l, LoraTarget::Up}, a.dup.get(),
               a.at(a.xn2, a.si(l), d), a.dxn.get(), N, true);
    be_->rmsnorm_backward(ctx, a.dxn.get(), a.at(a.resid_mid, a.si(l), d), P + o.mlp_norm,
                          a.at(a.rstd2, a.si(l), 1), tmp, g(o.mlp_norm), N, d);
    be_->add_inplace(ctx, dres, tmp, size_t(N * d));

    // Attention block: mid = x + o_proj(attn(rope(q(xn1)), rope(k(xn1)), v(xn1)))
    linear_bwd(be_, ctx, P, G, lr, {o.o_w, o.o_b, q, d, l, LoraTarget::O}, dres,
               a.at(a.att, a.si(l), q), a.datt.get(), N, false);
    be_->attention_backward(ctx, as, a.datt.get(), a.at(a.qb, a.si(l), q), a.at(a.kb, a.si(l), kv),
                            a.at(a.vb, a.si(l), kv), a.at(a.att, a.si(l), q),
                            a.at(a.lse, a.si(l), hq), a.dq.get(), a.dk.get(), a.dv.get());
    be_->rope_backward(ctx, a.dq.get(), a.positions.get(), inv_freq_.get(), N, hq, hd);
    be_->rope_backward(ctx, a.dk.get(), a.positions.get(), inv_freq_.get(), N, hkv, hd);
    const float* xn1 = a.at(a.xn1, a.si(l), d);
    linear_bwd(be_, ctx, P, G, lr, {o.q_w, o.q_b, d, q, l, LoraTarget::Q}, a.dq.get(), xn1,
               a.dxn.get(), N, false);
    linear_bwd(be_, ctx, P, G, lr, {o.k_w, o.k_b, d, kv, l, LoraTarget::K}, a.dk.get(), xn1,
               a.dxn.get(), N, true);
    linear_bwd(be_, ctx, P, G, lr, {o.v_w, o.v_b, d, kv, l, LoraTarget::V}, a.dv.get(), xn1,
               a.dxn.get(), N, true);
    be_->rmsnorm_backward(ctx, a.dxn.get(), a.at(a.resid, l, d), P + o.attn_norm,
                          a.at(a.rstd1, a.si(l), 1), tmp, g(o.attn_norm), N, d);
    be_->add_inplace(ctx, dres, tmp, size_t(N * d));
    release_unit(u);
    if (G) unit_grads_done(u);
  }
  if (frozen) return;
  // A tied head's gradient is already in unit 0's buffer (held since the loss).
  float* G0 = unit_grads(0);
  be_->embedding_backward(ctx, a.ids.get(), dres, G0 + layout_.embed() - unit_begin(0), N, d,
                          cfg_.vocab_size);
  unit_grads_done(0);
}

LossSum Model::forward_backward(const ExecContext& ctx, const Batch& b, float grad_scale) {
  FTUNE_CHECK(grads_.get() != nullptr || lora_grads_.get() != nullptr || shards_ != nullptr,
              "model was built without gradients");
  forward(ctx, b, true);
  // The tail (final norm) and head units stay held through the loss into backward; gradients
  // of a tied head go to unit 0's buffer, which backward finishes with the embedding.
  const int hu = layout_.head_unit(), tail = layout_.tail_unit();
  const bool frozen = lora_on_;
  const float* Pt = unit_params(tail);
  float* Gt = frozen ? nullptr : unit_grads(tail);
  const float* H = unit_params(hu) + layout_.head() - unit_begin(hu);
  float* GH = frozen ? nullptr : unit_grads(hu) + layout_.head() - unit_begin(hu);
  LossSum ls = be_->lm_head_loss(ctx, a_->xf.get(), H, a_->targets.get(), b.tokens(),
                                 cfg_.hidden_size, cfg_.vocab_size, grad_scale, a_->dxn.get(), GH);
  release_unit(hu);
  // Through the final norm into the residual stream; the tail is then done.
  const size_t at = layout_.final_norm() - unit_begin(tail);
  be_->rmsnorm_backward(ctx, a_->dxn.get(), a_->final_resid.get(), Pt + at, a_->rstdf.get(),
                        a_->dres.get(), Gt ? Gt + at : nullptr, b.tokens(), cfg_.hidden_size);
  release_unit(tail);
  if (Gt) unit_grads_done(tail);
  backward(ctx, b);
  return ls;
}

LossSum Model::forward_loss(const ExecContext& ctx, const Batch& b) {
  forward(ctx, b, false);
  const int hu = layout_.head_unit();
  LossSum ls = be_->lm_head_loss(
      ctx, a_->xf.get(), unit_params(hu) + layout_.head() - unit_begin(hu), a_->targets.get(),
      b.tokens(), cfg_.hidden_size, cfg_.vocab_size, 1.f, nullptr, nullptr);
  release_unit(hu);
  return ls;
}

std::vector<float> Model::logits(const ExecContext& ctx, const Batch& b) {
  forward(ctx, b, false);
  const int64_t N = b.tokens(), V = cfg_.vocab_size;
  DeviceBuffer<float> out(be_, size_t(N * V));
  const int hu = layout_.head_unit();
  be_->linear_forward(ctx, a_->xf.get(), unit_params(hu) + layout_.head() - unit_begin(hu), nullptr,
                      out.get(), N, cfg_.hidden_size, V);
  release_unit(hu);
  std::vector<float> host(size_t(N * V));
  be_->download(host.data(), out.get(), host.size() * sizeof(float));
  return host;
}

std::vector<float> Model::last_logits(const ExecContext& ctx, const Batch& b) {
  forward(ctx, b, false);
  const int64_t d = cfg_.hidden_size, V = cfg_.vocab_size;
  const int64_t last = b.doc_offsets.size() > 1 ? b.doc_offsets[1] - 1 : b.tokens() - 1;
  DeviceBuffer<float> logits(be_, size_t(V));
  const int hu = layout_.head_unit();
  be_->linear_forward(ctx, a_->xf.get() + last * d,
                      unit_params(hu) + layout_.head() - unit_begin(hu), nullptr, logits.get(), 1,
                      d, V);
  release_unit(hu);
  std::vector<float> host(static_cast<size_t>(V));
  be_->download(host.data(), logits.get(), host.size() * sizeof(float));
  return host;
}

}  // namespace ftune
