// PNG plots: checksums on published vectors, the PNG/zlib container parsed
// back by hand, and pixels of rendered charts.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/plot_png.h"

namespace fs = std::filesystem;
using namespace minipuzzle;
using namespace minipuzzle::plot;

namespace {

const uint8_t* bytes(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

uint32_t be32(const std::string& s, std::size_t at) {
  return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) | (uint32_t(uint8_t(s[at + 2])) << 8) |
         uint32_t(uint8_t(s[at + 3]));
}

struct Chunk {
  std::string type, data;
};

// Splits a PNG into chunks, checking the signature and every chunk CRC.
std::vector<Chunk> parse_png(const std::string& png) {
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  std::vector<Chunk> out;
  for (std::size_t at = 8; at < png.size();) {
    uint32_t len = be32(png, at);
    Chunk c{png.substr(at + 4, 4), png.substr(at + 8, len)};
    EXPECT_EQ(be32(png, at + 8 + len), crc32(bytes(png) + at + 4, len + 4)) << c.type;
    out.push_back(c);
    at += 12 + len;
  }
  return out;
}

// The IHDR of a PNG: width, height, then bit depth 8, colour type 2 (RGB),
// deflate, adaptive filtering, no interlace.
void expect_rgb8(const std::vector<Chunk>& chunks, uint32_t width, uint32_t height) {
  ASSERT_GE(chunks.size(), 3u);
  EXPECT_EQ(chunks.front().type, "IHDR");
  EXPECT_EQ(be32(chunks[0].data, 0), width);
  EXPECT_EQ(be32(chunks[0].data, 4), height);
  EXPECT_EQ(chunks[0].data.substr(8), std::string("\x08\x02\x00\x00\x00", 5));
  EXPECT_EQ(chunks.back().type, "IEND");
  EXPECT_TRUE(chunks.back().data.empty());
  bool idat = false;
  for (const auto& c : chunks) idat |= c.type == "IDAT";
  EXPECT_TRUE(idat);
}

int count(const Image& im, Rgb c, int x0 = 0, int y0 = 0, int x1 = -1, int y1 = -1) {
  if (x1 < 0) x1 = im.width;
  if (y1 < 0) y1 = im.height;
  int n = 0;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) n += im.at(x, y) == c;
  return n;
}

}  // namespace

TEST(Checksums, KnownVectors) {
  EXPECT_EQ(crc32(bytes("123456789"), 9), 0xCBF43926u);
  EXPECT_EQ(crc32(nullptr, 0), 0u);
  std::string fox = "The quick brown fox jumps over the lazy dog";
  EXPECT_EQ(crc32(bytes(fox), fox.size()), 0x414FA339u);
}

TEST(Checksums, RunningEqualsOneShot) {
  std::string big(200000, '\xFF');
  for (std::size_t i = 0; i < big.size(); i += 7) big[i] = static_cast<char>(i);
  uint32_t c = 0;
  for (std::size_t at = 0; at < big.size(); at += 9999) c = crc32(bytes(big) + at, std::min<std::size_t>(9999, big.size() - at), c);
  EXPECT_EQ(c, crc32(bytes(big), big.size()));
}

// cairo writes the PNG; its chunk CRCs agree with our CRC-32 (the pixels
// are decoded back in test_plot_png.py, by Pillow).
TEST(Png, ContainerParsesBack) {
  Image im;
  im.width = 200, im.height = 150;
  im.rgb.resize(200 * 150 * 3);
  for (std::size_t i = 0; i < im.rgb.size(); ++i) im.rgb[i] = static_cast<uint8_t>(i * 31 + 7);
  expect_rgb8(parse_png(encode_png(im)), 200, 150);
  im.rgb.pop_back();
  EXPECT_THROW(encode_png(im), std::invalid_argument);
}

