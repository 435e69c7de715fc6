// `ftune report`: the renderer (escaping, scales, markers, heatmap, missing data), the reader of
// an output directory, and the whole report as a real browser shows it (headless chromium).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "engine/base/fs_util.h"
#include "engine/report/report.h"
#include "engine/report/svg_plot.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
const std::string kSrc = FTUNE_SOURCE_DIR;

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

// The value of attribute `name` on the element whose id is `id` ("" when either is missing).
std::string attr_of(const std::string& html, const std::string& id, const std::string& name) {
  const size_t at = html.find("id=\"" + id + "\"");
  if (at == std::string::npos) return "";
  const size_t open = html.rfind('<', at), close = html.find('>', at);
  const std::string tag = html.substr(open, close - open);
  const size_t a = tag.find(" " + name + "=\"");
  if (a == std::string::npos) return "";
  const size_t v = a + name.size() + 3;
  return tag.substr(v, tag.find('"', v) - v);
}

// 12 steps; validation at 4, 8 and 12 with the best (2.1) at step 8.
ReportInput sample(double first_loss = 3.0, double last_loss = 1.8) {
  ReportInput in;
  in.title = "runs/sample";
  in.generated = "2025-01-31T12:00:00Z by ftune test";
  for (int s = 1; s <= 12; ++s) {
    MetricPoint p;
    p.step = s;
    p.loss = first_loss * std::pow(last_loss / first_loss, (s - 1) / 11.0);
    p.lr = 1e-3 * std::min(1.0, s / 3.0);
    p.grad_norm = 2.0 / s;
    p.tokens_per_s = 1000 + 10 * s;
    p.tokens = 256.0 * s;
    if (s % 4 == 0) p.val_loss = s == 4 ? 2.5 : s == 8 ? 2.1 : 2.3;
    in.metrics.push_back(p);
  }
  in.recipe_yaml = "model:\n  path: /m\n";
  in.diff_note = "no base";
  return in;
}

DiffReport sample_diff(int layers) {
  DiffReport d;
  d.base_dir = "/base";
  d.derived_dir = "/out/model";
  d.num_layers = layers;
  const size_t mods = DiffReport::modules().size();
  for (int i = 0; i < layers; ++i) {
    std::vector<double> row;
    for (size_t j = 0; j < mods; ++j) row.push_back(1e-3 * double(i + 1) * double(j + 1));
    d.heatmap.push_back(row);
  }
  TensorDiff t;
  t.name = "model.layers.0.self_attn.q_proj.weight";
  t.module = "q";
  t.layer = 0;
  t.base_norm = 2;
  t.delta_norm = 0.01;
  t.rel_change = 0.005;
  d.tensors.push_back(t);
  d.by_module.push_back({"q", 2, 0.01, 1, 1});
  return d;
}

TEST(SvgPlot, NumbersAreCompactAndExact) {
  EXPECT_EQ(svg::num(3e-4), "3e-4");
  EXPECT_EQ(svg::num(1.5e6), "1.5e+6");
  EXPECT_EQ(svg::num(0.5), "0.5");
  EXPECT_EQ(svg::num(22000), "22000");
  EXPECT_EQ(svg::num(2.123456), "2.123");
  EXPECT_EQ(svg::num(0), "0");
  EXPECT_EQ(svg::num(NAN), "NaN");
}

