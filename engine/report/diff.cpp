#include "engine/report/diff.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/formats/safetensors.h"
#include "engine/model/lora.h"
#include "engine/model/model_config.h"
#include "engine/model/peft_adapter.h"

#ifndef FTUNE_NO_BLAS
extern "C" void dgesdd_(const char* jobz, const int* m, const int* n, double* a, const int* lda,
                        double* s, double* u, const int* ldu, double* vt, const int* ldvt,
                        double* work, const int* lwork, int* iwork, int* info);
#endif

namespace ftune {

const std::vector<std::string>& DiffReport::modules() {
  static const std::vector<std::string> m = {"q",  "k",    "v",         "o",       "gate",
                                             "up", "down", "attn_norm", "mlp_norm"};
  return m;
}

namespace {

// Layer and module kind from a Hugging Face tensor name.
void classify(const std::string& name, int* layer, std::string* module) {
  *layer = -1;
  *module = "other";
  const std::string pre = "model.layers.";
  if (name.rfind(pre, 0) == 0) {
    size_t end = name.find('.', pre.size());
    *layer = std::atoi(name.substr(pre.size(), end - pre.size()).c_str());
    static const std::pair<const char*, const char*> kinds[] = {
        {".q_proj.", "q"},
        {".k_proj.", "k"},
        {".v_proj.", "v"},
        {".o_proj.", "o"},
        {".gate_proj.", "gate"},
        {".up_proj.", "up"},
        {".down_proj.", "down"},
        {".input_layernorm.", "attn_norm"},
        {".post_attention_layernorm.", "mlp_norm"}};
    for (const auto& [needle, kind] : kinds)
      if (name.find(needle) != std::string::npos) *module = kind;
    return;
  }
  if (name.find("embed_tokens") != std::string::npos) *module = "embed";
  if (name.find("lm_head") != std::string::npos) *module = "head";
  if (name == "model.norm.weight") *module = "final_norm";
}

// Cyclic Jacobi rotations on a symmetric n x n matrix (row-major), in place: the diagonal ends up
// holding the eigenvalues, and V (when given, n x n) the eigenvectors as columns. The plain
// reference beside LAPACK, and the path of builds without it.
void jacobi_eigen(std::vector<double>& a, int64_t n, std::vector<double>* V) {
  auto at = [n](std::vector<double>& x, int64_t i, int64_t j) -> double& {
    return x[size_t(i * n + j)];
  };
  if (V) {
    V->assign(size_t(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i) at(*V, i, i) = 1;
  }
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0, diag = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) (i == j ? diag : off) += at(a, i, j) * at(a, i, j);
    if (off <= 1e-30 * std::max(diag, 1e-300)) break;
    for (int64_t p = 0; p < n; ++p)
      for (int64_t q = p + 1; q < n; ++q) {
        const double apq = at(a, p, q);
        if (apq == 0) continue;
        const double theta = (at(a, q, q) - at(a, p, p)) / (2 * apq);
        const double t = (theta >= 0 ? 1 : -1) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        auto rotate = [c, s](double& x, double& y) {
          const double xp = x, yq = y;
          x = c * xp - s * yq;
          y = s * xp + c * yq;
        };
        for (int64_t k = 0; k < n; ++k) {
          rotate(at(a, k, p), at(a, k, q));  // columns p, q
          if (V) rotate(at(*V, k, p), at(*V, k, q));
        }
        for (int64_t k = 0; k < n; ++k) rotate(at(a, p, k), at(a, q, k));  // rows p, q
      }
  }
}

std::vector<double> sym_eigenvalues(std::vector<double> a, int64_t n) {
  jacobi_eigen(a, n, nullptr);
  std::vector<double> ev(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ev[size_t(i)] = a[size_t(i * n + i)];
  return ev;
}

// Singular values from the smaller Gram matrix (the reference path).
std::vector<double> singular_values_gram(const std::vector<double>& m, int64_t rows, int64_t cols) {
  const bool by_cols = cols <= rows;
  const int64_t n = by_cols ? cols : rows, k = by_cols ? rows : cols;
  std::vector<double> g(size_t(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) {
      double s = 0;
      for (int64_t t = 0; t < k; ++t)
        s += by_cols ? m[size_t(t * cols + i)] * m[size_t(t * cols + j)]
                     : m[size_t(i * cols + t)] * m[size_t(j * cols + t)];
      g[size_t(i * n + j)] = g[size_t(j * n + i)] = s;
    }
  std::vector<double> ev = sym_eigenvalues(std::move(g), n);
  for (double& e : ev) e = std::sqrt(std::max(0.0, e));
  std::sort(ev.rbegin(), ev.rend());
  return ev;
}

}  // namespace

std::vector<double> singular_values(const std::vector<double>& m, int64_t rows, int64_t cols) {
  FTUNE_CHECK(m.size() == size_t(rows * cols), "matrix size");
  if (rows == 0 || cols == 0) return {};
#ifndef FTUNE_NO_BLAS
  // Row-major rows x cols is column-major cols x rows: the same singular values.
  std::vector<double> a = m;
  const int M = int(cols), N = int(rows), lda = M, one = 1;
  std::vector<double> s(size_t(std::min(M, N)));
  std::vector<int> iwork(size_t(8 * std::min(M, N)));
  int info = 0, lwork = -1;
  double query = 0;
  dgesdd_("N", &M, &N, a.data(), &lda, s.data(), nullptr, &one, nullptr, &one, &query, &lwork,
          iwork.data(), &info);
  lwork = int(query);
  std::vector<double> work(size_t(std::max(lwork, 1)));
  dgesdd_("N", &M, &N, a.data(), &lda, s.data(), nullptr, &one, nullptr, &one, work.data(), &lwork,
          iwork.data(), &info);
  if (info == 0) return s;  // descending
#endif
  return singular_values_gram(m, rows, cols);
}

std::vector<double> lora_singular_values(const std::vector<double>& B, const std::vector<double>& A,
                                         int64_t out, int64_t in, int64_t r, double scale) {
  // With G = B^T B = V D V^T, B = U D^1/2 V^T (U orthonormal on B's range), so s B A has the
  // singular values of s G^1/2 A, i.e. the square roots of the eigenvalues of the symmetric
  // s^2 G^1/2 (A A^T) G^1/2: all r x r work.
  std::vector<double> G(size_t(r * r), 0.0), H(size_t(r * r), 0.0);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < r; ++j) {
      double g = 0, h = 0;
      for (int64_t t = 0; t < out; ++t) g += B[size_t(t * r + i)] * B[size_t(t * r + j)];
      for (int64_t t = 0; t < in; ++t) h += A[size_t(i * in + t)] * A[size_t(j * in + t)];
      G[size_t(i * r + j)] = g;
      H[size_t(i * r + j)] = h;
    }
  // G^1/2 through G's eigenvectors.
  std::vector<double> a = G, V;
  jacobi_eigen(a, r, &V);
  auto at = [&](std::vector<double>& x, int64_t i, int64_t j) -> double& {
    return x[size_t(i * r + j)];
  };
  // S = G^1/2 = V diag(sqrt(max(ev, 0))) V^T; M = s^2 S H S (symmetric PSD, r x r).
  std::vector<double> S(size_t(r * r), 0.0), T(size_t(r * r), 0.0), M(size_t(r * r), 0.0);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < r; ++j) {
      double v = 0;
      for (int64_t k = 0; k < r; ++k)
        v += at(V, i, k) * std::sqrt(std::max(0.0, at(a, k, k))) * at(V, j, k);
      at(S, i, j) = v;
    }
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < r; ++j) {
      double v = 0;
      for (int64_t k = 0; k < r; ++k) v += at(S, i, k) * at(H, k, j);
      at(T, i, j) = v;
    }
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < r; ++j) {
      double v = 0;
      for (int64_t k = 0; k < r; ++k) v += at(T, i, k) * at(S, k, j);
      at(M, i, j) = scale * scale * v;
    }
  for (int64_t i = 0; i < r; ++i)  // symmetrise rounding
    for (int64_t j = i + 1; j < r; ++j)
      at(M, i, j) = at(M, j, i) = 0.5 * (at(M, i, j) + at(M, j, i));
  std::vector<double> ev = sym_eigenvalues(std::move(M), r);
  for (double& e : ev) e = std::sqrt(std::max(0.0, e));
  std::sort(ev.rbegin(), ev.rend());
  return ev;
}