TEST(Plot, BarsHaveTheirCategoryColours) {
  BarChart b;
  b.title = "Layer importance";
  b.values = {1, 2, 3, 4};
  b.category = {0, 1, 2, 1};
  b.categories = {"Mamba", "attention", "MLP"};
  b.width = 400, b.height = 300;
  Image im = render(b);
  ASSERT_EQ(im.width, 400);
  ASSERT_EQ(im.height, 300);
  // Scan the row just above the axis: four coloured runs, in category order.
  int axis = 0;
  for (int y = im.height - 1; y >= 0 && !axis; --y)
    if (im.at(im.width / 2, y) == Rgb{0, 0, 0}) axis = y;
  ASSERT_GT(axis, 0);
  std::vector<Rgb> runs;
  const Rgb black{0, 0, 0};
  int left = 0, right = im.width - 1;  // the x axis's extent = the plot area's
  while (!(im.at(left, axis) == black)) ++left;
  while (!(im.at(right, axis) == black)) --right;
  for (int x = left + 1; x <= right; ++x) {
    Rgb c = im.at(x, axis - 1);
    const bool grey = c.r == c.g && c.g == c.b;  // background, grid, axes
    if (!grey && !(c == im.at(x - 1, axis - 1))) runs.push_back(c);
  }
  ASSERT_EQ(runs.size(), 4u);
  EXPECT_EQ(runs[0], palette(0));
  EXPECT_EQ(runs[1], palette(1));
  EXPECT_EQ(runs[2], palette(2));
  EXPECT_EQ(runs[3], palette(1));
}

// A scatter draws the markers only: the pixels between two distant points
// stay unpainted, while the same series as a line paints them.
TEST(Plot, PointsOnlySeriesDrawsNoConnectingLine) {
  auto coloured = [](const Image& im) {
    int n = 0;
    for (int y = 0; y < im.height; ++y)
      for (int x = 0; x < im.width; ++x) n += im.at(x, y) == palette(0);
    return n;
  };
  LineChart ch;
  ch.series = {Series{"candidates", {0, 1, 2}, {0, 1, 0}}};
  ch.width = 400, ch.height = 300;
  const int as_line = coloured(render(ch));
  ch.series[0].points_only = true;
  const int as_points = coloured(render(ch));
  EXPECT_GT(as_points, 0);
  // Three small markers (plus the legend swatch) against two long 2-px lines.
  EXPECT_LT(as_points, 200);
  EXPECT_GT(as_line, as_points + 300);
}

TEST(Plot, BadInputThrows) {
  BarChart b;
  b.values = {1, 2};
  b.category = {0};
  EXPECT_THROW(render(b), std::invalid_argument);
  b.category = {0, 3};
  b.categories = {"a", "b"};
  EXPECT_THROW(render(b), std::invalid_argument);
  b.category.clear();
  b.width = 10;
  EXPECT_THROW(render(b), std::invalid_argument);
  LineChart l;
  l.series.push_back({"s", {1, 2}, {1}});
  EXPECT_THROW(render(l), std::invalid_argument);
}

TEST(Plot, DegenerateDataStillRenders) {
  BarChart b;  // no values
  EXPECT_NO_THROW(render(b));
  b.values = {0, 0, NAN};  // all zero, one missing
  EXPECT_NO_THROW(render(b));
  LineChart l;
  l.log_y = true;
  l.series.push_back({"flat", {1, 1}, {-1, 0}});  // nothing positive on a log axis
  l.series.push_back({"one", {5}, {3}});
  EXPECT_NO_THROW(render(l));
  l.log_y = false;
  EXPECT_NO_THROW(render(l));
}

TEST(Plot, WritePngIsAtomicAndComplete) {
  fs::path d = fs::temp_directory_path() / ("mp_plot_" + std::to_string(::getpid()));
  minipuzzle::remove_tree(d);
  fs::create_directories(d);
  LineChart l;
  l.title = "loss";
  l.series.push_back({"train", {0, 1, 2, 3}, {4, 3, 2.5, 2.2}});
  write_png(d / "loss.png", l);
  expect_rgb8(parse_png(read_file(d / "loss.png")), 800, 480);
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1);  // no temp left
  minipuzzle::remove_tree(d);
}

