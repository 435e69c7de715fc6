#include "engine/model.h"

#include <cmath>
#include <random>

#include "engine/error.h"
#include "engine/safetensors.h"

namespace ftune {

int64_t Batch::target_count() const {
  int64_t n = 0;
  for (int32_t t : targets) n += t != kIgnoreIndex;
  return n;
}

Batch Batch::from_rows(int64_t rows, int64_t seq, std::vector<int32_t> ids,
                       std::vector<int32_t> targets) {
  Batch b;
  b.rows = rows;
  b.seq = seq;
  b.ids = std::move(ids);
  b.targets = std::move(targets);
  b.positions.resize(size_t(rows * seq));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < seq; ++t) b.positions[size_t(r * seq + t)] = int32_t(t);
  for (int64_t r = 0; r <= rows; ++r) b.doc_offsets.push_back(int32_t(r * seq));
  return b;
}

// Saved activations (one slot per layer) and backward scratch, sized for max_tokens.
struct Model::Acts {
  int64_t L, N, d, f, q, kv, hq;
  DeviceBuffer<int32_t> ids, targets, positions;
  // per layer, each [L][N x width]
  DeviceBuffer<float> resid, xn1, rstd1, qb, kb, vb, att, lse, resid_mid, xn2, rstd2, gate, up, h;
  DeviceBuffer<float> final_resid, xf, rstdf;
  // scratch
  DeviceBuffer<float> tmp, dres, dxn, datt, dq, dk, dv, dh, dgate, dup;

  Acts(Backend* be, const ModelConfig& c, int64_t n, bool grads)
      : L(c.num_layers),
        N(n),
        d(c.hidden_size),
        f(c.intermediate_size),
        q(c.q_dim()),
        kv(c.kv_dim()),
        hq(c.num_heads) {
    ids = DeviceBuffer<int32_t>(be, size_t(N));
    targets = DeviceBuffer<int32_t>(be, size_t(N));
    positions = DeviceBuffer<int32_t>(be, size_t(N));
    auto per_layer = [&](int64_t width) { return DeviceBuffer<float>(be, size_t(L * N * width)); };
    resid = per_layer(d);
    xn1 = per_layer(d);
    rstd1 = per_layer(1);
    qb = per_layer(q);
    kb = per_layer(kv);
    vb = per_layer(kv);
    att = per_layer(q);
    lse = per_layer(hq);
    resid_mid = per_layer(d);
    xn2 = per_layer(d);
    rstd2 = per_layer(1);
    gate = per_layer(f);
    up = per_layer(f);
    h = per_layer(f);
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

Model::Model(Backend* be, ModelConfig cfg, int64_t max_tokens, bool with_grads)
    : be_(be), cfg_(std::move(cfg)), layout_(cfg_), max_tokens_(max_tokens) {
  params_ = DeviceBuffer<float>(be_, layout_.total());
  if (with_grads) grads_ = DeviceBuffer<float>(be_, layout_.total());
  std::vector<float> inv = rope_inv_freq(cfg_);
  inv_freq_ = DeviceBuffer<float>(be_, inv.size());
  be_->upload(inv_freq_.get(), inv.data(), inv.size() * sizeof(float));
  a_ = std::make_unique<Acts>(be_, cfg_, max_tokens, with_grads);
}

Model::~Model() = default;

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
  be_->upload(params_.get(), host.data(), host.size() * sizeof(float));
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
  be_->upload(params_.get(), host.data(), host.size() * sizeof(float));
}

std::vector<float> Model::params_to_host() const {
  std::vector<float> host(layout_.total());
  be_->download(host.data(), params_.get(), host.size() * sizeof(float));
  return host;
}

void Model::params_from_host(const std::vector<float>& host) {
  FTUNE_CHECK(host.size() == layout_.total(), "parameter count mismatch");
  be_->upload(params_.get(), host.data(), host.size() * sizeof(float));
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
};

void linear_fwd(Backend* be, const ExecContext& ctx, const float* params, const LinearRef& l,
                const float* x, float* y, int64_t n) {
  be->linear_forward(ctx, x, params + l.w, l.b == kNoParam ? nullptr : params + l.b, y, n, l.in,
                     l.out);
}

void linear_bwd(Backend* be, const ExecContext& ctx, const float* params, float* grads,
                const LinearRef& l, const float* dy, const float* x, float* dx, int64_t n,
                bool accumulate_dx) {
  be->linear_backward(ctx, dy, x, params + l.w, dx, grads + l.w,
                      l.b == kNoParam ? nullptr : grads + l.b, n, l.in, l.out, accumulate_dx);
}

}  // namespace

