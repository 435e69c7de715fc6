#include "engine/report/report.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"
#include "engine/recipe/recipe.h"
#include "engine/report/svg_plot.h"
#include "engine/trust/encryption.h"

namespace ftune {

namespace fs = std::filesystem;
using nlohmann::json;
using svg::escape;
using svg::num;

namespace {

// ---------------------------------------------------------------- small formatting helpers

std::string json_text(const json& v) {
  return v.is_string() ? v.get<std::string>() : v.dump();
}

std::string human_bytes(double n) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (n >= 1024.0 && u < 4) {
    n /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", n, kUnits[u]);
  return buf;
}

std::string human_count(double n) {
  char buf[32];
  if (n >= 1e9) {
    std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  } else if (n >= 1e6) {
    std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  } else if (n >= 1e4) {
    std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f", n);
  }
  return buf;
}

const char* kStyle = R"css(
:root{color-scheme:light}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
  background:#f6f6f3;margin:0 auto;padding:20px 28px;max-width:1240px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:17px;margin:30px 0 10px;border-bottom:1px solid #d9d9d2;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.sub{color:#666;margin:0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:14px}
.card{background:#fff;border:1px solid #e0e0da;border-radius:6px;padding:7px 14px;min-width:110px}
.card .k{font-size:12px;color:#666}
.card .v{font-size:18px;font-weight:600}
.notes{background:#fff8e1;border:1px solid #f0dc9a;border-radius:6px;margin:16px 0 0;
  padding:8px 14px 8px 32px}
.note{background:#fff;border:1px dashed #ccc;border-radius:6px;padding:10px 14px;color:#555}
.charts{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;background:#fff;border:1px solid #e0e0da;border-radius:6px;padding:6px 6px 2px}
figcaption{font-weight:600;margin:2px 6px 0}
svg text{font:12px system-ui,sans-serif;fill:#333}
svg .axis-label{font-size:12.5px;fill:#111}
.tables{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
table{border-collapse:collapse;background:#fff;margin:4px 0}
td,th{border:1px solid #e0e0da;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0ea;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre,.hash{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.hash{word-break:break-all}
pre{background:#fff;border:1px solid #e0e0da;border-radius:6px;padding:10px 12px;overflow:auto;
  max-height:640px;margin:0}
details summary{cursor:pointer;color:#444}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}
.warn{color:#9a6700;font-weight:600}
footer{margin-top:30px;color:#888;font-size:12px}
)css";

// ---------------------------------------------------------------- sections

std::optional<size_t> best_val(const std::vector<svg::Point>& val) {
  std::optional<size_t> best;
  for (size_t i = 0; i < val.size(); ++i)
    if (std::isfinite(val[i].y) && (!best || val[i].y < val[*best].y)) best = i;
  return best;
}

std::vector<svg::Point> series_of(const std::vector<MetricPoint>& m, double MetricPoint::*f) {
  std::vector<svg::Point> out;
  for (const MetricPoint& p : m)
    if (std::isfinite(p.*f)) out.push_back({double(p.step), p.*f});
  return out;
}

std::vector<svg::Point> val_series(const ReportInput& in) {
  std::vector<svg::Point> val;
  // The loss before any update belongs on the curve: it is where training started from.
  if (in.val_before && std::isfinite(*in.val_before)) val.push_back({0.0, *in.val_before});
  for (const svg::Point& p : series_of(in.metrics, &MetricPoint::val_loss))
    if (p.x != 0 || val.empty()) val.push_back(p);
  return val;
}

void card(std::ostringstream& o, const std::string& key, const std::string& value,
          const std::string& id = "") {
  o << "<div class=\"card\"" << (id.empty() ? "" : " id=\"" + escape(id) + "\"")
    << "><div class=\"k\">" << escape(key) << "</div><div class=\"v\">" << escape(value)
    << "</div></div>\n";
}

void summary_cards(std::ostringstream& o, const ReportInput& in) {
  o << "<div class=\"cards\" id=\"summary\">\n";
  const MetricPoint* last = in.metrics.empty() ? nullptr : &in.metrics.back();
  if (last) card(o, "steps", std::to_string(last->step), "card-steps");
  if (last && std::isfinite(last->tokens)) card(o, "tokens seen", human_count(last->tokens));
  // The last step that carries a training loss (a trailing line may hold only validation).
  for (auto it = in.metrics.rbegin(); it != in.metrics.rend(); ++it)
    if (std::isfinite(it->loss)) {
      card(o, "final train loss", num(it->loss), "card-final-loss");
      break;
    }
  const std::vector<svg::Point> val = val_series(in);
  if (const auto b = best_val(val))
    card(o, "best validation loss",
         num(val[*b].y) + " @ step " + std::to_string(int64_t(val[*b].x)), "card-best-val");
  if (in.summary.is_object()) {
    const json before = in.summary.value("val_before", json()),
               after = in.summary.value("val_after", json());
    if (before.is_object() && after.is_object() && before.value("loss", json()).is_number() &&
        after.value("loss", json()).is_number())
      card(o, "validation before → after",
           num(before["loss"].get<double>()) + " → " + num(after["loss"].get<double>()));
    if (in.summary.value("method", json()).is_string())
      card(o, "method", in.summary["method"].get<std::string>());
  }
  for (auto it = in.metrics.rbegin(); it != in.metrics.rend(); ++it)
    if (std::isfinite(it->tokens_per_s)) {
      card(o, "tokens/s", human_count(it->tokens_per_s));
      break;
    }
  o << "</div>\n";
}

void figure(std::ostringstream& o, const svg::LineChart& c) {
  o << "<figure><figcaption>" << escape(c.title) << "</figcaption>\n"
    << svg::line_chart(c) << "</figure>\n";
}

void charts(std::ostringstream& o, const ReportInput& in) {
  o << "<h2>Training</h2>\n<div class=\"charts\">\n";
  {
    svg::LineChart c;
    c.id = "chart-loss";
    c.title = "Loss";
    c.x_label = "step";
    c.y_label = "loss (nats/token)";
    c.series.push_back(
        {"series-train-loss", "train", "#1f5fa8", series_of(in.metrics, &MetricPoint::loss)});
    const std::vector<svg::Point> val = val_series(in);
    if (!val.empty()) {
      c.series.push_back({"series-val-loss", "validation", "#d9480f", val, true, true});
      const size_t b = *best_val(val);
      c.marker =
          svg::Marker{"best-val-marker",
                      "best val " + num(val[b].y) + " @ step " + std::to_string(int64_t(val[b].x)),
                      val[b].x, val[b].y};
    }
    figure(o, c);
  }
  {
    svg::LineChart c;
    c.id = "chart-lr";
    c.title = "Learning rate";
    c.x_label = "step";
    c.y_label = "lr";
    c.y_scale = svg::YScale::kLinear;  // warmup from ~0 would stretch a log axis over nothing
    c.y_from_zero = true;
    c.series.push_back(
        {"series-lr", "learning rate", "#2b8a3e", series_of(in.metrics, &MetricPoint::lr)});
    figure(o, c);
  }
  {
    svg::LineChart c;
    c.id = "chart-grad-norm";
    c.title = "Gradient norm (before clipping)";
    c.x_label = "step";
    c.y_label = "‖g‖ (L2 norm)";
    c.series.push_back({"series-grad-norm", "gradient norm", "#7048e8",
                        series_of(in.metrics, &MetricPoint::grad_norm)});
    figure(o, c);
  }
  {
    svg::LineChart c;
    c.id = "chart-tokens-per-s";
    c.title = "Throughput";
    c.x_label = "step";
    c.y_label = "tokens/s";
    c.y_scale = svg::YScale::kLinear;
    c.y_from_zero = true;
    c.series.push_back({"series-tokens-per-s", "tokens/s (run average)", "#0b7285",
                        series_of(in.metrics, &MetricPoint::tokens_per_s)});
    figure(o, c);
  }
  o << "</div>\n";
}

void weight_change(std::ostringstream& o, const ReportInput& in) {
  o << "<h2>Weight change</h2>\n";
  if (!in.diff) {
    o << "<p class=\"note\" id=\"heatmap-note\">No heatmap: " << escape(in.diff_note) << "</p>\n";
    return;
  }
  const DiffReport& d = *in.diff;
  o << "<p class=\"sub\">Relative change ‖ΔW‖<sub>F</sub> / ‖W‖<sub>F</sub> of each layer's "
       "tensors from the base model <code>"
    << escape(d.base_dir) << "</code> to <code>" << escape(d.derived_dir) << "</code>"
    << (d.lora ? " (LoRA adapter: ΔW = scale · B A)" : "")
    << ". Hover a cell for its exact value.</p>\n";
  svg::Heatmap h;
  h.id = "heatmap-weights";
  h.row_title = "layer";
  h.col_title = "module";
  h.value_label = "relative change";
  h.row_prefix = "layer ";
  h.col_labels = DiffReport::modules();
  for (int i = 0; i < d.num_layers; ++i) h.row_labels.push_back(std::to_string(i));
  h.values = d.heatmap;
  h.values.resize(size_t(std::max(0, d.num_layers)));
  o << "<figure>" << svg::heatmap(h) << "</figure>\n<div class=\"tables\">\n";

  o << "<table id=\"by-module\"><tr><th>module</th><th>relative change</th><th>changed "
       "tensors</th></tr>\n";
  for (const DiffGroup& g : d.by_module)
    o << "<tr><td>" << escape(g.key) << "</td><td class=\"n\">" << num(g.rel_change())
      << "</td><td class=\"n\">" << g.changed << " / " << g.tensors << "</td></tr>\n";
  o << "</table>\n";
  std::vector<const TensorDiff*> top;
  for (const TensorDiff& t : d.tensors)
    if (t.changed()) top.push_back(&t);
  std::sort(top.begin(), top.end(),
            [](const TensorDiff* a, const TensorDiff* b) { return a->rel_change > b->rel_change; });
  if (top.size() > 10) top.resize(10);
  o << "<table id=\"top-tensors\"><tr><th>most changed tensor</th><th>relative change</th>"
       "<th>‖ΔW‖</th><th>max |ΔW|</th></tr>\n";
  for (const TensorDiff* t : top)
    o << "<tr><td><code>" << escape(t->name) << "</code></td><td class=\"n\">" << num(t->rel_change)
      << "</td><td class=\"n\">" << num(t->delta_norm) << "</td><td class=\"n\">" << num(t->max_abs)
      << "</td></tr>\n";
  if (top.empty()) o << "<tr><td colspan=\"4\">no tensor changed</td></tr>\n";
  o << "</table>\n</div>\n";
}

void row(std::ostringstream& o, const std::string& key, const std::string& html_value) {
  o << "<tr><th>" << escape(key) << "</th><td>" << html_value << "</td></tr>\n";
}

std::string file_list(const json& files) {
  std::ostringstream o;
  o << "<table>";
  for (const json& f : files) {
    if (!f.is_object()) continue;
    o << "<tr><td><code>" << escape(json_text(f.value("path", json("?")))) << "</code></td>"
      << "<td class=\"n\">"
      << (f.value("size", json()).is_number() ? human_bytes(f["size"].get<double>()) : "?")
      << "</td><td class=\"hash\">sha256 " << escape(json_text(f.value("sha256", json("?"))))
      << "</td></tr>";
  }
  o << "</table>";
  return o.str();
}

void manifest_table(std::ostringstream& o, const ManifestInfo& mi) {
  o << "<h3>" << escape(mi.label) << "/ <code class=\"sub\">" << escape(mi.dir) << "</code></h3>\n";
  if (!mi.manifest.is_object()) {
    o << "<p class=\"bad\">" << kManifestName << " is unreadable (" << escape(mi.error)
      << "); run <code>ftune verify " << escape(mi.dir) << "</code></p>\n";
    return;
  }
  const json& m = mi.manifest;
  o << "<table class=\"manifest\" id=\"manifest-" << escape(mi.label) << "\">\n";
  if (m.contains("output")) row(o, "output", escape(json_text(m["output"])));
  if (const json e = m.value("engine", json()); e.is_object())
    row(o, "engine",
        escape(json_text(e.value("name", json("?"))) + " " +
               json_text(e.value("version", json("?"))) + " (commit " +
               json_text(e.value("commit", json("?"))) + ")"));
  if (m.contains("method")) row(o, "method", escape(json_text(m["method"])));
  if (m.contains("steps"))
    row(o, "steps",
        escape(json_text(m["steps"]) +
               (m.value("tokens_seen", json()).is_number()
                    ? ", " + human_count(m["tokens_seen"].get<double>()) + " tokens"
                    : "")));
  if (m.contains("final_train_loss") || m.contains("final_val_loss"))
    row(o, "final loss",
        escape("train " + json_text(m.value("final_train_loss", json())) + ", validation " +
               json_text(m.value("final_val_loss", json()))));
  if (m.contains("start_time"))
    row(o, "time",
        escape(json_text(m["start_time"]) + " to " + json_text(m.value("end_time", json("?")))));
  if (const json b = m.value("base_model", json()); b.is_object()) {
    const json files = b.value("files", json::array());
    row(o, "base model",
        "<code>" + escape(json_text(b.value("path", json("?")))) + "</code>, " +
            std::to_string(files.is_array() ? files.size() : 0) +
            " files<details><summary>hashes</summary>" +
            (files.is_array() ? file_list(files) : "") + "</details>");
  }
  if (const json t = m.value("tokenizer", json()); t.is_object())
    row(o, "tokenizer",
        "<code>" + escape(json_text(t.value("file", json("?")))) + "</code> <span class=\"hash\">" +
            (t.value("sha256", json()).is_string()
                 ? "sha256 " + escape(t["sha256"].get<std::string>())
                 : "not hashed") +
            "</span>");
  if (const json r = m.value("recipe", json()); r.is_object())
    row(o, "recipe",
        "<span class=\"hash\">sha256 " + escape(json_text(r.value("sha256", json("?")))) +
            "</span>");
  if (const json d = m.value("data", json()); d.is_array()) row(o, "data", file_list(d));
  if (const json e = m.value("encryption", json()); e.is_object())
    row(o, "encryption",
        escape(json_text(e.value("cipher", json("?"))) + ", key id " +
               json_text(e.value("key_id", json("?")))));
  if (const json out = m.value("outputs", json()); out.is_object()) {
    double bytes = 0;
    for (const auto& [rel, e] : out.items())
      if (e.is_object() && e.value("size", json()).is_number()) bytes += e["size"].get<double>();
    std::string v = std::to_string(out.size()) + " files, " + human_bytes(bytes) + "; ";
    if (!mi.verified) {
      v += "<span class=\"warn\">hashes not checked</span>";
    } else if (mi.verify.ok) {
      v += "<span class=\"ok\">all " + std::to_string(mi.verify.files_checked) +
           " hashes match</span>";
    } else {
      v += "<span class=\"bad\">" + std::to_string(mi.verify.problems.size()) +
           " problem(s)</span><ul>";
      for (const std::string& p : mi.verify.problems) v += "<li>" + escape(p) + "</li>";
      v += "</ul>";
    }
    row(o, "outputs", v);
  }
  std::string sig;
  if (mi.signature_key_sha256.empty() && !(mi.verified && mi.verify.signed_)) {
    sig = "<span class=\"warn\">unsigned</span>";
  } else {
    sig = "signed";
    if (!mi.signature_key_sha256.empty())
      sig += " (public key sha256 <span class=\"hash\">" +
             escape(mi.signature_key_sha256.substr(0, 16)) + "…</span>)";
    if (mi.verified && mi.verify.signature_ok)
      sig += ": <span class=\"ok\">signature valid</span>";
    else if (mi.verified && mi.pubkey_given)
      sig += ": <span class=\"bad\">signature NOT valid for the given key</span>";
    else
      sig += ": <span class=\"warn\">not checked</span> (give --pubkey)";
  }
  row(o, "signature", sig);
  o << "</table>\n";
}

}  // namespace

// ---------------------------------------------------------------- public

std::vector<MetricPoint> parse_metrics_jsonl(const std::string& text, int64_t* malformed) {
  std::map<int64_t, MetricPoint> by_step;
  int64_t bad = 0;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j;
    try {
      j = parse_json_bounded(line, "metrics.jsonl");
    } catch (const std::exception&) {
      ++bad;  // e.g. a line cut short by a crash
      continue;
    }
    if (!j.is_object()) {
      ++bad;
      continue;
    }
    const auto st = j.find("step");
    if (st == j.end() || !st->is_number()) continue;
    const int64_t step = int64_t(st->get<double>());
    auto it = by_step.find(step);
    MetricPoint p = it != by_step.end() ? it->second : MetricPoint{};
    p.step = step;
    bool known = false;
    auto take = [&](const char* key, double& dst) {
      const auto v = j.find(key);
      if (v != j.end() && v->is_number()) {
        dst = v->get<double>();
        known = true;
      }
    };
    take("loss", p.loss);
    take("lr", p.lr);
    take("grad_norm", p.grad_norm);
    take("tokens_per_s", p.tokens_per_s);
    take("val_loss", p.val_loss);
    take("tokens", p.tokens);
    if (known) by_step[step] = p;  // guard events and other lines carry none of these
  }
  if (malformed) *malformed = bad;
  std::vector<MetricPoint> out;
  out.reserve(by_step.size());
  for (const auto& [step, p] : by_step) out.push_back(p);
  return out;
}

std::string render_report_html(const ReportInput& in) {
  std::ostringstream o;
  o << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
       // Nothing may be fetched: the report is one file that reads the same offline.
       "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
       "style-src 'unsafe-inline'; img-src data:\">\n"
       "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>ftune "
       "report — "
    << escape(in.title) << "</title>\n<style>" << kStyle << "</style>\n</head>\n<body>\n";
  o << "<header><h1>ftune report</h1><p class=\"sub\"><code>" << escape(in.title)
    << "</code></p>\n";
  summary_cards(o, in);
  o << "</header>\n";
  if (!in.notes.empty()) {
    o << "<ul class=\"notes\" id=\"notes\">\n";
    for (const std::string& n : in.notes) o << "<li>" << escape(n) << "</li>\n";
    o << "</ul>\n";
  }
  charts(o, in);
  weight_change(o, in);

  o << "<h2>Provenance</h2>\n";
  if (in.manifests.empty())
    o << "<p class=\"note\">No manifest yet: model/ and adapter/ get theirs when training ends."
         "</p>\n";
  for (const ManifestInfo& mi : in.manifests) manifest_table(o, mi);

  o << "<h2>Recipe (resolved)</h2>\n";
  if (in.recipe_yaml.empty())
    o << "<p class=\"note\">No recipe.yaml in the output directory.</p>\n";
  else
    o << "<pre id=\"recipe\">" << escape(in.recipe_yaml) << "</pre>\n";
  o << "<footer>Generated " << escape(in.generated)
    << ". Self-contained: no scripts, nothing loaded from the network.</footer>\n"
    << "</body>\n</html>\n";
  return o.str();
}

namespace {

bool has_encrypted_weights(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".safetensors" && is_encrypted_file(e.path().string())) return true;
  return false;
}

ManifestInfo read_manifest_info(const std::string& label, const std::string& dir,
                                const ReportOptions& opt) {
  ManifestInfo mi;
  mi.label = label;
  mi.dir = dir;
  try {
    mi.manifest = parse_json_bounded(read_file(dir + "/" + kManifestName), kManifestName);
    if (!mi.manifest.is_object()) {
      mi.manifest = json();
      mi.error = "not a JSON object";
    }
  } catch (const std::exception& e) {
    mi.manifest = json();
    mi.error = e.what();
  }
  const std::string sig_path = dir + "/" + kSignatureName;
  if (path_exists(sig_path)) {
    try {
      mi.signature_key_sha256 = parse_json_bounded(read_file(sig_path), sig_path)
                                    .value("public_key_sha256", std::string("?"));
    } catch (const std::exception&) {
      mi.signature_key_sha256 = "?";  // verify_output names the damage
    }
  }
  if (opt.verify) {
    mi.verify = verify_output(dir, opt.pubkey);  // an unreadable --pubkey is the user's error
    mi.verified = true;
  }
  mi.pubkey_given = !opt.pubkey.empty();
  return mi;
}

// Fills in.diff, or returns why there is no heatmap.
std::string compute_diff(const std::string& output_dir, const std::optional<Recipe>& recipe,
                         const ReportOptions& opt, ReportInput& in) {
  // An explicit key is loaded first so that a wrong option fails loudly, not as a note.
  std::optional<WeightKey> out_key = load_key_option(opt.key_file, opt.key_env);
  if (!opt.diff) return "not computed (--no-diff).";
  // The adapter gives the exact low-rank change; a full fine-tune has only model/.
  std::string derived = output_dir + "/adapter", label = "adapter";
  if (!fs::is_directory(derived)) {
    derived = output_dir + "/model";
    label = "model";
  }
  if (!fs::is_directory(derived))
    return "no model/ or adapter/ in the output directory yet; the heatmap appears once "
           "training has exported its weights.";
  if (!recipe) return "recipe.yaml is missing or unreadable, so the base model is unknown.";
  const RecipeConfig& c = recipe->cfg;
  if (c.model_init == ModelInit::Random)
    return "the run started from random weights (model.init: random), so there are no base "
           "weights to compare against.";
  if (!fs::is_directory(c.model_path))
    return "the base model '" + c.model_path +
           "' (model.path) is not readable here; run ftune report where it is.";
  if (has_encrypted_weights(derived) && !out_key) {
    // The recipe names the key it encrypted with; use it when it is at hand.
    if (!c.export_encrypt_key_file.empty() || !c.export_encrypt_key_env.empty()) {
      try {
        out_key = load_key_option(c.export_encrypt_key_file, c.export_encrypt_key_env);
      } catch (const Error& e) {
        return label +
               "/ holds encrypted weights and the recipe's export.encrypt key is not "
               "available (" +
               e.what() + "); give --key-file or --key-env.";
      }
    }
    if (!out_key)
      return label +
             "/ holds encrypted weights; give --key-file or --key-env to show the "
             "weight-change heatmap.";
  }
  std::optional<WeightKey> base_key;
  if (has_encrypted_weights(c.model_path)) {
    try {
      base_key = load_key_option(c.model_key_file, c.model_key_env);
    } catch (const Error& e) {
      return std::string(
                 "the base model is encrypted and its key (model.key_file / "
                 "model.key_env) is not available: ") +
             e.what();
    }
    if (!base_key)
      return "the base model is encrypted and the recipe names no model.key_file or "
             "model.key_env.";
  }
  DiffOptions d;
  d.svd_max_elements = 0;  // the heatmap needs norms only; spectra are `ftune diff`'s business
  d.base_key = base_key ? &*base_key : nullptr;
  d.derived_key = out_key ? &*out_key : nullptr;
  try {
    in.diff = diff_models(c.model_path, derived, d);
  } catch (const Error& e) {
    return std::string("comparing with the base model failed: ") + e.what();
  }
  return "";
}

}  // namespace

std::string write_report(const std::string& output_dir, const ReportOptions& opt) {
  if (!fs::is_directory(output_dir))
    throw Error("report: '" + output_dir +
                "' is not a directory; give a run's output_dir (it holds metrics.jsonl and "
                "recipe.yaml)");
  const std::string metrics_path = output_dir + "/metrics.jsonl";
  const std::string recipe_path = output_dir + "/recipe.yaml";
  if (!path_exists(metrics_path) && !path_exists(recipe_path))
    throw Error("report: '" + output_dir +
                "' holds neither metrics.jsonl nor recipe.yaml; give the output_dir of an "
                "`ftune train` run");
  ReportInput in;
  in.title = output_dir;
  in.generated = utc_timestamp(std::chrono::system_clock::now()) + " by ftune " FTUNE_VERSION;

  if (path_exists(metrics_path)) {
    int64_t bad = 0;
    in.metrics = parse_metrics_jsonl(read_file(metrics_path), &bad);
    if (bad > 0)
      in.notes.push_back(std::to_string(bad) +
                         " line(s) of metrics.jsonl are not JSON objects "
                         "and were skipped.");
  } else {
    in.notes.push_back("No metrics.jsonl yet: the charts fill in as training runs.");
  }

  std::optional<Recipe> recipe;
  if (path_exists(recipe_path)) {
    in.recipe_yaml = read_file(recipe_path);
    try {
      recipe = load_recipe(recipe_path);
    } catch (const Error& e) {
      in.notes.push_back(std::string("recipe.yaml could not be loaded: ") + e.what());
    }
  }

  if (path_exists(output_dir + "/summary.json")) {
    try {
      in.summary = parse_json_bounded(read_file(output_dir + "/summary.json"), "summary.json");
      const json vb = in.summary.value("val_before", json());
      if (vb.is_object() && vb.value("loss", json()).is_number())
        in.val_before = vb["loss"].get<double>();
    } catch (const std::exception& e) {
      in.summary = json();
      in.notes.push_back(std::string("summary.json is not valid JSON: ") + e.what());
    }
  }

  for (const char* label : {"model", "adapter"}) {
    const std::string dir = output_dir + "/" + label;
    if (path_exists(dir + "/" + kManifestName))
      in.manifests.push_back(read_manifest_info(label, dir, opt));
  }

  in.diff_note = compute_diff(output_dir, recipe, opt, in);
  const std::string path = output_dir + "/report.html";
  write_file_atomic(path, render_report_html(in));
  return path;
}

}  // namespace ftune
