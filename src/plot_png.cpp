#include "minipuzzle/plot_png.h"

// Without cairo (a build configured with MINIPUZZLE_REQUIRE_CAIRO=OFF, such
// as tools/gpu_check.sh's on a machine image that lacks it) the commands
// still run and write every result but the plots: see the end of this file.
#if MINIPUZZLE_HAVE_CAIRO
#include <cairo.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "minipuzzle/atomic_file.h"

namespace minipuzzle::plot {
#if MINIPUZZLE_HAVE_CAIRO
namespace {

constexpr Rgb kBlack{0, 0, 0}, kGrid{225, 225, 225}, kText{30, 30, 30}, kZero{110, 110, 110};
// Debian's fonts-dejavu-core, through fontconfig; another sans face stands in
// where it is missing.
constexpr const char* kFace = "DejaVu Sans";
constexpr double kTickSize = 11, kLabelSize = 12, kPanelTitleSize = 13, kTitleSize = 16;

enum class Align { Left, Centre, Right };

// A cairo image surface (RGB24) and its context. Lines on the axes, the grid
// and bars are whole-pixel rectangles, so they keep their exact colour under
// antialiasing; curves and text are antialiased.
class Canvas {
 public:
  Canvas(int w, int h) : width(w), height(h) {
    if (w < 64 || h < 64 || w > 8192 || h > 8192)
      throw std::invalid_argument("plot size must be 64..8192 pixels per side");
    surface_ = cairo_image_surface_create(CAIRO_FORMAT_RGB24, w, h);
    cr_ = cairo_create(surface_);
    if (cairo_status(cr_) != CAIRO_STATUS_SUCCESS) {
      destroy();
      throw std::runtime_error("cairo: cannot create a drawing surface");
    }
    rect(0, 0, w, h, {255, 255, 255});
  }
  ~Canvas() { destroy(); }
  Canvas(const Canvas&) = delete;
  Canvas& operator=(const Canvas&) = delete;

  void colour(Rgb c) { cairo_set_source_rgb(cr_, c.r / 255.0, c.g / 255.0, c.b / 255.0); }
  void rect(double x0, double y0, double x1, double y1, Rgb c) {  // [x0, x1) x [y0, y1)
    colour(c);
    cairo_rectangle(cr_, x0, y0, x1 - x0, y1 - y0);
    cairo_fill(cr_);
  }
  void hline(int x0, int x1, int y, Rgb c) { rect(x0, y, x1 + 1, y + 1, c); }  // x0..x1 inclusive
  void vline(int x, int y0, int y1, Rgb c) { rect(x, y0, x + 1, y1 + 1, c); }

  void font(double size, bool bold) {
    cairo_select_font_face(cr_, kFace, CAIRO_FONT_SLANT_NORMAL, bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr_, size);
  }
  double text_width(const std::string& s, double size, bool bold = false) {
    if (s.empty()) return 0;
    font(size, bold);
    cairo_text_extents_t e;
    cairo_text_extents(cr_, s.c_str(), &e);
    return e.x_advance;
  }
  // The text's line box centred vertically on y; `up` turns it to read bottom
  // to top, centred on (x, y).
  void text(double x, double y, const std::string& s, double size, Align align, bool bold = false, bool up = false) {
    if (s.empty()) return;
    const double w = text_width(s, size, bold);
    cairo_font_extents_t fe;
    cairo_font_extents(cr_, &fe);
    cairo_save(cr_);
    cairo_translate(cr_, x, y);
    if (up) cairo_rotate(cr_, -M_PI / 2);
    const double dx = up || align == Align::Centre ? -w / 2 : align == Align::Right ? -w : 0;
    cairo_move_to(cr_, dx, (fe.ascent - fe.descent) / 2);
    colour(kText);
    cairo_show_text(cr_, s.c_str());
    cairo_restore(cr_);
  }
  // A polyline of `width` px through whole-pixel points, clipped to `clip`.
  void polyline(const std::vector<std::pair<int, int>>& pts, Rgb c, double width, const std::array<int, 4>& clip) {
    if (pts.size() < 2) return;
    cairo_save(cr_);
    cairo_rectangle(cr_, clip[0], clip[1], clip[2] - clip[0], clip[3] - clip[1]);
    cairo_clip(cr_);
    cairo_move_to(cr_, pts[0].first, pts[0].second);
    for (std::size_t i = 1; i < pts.size(); ++i) cairo_line_to(cr_, pts[i].first, pts[i].second);
    colour(c);
    cairo_set_line_width(cr_, width);
    cairo_set_line_join(cr_, CAIRO_LINE_JOIN_ROUND);
    cairo_set_line_cap(cr_, CAIRO_LINE_CAP_ROUND);
    cairo_stroke(cr_);
    cairo_restore(cr_);
  }