int effective_rank(const std::vector<double>& s, double energy) {
  double total = 0;
  for (double x : s) total += x * x;
  if (total <= 0) return 0;
  double acc = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    acc += s[i] * s[i];
    if (acc >= energy * total * (1 - 1e-12)) return int(i + 1);
  }
  return int(s.size());
}

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::vector<double> read_double(const WeightStore& st, const std::string& name) {
  const TensorInfo* t = st.find(name);
  std::vector<float> f(size_t(t->numel()));
  st.read_as(name, DType::F32, f.data());
  return std::vector<double>(f.begin(), f.end());
}

void keep_top(TensorDiff& d, std::vector<double> s, int top) {
  d.effective_rank_90 = effective_rank(s);
  if (int(s.size()) > top) s.resize(size_t(top));
  d.singular = std::move(s);
}

void aggregate(DiffReport& r) {
  std::map<std::string, DiffGroup> layers, modules;
  std::vector<std::vector<std::pair<double, double>>> cells;  // (base^2, delta^2) per cell
  const auto& kinds = DiffReport::modules();
  for (const TensorDiff& t : r.tensors) r.num_layers = std::max(r.num_layers, t.layer + 1);
  cells.assign(size_t(r.num_layers),
               std::vector<std::pair<double, double>>(kinds.size(), {-1.0, 0.0}));
  for (const TensorDiff& t : r.tensors) {
    const std::string lk = t.layer >= 0 ? std::to_string(t.layer) : t.module;
    for (auto* g : {&layers[lk], &modules[t.module]}) {
      g->key = g == &layers[lk] ? lk : t.module;
      // Norms combine as square roots of summed squares.
      g->base_norm = std::hypot(g->base_norm, t.base_norm);
      g->delta_norm = std::hypot(g->delta_norm, t.delta_norm);
      g->tensors++;
      g->changed += t.changed();
    }
    auto k = std::find(kinds.begin(), kinds.end(), t.module);
    if (t.layer >= 0 && k != kinds.end()) {
      auto& c = cells[size_t(t.layer)][size_t(k - kinds.begin())];
      if (c.first < 0) c.first = 0;
      c.first += t.base_norm * t.base_norm;
      c.second += t.delta_norm * t.delta_norm;
    }
  }
  // Layers in numeric order after the named groups (embed, final_norm, head).
  for (auto& [k, g] : layers)
    if (!std::isdigit(static_cast<unsigned char>(k[0]))) r.by_layer.push_back(g);
  for (int l = 0; l < r.num_layers; ++l)
    if (layers.count(std::to_string(l))) r.by_layer.push_back(layers[std::to_string(l)]);
  for (const std::string& k : kinds)
    if (modules.count(k)) r.by_module.push_back(modules[k]);
  for (auto& [k, g] : modules)
    if (std::find(kinds.begin(), kinds.end(), k) == kinds.end()) r.by_module.push_back(g);
  r.heatmap.assign(size_t(r.num_layers), std::vector<double>(kinds.size(), -1.0));
  for (int l = 0; l < r.num_layers; ++l)
    for (size_t m = 0; m < kinds.size(); ++m) {
      const auto& c = cells[size_t(l)][m];
      if (c.first < 0) continue;
      r.heatmap[size_t(l)][m] = c.first > 0 ? std::sqrt(c.second / c.first) : 0.0;
    }
}

