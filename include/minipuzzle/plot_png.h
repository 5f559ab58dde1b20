// PNG charts for the Markdown reports (score, distill, compress): bar charts,
// line charts and figures of stacked line panels (one metric per y axis),
// drawn with cairo (antialiased, DejaVu Sans text through fontconfig) into an
// RGB image and written with cairo's PNG writer. No LibTorch.
//
// Colours: category / series i is drawn in palette(i % 10), the ten
// "tab10" colours (blue, orange, green, red, purple, brown, pink, grey,
// olive, cyan). Background white, axes black, grid light grey.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace minipuzzle::plot {

// CRC-32 (ISO-HDLC / PNG, reflected poly 0xEDB88320); pass the previous
// result as `crc` to continue a running checksum. Here for history (the
// hand-written PNG encoder needed it); the sharded checkpoints use it.
uint32_t crc32(const uint8_t* data, std::size_t size, uint32_t crc = 0);

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const Rgb& o) const { return r == o.r && g == o.g && b == o.b; }
};
Rgb palette(std::size_t index);  // tab10, index taken modulo 10

// 8-bit RGB image, rows top to bottom.
struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // width * height * 3
  Rgb at(int x, int y) const;
};

// One bar per value, drawn up (or down, for negative values) from zero.
struct BarChart {
  std::string title, x_label, y_label;
  std::vector<double> values;            // non-finite values draw no bar
  std::vector<std::string> labels;       // per bar, under the axis; empty: bar index
  std::vector<int> category;             // per bar index into `categories`; empty: all 0
  std::vector<std::string> categories;   // legend names (colour = palette(i)); empty: no legend
  int width = 800, height = 480;
};

struct Series {
  std::string name;  // legend entry
  std::vector<double> x, y;  // same length; non-finite points (and y <= 0 on log-y) break the line
  bool points_only = false;  // a scatter: markers at every point, no connecting line
};

struct LineChart {
  std::string title, x_label, y_label;
  std::vector<Series> series;
  bool log_y = false;
  int width = 800, height = 480;
};

// True when every finite y is positive and the largest is at least `ratio`
// times the smallest: a curve a linear axis would flatten (a loss falling
// from 6 to 0.02), for `log_y`.
bool spans_decades(const std::vector<Series>& series, double ratio = 30);

// Panels stacked top to bottom over one x range, each its own y axis (its
// title names the metric; its y_label, log_y and series are its own; its
// x_label, width and height are not used): metrics of different scales, such
// as a KD loss of 0.02 and a held-out loss of 1.15, each fill their panel.
// Series colours and the legend restart in every panel.
struct Figure {
  std::string title, x_label;
  std::vector<LineChart> panels;
  int width = 800;
  int height = 0;  // 0: 70 px plus 190 px per panel
};

// Rendering is deterministic; std::invalid_argument on inconsistent input
// (sizes 64..8192 px, per-bar vectors of the wrong length, category out of range).
// A figure also throws when it has no panel.
Image render(const BarChart& chart);
Image render(const LineChart& chart);
Image render(const Figure& figure);

// The PNG bytes of an image (RGB, 8 bits per channel), by cairo.
std::string encode_png(const Image& image);

// Renders and writes atomically (temp + fsync + rename).
void write_png(const std::filesystem::path& path, const BarChart& chart);
void write_png(const std::filesystem::path& path, const LineChart& chart);
void write_png(const std::filesystem::path& path, const Figure& figure);

}  // namespace minipuzzle::plot