  Image image() {
    cairo_surface_flush(surface_);
    Image im;
    im.width = width, im.height = height;
    im.rgb.resize(static_cast<std::size_t>(width) * height * 3);
    const unsigned char* data = cairo_image_surface_get_data(surface_);
    const int stride = cairo_image_surface_get_stride(surface_);
    for (int y = 0; y < height; ++y) {
      const auto* row = reinterpret_cast<const uint32_t*>(data + static_cast<std::ptrdiff_t>(y) * stride);
      for (int x = 0; x < width; ++x) {
        uint8_t* p = &im.rgb[(static_cast<std::size_t>(y) * width + x) * 3];
        p[0] = static_cast<uint8_t>(row[x] >> 16), p[1] = static_cast<uint8_t>(row[x] >> 8), p[2] = static_cast<uint8_t>(row[x]);
      }
    }
    return im;
  }

  const int width, height;

 private:
  void destroy() {
    if (cr_) cairo_destroy(cr_);
    if (surface_) cairo_surface_destroy(surface_);
    cr_ = nullptr, surface_ = nullptr;
  }
  cairo_surface_t* surface_ = nullptr;
  cairo_t* cr_ = nullptr;
};

std::string format_number(double v, double step) {
  if (std::abs(v) < std::abs(step) * 1e-6) v = 0;
  char buf[48];
  if (std::abs(v) >= 1e6 || (step > 0 && step < 1e-4))
    std::snprintf(buf, sizeof buf, "%.3g", v);
  else
    std::snprintf(buf, sizeof buf, "%.*f", step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9)), v);
  std::string s = buf;
  for (const char* from : {"e+0", "e+", "e-0"}) {
    auto at = s.find(from);
    if (at != std::string::npos) s.replace(at, std::string(from).size(), from[1] == '-' ? "e-" : "e");
  }
  return s;
}

// A value axis: [lo, hi] in axis units (log10 of the value on a log axis), ticks and their labels.
struct Axis {
  double lo = 0, hi = 1;
  bool log = false;
  std::vector<double> ticks;  // axis units
  std::vector<std::string> labels;
  double pos(double v) const { return ((log ? std::log10(v) : v) - lo) / (hi - lo); }  // 0..1
};

Axis linear_axis(double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
  if (hi <= lo) {
    double d = lo == 0 ? 1 : std::abs(lo) * 0.5;
    lo -= d, hi += d;
  }
  double raw = (hi - lo) / target, mag = std::pow(10.0, std::floor(std::log10(raw))), f = raw / mag;
  double step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
  Axis a;
  a.lo = std::floor(lo / step + 1e-9) * step;
  a.hi = std::ceil(hi / step - 1e-9) * step;
  for (long k = std::lround(a.lo / step); k * step <= a.hi + step * 1e-6; ++k) {
    a.ticks.push_back(k * step);
    a.labels.push_back(format_number(k * step, step));
  }
  return a;
}