TEST(SvgPlot, NiceTicksAreRoundAndCover) {
  EXPECT_EQ(svg::nice_ticks(0.13, 9.7, 5, true), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(svg::nice_ticks(0.13, 9.7, 5, false), (std::vector<double>{2, 4, 6, 8}));
  // Steps are whole numbers: never a tick at 1.5.
  EXPECT_EQ(svg::nice_ticks(1, 3, 6, false, true), (std::vector<double>{1, 2, 3}));
}

TEST(SvgPlot, LogScaleOnlyForPositiveValuesSpanningDecades) {
  EXPECT_TRUE(svg::log_scale_fits({1, 31}));
  EXPECT_FALSE(svg::log_scale_fits({1, 29}));
  EXPECT_FALSE(svg::log_scale_fits({0, 100}));
  EXPECT_FALSE(svg::log_scale_fits({-1, 100}));
  EXPECT_TRUE(svg::log_scale_fits({NAN, 0.01, 10}));  // missing values do not count
  EXPECT_FALSE(svg::log_scale_fits({}));
}

TEST(Report, EscapesEverythingReadFromFiles) {
  ReportInput in = sample();
  in.title = "runs/<b>bold</b>";
  in.recipe_yaml = "name: <script>alert('x')</script> & \"q\"\n";
  in.notes.push_back("<img src=x onerror=alert(1)>");
  ManifestInfo mi;
  mi.label = "model";
  mi.dir = "/out/<model>";
  mi.manifest = {{"format", "ftune-manifest/1"},
                 {"data", {{{"path", "/d/<evil>.jsonl"}, {"size", 3}, {"sha256", "ab"}}}},
                 {"method", "<full>"}};
  in.manifests.push_back(mi);
  DiffReport d = sample_diff(1);
  d.tensors[0].name = "layers.0.<q>";
  in.diff = d;
  const std::string html = render_report_html(in);
  EXPECT_NE(html.find("name: &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"),
            std::string::npos);
  for (const char* raw : {"<script", "<img", "<b>", "<evil>", "<model>", "<full>", "<q>"})
    EXPECT_EQ(html.find(raw), std::string::npos) << raw;
  EXPECT_NE(html.find("&lt;img src=x onerror=alert(1)&gt;"), std::string::npos);
  EXPECT_NE(html.find("/d/&lt;evil&gt;.jsonl"), std::string::npos);
}

TEST(Report, SelfContainedWithoutScriptsOrNetwork) {
  const std::string html = render_report_html(sample());
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(count(html, "<script"), 0u);
  EXPECT_NE(html.find("Content-Security-Policy"), std::string::npos);
  // The only URL is the SVG namespace name, which is never fetched.
  EXPECT_EQ(count(html, "://"), count(html, "xmlns=\"http://www.w3.org/2000/svg\""));
  EXPECT_EQ(count(html, "url("), count(html, "url(#"));  // only references inside the page
  EXPECT_EQ(count(html, "<svg"), 4u);                    // four charts, no heatmap without a diff
}

TEST(Report, ChartsHaveUnitsTicksAndLegends) {
  const std::string html = render_report_html(sample());
  for (const char* label : {">step<", "loss (nats/token)", ">lr<", "‖g‖", ">tokens/s<"})
    EXPECT_NE(html.find(label), std::string::npos) << label;
  for (const char* id : {"chart-loss", "chart-lr", "chart-grad-norm", "chart-tokens-per-s"})
    EXPECT_EQ(attr_of(html, id, "data-empty"), "false") << id;
  for (const char* id :
       {"series-train-loss", "series-lr", "series-grad-norm", "series-tokens-per-s"})
    EXPECT_EQ(attr_of(html, id, "data-points"), "12") << id;
  EXPECT_EQ(count(html, "class=\"legend-item\""), 5u);  // train + validation + one per chart
  EXPECT_EQ(count(html, "class=\"ticks y-ticks\""), 4u);
  EXPECT_GE(count(html, "<text x="), 4u * 4u);  // several tick labels per chart
}

TEST(Report, LogScaleWhenLossSpansDecades) {
  const std::string flat = render_report_html(sample(3.0, 1.8));
  EXPECT_EQ(attr_of(flat, "chart-loss", "data-log-y"), "false");
  const std::string steep = render_report_html(sample(10.0, 0.05));
  EXPECT_EQ(attr_of(steep, "chart-loss", "data-log-y"), "true");
  EXPECT_NE(steep.find("loss (nats/token) — log scale"), std::string::npos);
  // Learning rate and throughput stay linear whatever they span.
  EXPECT_EQ(attr_of(steep, "chart-lr", "data-log-y"), "false");
}

TEST(Report, BestValidationStepIsMarked) {
  const std::string html = render_report_html(sample());
  EXPECT_EQ(attr_of(html, "series-val-loss", "data-points"), "3");
  EXPECT_EQ(attr_of(html, "best-val-marker", "data-step"), "8");
  EXPECT_EQ(attr_of(html, "best-val-marker", "data-value"), "2.1");
  EXPECT_NE(html.find("best val 2.1 @ step 8"), std::string::npos);
  // The loss before training is the validation curve's step 0, and can be the best.
  ReportInput worse = sample();
  worse.val_before = 1.5;
  const std::string w = render_report_html(worse);
  EXPECT_EQ(attr_of(w, "series-val-loss", "data-points"), "4");
  EXPECT_EQ(attr_of(w, "best-val-marker", "data-step"), "0");
}

TEST(Report, MissingValidationSeriesIsLeftOut) {
  ReportInput in = sample();
  for (MetricPoint& p : in.metrics) p.val_loss = NAN;
  const std::string html = render_report_html(in);
  EXPECT_EQ(attr_of(html, "series-train-loss", "data-points"), "12");
  EXPECT_EQ(html.find("series-val-loss"), std::string::npos);
  EXPECT_EQ(html.find("best-val-marker"), std::string::npos);
  EXPECT_EQ(html.find("best validation"), std::string::npos);
}

TEST(Report, EmptyMetricsRenderEmptyCharts) {
  ReportInput in;
  in.diff_note = "no outputs yet";
  const std::string html = render_report_html(in);
  EXPECT_EQ(count(html, "data-empty=\"true\""), 4u);
  EXPECT_EQ(count(html, "no data yet"), 4u);
  EXPECT_EQ(count(html, "class=\"series\""), 0u);
  EXPECT_NE(html.find("loss (nats/token)"), std::string::npos);  // still says what it will show
  EXPECT_NE(html.find("No heatmap: no outputs yet"), std::string::npos);
  EXPECT_NE(html.find("No recipe.yaml"), std::string::npos);
}

TEST(Report, HeatmapHasOneCellPerLayerAndModule) {
  ReportInput in = sample();
  DiffReport d = sample_diff(3);
  d.heatmap[1][2] = -1;  // layer 1 has no "v"
  d.heatmap[2][8] = -1;
  d.heatmap[0][0] = 0.0123456789;
  in.diff = d;
  const std::string html = render_report_html(in);
  const size_t mods = DiffReport::modules().size();
  EXPECT_EQ(attr_of(html, "heatmap-weights", "data-rows"), "3");
  EXPECT_EQ(attr_of(html, "heatmap-weights", "data-cols"), std::to_string(mods));
  EXPECT_EQ(count(html, "class=\"heat-cell\""), 3 * mods - 2);
  EXPECT_EQ(count(html, "class=\"heat-none\""), 2u);
  // Hovering a cell gives the exact value.
  EXPECT_NE(html.find("<title>layer 0, q: relative change 0.012345679</title>"), std::string::npos);
  EXPECT_NE(html.find("layer 1, v: no such tensor"), std::string::npos);
  EXPECT_NE(html.find("class=\"color-legend\""), std::string::npos);
  EXPECT_NE(html.find("id=\"by-module\""), std::string::npos);
  EXPECT_NE(html.find("model.layers.0.self_attn.q_proj.weight"), std::string::npos);
  EXPECT_EQ(html.find("heatmap-note"), std::string::npos);
  // Values from 1e-3 to 0.027 span 27x: a linear colour scale; 1e-5..1 goes log.
  EXPECT_EQ(attr_of(html, "heatmap-weights", "data-log-color"), "false");
  d.heatmap[2][7] = 1e-5;
  d.heatmap[2][6] = 1.0;
  in.diff = d;
  EXPECT_EQ(attr_of(render_report_html(in), "heatmap-weights", "data-log-color"), "true");
}

TEST(Report, ManifestSummaryShowsHashesAndSignatureStatus) {
  ReportInput in = sample();
  ManifestInfo mi;
  mi.label = "model";
  mi.dir = "/out/model";
  mi.manifest = {
      {"format", "ftune-manifest/1"},
      {"base_model",
       {{"path", "/base"}, {"files", {{{"path", "/base/w"}, {"size", 10}, {"sha256", "b45e"}}}}}},
      {"data", {{{"path", "/d/train.jsonl"}, {"size", 2048}, {"sha256", "da7a"}}}},
      {"outputs", {{"model.safetensors", {{"size", 100}, {"sha256", "0123"}}}}}};
  mi.verified = true;
  mi.verify.ok = true;
  mi.verify.files_checked = 1;
  in.manifests.push_back(mi);
  std::string html = render_report_html(in);
  for (const char* s :
       {"sha256 b45e", "sha256 da7a", "/d/train.jsonl", "all 1 hashes match", "unsigned"})
    EXPECT_NE(html.find(s), std::string::npos) << s;
  in.manifests[0].signature_key_sha256 = "0011223344556677aabb";
  in.manifests[0].verify.signed_ = true;
  html = render_report_html(in);
  EXPECT_NE(html.find("not checked"), std::string::npos);
  in.manifests[0].pubkey_given = true;
  in.manifests[0].verify.ok = false;
  in.manifests[0].verify.problems = {"signature does not match"};
  html = render_report_html(in);
  EXPECT_NE(html.find("signature NOT valid"), std::string::npos);
  EXPECT_NE(html.find("1 problem(s)"), std::string::npos);
  in.manifests[0].verify.signature_ok = true;
  EXPECT_NE(render_report_html(in).find("signature valid"), std::string::npos);
}

TEST(Metrics, UnknownLinesAndKeysAreIgnored) {
  const std::string text =
      "{\"step\":1,\"loss\":2.5,\"lr\":0.001,\"grad_norm\":1.5,\"tokens\":64,"
      "\"tokens_per_s\":100,\"elapsed_s\":0.6,\"new_key\":\"x\"}\n"
      "\n"
      "{\"step\":2,\"guard\":\"loss_spike\",\"action\":\"skip\"}\n"
      "{\"step\":2,\"loss\":2.0,\"val_loss\":2.2,\"val_perplexity\":9.0}\n"
      "{\"event\":\"no step\"}\n"
      "{\"step\":3,\"loss\":1.9,\"val_loss\":null}\n"
      "{\"step\":4,\"loss\":1.8\n"  // cut short
      "[1,2]\n";
  int64_t bad = -1;
  const std::vector<MetricPoint> m = parse_metrics_jsonl(text, &bad);
  EXPECT_EQ(bad, 2);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].step, 1);
  EXPECT_DOUBLE_EQ(m[0].grad_norm, 1.5);
  EXPECT_DOUBLE_EQ(m[0].tokens_per_s, 100);
  EXPECT_TRUE(std::isnan(m[0].val_loss));
  EXPECT_DOUBLE_EQ(m[1].loss, 2.0);
  EXPECT_DOUBLE_EQ(m[1].val_loss, 2.2);
  EXPECT_TRUE(std::isnan(m[2].val_loss));
  EXPECT_TRUE(parse_metrics_jsonl("").empty());
}

