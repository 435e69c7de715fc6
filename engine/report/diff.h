// What a fine-tune changed: per-tensor change statistics between a base model and a derived
// full model or LoRA adapter, aggregates per layer and per module kind, and the spectrum of each
// matrix's change (`ftune diff`, and the heatmap of `ftune report`). Tensors are read one at a
// time from the mapped files, so memory stays about one tensor (two for a full model).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace ftune {

struct WeightKey;

struct DiffOptions {
  // Full fine-tunes: singular values of dW for matrices with at most this many elements (0: none).
  int64_t svd_max_elements = 4 * 1024 * 1024;
  int top_singular = 8;  // singular values kept per tensor
  const WeightKey* base_key = nullptr;
  const WeightKey* derived_key = nullptr;
};

struct TensorDiff {
  std::string name;
  std::string module;  // q k v o gate up down | attn_norm mlp_norm final_norm | embed head | other
  int layer = -1;      // -1 outside the decoder layers
  std::vector<int64_t> shape;
  double base_norm = 0;   // ||W||_F
  double delta_norm = 0;  // ||dW||_F
  double rel_change = 0;  // ||dW|| / ||W|| (0 when W is zero)
  double cosine = 1;      // <W, W + dW> / (||W|| ||W + dW||)
  double max_abs = 0;     // max |dW|
  // Matrices: the largest singular values of dW (descending) and the number of them holding 90%
  // of its energy (sum of squares); empty / -1 when not computed (vectors, over the size limit).
  std::vector<double> singular;
  int effective_rank_90 = -1;
  bool changed() const { return delta_norm > 0; }
};

struct DiffGroup {
  std::string key;  // a layer index ("3", "embed", ...) or a module kind
  double base_norm = 0, delta_norm = 0;
  double rel_change() const { return base_norm > 0 ? delta_norm / base_norm : 0; }
  int64_t tensors = 0, changed = 0;
};

struct DiffReport {
  std::string base_dir, derived_dir;
  bool lora = false;                // derived is a PEFT adapter; dW = scale * B A
  std::vector<TensorDiff> tensors;  // in the base's tensor order
  std::vector<DiffGroup> by_layer, by_module;
  int num_layers = 0;
  // heatmap[layer][module index in kModules]: relative change (||dW|| / ||W||) of that layer's
  // tensor of that kind; -1 where the layer has none.
  std::vector<std::vector<double>> heatmap;
  static const std::vector<std::string>& modules();  // q k v o gate up down attn_norm mlp_norm
};

// Throws ftune::Error naming the tensor on a name or shape mismatch, and the directory when
// something is missing.
DiffReport diff_models(const std::string& base_dir, const std::string& derived_dir,
                       const DiffOptions& opt = {});
nlohmann::json diff_to_json(const DiffReport& r);
// The terminal table: summary, per module kind, per layer, the top_k most changed tensors.
std::string diff_to_text(const DiffReport& r, int top_k = 10);

// Singular values (descending) of a row-major rows x cols matrix, and of (s B A) through the small
// r x r problem (B: out x r, A: r x in), never forming B A.
std::vector<double> singular_values(const std::vector<double>& m, int64_t rows, int64_t cols);
std::vector<double> lora_singular_values(const std::vector<double>& B, const std::vector<double>& A,
                                         int64_t out, int64_t in, int64_t r, double scale);
// Smallest k with sum_{i<k} s_i^2 >= 0.9 sum s_i^2 (0 for an all-zero spectrum).
int effective_rank(const std::vector<double>& s, double energy = 0.9);

}  // namespace ftune