Axis log_axis(double min_pos, double max_pos) {
  Axis a;
  a.log = true;
  if (!(min_pos > 0) || !std::isfinite(max_pos)) min_pos = 1, max_pos = 10;
  a.lo = std::floor(std::log10(min_pos));
  a.hi = std::max(a.lo + 1, std::ceil(std::log10(max_pos)));
  int stride = static_cast<int>(std::ceil((a.hi - a.lo) / 8));
  for (double e = a.lo; e <= a.hi; e += stride) {
    a.ticks.push_back(e);
    char buf[32];
    if (e >= 0 && e <= 4) std::snprintf(buf, sizeof buf, "%.0f", std::pow(10.0, e));
    else if (e >= -3 && e < 0) std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(-e), std::pow(10.0, e));
    else std::snprintf(buf, sizeof buf, "1e%.0f", e);
    a.labels.push_back(buf);
  }
  return a;
}

// The plot area [x0, x1) x [y0, y1) of a panel; values map onto its pixels.
struct Area {
  int x0, y0, x1, y1;
  int y_of(const Axis& a, double v) const { return y1 - 1 - static_cast<int>(std::lround(a.pos(v) * (y1 - 1 - y0))); }
  int x_of(const Axis& a, double v) const { return x0 + static_cast<int>(std::lround(a.pos(v) * (x1 - 1 - x0))); }
};

// Space a panel's y axis and legend take left and right of its plot area.
struct Margins {
  int left = 0, right = 0;
};

Margins margins(Canvas& c, const std::string& y_label, const Axis& y, const std::vector<std::string>& legend) {
  double label_w = 0, legend_w = 0;
  for (const auto& l : y.labels) label_w = std::max(label_w, c.text_width(l, kTickSize));
  for (const auto& l : legend) legend_w = std::max(legend_w, c.text_width(l, kLabelSize));
  Margins m;
  m.left = 10 + (y_label.empty() ? 0 : 20) + static_cast<int>(std::ceil(label_w)) + 10;
  m.right = legend.empty() ? 16 : std::min(c.width / 3, static_cast<int>(std::ceil(legend_w)) + 40);
  return m;
}

// Panel title above the area, the y axis (grid, ticks, labels, its label
// turned up) left of it, the axes just outside it, the legend right of it.
void draw_frame(Canvas& c, const Area& f, const std::string& title, double title_size, const std::string& y_label,
                const Axis& y, const std::vector<std::string>& legend) {
  c.text((f.x0 + f.x1) / 2.0, f.y0 - (title_size > kPanelTitleSize ? 18 : 12), title, title_size, Align::Centre, true);
  for (std::size_t i = 0; i < y.ticks.size(); ++i) {
    const double v = y.log ? std::pow(10.0, y.ticks[i]) : y.ticks[i];
    const int py = f.y_of(y, v);
    c.hline(f.x0, f.x1 - 1, py, kGrid);
    c.hline(f.x0 - 6, f.x0 - 2, py, kBlack);
    c.text(f.x0 - 9, py, y.labels[i], kTickSize, Align::Right);
  }
  if (!y_label.empty()) {
    double label_w = 0;
    for (const auto& l : y.labels) label_w = std::max(label_w, c.text_width(l, kTickSize));
    c.text(f.x0 - 9 - label_w - 12, (f.y0 + f.y1) / 2.0, y_label, kLabelSize, Align::Centre, false, true);
  }
  c.vline(f.x0 - 1, f.y0, f.y1, kBlack);  // axes just outside the plot area
  c.hline(f.x0 - 1, f.x1 - 1, f.y1, kBlack);
  for (std::size_t i = 0; i < legend.size(); ++i) {
    const int ly = f.y0 + 4 + static_cast<int>(i) * 17;
    c.rect(f.x1 + 12, ly, f.x1 + 20, ly + 8, palette(i));
    c.text(f.x1 + 26, ly + 4, legend[i], kLabelSize, Align::Left);
  }
}