// ---------------------------------------------------------------- write_report on directories

std::string fake_run(const std::string& tag, const std::string& model_path) {
  const std::string dir = testing::make_temp_dir(tag);
  write_file_atomic(dir + "/metrics.jsonl",
                    "{\"step\":1,\"loss\":3.0,\"lr\":0.001,\"grad_norm\":1.0,\"tokens\":64,"
                    "\"tokens_per_s\":50}\n{\"step\":2,\"loss\":2.5,\"lr\":0.001,"
                    "\"grad_norm\":0.9,\"tokens\":128,\"tokens_per_s\":55,\"val_loss\":2.7}\n");
  write_file_atomic(dir + "/recipe.yaml", "model: {path: " + model_path + "}\n" +
                                              "data: {train: /d/train.jsonl}\noutput_dir: " + dir +
                                              "\n");
  return dir;
}

TEST(WriteReport, RunWithoutOutputsStillReports) {
  const std::string dir = fake_run("report-early", "/nonexistent/base");
  const std::string path = write_report(dir);
  EXPECT_EQ(path, dir + "/report.html");
  const std::string html = read_file(path);
  EXPECT_EQ(attr_of(html, "series-train-loss", "data-points"), "2");
  EXPECT_EQ(attr_of(html, "best-val-marker", "data-step"), "2");
  EXPECT_NE(html.find("no model/ or adapter/"), std::string::npos);
  EXPECT_NE(html.find("No manifest yet"), std::string::npos);
  EXPECT_NE(html.find("data: {train: /d/train.jsonl}"), std::string::npos);
  fs::remove_all(dir);
}

