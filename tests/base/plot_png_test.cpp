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

// Inflates a zlib stream made only of stored blocks; checks header and Adler-32.
std::string inflate_stored(const std::string& z) {
  EXPECT_EQ((uint8_t(z[0]) * 256 + uint8_t(z[1])) % 31, 0);
  EXPECT_EQ(uint8_t(z[0]) & 0x0F, 8);  // deflate
  std::string raw;
  std::size_t at = 2;
  for (bool final = false; !final;) {
    uint8_t head = z.at(at);
    final = head & 1;
    EXPECT_EQ(head >> 1, 0) << "only stored blocks expected";
    uint16_t len = uint8_t(z[at + 1]) | (uint8_t(z[at + 2]) << 8), nlen = uint8_t(z[at + 3]) | (uint8_t(z[at + 4]) << 8);
    EXPECT_EQ(uint16_t(~len), nlen);
    raw += z.substr(at + 5, len);
    at += 5 + len;
  }
  EXPECT_EQ(at + 4, z.size());
  EXPECT_EQ(be32(z, at), adler32(bytes(raw), raw.size()));
  return raw;
}

}  // namespace

TEST(Checksums, KnownVectors) {
  EXPECT_EQ(crc32(bytes("123456789"), 9), 0xCBF43926u);
  EXPECT_EQ(adler32(bytes("Wikipedia"), 9), 0x11E60398u);
  EXPECT_EQ(crc32(nullptr, 0), 0u);
  EXPECT_EQ(adler32(nullptr, 0), 1u);
  // RFC 1950 / zlib: Adler-32 of "abc" = 0x024d0127; CRC-32 of "The quick brown fox jumps over the lazy dog" = 0x414FA339
  EXPECT_EQ(adler32(bytes("abc"), 3), 0x024D0127u);
  std::string fox = "The quick brown fox jumps over the lazy dog";
  EXPECT_EQ(crc32(bytes(fox), fox.size()), 0x414FA339u);
}

TEST(Checksums, RunningEqualsOneShotAndLongInputsDoNotOverflow) {
  std::string big(200000, '\xFF');  // worst case for Adler's running sums
  for (std::size_t i = 0; i < big.size(); i += 7) big[i] = static_cast<char>(i);
  uint32_t a = 1, c = 0;
  for (std::size_t at = 0; at < big.size(); at += 9999) {
    std::size_t n = std::min<std::size_t>(9999, big.size() - at);
    a = adler32(bytes(big) + at, n, a);
    c = crc32(bytes(big) + at, n, c);
  }
  EXPECT_EQ(a, adler32(bytes(big), big.size()));
  EXPECT_EQ(c, crc32(bytes(big), big.size()));
  // naive Adler-32 with a modulo every byte
  uint64_t s1 = 1, s2 = 0;
  for (unsigned char ch : big) s1 = (s1 + ch) % 65521, s2 = (s2 + s1) % 65521;
  EXPECT_EQ(a, (s2 << 16) | s1);
}

TEST(Png, ContainerParsesBack) {
  Image im;
  im.width = 200, im.height = 150;  // 90,150 raw bytes: two stored blocks
  im.rgb.resize(200 * 150 * 3);
  for (std::size_t i = 0; i < im.rgb.size(); ++i) im.rgb[i] = static_cast<uint8_t>(i * 31 + 7);
  auto chunks = parse_png(encode_png(im));
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks[0].type, "IHDR");
  EXPECT_EQ(be32(chunks[0].data, 0), 200u);
  EXPECT_EQ(be32(chunks[0].data, 4), 150u);
  EXPECT_EQ(chunks[0].data.substr(8), std::string("\x08\x02\x00\x00\x00", 5));
  EXPECT_EQ(chunks[1].type, "IDAT");
  EXPECT_EQ(chunks[2].type, "IEND");
  EXPECT_TRUE(chunks[2].data.empty());
  std::string raw = inflate_stored(chunks[1].data);
  ASSERT_EQ(raw.size(), 150u * (1 + 600));
  for (int y = 0; y < 150; ++y) {
    EXPECT_EQ(raw[y * 601], '\0');
    EXPECT_EQ(0, std::memcmp(raw.data() + y * 601 + 1, im.rgb.data() + y * 600, 600)) << "row " << y;
  }
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
  const Rgb white{255, 255, 255}, black{0, 0, 0};
  int left = 0, right = im.width - 1;  // the x axis's extent = the plot area's
  while (!(im.at(left, axis) == black)) ++left;
  while (!(im.at(right, axis) == black)) --right;
  for (int x = left + 1; x <= right; ++x) {
    Rgb c = im.at(x, axis - 1);
    if (!(c == white) && !(c == black) && !(c == im.at(x - 1, axis - 1))) runs.push_back(c);
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
  std::string png = read_file(d / "loss.png");
  auto chunks = parse_png(png);
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(inflate_stored(chunks[1].data).size(), 480u * (1 + 800 * 3));
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1);  // no temp left
  minipuzzle::remove_tree(d);
}