void draw_x_ticks(Canvas& c, const Area& f, const Axis& x) {
  double last_right = -1e9;
  for (std::size_t i = 0; i < x.ticks.size(); ++i) {
    const int tx = f.x_of(x, x.ticks[i]);
    const double w = c.text_width(x.labels[i], kTickSize);
    c.vline(tx, f.y1 + 1, f.y1 + 4, kBlack);
    if (tx - w / 2 > last_right + 8) {
      c.text(tx, f.y1 + 14, x.labels[i], kTickSize, Align::Centre);
      last_right = tx + w / 2;
    }
  }
}

bool valid_point(const LineChart& ch, double x, double y) {
  return std::isfinite(x) && std::isfinite(y) && (!ch.log_y || y > 0);
}

Axis y_axis_of(const LineChart& ch) {
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& s : ch.series) {
    if (s.x.size() != s.y.size())
      throw std::invalid_argument("line chart: series '" + s.name + "' has x/y of different lengths");
    for (std::size_t i = 0; i < s.x.size(); ++i)
      if (valid_point(ch, s.x[i], s.y[i])) lo = std::min(lo, s.y[i]), hi = std::max(hi, s.y[i]);
  }
  return ch.log_y ? log_axis(lo, hi) : linear_axis(lo, hi, 5);
}

void draw_series(Canvas& c, const Area& f, const LineChart& ch, const Axis& x, const Axis& y) {
  for (std::size_t k = 0; k < ch.series.size(); ++k) {
    const Series& s = ch.series[k];
    const bool markers = s.points_only || s.x.size() <= 60;
    std::vector<std::pair<int, int>> run;  // a line breaks at a missing point
    auto flush = [&] {
      if (!s.points_only) c.polyline(run, palette(k), 2.0, {f.x0, f.y0, f.x1, f.y1});
      run.clear();
    };
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (!valid_point(ch, s.x[i], s.y[i])) {
        flush();
        continue;
      }
      const int cx = f.x_of(x, s.x[i]), cy = f.y_of(y, s.y[i]);
      run.emplace_back(cx, cy);
      const int r = s.points_only ? 3 : 2;  // a scatter's points are all it shows
      if (markers) c.rect(cx - r, cy - r, cx + r, cy + r, palette(k));
    }
    flush();
  }
}

// The figure's panels over one x axis, stacked in the canvas below `title`.
void draw_panels(Canvas& c, const std::string& title, const std::string& x_label,
                 const std::vector<LineChart>& panels) {
  if (panels.empty()) throw std::invalid_argument("figure: no panel");
  double xlo = INFINITY, xhi = -INFINITY;
  std::vector<Axis> ys;
  std::vector<std::vector<std::string>> legends;
  Margins m;
  for (const LineChart& p : panels) {
    ys.push_back(y_axis_of(p));
    legends.emplace_back();
    for (const auto& s : p.series) {
      legends.back().push_back(s.name);
      for (std::size_t i = 0; i < s.x.size(); ++i)
        if (valid_point(p, s.x[i], s.y[i])) xlo = std::min(xlo, s.x[i]), xhi = std::max(xhi, s.x[i]);
    }
    const Margins pm = margins(c, p.y_label, ys.back(), legends.back());
    m.left = std::max(m.left, pm.left), m.right = std::max(m.right, pm.right);  // aligned x axes
  }
  const Axis x = linear_axis(xlo, xhi, 8);
  const int top = title.empty() ? 8 : 40, bottom = x_label.empty() ? 6 : 26;
  const int n = static_cast<int>(panels.size());
  const double band = static_cast<double>(c.height - top - bottom) / n;
  c.text(c.width / 2.0, 20, title, kTitleSize, Align::Centre, true);
  for (int i = 0; i < n; ++i) {
    const LineChart& p = panels[static_cast<std::size_t>(i)];
    const int b0 = top + static_cast<int>(std::lround(band * i)), b1 = top + static_cast<int>(std::lround(band * (i + 1)));
    Area f{m.left, b0 + (p.title.empty() ? 8 : 26), c.width - m.right, b1 - 26};
    if (f.x1 - f.x0 < 8 || f.y1 - f.y0 < 8) throw std::invalid_argument("plot too small for its labels");
    draw_frame(c, f, p.title, kPanelTitleSize, p.y_label, ys[static_cast<std::size_t>(i)], legends[static_cast<std::size_t>(i)]);
    draw_x_ticks(c, f, x);
    draw_series(c, f, p, x, ys[static_cast<std::size_t>(i)]);
  }
  c.text((m.left + c.width - m.right) / 2.0, c.height - 13, x_label, kLabelSize, Align::Centre);
}

}  // namespace
#endif  // MINIPUZZLE_HAVE_CAIRO

