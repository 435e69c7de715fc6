// Hand-written inline SVG for `ftune report`: line charts (axes, ticks, units, legend, log scale,
// one labelled marker) and a heatmap with its colour scale. Each function returns one <svg>
// element as text; every string that reaches the output is escaped here, so callers may pass
// text read from files. No scripts, no external references: the result renders offline.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ftune::svg {

// Escapes & < > " ' for HTML/SVG text and attribute values.
std::string escape(std::string_view s);
// Compact, locale-independent number: at most `sig` significant digits, exponent form
// ("3e-4", "1.5e+6") outside [1e-3, 1e6).
std::string num(double v, int sig = 4);

struct Point {
  double x = 0, y = 0;
};

struct Series {
  std::string id;     // id of the drawn <path>, e.g. "series-train-loss" (tests find it by this)
  std::string label;  // legend text
  std::string color;  // "#1f5fa8"
  std::vector<Point> points;  // in x order; points with a non-finite y are not drawn
  bool markers = false;       // a dot (with a <title>) on every point: for sparse series
  bool dashed = false;
};

// A labelled ring around one point, e.g. the best validation step.
struct Marker {
  std::string id, label;
  double x = 0, y = 0;
};

enum class YScale { kAuto, kLinear, kLog };

struct LineChart {
  std::string id;  // id of the <svg>
  std::string title, x_label, y_label;
  std::vector<Series> series;
  std::optional<Marker> marker;
  YScale y_scale = YScale::kAuto;  // kAuto: log when log_scale_fits(every drawn y)
  bool integer_x = true;           // x is a step count: no fractional ticks
  bool y_from_zero = false;        // linear axis: start at 0 even when every value is above
  int width = 544, height = 320;
};

// Log scale reads better when the values are positive and span more than `ratio` (max / min).
bool log_scale_fits(const std::vector<double>& values, double ratio = 30);
// About `target` round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]; with `enclose`
// the first and last tick lie at or beyond lo and hi, otherwise inside.
std::vector<double> nice_ticks(double lo, double hi, int target, bool enclose,
                               bool integer = false);

std::string line_chart(const LineChart& c);

struct Heatmap {
  std::string id;  // id of the <svg>
  std::string row_title, col_title, value_label;
  std::vector<std::string> row_labels, col_labels;
  // values[row][col]; a negative value means "no such cell" and is drawn as an empty box.
  std::vector<std::vector<double>> values;
  // Text of each cell's <title> before the value, e.g. "layer 3, q": `cell_name(row, col)`.
  std::string row_prefix;  // "layer " -> "layer 3, q"
};

// Cells are <rect class="heat-cell" data-row data-col data-value> with a <title> giving the exact
// value; missing ones are class "heat-none". Colours run on a log scale when the positive values
// span more than 30x, linearly from 0 otherwise; the legend bar says which.
std::string heatmap(const Heatmap& h);
// The colour scale: t in [0, 1] (clamped) to "#rrggbb", light (low) to dark (high).
std::string color_at(double t);

}  // namespace ftune::svg