void Model::forward(const ExecContext& ctx, const Batch& b) {
  upload_batch(b);
  Acts& a = *a_;
  const int64_t N = b.tokens(), d = a.d, f = a.f, q = a.q, kv = a.kv;
  const float* P = params_.get();
  const float eps = float(cfg_.rms_norm_eps);
  const AttentionShape as = attn_shape(b);
  const int hq = int(cfg_.num_heads), hkv = int(cfg_.num_kv_heads), hd = int(cfg_.head_dim);

  be_->embedding_forward(ctx, a.ids.get(), P + layout_.embed(), a.at(a.resid, 0, d), N, d);
  for (int l = 0; l < int(a.L); ++l) {
    const LayerOffsets& o = layout_.layer(l);
    float* x = a.at(a.resid, l, d);
    float* xn1 = a.at(a.xn1, l, d);
    float* qb = a.at(a.qb, l, q);
    float* kb = a.at(a.kb, l, kv);
    float* vb = a.at(a.vb, l, kv);
    float* att = a.at(a.att, l, q);
    float* mid = a.at(a.resid_mid, l, d);
    float* xn2 = a.at(a.xn2, l, d);
    float* gate = a.at(a.gate, l, f);
    float* up = a.at(a.up, l, f);
    float* h = a.at(a.h, l, f);
    float* next = l + 1 < a.L ? a.at(a.resid, l + 1, d) : a.final_resid.get();

    be_->rmsnorm_forward(ctx, x, P + o.attn_norm, xn1, a.at(a.rstd1, l, 1), N, d, eps);
    linear_fwd(be_, ctx, P, {o.q_w, o.q_b, d, q}, xn1, qb, N);
    linear_fwd(be_, ctx, P, {o.k_w, o.k_b, d, kv}, xn1, kb, N);
    linear_fwd(be_, ctx, P, {o.v_w, o.v_b, d, kv}, xn1, vb, N);
    be_->rope_forward(ctx, qb, a.positions.get(), inv_freq_.get(), N, hq, hd);
    be_->rope_forward(ctx, kb, a.positions.get(), inv_freq_.get(), N, hkv, hd);
    be_->attention_forward(ctx, as, qb, kb, vb, att, a.at(a.lse, l, hq));
    linear_fwd(be_, ctx, P, {o.o_w, o.o_b, q, d}, att, mid, N);
    be_->add_inplace(ctx, mid, x, size_t(N * d));

    be_->rmsnorm_forward(ctx, mid, P + o.mlp_norm, xn2, a.at(a.rstd2, l, 1), N, d, eps);
    linear_fwd(be_, ctx, P, {o.gate_w, o.gate_b, d, f}, xn2, gate, N);
    linear_fwd(be_, ctx, P, {o.up_w, o.up_b, d, f}, xn2, up, N);
    be_->swiglu_forward(ctx, gate, up, h, size_t(N * f));
    linear_fwd(be_, ctx, P, {o.down_w, o.down_b, f, d}, h, next, N);
    be_->add_inplace(ctx, next, mid, size_t(N * d));
  }
  be_->rmsnorm_forward(ctx, a.final_resid.get(), P + layout_.final_norm(), a.xf.get(),
                       a.rstdf.get(), N, d, eps);
}

