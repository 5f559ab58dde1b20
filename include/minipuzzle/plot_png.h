// PNG charts for the Markdown reports (score, distill, compress): bar charts
// and line charts drawn into an RGB image with a built-in 5x7 bitmap font and
// written as PNG. Plain C++: no LibTorch, no zlib (the PNG's deflate stream
// uses stored, i.e. uncompressed, blocks; CRC-32 and Adler-32 are ours).
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
// result as `crc` to continue a running checksum.
uint32_t crc32(const uint8_t* data, std::size_t size, uint32_t crc = 0);
// Adler-32 (zlib); pass the previous result to continue (start value 1).
uint32_t adler32(const uint8_t* data, std::size_t size, uint32_t adler = 1);

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

// Rendering is deterministic; std::invalid_argument on inconsistent input
// (sizes 64..8192 px, per-bar vectors of the wrong length, category out of range).
Image render(const BarChart& chart);
Image render(const LineChart& chart);

// The PNG bytes of an image (colour type 2, 8 bits, no interlace).
std::string encode_png(const Image& image);

// Renders and writes atomically (temp + fsync + rename).
void write_png(const std::filesystem::path& path, const BarChart& chart);
void write_png(const std::filesystem::path& path, const LineChart& chart);

}  // namespace minipuzzle::plot