uint32_t crc32(const uint8_t* data, std::size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

Rgb palette(std::size_t index) {
  static constexpr Rgb kTab10[10] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},
                                     {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {127, 127, 127},
                                     {188, 189, 34},  {23, 190, 207}};
  return kTab10[index % 10];
}

Rgb Image::at(int x, int y) const {
  const uint8_t* p = &rgb.at((static_cast<std::size_t>(y) * width + x) * 3);
  return {p[0], p[1], p[2]};
}

bool spans_decades(const std::vector<Series>& series, double ratio) {
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& s : series)
    for (double v : s.y) {
      if (!std::isfinite(v)) continue;
      if (v <= 0) return false;
      lo = std::min(lo, v), hi = std::max(hi, v);
    }
  return std::isfinite(lo) && hi >= ratio * lo;
}

#if MINIPUZZLE_HAVE_CAIRO
Image render(const BarChart& ch) {
  const std::size_t n = ch.values.size();
  if (!ch.labels.empty() && ch.labels.size() != n) throw std::invalid_argument("bar chart: one label per value");
  if (!ch.category.empty() && ch.category.size() != n) throw std::invalid_argument("bar chart: one category per value");
  for (int k : ch.category)
    if (k < 0 || (!ch.categories.empty() && static_cast<std::size_t>(k) >= ch.categories.size()))
      throw std::invalid_argument("bar chart: category index out of range");
  Canvas c(ch.width, ch.height);
  double lo = 0, hi = 0;
  for (double v : ch.values)
    if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  const Axis y = linear_axis(lo, hi == lo ? lo + 1 : hi, 6);
  const Margins m = margins(c, ch.y_label, y, ch.categories);
  const Area f{m.left, ch.title.empty() ? 12 : 44, c.width - m.right, c.height - (ch.x_label.empty() ? 26 : 44)};
  if (f.x1 - f.x0 < 8 || f.y1 - f.y0 < 8) throw std::invalid_argument("plot too small for its labels");
  draw_frame(c, f, ch.title, kTitleSize, ch.y_label, y, ch.categories);
  const int zero = f.y_of(y, 0.0);
  if (y.lo < 0) c.hline(f.x0, f.x1 - 1, zero, kZero);
  const double slot = n ? static_cast<double>(f.x1 - f.x0) / n : 0;
  const int gap = slot >= 4 ? static_cast<int>(slot * 0.1 + 0.5) : 0;
  double label_w = 0;
  for (std::size_t i = 0; i < n; ++i)
    label_w = std::max(label_w, c.text_width(ch.labels.empty() ? std::to_string(i) : ch.labels[i], kTickSize));
  const std::size_t stride =
      slot > 0 ? std::max<std::size_t>(1, static_cast<std::size_t>(std::ceil((label_w + 6) / slot))) : 1;
  for (std::size_t i = 0; i < n; ++i) {
    const int bx0 = f.x0 + static_cast<int>(std::lround(slot * i)) + gap;
    const int bx1 = std::max(bx0 + 1, f.x0 + static_cast<int>(std::lround(slot * (i + 1))) - gap);
    if (std::isfinite(ch.values[i])) {
      const int vy = f.y_of(y, ch.values[i]);
      c.rect(bx0, std::min(vy, zero), bx1, std::max(vy, zero) + 1, palette(ch.category.empty() ? 0 : ch.category[i]));
    }
    if (i % stride == 0)
      c.text((bx0 + bx1) / 2.0, f.y1 + 13, ch.labels.empty() ? std::to_string(i) : ch.labels[i], kTickSize,
             Align::Centre);
  }
  c.text((f.x0 + f.x1) / 2.0, c.height - 14, ch.x_label, kLabelSize, Align::Centre);
  return c.image();
}