void full_diff(DiffReport& r, const WeightStore& base, const WeightStore& derived,
               const DiffOptions& opt) {
  for (const std::string& name : derived.names())
    if (!base.find(name))
      throw Error("tensor '" + name + "' is in " + r.derived_dir + " but not in the base " +
                  r.base_dir + ": these are different architectures");
  for (const std::string& name : base.names()) {
    const TensorInfo* tb = base.find(name);
    const TensorInfo* td = derived.find(name);
    if (!td) throw Error("tensor '" + name + "' of the base is missing from " + r.derived_dir);
    if (td->shape != tb->shape)
      throw Error("tensor '" + name + "' has shape " + shape_str(tb->shape) + " in the base but " +
                  shape_str(td->shape) + " in " + r.derived_dir);
    TensorDiff d;
    d.name = name;
    d.shape = tb->shape;
    classify(name, &d.layer, &d.module);
    std::vector<double> w = read_double(base, name), x = read_double(derived, name);
    double bb = 0, xx = 0, bx = 0, dd = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      const double delta = x[i] - w[i];
      bb += w[i] * w[i];
      xx += x[i] * x[i];
      bx += w[i] * x[i];
      dd += delta * delta;
      d.max_abs = std::max(d.max_abs, std::fabs(delta));
      x[i] = delta;  // x now holds dW
    }
    d.base_norm = std::sqrt(bb);
    d.delta_norm = std::sqrt(dd);
    d.rel_change = bb > 0 ? d.delta_norm / d.base_norm : 0;
    d.cosine = bb > 0 && xx > 0 ? bx / std::sqrt(bb * xx) : 1;
    if (d.shape.size() == 2 && opt.svd_max_elements > 0 &&
        int64_t(x.size()) <= opt.svd_max_elements)
      keep_top(d, d.changed() ? singular_values(x, d.shape[0], d.shape[1]) : std::vector<double>{},
               opt.top_singular);
    r.tensors.push_back(std::move(d));
  }
}