TEST(WriteReport, MissingBaseModelIsANote) {
  const std::string dir = fake_run("report-nobase", "/nonexistent/base");
  fs::create_directories(dir + "/model");
  const std::string html = read_file(write_report(dir));
  EXPECT_NE(html.find("the base model &#39;/nonexistent/base&#39; (model.path) is not readable"),
            std::string::npos);
  fs::remove_all(dir);
  // A run from random weights has no base to compare with, whatever model.path holds.
  const std::string rnd = fake_run("report-random", "/unused");
  fs::create_directories(rnd + "/model");
  write_file_atomic(rnd + "/recipe.yaml", "model: {path: " + rnd + ", init: random}\n" +
                                              "data: {train: /d/t.jsonl}\noutput_dir: /o\n");
  EXPECT_NE(read_file(write_report(rnd)).find("random weights"), std::string::npos);
  fs::remove_all(rnd);
}

TEST(WriteReport, EncryptedOutputNeedsTheKey) {
  const std::string base = testing::make_temp_dir("report-base");
  write_file_atomic(base + "/config.json", "{}");
  const std::string dir = fake_run("report-enc", base);
  fs::create_directories(dir + "/model");
  // Only the magic matters to tell encrypted weights from plain ones.
  write_file_atomic(dir + "/model/model.safetensors",
                    std::string("FTENC001") + std::string(8, '\0'));
  const std::string html = read_file(write_report(dir));
  EXPECT_NE(html.find("model/ holds encrypted weights; give --key-file or --key-env"),
            std::string::npos);
  // An explicit key that cannot be read is an error, not a note.
  ReportOptions opt;
  opt.key_file = dir + "/missing.key";
  testing::expect_error([&] { write_report(dir, opt); }, {"missing.key"});
  testing::CliRun r = testing::ftune("report " + dir + " --key-env FTUNE_TEST_NO_SUCH_VAR");
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("FTUNE_TEST_NO_SUCH_VAR"), std::string::npos) << r.out;
  fs::remove_all(dir);
  fs::remove_all(base);
}