Image render(const LineChart& ch) {
  Canvas c(ch.width, ch.height);
  LineChart panel = ch;
  panel.title.clear();  // the chart's title is the figure's
  draw_panels(c, ch.title, ch.x_label, {panel});
  return c.image();
}

Image render(const Figure& fig) {
  Canvas c(fig.width, fig.height > 0 ? fig.height : 70 + 190 * static_cast<int>(fig.panels.size()));
  draw_panels(c, fig.title, fig.x_label, fig.panels);
  return c.image();
}

std::string encode_png(const Image& im) {
  const std::size_t row = static_cast<std::size_t>(im.width) * 3;
  if (im.width <= 0 || im.height <= 0 || im.rgb.size() != row * im.height)
    throw std::invalid_argument("encode_png: image size does not match its pixels");
  cairo_surface_t* s = cairo_image_surface_create(CAIRO_FORMAT_RGB24, im.width, im.height);
  if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS) {
    cairo_surface_destroy(s);
    throw std::runtime_error("cairo: cannot create an image surface");
  }
  cairo_surface_flush(s);
  unsigned char* data = cairo_image_surface_get_data(s);
  const int stride = cairo_image_surface_get_stride(s);
  for (int y = 0; y < im.height; ++y) {
    auto* out = reinterpret_cast<uint32_t*>(data + static_cast<std::ptrdiff_t>(y) * stride);
    const uint8_t* in = &im.rgb[row * y];
    for (int x = 0; x < im.width; ++x, in += 3) out[x] = (uint32_t{in[0]} << 16) | (uint32_t{in[1]} << 8) | in[2];
  }
  cairo_surface_mark_dirty(s);
  std::string png;
  const cairo_status_t st = cairo_surface_write_to_png_stream(
      s,
      [](void* closure, const unsigned char* bytes, unsigned int n) {
        static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(bytes), n);
        return CAIRO_STATUS_SUCCESS;
      },
      &png);
  cairo_surface_destroy(s);
  if (st != CAIRO_STATUS_SUCCESS) throw std::runtime_error(std::string("cairo: PNG encoding failed: ") + cairo_status_to_string(st));
  return png;
}

void write_png(const std::filesystem::path& path, const BarChart& chart) { write_file_atomic(path, encode_png(render(chart))); }
void write_png(const std::filesystem::path& path, const LineChart& chart) { write_file_atomic(path, encode_png(render(chart))); }
void write_png(const std::filesystem::path& path, const Figure& figure) { write_file_atomic(path, encode_png(render(figure))); }
#else
namespace {
[[noreturn]] void no_cairo() { throw std::runtime_error("this build has no cairo: it draws no plots"); }
// Every result but the plot is still written; the run says once which plot it skipped.
void skip_plot(const std::filesystem::path& path) {
  static bool said = false;
  if (!said) std::fprintf(stderr, "plots not drawn (built without cairo): %s and any later ones\n", path.string().c_str());
  said = true;
}
}  // namespace
Image render(const BarChart&) { no_cairo(); }
Image render(const LineChart&) { no_cairo(); }
Image render(const Figure&) { no_cairo(); }
std::string encode_png(const Image&) { no_cairo(); }
void write_png(const std::filesystem::path& path, const BarChart&) { skip_plot(path); }
void write_png(const std::filesystem::path& path, const LineChart&) { skip_plot(path); }
void write_png(const std::filesystem::path& path, const Figure&) { skip_plot(path); }
#endif  // MINIPUZZLE_HAVE_CAIRO

}  // namespace minipuzzle::plot