void lora_diff(DiffReport& r, const WeightStore& base, const DiffOptions& opt) {
  const ModelConfig mc = load_model_config(r.base_dir);
  const LoraConfig lc = read_adapter_config(r.derived_dir);
  const LoraLayout lay(mc, lc);
  const std::string file = r.derived_dir + "/adapter_model.safetensors";
  if (!path_exists(file)) throw Error("'" + r.derived_dir + "' has no adapter_model.safetensors");
  const SafetensorsReader ad = SafetensorsReader::open(file, opt.derived_key);
  for (const TensorInfo& t : ad.tensors())
    if (!lay.find(t.name))
      throw Error(file + ": tensor '" + t.name + "' is not an adapter of " + r.base_dir +
                  "'s layers for the targets in adapter_config.json");
  const int64_t rank = lc.rank;
  const double s = lc.scale();
  // Adapted base weight name -> (layer, target).
  std::map<std::string, std::pair<int, LoraTarget>> adapted;
  for (int l = 0; l < lay.num_layers(); ++l)
    for (int t = 0; t < kLoraTargets; ++t)
      if (lay.slot(l, LoraTarget(t)).active())
        adapted[lora_module_name(l, LoraTarget(t)) + ".weight"] = {l, LoraTarget(t)};
  auto read = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const TensorInfo* t = ad.find(name);
    if (!t) throw Error(file + ": adapter tensor '" + name + "' is missing");
    if (t->shape != shape)
      throw Error(file + ": tensor '" + name + "' has shape " + shape_str(t->shape) +
                  " but the base and adapter_config.json imply " + shape_str(shape));
    std::vector<float> f(size_t(t->numel()));
    ad.read_as(*t, DType::F32, f.data());
    return std::vector<double>(f.begin(), f.end());
  };
  for (const std::string& name : base.names()) {
    const TensorInfo* tb = base.find(name);
    TensorDiff d;
    d.name = name;
    d.shape = tb->shape;
    classify(name, &d.layer, &d.module);
    const std::vector<double> w = read_double(base, name);
    double bb = 0;
    for (double v : w) bb += v * v;
    d.base_norm = std::sqrt(bb);
    auto it = adapted.find(name);
    if (it != adapted.end()) {
      const std::string mod = "base_model.model." + name.substr(0, name.size() - 7);
      const int64_t out = tb->shape[0], in = tb->shape[1];
      const std::vector<double> A = read(mod + ".lora_A.weight", {rank, in}),
                                B = read(mod + ".lora_B.weight", {out, rank});
      // Row by row of dW = s B A (one row of `in` at a time): norms, max and <W, dW>.
      double dd = 0, wd = 0;
      std::vector<double> row(static_cast<size_t>(in));
      for (int64_t i = 0; i < out; ++i) {
        std::fill(row.begin(), row.end(), 0.0);
        for (int64_t k = 0; k < rank; ++k) {
          const double b = s * B[size_t(i * rank + k)];
          if (b == 0) continue;
          for (int64_t j = 0; j < in; ++j) row[size_t(j)] += b * A[size_t(k * in + j)];
        }
        for (int64_t j = 0; j < in; ++j) {
          dd += row[size_t(j)] * row[size_t(j)];
          wd += w[size_t(i * in + j)] * row[size_t(j)];
          d.max_abs = std::max(d.max_abs, std::fabs(row[size_t(j)]));
        }
      }
      d.delta_norm = std::sqrt(dd);
      d.rel_change = bb > 0 ? d.delta_norm / d.base_norm : 0;
      const double xx = bb + 2 * wd + dd;
      d.cosine = bb > 0 && xx > 0 ? (bb + wd) / std::sqrt(bb * xx) : 1;
      keep_top(d, lora_singular_values(B, A, out, in, rank, s), opt.top_singular);
    }
    r.tensors.push_back(std::move(d));
  }
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

