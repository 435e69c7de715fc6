// `ftune report`: one self-contained report.html per run (inline SVG and CSS, no scripts, no
// network) with the training curves from metrics.jsonl, the weight-change heatmap from
// diff_models, the provenance manifests and the resolved recipe. Rendering is a pure function of
// ReportInput; write_report gathers that input from an output directory.
#pragma once
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/report/diff.h"
#include "engine/trust/manifest.h"

namespace ftune {

// One step of metrics.jsonl; keys a line does not carry stay NaN.
struct MetricPoint {
  int64_t step = 0;
  double loss = NAN, lr = NAN, grad_norm = NAN, tokens_per_s = NAN, val_loss = NAN;
  double tokens = NAN;  // tokens seen so far
};

// Lines of metrics.jsonl in step order (a later line for the same step fills in or replaces
// what it carries). Lines without a numeric "step" or without any known key (guard events and
// the like) are ignored; lines that are not JSON objects are counted in *malformed.
std::vector<MetricPoint> parse_metrics_jsonl(const std::string& text, int64_t* malformed = nullptr);

// What one output's provenance manifest says, and what checking it found.
struct ManifestInfo {
  std::string label;  // "model", "adapter"
  std::string dir;
  nlohmann::json manifest;  // null when unreadable (error says why)
  std::string error;
  bool verified = false;  // verify_output ran; `verify` holds its result
  VerifyReport verify;
  bool pubkey_given = false;
  std::string signature_key_sha256;  // from ftune-manifest.sig, when signed
};

struct ReportInput {
  std::string title;      // the output directory, as the user named it
  std::string generated;  // "2025-01-31T12:00:00Z by ftune 0.1.0"
  std::vector<MetricPoint> metrics;
  std::optional<double> val_before;  // validation loss before training: drawn at step 0
  nlohmann::json summary;            // summary.json, null when absent
  std::string recipe_yaml;
  std::vector<ManifestInfo> manifests;
  std::optional<DiffReport> diff;
  std::string diff_note;           // why there is no heatmap (shown in its place)
  std::vector<std::string> notes;  // anything else the reader should know
};

// The whole report as one HTML document. Every string taken from ReportInput is escaped.
// Stable hooks for tools and tests: charts #chart-loss, #chart-lr, #chart-grad-norm,
// #chart-tokens-per-s (data-log-y); series paths #series-train-loss, #series-val-loss,
// #series-lr, #series-grad-norm, #series-tokens-per-s (data-points); #best-val-marker
// (data-step, data-value); heatmap #heatmap-weights with rect.heat-cell (data-row, data-col,
// data-value) and rect.heat-none.
std::string render_report_html(const ReportInput& in);

struct ReportOptions {
  // Key of the output's encrypted weights; when empty the recipe's export.encrypt key is tried.
  std::string key_file, key_env;
  std::string pubkey;  // Ed25519 public key PEM: the signature is then checked, not just noted
  bool verify = true;  // recompute every output hash against the manifest
  bool diff = true;    // compute the weight-change heatmap (reads base and output weights)
};

// Reads output_dir (metrics.jsonl, recipe.yaml, summary.json, model/ and adapter/ with their
// manifests), computes the weight diff when the base model and the outputs are readable (when
// not, the report says why), writes output_dir/report.html atomically and returns its path.
// Throws ftune::Error when output_dir is not a run's output directory.
std::string write_report(const std::string& output_dir, const ReportOptions& opt = {});

}  // namespace ftune
