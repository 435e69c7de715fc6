#include "engine/report/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace ftune::svg {

namespace {

// Pixel coordinates with one decimal: enough for a crisp line, short enough for long series.
std::string px(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

std::string attr(const std::string& name, const std::string& value) {
  return " " + name + "=\"" + escape(value) + "\"";
}

// Long runs are thinned to the lowest and highest point of each of ~1000 buckets (in x order),
// so a spike survives and the SVG stays small however many steps the run took.
std::vector<Point> thin(const std::vector<Point>& p, size_t buckets = 1000) {
  if (p.size() <= 2 * buckets) return p;
  std::vector<Point> out;
  const double per = double(p.size()) / double(buckets);
  for (size_t b = 0; b < buckets; ++b) {
    const size_t lo = size_t(double(b) * per), hi = std::min(p.size(), size_t(double(b + 1) * per));
    if (lo >= hi) continue;
    size_t mn = lo, mx = lo;
    for (size_t i = lo; i < hi; ++i) {
      if (p[i].y < p[mn].y) mn = i;
      if (p[i].y > p[mx].y) mx = i;
    }
    out.push_back(p[std::min(mn, mx)]);
    if (mn != mx) out.push_back(p[std::max(mn, mx)]);
  }
  return out;
}

// Decade ticks of a log axis over [lo, hi] (powers of ten); with few decades also 2x and 5x.
std::vector<double> log_ticks(double lo, double hi) {
  std::vector<double> t;
  const int a = int(std::floor(std::log10(lo) + 1e-9)), b = int(std::ceil(std::log10(hi) - 1e-9));
  const bool fine = hi / lo <= 1000.5;  // up to three decades: label 2x and 5x too
  const int every = b - a > 8 ? 2 : 1;
  for (int e = a; e <= b; ++e) {
    const double d = std::pow(10.0, e);
    for (double m : {1.0, 2.0, 5.0}) {
      if (m != 1.0 && !fine) continue;
      if (m == 1.0 && (e - a) % every != 0) continue;
      const double v = m * d;
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) t.push_back(v);
    }
  }
  return t;
}

struct Rgb {
  double r, g, b;
};

}  // namespace

std::string escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string num(double v, int sig) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return "0";
  char buf[64];
  const double a = std::abs(v);
  if (a >= 1e6 || a < 1e-3) {
    std::snprintf(buf, sizeof buf, "%.*e", std::max(0, sig - 1), v);
    const std::string s = buf;
    const size_t e = s.find('e');
    std::string mant = s.substr(0, e), ex = s.substr(e + 2);
    if (mant.find('.') != std::string::npos) {
      while (mant.back() == '0') mant.pop_back();
      if (mant.back() == '.') mant.pop_back();
    }
    while (ex.size() > 1 && ex[0] == '0') ex.erase(0, 1);
    return mant + "e" + (s[e + 1] == '-' ? "-" : "+") + ex;
  }
  // %g stays in fixed notation while the precision covers the integer digits.
  const int int_digits = a >= 1 ? int(std::floor(std::log10(a))) + 1 : 1;
  std::snprintf(buf, sizeof buf, "%.*g", std::max(sig, int_digits), v);
  return buf;
}