TEST(WriteReport, RefusesWhatIsNotARun) {
  const std::string dir = testing::make_temp_dir("report-empty");
  testing::expect_error([&] { write_report(dir); }, {dir, "neither metrics.jsonl nor recipe.yaml"});
  testing::expect_error([&] { write_report(dir + "/nope"); }, {"nope", "is not a directory"});
  testing::CliRun r = testing::ftune("report " + dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("ftune: error: report:"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- in a real browser

// The chromium binary, installing Debian's package when missing; "" (and *why) when it cannot.
std::string find_or_install_chromium(std::string* why, double* install_s) {
  const std::string find =
      "command -v chromium || command -v chromium-browser || command -v google-chrome";
  std::string out;
  if (testing::run_command(find, &out) == 0) return out.substr(0, out.find('\n'));
  const auto t0 = std::chrono::steady_clock::now();
  // Another job may hold the dpkg lock for a while: wait for it rather than fail.
  const std::string apt =
      "export DEBIAN_FRONTEND=noninteractive; "
      "apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends chromium || "
      "{ apt-get -o DPkg::Lock::Timeout=600 update && "
      "apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends chromium; }";
  const int rc = testing::run_command(apt, &out);
  *install_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string found;
  if (testing::run_command(find, &found) == 0) return found.substr(0, found.find('\n'));
  *why = "apt-get install chromium exited " + std::to_string(rc) + ": " +
         out.substr(out.size() > 600 ? out.size() - 600 : 0);
  return "";
}

TEST(Browser, ReportRendersInHeadlessChromium) {
  const auto t_start = std::chrono::steady_clock::now();
  auto since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  std::string why;
  double install_s = 0;
  const std::string chromium = find_or_install_chromium(&why, &install_s);
  if (chromium.empty())
    GTEST_SKIP() << "chromium is not available and could not be installed: " << why;
  std::string py;
  if (testing::run_command("command -v python3", &py) != 0)
    GTEST_SKIP() << "python3 is not on PATH (tests/png_nonblank.py reads the screenshot)";

  // A base model (two steps from random weights), then the run under test: a 12-step fine-tune
  // of it with validation every 4 steps, so the report has every series and a heatmap.
  const auto t_train = std::chrono::steady_clock::now();
  const std::string tmp = testing::make_temp_dir("report-browser");
  const std::string small =
      " data.train=" + kSrc + "/data/quickstart/train.jsonl data.validation=" + kSrc +
      "/data/quickstart/val.jsonl data.packing=pack train.seq_len=64 train.micro_batch_size=4 "
      "eval.max_batches=2 checkpoint.keep_last=0 generate.prompt= "
      "threads=2 data.cache=false";
  testing::CliRun base =
      testing::ftune("train " + kSrc + "/recipes/quickstart-base.yaml output_dir=" + tmp +
                     "/base train.max_steps=2 schedule.warmup_steps=1 eval.every=0" + small);
  ASSERT_EQ(base.code, 0) << base.out;
  const std::string run = tmp + "/run";
  testing::CliRun tr = testing::ftune(
      "train " + kSrc + "/recipes/quickstart-base.yaml output_dir=" + run + " model.path=" + tmp +
      "/base/model model.init=pretrained"
      " train.max_steps=12 schedule.warmup_steps=2 eval.every=4" +
      small);
  ASSERT_EQ(tr.code, 0) << tr.out;
  const double train_s = since(t_train);
  // `ftune train` writes the report itself at the end of the run.
  EXPECT_TRUE(fs::exists(run + "/report.html"));
  EXPECT_NE(tr.out.find("report written to"), std::string::npos) << tr.out;

  testing::CliRun rep = testing::ftune("report " + run);
  ASSERT_EQ(rep.code, 0) << rep.out;
  EXPECT_NE(rep.out.find("report written to"), std::string::npos) << rep.out;
  const std::string report = run + "/report.html";
  ASSERT_TRUE(fs::exists(report));

  // One profile per call: parallel tests must not share chromium's profile lock.
  const auto t_browser = std::chrono::steady_clock::now();
  const std::string flags =
      " --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
      "--no-first-run --hide-scrollbars --user-data-dir=" +
      tmp + "/profile";
  std::string out;
  const int dom_rc =
      testing::run_command("(timeout 180 " + chromium + flags + " --dump-dom file://" + report +
                               " > " + tmp + "/dom.html 2> " + tmp + "/chromium.log)",
                           &out);
  ASSERT_EQ(dom_rc, 0) << out << read_file(tmp + "/chromium.log");
  const std::string dom = read_file(tmp + "/dom.html");
  // The DOM the browser built holds every series with its points, the marker and the cells.
  EXPECT_EQ(attr_of(dom, "series-train-loss", "data-points"), "12");
  EXPECT_EQ(attr_of(dom, "series-val-loss", "data-points"), "4");  // before + steps 4, 8, 12
  for (const char* id : {"series-lr", "series-grad-norm", "series-tokens-per-s"})
    EXPECT_EQ(attr_of(dom, id, "data-points"), "12") << id;
  EXPECT_NE(attr_of(dom, "best-val-marker", "data-step"), "");
  const size_t layers = 4, mods = DiffReport::modules().size();  // configs/models/quickstart-base
  EXPECT_EQ(attr_of(dom, "heatmap-weights", "data-rows"), std::to_string(layers));
  EXPECT_EQ(count(dom, "class=\"heat-cell\""), layers * mods);
  EXPECT_NE(dom.find("all "), std::string::npos);  // manifest hashes checked
  EXPECT_NE(dom.find("hashes match"), std::string::npos);

  // The screenshot shows something: the page, the curves (train-loss blue) and the heatmap.
  const std::string shot = tmp + "/report.png", blank = tmp + "/blank.png";
  const int shot_rc = testing::run_command(
      "(timeout 180 " + chromium + flags + " --screenshot=" + shot +
          " --window-size=1200,2000 file://" + report + " > " + tmp + "/chromium.log 2>&1)",
      &out);
  ASSERT_EQ(shot_rc, 0) << out << read_file(tmp + "/chromium.log");
  ASSERT_TRUE(fs::exists(shot)) << read_file(tmp + "/chromium.log");
  const std::string check = "python3 " + kSrc + "/tests/png_nonblank.py ";
  std::string verdict;
  EXPECT_EQ(testing::run_command(check + shot + " --min-fraction 0.02 --expect-color '#1f5fa8'",
                                 &verdict),
            0)
      << verdict;
  std::printf("%s", verdict.c_str());
  // The checker itself can fail: an empty page is blank.
  write_file_atomic(tmp + "/empty.html", "<!DOCTYPE html><html><body></body></html>");
  ASSERT_EQ(testing::run_command("(timeout 180 " + chromium + flags + " --screenshot=" + blank +
                                     " --window-size=400,300 file://" + tmp + "/empty.html > " +
                                     tmp + "/chromium.log 2>&1)",
                                 &out),
            0)
      << read_file(tmp + "/chromium.log");
  EXPECT_EQ(testing::run_command(check + blank, &verdict), 1) << verdict;
  const double browser_s = since(t_browser);

  std::printf(
      "browser test: chromium install %.1f s, training %.1f s, browser + checks %.1f s, "
      "total %.1f s\n",
      install_s, train_s, browser_s, since(t_start));
  RecordProperty("chromium_install_s", std::to_string(install_s));
  RecordProperty("total_s", std::to_string(since(t_start)));
  fs::remove_all(tmp);
}

}  // namespace
}  // namespace ftune
