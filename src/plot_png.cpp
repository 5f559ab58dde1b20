#include "minipuzzle/plot_png.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "minipuzzle/atomic_file.h"

namespace minipuzzle::plot {
namespace {

// 5x7 glyphs for ASCII 32..126: one byte per row, top row first, bit 4 = left column.
constexpr uint8_t kFont[95][7] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04},  //   !
    {0x0A, 0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00}, {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A},  // " #
    {0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04}, {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03},  // $ %
    {0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D}, {0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00},  // & '
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}, {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08},  // ( )
    {0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00}, {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00},  // * +
    {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}, {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00},  // , -
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}, {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00},  // . /
    {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},  // 0 1
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},  // 2 3
    {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},  // 4 5
    {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},  // 6 7
    {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},  // 8 9
    {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}, {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08},  // : ;
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02}, {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00},  // < =
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08}, {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04},  // > ?
    {0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E}, {0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11},  // @ A
    {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}, {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E},  // B C
    {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}, {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F},  // D E
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}, {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F},  // F G
    {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}, {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E},  // H I
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}, {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11},  // J K
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}, {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11},  // L M
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}, {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},  // N O
    {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}, {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D},  // P Q
    {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}, {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E},  // R S
    {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}, {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},  // T U
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}, {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A},  // V W
    {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}, {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04},  // X Y
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}, {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E},  // Z [
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00}, {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E},  // \ ]
    {0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00}, {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F},  // ^ _
    {0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00}, {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F},  // ` a
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E}, {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E},  // b c
    {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F}, {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E},  // d e
    {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08}, {0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // f g
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}, {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E},  // h i
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C}, {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12},  // j k
    {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}, {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11},  // l m
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}, {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E},  // n o
    {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10}, {0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01},  // p q
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}, {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E},  // r s
    {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}, {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D},  // t u
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04}, {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A},  // v w
    {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11}, {0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // x y
    {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F}, {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02},  // z {
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}, {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08},  // | }
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00},                                              // ~
};
constexpr int kAdvance = 6;  // glyph width 5 + 1 column of spacing

constexpr Rgb kBlack{0, 0, 0}, kGrid{225, 225, 225}, kText{30, 30, 30}, kZero{110, 110, 110};

int text_width(const std::string& s, int scale = 1) {
  return s.empty() ? 0 : (static_cast<int>(s.size()) * kAdvance - 1) * scale;
}

class Canvas {
 public:
  Canvas(int w, int h) {
    if (w < 64 || h < 64 || w > 8192 || h > 8192)
      throw std::invalid_argument("plot size must be 64..8192 pixels per side");
    img.width = w;
    img.height = h;
    img.rgb.assign(static_cast<std::size_t>(w) * h * 3, 255);
  }
  void set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= img.width || y >= img.height) return;
    uint8_t* p = &img.rgb[(static_cast<std::size_t>(y) * img.width + x) * 3];
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
  }
  void rect(int x0, int y0, int x1, int y1, Rgb c) {  // [x0, x1) x [y0, y1)
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) set(x, y, c);
  }
  void line(int x0, int y0, int x1, int y1, Rgb c, int thick = 1) {  // Bresenham
    int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    for (int err = dx + dy;;) {
      rect(x0, y0, x0 + thick, y0 + thick, c);
      if (x0 == x1 && y0 == y1) break;
      int e2 = 2 * err;
      if (e2 >= dy) err += dy, x0 += sx;
      if (e2 <= dx) err += dx, y0 += sy;
    }
  }
  // Top-left at (x, y); `up` draws it rotated to read bottom to top, starting at (x, y) = bottom-left.
  void text(int x, int y, const std::string& s, Rgb c, int scale = 1, bool up = false) {
    for (std::size_t i = 0; i < s.size(); ++i) {
      unsigned ch = static_cast<unsigned char>(s[i]);
      const uint8_t* g = kFont[(ch >= 32 && ch < 127 ? ch : '?') - 32];
      for (int row = 0; row < 7; ++row)
        for (int col = 0; col < 5; ++col) {
          if (!(g[row] & (0x10 >> col))) continue;
          int u = static_cast<int>(i) * kAdvance + col;  // along the text
          if (up)
            rect(x + row * scale, y - (u + 1) * scale, x + (row + 1) * scale, y - u * scale, c);
          else
            rect(x + u * scale, y + row * scale, x + (u + 1) * scale, y + (row + 1) * scale, c);
        }
    }
  }
  Image img;
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

// Title, y axis with grid and tick labels, axis labels, legend; returns the plot area.
struct Frame {
  int x0, y0, x1, y1;
  int y_of(const Axis& a, double v) const { return y1 - static_cast<int>(std::lround(a.pos(v) * (y1 - y0))); }
};