TEST(Plot, TextIsDrawnWithAnAntialiasedFont) {
  LineChart l;
  l.title = "Held-out loss per step";
  l.series.push_back({"train", {0, 1}, {1, 2}});
  const Image im = render(l);
  // The title band: many grey levels (glyph edges), which a bitmap font has not.
  std::vector<bool> level(256, false);
  int inked = 0;
  for (int y = 0; y < 34; ++y)
    for (int x = 0; x < im.width; ++x) {
      const Rgb c = im.at(x, y);
      if (c == Rgb{255, 255, 255}) continue;
      ++inked;
      if (c.r == c.g && c.g == c.b) level[c.r] = true;
    }
  EXPECT_GT(inked, 150);
  EXPECT_GT(std::count(level.begin(), level.end(), true), 20);
}

TEST(Plot, SpansDecades) {
  EXPECT_TRUE(spans_decades({Series{"kd", {0, 1, 2}, {6.0, 0.5, 0.02}}}));
  EXPECT_FALSE(spans_decades({Series{"held-out", {0, 1}, {1.2, 1.1}}}));
  EXPECT_FALSE(spans_decades({Series{"a", {0, 1}, {0.0, 10}}}));  // zero: no log axis
  EXPECT_FALSE(spans_decades({}));
  EXPECT_TRUE(spans_decades({Series{"a", {0}, {0.01}}, Series{"b", {0}, {1.0}}}));  // across series
  EXPECT_TRUE(spans_decades({Series{"a", {0, 1}, {1, 10}}}, 10));
}

// Panels of one figure: an x axis each (a black row across the plot area),
// and each curve fills most of its own panel's height whatever its scale.
TEST(Plot, FigurePanelsEachHaveTheirOwnYAxis) {
  Figure f;
  f.title = "long distillation";
  f.x_label = "step";
  LineChart kd, held;
  kd.title = "training KD loss";
  held.title = "held-out loss";
  for (int s = 0; s <= 20; ++s) {
    kd.series.resize(1), held.series.resize(1);
    kd.series[0].x.push_back(s), kd.series[0].y.push_back(0.03 - 0.001 * s);   // 0.03 .. 0.01
    held.series[0].x.push_back(s), held.series[0].y.push_back(1.2 - 0.004 * s);  // 1.2 .. 1.12
  }
  kd.series[0].name = held.series[0].name = "s";
  f.panels = {kd, held};
  const Image im = render(f);
  ASSERT_EQ(im.width, 800);
  ASSERT_EQ(im.height, 70 + 2 * 190);
  std::vector<int> axes;  // rows that are mostly black: the panels' x axes
  for (int y = 0; y < im.height; ++y)
    if (count(im, Rgb{0, 0, 0}, 0, y, im.width, y + 1) > im.width / 2) axes.push_back(y);
  ASSERT_EQ(axes.size(), 2u);
  int y_axis = 0;  // the column with the most black: the y axes, aligned
  for (int x = 0, best = 0; x < im.width; ++x)
    if (int n = count(im, Rgb{0, 0, 0}, x, 0, x + 1, im.height); n > best) best = n, y_axis = x;
  int right = im.width - 1;
  while (!(im.at(right, axes[0]) == Rgb{0, 0, 0})) --right;
  for (std::size_t p = 0; p < 2; ++p) {
    const int band0 = p == 0 ? 0 : axes[0] + 1;
    int top = band0;
    while (!(im.at(y_axis, top) == Rgb{0, 0, 0})) ++top;
    int lo = im.height, hi = -1;
    for (int y = top; y < axes[p]; ++y)
      if (count(im, palette(0), y_axis + 1, y, right, y + 1) > 0) lo = std::min(lo, y), hi = std::max(hi, y);
    ASSERT_GE(hi, lo) << "panel " << p << " has no curve";
    EXPECT_GT(hi - lo, 0.6 * (axes[p] - top)) << "panel " << p << ": the curve is flattened";
  }
  EXPECT_THROW(render(Figure{}), std::invalid_argument);
}