void Model::backward(const ExecContext& ctx, const Batch& b) {
  Acts& a = *a_;
  const int64_t N = b.tokens(), d = a.d, f = a.f, q = a.q, kv = a.kv;
  const float* P = params_.get();
  float* G = grads_.get();
  const AttentionShape as = attn_shape(b);
  const int hq = int(cfg_.num_heads), hkv = int(cfg_.num_kv_heads), hd = int(cfg_.head_dim);
  float* dres = a.dres.get();  // gradient w.r.t. the residual stream, carried down the layers
  float* tmp = a.tmp.get();

  // a.dxn holds d(loss)/d(xf) from lm_head_loss; through the final norm into the stream.
  be_->rmsnorm_backward(ctx, a.dxn.get(), a.final_resid.get(), P + layout_.final_norm(),
                        a.rstdf.get(), dres, G + layout_.final_norm(), N, d);
  for (int l = int(a.L) - 1; l >= 0; --l) {
    const LayerOffsets& o = layout_.layer(l);
    // MLP block: next = mid + down(swiglu(gate(xn2), up(xn2)))
    linear_bwd(be_, ctx, P, G, {o.down_w, o.down_b, f, d}, dres, a.at(a.h, l, f), a.dh.get(), N,
               false);
    be_->swiglu_backward(ctx, a.dh.get(), a.at(a.gate, l, f), a.at(a.up, l, f), a.dgate.get(),
                         a.dup.get(), size_t(N * f));
    linear_bwd(be_, ctx, P, G, {o.gate_w, o.gate_b, d, f}, a.dgate.get(), a.at(a.xn2, l, d),
               a.dxn.get(), N, false);
    linear_bwd(be_, ctx, P, G, {o.up_w, o.up_b, d, f}, a.dup.get(), a.at(a.xn2, l, d), a.dxn.get(),
               N, true);
    be_->rmsnorm_backward(ctx, a.dxn.get(), a.at(a.resid_mid, l, d), P + o.mlp_norm,
                          a.at(a.rstd2, l, 1), tmp, G + o.mlp_norm, N, d);
    be_->add_inplace(ctx, dres, tmp, size_t(N * d));

    // Attention block: mid = x + o_proj(attn(rope(q(xn1)), rope(k(xn1)), v(xn1)))
    linear_bwd(be_, ctx, P, G, {o.o_w, o.o_b, q, d}, dres, a.at(a.att, l, q), a.datt.get(), N,
               false);
    be_->attention_backward(ctx, as, a.datt.get(), a.at(a.qb, l, q), a.at(a.kb, l, kv),
                            a.at(a.vb, l, kv), a.at(a.att, l, q), a.at(a.lse, l, hq), a.dq.get(),
                            a.dk.get(), a.dv.get());
    be_->rope_backward(ctx, a.dq.get(), a.positions.get(), inv_freq_.get(), N, hq, hd);
    be_->rope_backward(ctx, a.dk.get(), a.positions.get(), inv_freq_.get(), N, hkv, hd);
    const float* xn1 = a.at(a.xn1, l, d);
    linear_bwd(be_, ctx, P, G, {o.q_w, o.q_b, d, q}, a.dq.get(), xn1, a.dxn.get(), N, false);
    linear_bwd(be_, ctx, P, G, {o.k_w, o.k_b, d, kv}, a.dk.get(), xn1, a.dxn.get(), N, true);
    linear_bwd(be_, ctx, P, G, {o.v_w, o.v_b, d, kv}, a.dv.get(), xn1, a.dxn.get(), N, true);
    be_->rmsnorm_backward(ctx, a.dxn.get(), a.at(a.resid, l, d), P + o.attn_norm,
                          a.at(a.rstd1, l, 1), tmp, G + o.attn_norm, N, d);
    be_->add_inplace(ctx, dres, tmp, size_t(N * d));
  }
  be_->embedding_backward(ctx, a.ids.get(), dres, G + layout_.embed(), N, d, cfg_.vocab_size);
}

LossSum Model::forward_backward(const ExecContext& ctx, const Batch& b, float grad_scale) {
  FTUNE_CHECK(grads_.get() != nullptr, "model was built without gradients");
  forward(ctx, b);
  const float* P = params_.get();
  LossSum ls = be_->lm_head_loss(ctx, a_->xf.get(), P + layout_.head(), a_->targets.get(),
                                 b.tokens(), cfg_.hidden_size, cfg_.vocab_size, grad_scale,
                                 a_->dxn.get(), grads_.get() + layout_.head());
  backward(ctx, b);
  return ls;
}

LossSum Model::forward_loss(const ExecContext& ctx, const Batch& b) {
  forward(ctx, b);
  return be_->lm_head_loss(ctx, a_->xf.get(), params_.get() + layout_.head(), a_->targets.get(),
                           b.tokens(), cfg_.hidden_size, cfg_.vocab_size, 1.f, nullptr, nullptr);
}

std::vector<float> Model::logits(const ExecContext& ctx, const Batch& b) {
  forward(ctx, b);
  const int64_t N = b.tokens(), V = cfg_.vocab_size;
  DeviceBuffer<float> out(be_, size_t(N * V));
  be_->linear_forward(ctx, a_->xf.get(), params_.get() + layout_.head(), nullptr, out.get(), N,
                      cfg_.hidden_size, V);
  std::vector<float> host(size_t(N * V));
  be_->download(host.data(), out.get(), host.size() * sizeof(float));
  return host;
}

std::vector<float> Model::last_logits(const ExecContext& ctx, const Batch& b) {
  forward(ctx, b);
  const int64_t d = cfg_.hidden_size, V = cfg_.vocab_size;
  const int64_t last = b.doc_offsets.size() > 1 ? b.doc_offsets[1] - 1 : b.tokens() - 1;
  DeviceBuffer<float> logits(be_, size_t(V));
  be_->linear_forward(ctx, a_->xf.get() + last * d, params_.get() + layout_.head(), nullptr,
                      logits.get(), 1, d, V);
  std::vector<float> host(static_cast<size_t>(V));
  be_->download(host.data(), logits.get(), host.size() * sizeof(float));
  return host;
}

}  // namespace ftune