Frame draw_frame(Canvas& c, const std::string& title, const std::string& x_label, const std::string& y_label,
                 const Axis& y, const std::vector<std::string>& legend) {
  const int W = c.img.width, H = c.img.height;
  int label_w = 0, legend_w = 0;
  for (const auto& l : y.labels) label_w = std::max(label_w, text_width(l));
  for (const auto& l : legend) legend_w = std::max(legend_w, text_width(l));
  Frame f;
  f.x0 = 10 + (y_label.empty() ? 0 : 14) + label_w + 6;
  f.y0 = title.empty() ? 12 : 36;
  f.x1 = W - (legend.empty() ? 16 : std::min(W / 3, legend_w + 36));
  f.y1 = H - (x_label.empty() ? 22 : 38);
  if (f.x1 - f.x0 < 8 || f.y1 - f.y0 < 8) throw std::invalid_argument("plot too small for its labels");
  c.text((W - text_width(title, 2)) / 2, 10, title, kText, 2);
  c.text((f.x0 + f.x1 - text_width(x_label)) / 2, H - 14, x_label, kText);
  c.text(10, (f.y0 + f.y1 + text_width(y_label)) / 2, y_label, kText, 1, true);
  for (std::size_t i = 0; i < y.ticks.size(); ++i) {
    double v = y.log ? std::pow(10.0, y.ticks[i]) : y.ticks[i];
    int py = f.y_of(y, v);
    c.line(f.x0, py, f.x1 - 1, py, kGrid);
    c.line(f.x0 - 5, py, f.x0 - 2, py, kBlack);
    c.text(f.x0 - 7 - text_width(y.labels[i]), py - 3, y.labels[i], kText);
  }
  c.line(f.x0 - 1, f.y0, f.x0 - 1, f.y1, kBlack);  // axes just outside the plot area
  c.line(f.x0 - 1, f.y1, f.x1 - 1, f.y1, kBlack);
  for (std::size_t i = 0; i < legend.size(); ++i) {
    int ly = f.y0 + 4 + static_cast<int>(i) * 14;
    c.rect(f.x1 + 12, ly, f.x1 + 20, ly + 8, palette(i));
    c.text(f.x1 + 24, ly, legend[i], kText);
  }
  return f;
}

}  // namespace

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

uint32_t adler32(const uint8_t* data, std::size_t size, uint32_t adler) {
  uint32_t a = adler & 0xFFFF, b = adler >> 16;
  while (size > 0) {
    std::size_t n = std::min<std::size_t>(size, 5552);  // largest run without uint32 overflow
    for (std::size_t i = 0; i < n; ++i) a += data[i], b += a;
    a %= 65521, b %= 65521;
    data += n, size -= n;
  }
  return (b << 16) | a;
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
  Axis y = linear_axis(lo, hi == lo ? lo + 1 : hi, 6);
  Frame f = draw_frame(c, ch.title, ch.x_label, ch.y_label, y, ch.categories);
  int zero = f.y_of(y, 0.0);
  if (y.lo < 0) c.line(f.x0, zero, f.x1 - 1, zero, kZero);
  const double slot = n ? static_cast<double>(f.x1 - f.x0) / n : 0;
  const int gap = slot >= 4 ? static_cast<int>(slot * 0.1 + 0.5) : 0;
  int label_w = 0;
  for (std::size_t i = 0; i < n; ++i)
    label_w = std::max(label_w, text_width(ch.labels.empty() ? std::to_string(i) : ch.labels[i]));
  const std::size_t stride = slot > 0 ? std::max<std::size_t>(1, static_cast<std::size_t>(std::ceil((label_w + 6) / slot))) : 1;
  for (std::size_t i = 0; i < n; ++i) {
    int bx0 = f.x0 + static_cast<int>(std::lround(slot * i)) + gap;
    int bx1 = std::max(bx0 + 1, f.x0 + static_cast<int>(std::lround(slot * (i + 1))) - gap);
    if (std::isfinite(ch.values[i])) {
      int vy = f.y_of(y, ch.values[i]);
      c.rect(bx0, std::min(vy, zero), bx1, std::max(vy, zero) + (ch.values[i] < 0 ? 1 : 0),
             palette(ch.category.empty() ? 0 : ch.category[i]));
    }
    if (i % stride == 0) {
      std::string l = ch.labels.empty() ? std::to_string(i) : ch.labels[i];
      c.text((bx0 + bx1 - text_width(l)) / 2, f.y1 + 6, l, kText);
    }
  }
  return c.img;
}