bool log_scale_fits(const std::vector<double>& values, double ratio) {
  double lo = INFINITY, hi = 0;
  for (double v : values) {
    if (!std::isfinite(v)) continue;
    if (v <= 0) return false;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  return hi > 0 && hi / lo > ratio;
}

std::vector<double> nice_ticks(double lo, double hi, int target, bool enclose, bool integer) {
  std::vector<double> t;
  if (!std::isfinite(lo) || !std::isfinite(hi) || target < 1) return t;
  if (hi < lo) std::swap(lo, hi);
  if (hi == lo) return {lo};
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double n = raw / mag;
  double step = (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
  if (integer && step < 1) step = 1;
  const double first =
      enclose ? std::floor(lo / step + 1e-9) * step : std::ceil(lo / step - 1e-9) * step;
  const double last =
      enclose ? std::ceil(hi / step - 1e-9) * step : std::floor(hi / step + 1e-9) * step;
  for (int i = 0; i < 1000; ++i) {
    const double v = first + i * step;
    if (v > last + step * 1e-6) break;
    t.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  }
  return t;
}

namespace {

// A ring at (x, y) and its label, kept inside the plot (left edge ml, top mt, width pw).
void write_marker(std::ostream& o, const Marker& m, double x, double y, double ml, double mt,
                  double pw) {
  const bool right = x > ml + pw * 0.6;
  const double ty = std::max(mt + 14, y - 12);
  o << "<g" << attr("id", m.id) << " class=\"marker\" data-step=\"" << num(m.x, 12)
    << "\" data-value=\"" << num(m.y, 6) << "\">\n"
    << "<circle cx=\"" << px(x) << "\" cy=\"" << px(y)
    << "\" r=\"7\" fill=\"none\" stroke=\"#111\" stroke-width=\"2\"/>\n"
    << "<text class=\"marker-label\" x=\"" << px(right ? x - 10 : x + 10) << "\" y=\"" << px(ty)
    << "\" text-anchor=\"" << (right ? "end" : "start")
    << "\" stroke=\"#fff\" stroke-width=\"3\" paint-order=\"stroke\" font-weight=\"600\">"
    << escape(m.label) << "</text>\n</g>\n";
}

// The legend, in the top margin so it never covers a curve: one entry per series drawn.
void write_legend(std::ostream& o, const LineChart& c, const std::vector<std::vector<Point>>& drawn,
                  double ml) {
  o << "<g class=\"legend\">\n";
  double lx = ml;
  for (size_t k = 0; k < c.series.size(); ++k) {
    if (drawn[k].empty()) continue;
    const Series& s = c.series[k];
    o << "<g class=\"legend-item\"" << attr("data-series", s.id) << ">"
      << "<line x1=\"" << px(lx) << "\" x2=\"" << px(lx + 22) << "\" y1=\"16\" y2=\"16\""
      << attr("stroke", s.color) << " stroke-width=\"2.5\""
      << (s.dashed ? " stroke-dasharray=\"6 4\"" : "") << "/>"
      << "<text x=\"" << px(lx + 28) << "\" y=\"20\">" << escape(s.label) << "</text></g>\n";
    lx += 40 + 6.8 * double(s.label.size());
  }
}

}  // namespace

std::string line_chart(const LineChart& c) {
  const double W = c.width, H = c.height;
  const double ml = 74, mr = 18, mt = 34, mb = 46;
  const double pw = W - ml - mr, ph = H - mt - mb;

  std::vector<double> ys;
  double xlo = INFINITY, xhi = -INFINITY;
  for (const Series& s : c.series)
    for (const Point& p : s.points)
      if (std::isfinite(p.y) && std::isfinite(p.x)) ys.push_back(p.y);
  const bool log_y =
      c.y_scale == YScale::kLog || (c.y_scale == YScale::kAuto && log_scale_fits(ys));
  // What is drawn: finite points (and positive ones on a log axis).
  std::vector<std::vector<Point>> drawn;
  ys.clear();
  for (const Series& s : c.series) {
    std::vector<Point> d;
    for (const Point& p : s.points)
      if (std::isfinite(p.x) && std::isfinite(p.y) && (!log_y || p.y > 0)) {
        d.push_back(p);
        ys.push_back(p.y);
        xlo = std::min(xlo, p.x);
        xhi = std::max(xhi, p.x);
      }
    drawn.push_back(std::move(d));
  }

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\"" << attr("id", c.id) << " class=\"chart\""
    << " width=\"" << c.width << "\" height=\"" << c.height << "\" viewBox=\"0 0 " << c.width << " "
    << c.height << "\" role=\"img\" data-log-y=\"" << (log_y ? "true" : "false") << "\""
    << " data-empty=\"" << (ys.empty() ? "true" : "false") << "\">\n"
    << "<title>" << escape(c.title) << "</title>\n";
  // Axis labels come first so an empty chart still says what it would show.
  o << "<text class=\"axis-label x-label\" x=\"" << px(ml + pw / 2) << "\" y=\"" << px(H - 8)
    << "\" text-anchor=\"middle\">" << escape(c.x_label) << "</text>\n";
  o << "<text class=\"axis-label y-label\" transform=\"translate(16," << px(mt + ph / 2)
    << ") rotate(-90)\" text-anchor=\"middle\">" << escape(c.y_label)
    << (log_y ? " — log scale" : "") << "</text>\n";
  o << "<rect class=\"plot-area\" x=\"" << px(ml) << "\" y=\"" << px(mt) << "\" width=\"" << px(pw)
    << "\" height=\"" << px(ph) << "\" fill=\"#fff\" stroke=\"#bbb\"/>\n";
  if (ys.empty()) {
    o << "<text class=\"no-data\" x=\"" << px(ml + pw / 2) << "\" y=\"" << px(mt + ph / 2)
      << "\" text-anchor=\"middle\" fill=\"#888\">no data yet</text>\n</svg>\n";
    return o.str();
  }

  // ---- domains and ticks ----
  if (xhi == xlo) {
    xlo -= 1;
    xhi += 1;
  }
  // Steps start at 1 but validation may start at 0: every chart of a run then shares its x axis.
  if (c.integer_x && xlo > 0 && xlo <= 0.05 * (xhi - xlo)) xlo = 0;
  double ylo = *std::min_element(ys.begin(), ys.end());
  double yhi = *std::max_element(ys.begin(), ys.end());
  std::vector<double> yt;
  if (log_y) {
    ylo = std::pow(10.0, std::floor(std::log10(ylo) + 1e-9));
    yhi = std::pow(10.0, std::ceil(std::log10(yhi) - 1e-9));
    if (yhi <= ylo) yhi = ylo * 10;
    yt = log_ticks(ylo, yhi);
  } else {
    if (yhi == ylo) {
      const double d = ylo != 0 ? std::abs(ylo) * 0.1 : 1.0;
      ylo -= d;
      yhi += d;
    }
    // Quantities whose size matters (throughput, lr) keep 0 in view, so a dip is not a cliff.
    if (c.y_from_zero && ylo > 0) ylo = 0;
    yt = nice_ticks(ylo, yhi, 5, true);
    ylo = yt.front();
    yhi = yt.back();
  }
  const std::vector<double> xt = nice_ticks(xlo, xhi, 6, false, c.integer_x);
  auto fx = [&](double x) { return ml + (x - xlo) / (xhi - xlo) * pw; };
  auto fy = [&](double y) {
    const double t = log_y ? (std::log10(y) - std::log10(ylo)) / (std::log10(yhi) - std::log10(ylo))
                           : (y - ylo) / (yhi - ylo);
    return mt + ph - t * ph;
  };

  o << "<g class=\"grid\" stroke=\"#e6e6e6\">\n";
  for (double v : yt)
    o << "<line x1=\"" << px(ml) << "\" x2=\"" << px(ml + pw) << "\" y1=\"" << px(fy(v))
      << "\" y2=\"" << px(fy(v)) << "\"/>\n";
  for (double v : xt)
    o << "<line y1=\"" << px(mt) << "\" y2=\"" << px(mt + ph) << "\" x1=\"" << px(fx(v))
      << "\" x2=\"" << px(fx(v)) << "\"/>\n";
  o << "</g>\n<g class=\"ticks y-ticks\" text-anchor=\"end\">\n";
  for (double v : yt)
    o << "<text x=\"" << px(ml - 6) << "\" y=\"" << px(fy(v) + 4) << "\">" << num(v, 6)
      << "</text>\n";
  o << "</g>\n<g class=\"ticks x-ticks\" text-anchor=\"middle\">\n";
  for (double v : xt)
    o << "<text x=\"" << px(fx(v)) << "\" y=\"" << px(mt + ph + 16) << "\">" << num(v, 6)
      << "</text>\n";
  o << "</g>\n";

  // ---- series ----
  for (size_t k = 0; k < c.series.size(); ++k) {
    const Series& s = c.series[k];
    const std::vector<Point>& d = drawn[k];
    if (d.empty()) continue;
    std::string path;
    for (const Point& p : thin(d))
      path += (path.empty() ? "M" : " L") + px(fx(p.x)) + " " + px(fy(p.y));
    if (d.size() == 1) path += " h0.01";  // a lone point still shows as a round cap
    o << "<path" << attr("id", s.id) << " class=\"series\"" << attr("data-label", s.label)
      << " data-points=\"" << d.size() << "\" data-last=\"" << num(d.back().y, 6)
      << "\" fill=\"none\"" << attr("stroke", s.color)
      << " stroke-width=\"2\" stroke-linejoin=\"round\" stroke-linecap=\"round\""
      << (s.dashed ? " stroke-dasharray=\"6 4\"" : "") << " d=\"" << path << "\"/>\n";
    if (s.markers && d.size() <= 300) {
      o << "<g class=\"points\"" << attr("data-series", s.id) << attr("fill", s.color) << ">\n";
      for (const Point& p : d)
        o << "<circle cx=\"" << px(fx(p.x)) << "\" cy=\"" << px(fy(p.y)) << "\" r=\"3.5\"><title>"
          << escape(s.label) << ", step " << num(p.x, 9) << ": " << num(p.y, 6)
          << "</title></circle>\n";
      o << "</g>\n";
    }
  }

  // ---- the marker: a ring and its label, kept inside the plot ----
  if (c.marker && std::isfinite(c.marker->x) && std::isfinite(c.marker->y) &&
      (!log_y || c.marker->y > 0))
    write_marker(o, *c.marker, fx(c.marker->x), fy(c.marker->y), ml, mt, pw);
  write_legend(o, c, drawn, ml);
  o << "</g>\n</svg>\n";
  return o.str();
}

std::string color_at(double t) {
  // Cream to deep wine through amber: light means little change, so the eye goes to the dark.
  static const Rgb kStops[] = {
      {251, 247, 236}, {245, 211, 143}, {235, 147, 80}, {194, 74, 62}, {94, 20, 52}};
  if (!std::isfinite(t)) t = 0;
  t = std::clamp(t, 0.0, 1.0) * 4;
  const int i = std::min(3, int(t));
  const double f = t - i;
  const Rgb& a = kStops[i];
  const Rgb& b = kStops[i + 1];
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", int(std::lround(a.r + (b.r - a.r) * f)),
                int(std::lround(a.g + (b.g - a.g) * f)), int(std::lround(a.b + (b.b - a.b) * f)));
  return buf;
}

std::string heatmap(const Heatmap& h) {
  const size_t rows = h.values.size();
  const size_t cols = h.col_labels.size();
  const double cw = 66,
               ch = std::clamp(std::floor(560.0 / double(std::max<size_t>(rows, 1))), 10.0, 26.0);
  const double ml = 70, mt = 36, grid_w = cw * double(cols), grid_h = ch * double(rows);
  const double bar_x = ml + grid_w + 28, bar_w = 14, bar_h = std::max(grid_h, 160.0);
  const double W = bar_x + bar_w + 84, H = mt + bar_h + 44;

  std::vector<double> vals;
  for (const auto& r : h.values)
    for (double v : r)
      if (v >= 0 && std::isfinite(v)) vals.push_back(v);
  std::vector<double> positive;
  for (double v : vals)
    if (v > 0) positive.push_back(v);
  const bool log_c = log_scale_fits(positive);
  double lo = 0, hi = vals.empty() ? 0 : *std::max_element(vals.begin(), vals.end());
  if (log_c) lo = *std::min_element(positive.begin(), positive.end());
  auto scale_t = [&](double v) {
    if (log_c)
      return v <= 0 ? 0.0 : (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
    return hi > 0 ? v / hi : 0.0;
  };

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\"" << attr("id", h.id) << " class=\"heatmap\""
    << " width=\"" << px(W) << "\" height=\"" << px(H) << "\" viewBox=\"0 0 " << px(W) << " "
    << px(H) << "\" role=\"img\" data-rows=\"" << rows << "\" data-cols=\"" << cols
    << "\" data-log-color=\"" << (log_c ? "true" : "false") << "\">\n<title>"
    << escape(h.value_label) << " by " << escape(h.row_title) << " and " << escape(h.col_title)
    << "</title>\n";
  // Column labels on top, row labels (thinned to stay legible) on the left.
  o << "<g class=\"col-labels\" text-anchor=\"middle\">\n";
  for (size_t j = 0; j < cols; ++j)
    o << "<text x=\"" << px(ml + cw * (double(j) + 0.5)) << "\" y=\"" << px(mt - 8) << "\">"
      << escape(h.col_labels[j]) << "</text>\n";
  o << "</g>\n<g class=\"row-labels\" text-anchor=\"end\">\n";
  const size_t every = size_t(std::ceil(13.0 / ch));
  for (size_t i = 0; i < rows; ++i) {
    if (i % every != 0 && i + 1 != rows) continue;
    const std::string label = i < h.row_labels.size() ? h.row_labels[i] : std::to_string(i);
    o << "<text x=\"" << px(ml - 6) << "\" y=\"" << px(mt + ch * (double(i) + 0.5) + 4) << "\">"
      << escape(label) << "</text>\n";
  }
  o << "</g>\n<text class=\"axis-label\" transform=\"translate(16," << px(mt + grid_h / 2)
    << ") rotate(-90)\" text-anchor=\"middle\">" << escape(h.row_title) << "</text>\n";

  o << "<g class=\"cells\">\n";
  for (size_t i = 0; i < rows; ++i) {
    const std::string row = i < h.row_labels.size() ? h.row_labels[i] : std::to_string(i);
    for (size_t j = 0; j < cols; ++j) {
      const double v = j < h.values[i].size() ? h.values[i][j] : -1;
      const std::string name = h.row_prefix + row + ", " + h.col_labels[j];
      o << "<rect x=\"" << px(ml + cw * double(j) + 1) << "\" y=\"" << px(mt + ch * double(i) + 1)
        << "\" width=\"" << px(cw - 2) << "\" height=\"" << px(ch - 2) << "\"";
      if (v >= 0 && std::isfinite(v)) {
        o << " class=\"heat-cell\"" << attr("data-row", row) << attr("data-col", h.col_labels[j])
          << " data-value=\"" << num(v, 8) << "\" fill=\"" << color_at(scale_t(v)) << "\"><title>"
          << escape(name) << ": " << escape(h.value_label) << " " << num(v, 8)
          << "</title></rect>\n";
        // Tall enough cells also print the value, light on the dark half of the scale.
        if (ch >= 16)
          o << "<text class=\"heat-value\" x=\"" << px(ml + cw * (double(j) + 0.5)) << "\" y=\""
            << px(mt + ch * (double(i) + 0.5) + 4) << "\" text-anchor=\"middle\" font-size=\"10\""
            << " style=\"fill:" << (scale_t(v) > 0.55 ? "#fff" : "#222")
            << "\" pointer-events=\"none\">" << num(v, 2) << "</text>\n";
      } else {
        o << " class=\"heat-none\"" << attr("data-row", row) << attr("data-col", h.col_labels[j])
          << " fill=\"#f4f4f4\" stroke=\"#d8d8d8\" stroke-dasharray=\"3 2\"><title>" << escape(name)
          << ": no such tensor</title></rect>\n";
      }
    }
  }
  o << "</g>\n";

  // ---- colour scale: a bar from low (bottom) to high (top) with ticks ----
  const std::string grad = h.id + "-scale";
  o << "<defs><linearGradient" << attr("id", grad) << " x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">";
  for (int k = 0; k <= 8; ++k)
    o << "<stop offset=\"" << num(k / 8.0) << "\" stop-color=\"" << color_at(k / 8.0) << "\"/>";
  o << "</linearGradient></defs>\n<g class=\"color-legend\">\n<rect x=\"" << px(bar_x) << "\" y=\""
    << px(mt) << "\" width=\"" << px(bar_w) << "\" height=\"" << px(bar_h) << "\" fill=\"url(#"
    << escape(grad) << ")\" stroke=\"#999\"/>\n";
  std::vector<double> ticks;
  if (log_c) {
    ticks = log_ticks(lo, hi);
    if (ticks.size() < 2) ticks = {lo, hi};
  } else if (hi > 0) {
    ticks = nice_ticks(0, hi, 4, false);
  } else {
    ticks = {0};
  }
  for (double v : ticks) {
    const double y = mt + bar_h - scale_t(v) * bar_h;
    o << "<line x1=\"" << px(bar_x + bar_w) << "\" x2=\"" << px(bar_x + bar_w + 4) << "\" y1=\""
      << px(y) << "\" y2=\"" << px(y) << "\" stroke=\"#666\"/><text x=\"" << px(bar_x + bar_w + 7)
      << "\" y=\"" << px(y + 4) << "\">" << num(v, 3) << "</text>\n";
  }
  o << "</g>\n<text class=\"axis-label\" x=\"" << px(ml) << "\" y=\"" << px(H - 12) << "\">"
    << "colour: " << escape(h.value_label) << (log_c ? " (log scale)" : " (linear from 0)")
    << "; dashed boxes: no such tensor</text>\n</svg>\n";
  return o.str();
}

}  // namespace ftune::svg