DiffReport diff_models(const std::string& base_dir, const std::string& derived_dir,
                       const DiffOptions& opt) {
  if (is_adapter_dir(base_dir))
    throw Error("'" + base_dir + "' is a LoRA adapter: give the base model first, then the " +
                "derived model or adapter");
  DiffReport r;
  r.base_dir = base_dir;
  r.derived_dir = derived_dir;
  r.lora = is_adapter_dir(derived_dir);
  const WeightStore base = WeightStore::open_dir(base_dir, opt.base_key);
  if (r.lora)
    lora_diff(r, base, opt);
  else
    full_diff(r, base, WeightStore::open_dir(derived_dir, opt.derived_key), opt);
  aggregate(r);
  return r;
}

nlohmann::json diff_to_json(const DiffReport& r) {
  nlohmann::json j = {
      {"base", r.base_dir},         {"derived", r.derived_dir},         {"lora", r.lora},
      {"num_layers", r.num_layers}, {"modules", DiffReport::modules()}, {"heatmap", r.heatmap}};
  for (const TensorDiff& t : r.tensors) {
    nlohmann::json e = {{"name", t.name},
                        {"module", t.module},
                        {"layer", t.layer},
                        {"shape", t.shape},
                        {"base_norm", t.base_norm},
                        {"delta_norm", t.delta_norm},
                        {"rel_change", t.rel_change},
                        {"cosine", t.cosine},
                        {"max_abs", t.max_abs}};
    if (t.effective_rank_90 >= 0) {
      e["singular_values"] = t.singular;
      e["effective_rank_90"] = t.effective_rank_90;
    }
    j["tensors"].push_back(e);
  }
  for (const auto& [key, groups] :
       {std::pair{"by_layer", &r.by_layer}, {"by_module", &r.by_module}})
    for (const DiffGroup& g : *groups)
      j[key].push_back({{"key", g.key},
                        {"base_norm", g.base_norm},
                        {"delta_norm", g.delta_norm},
                        {"rel_change", g.rel_change()},
                        {"tensors", g.tensors},
                        {"changed", g.changed}});
  return j;
}

std::string diff_to_text(const DiffReport& r, int top_k) {
  std::ostringstream o;
  int64_t changed = 0;
  for (const TensorDiff& t : r.tensors) changed += t.changed();
  o << "base      " << r.base_dir << "\n"
    << "derived   " << r.derived_dir << (r.lora ? " (LoRA adapter: dW = scale B A)" : "") << "\n"
    << "tensors   " << r.tensors.size() << ", changed " << changed << "\n\n";
  auto table = [&](const char* title, const std::vector<DiffGroup>& gs) {
    char line[160];
    std::snprintf(line, sizeof line, "%-12s %12s %12s %10s %8s\n", title, "||W||", "||dW||", "rel",
                  "changed");
    o << line;
    for (const DiffGroup& g : gs) {
      std::snprintf(line, sizeof line, "%-12s %12.4g %12.4g %10.3e %4lld/%-3lld\n", g.key.c_str(),
                    g.base_norm, g.delta_norm, g.rel_change(), static_cast<long long>(g.changed),
                    static_cast<long long>(g.tensors));
      o << line;
    }
    o << "\n";
  };
  table("module", r.by_module);
  table("layer", r.by_layer);
  std::vector<const TensorDiff*> order;
  for (const TensorDiff& t : r.tensors) order.push_back(&t);
  std::stable_sort(order.begin(), order.end(), [](const TensorDiff* a, const TensorDiff* b) {
    return a->rel_change > b->rel_change;
  });
  o << "most changed (relative)\n";
  for (int i = 0; i < std::min<int>(top_k, int(order.size())); ++i) {
    const TensorDiff& t = *order[size_t(i)];
    if (!t.changed()) break;
    o << "  " << t.name << "  rel " << fmt("%.3e", t.rel_change) << "  cos "
      << fmt("%.6f", t.cosine) << "  max|dW| " << fmt("%.3e", t.max_abs);
    if (t.effective_rank_90 >= 0) {
      o << "  rank90 " << t.effective_rank_90 << "  sigma";
      for (size_t k = 0; k < std::min<size_t>(4, t.singular.size()); ++k)
        o << " " << fmt("%.3g", t.singular[k]);
    }
    o << "\n";
  }
  return o.str();
}

}  // namespace ftune