Image render(const LineChart& ch) {
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  auto valid = [&](double x, double y) { return std::isfinite(x) && std::isfinite(y) && (!ch.log_y || y > 0); };
  std::vector<std::string> names;
  for (const auto& s : ch.series) {
    if (s.x.size() != s.y.size()) throw std::invalid_argument("line chart: series '" + s.name + "' has x/y of different lengths");
    names.push_back(s.name);
    for (std::size_t i = 0; i < s.x.size(); ++i)
      if (valid(s.x[i], s.y[i]))
        xlo = std::min(xlo, s.x[i]), xhi = std::max(xhi, s.x[i]), ylo = std::min(ylo, s.y[i]), yhi = std::max(yhi, s.y[i]);
  }
  Canvas c(ch.width, ch.height);
  Axis x = linear_axis(xlo, xhi, 8);
  Axis y = ch.log_y ? log_axis(ylo, yhi) : linear_axis(ylo, yhi, 6);
  Frame f = draw_frame(c, ch.title, ch.x_label, ch.y_label, y, names);
  auto px = [&](double v) { return f.x0 + static_cast<int>(std::lround(x.pos(v) * (f.x1 - 1 - f.x0))); };
  int last_right = -1000;
  for (std::size_t i = 0; i < x.ticks.size(); ++i) {
    int tx = px(x.ticks[i]), w = text_width(x.labels[i]);
    c.line(tx, f.y1 + 1, tx, f.y1 + 3, kBlack);
    if (tx - w / 2 > last_right + 6) c.text(tx - w / 2, f.y1 + 6, x.labels[i], kText), last_right = tx - w / 2 + w;
  }
  for (std::size_t k = 0; k < ch.series.size(); ++k) {
    const Series& s = ch.series[k];
    const bool markers = s.points_only || s.x.size() <= 60;
    int prev_x = 0, prev_y = 0;
    bool have_prev = false;
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (!valid(s.x[i], s.y[i])) { have_prev = false; continue; }
      int cx = px(s.x[i]), cy = std::min(f.y_of(y, s.y[i]), f.y1 - 1);
      if (have_prev && !s.points_only) c.line(prev_x, prev_y, cx, cy, palette(k), 2);
      if (markers) c.rect(cx - 1, cy - 1, cx + 3, cy + 3, palette(k));
      prev_x = cx, prev_y = cy, have_prev = true;
    }
  }
  return c.img;
}

std::string encode_png(const Image& im) {
  const std::size_t row = static_cast<std::size_t>(im.width) * 3;
  if (im.width <= 0 || im.height <= 0 || im.rgb.size() != row * im.height)
    throw std::invalid_argument("encode_png: image size does not match its pixels");
  std::string raw;  // each row: filter type 0 (none), then its pixels
  raw.reserve((row + 1) * im.height);
  for (int y = 0; y < im.height; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(&im.rgb[row * y]), row);
  }
  auto be32 = [](std::string& s, uint32_t v) {
    for (int sh = 24; sh >= 0; sh -= 8) s.push_back(static_cast<char>((v >> sh) & 0xFF));
  };
  std::string z = "\x78\x01";  // zlib: deflate, 32 KiB window, no dictionary; (0x78 * 256 + 1) % 31 == 0
  for (std::size_t at = 0; at < raw.size(); at += 65535) {
    uint16_t len = static_cast<uint16_t>(std::min<std::size_t>(65535, raw.size() - at));
    z.push_back(at + len == raw.size() ? 1 : 0);  // BFINAL, BTYPE 00 = stored
    for (uint16_t v : {len, static_cast<uint16_t>(~len)}) z.push_back(static_cast<char>(v & 0xFF)), z.push_back(static_cast<char>(v >> 8));
    z.append(raw, at, len);
  }
  be32(z, adler32(reinterpret_cast<const uint8_t*>(raw.data()), raw.size()));
  std::string out = "\x89PNG\r\n\x1a\n";
  auto chunk = [&](const char* type, const std::string& data) {
    be32(out, static_cast<uint32_t>(data.size()));
    std::string body = std::string(type) + data;
    out += body;
    be32(out, crc32(reinterpret_cast<const uint8_t*>(body.data()), body.size()));
  };
  std::string ihdr;
  be32(ihdr, im.width);
  be32(ihdr, im.height);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bits, RGB, deflate, adaptive filtering, no interlace
  chunk("IHDR", ihdr);
  chunk("IDAT", z);
  chunk("IEND", "");
  return out;
}

void write_png(const std::filesystem::path& path, const BarChart& chart) { write_file_atomic(path, encode_png(render(chart))); }
void write_png(const std::filesystem::path& path, const LineChart& chart) { write_file_atomic(path, encode_png(render(chart))); }

}  // namespace minipuzzle::plot
