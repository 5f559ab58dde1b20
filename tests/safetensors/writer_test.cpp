// What write_safetensors puts on disk, read back through our reader and
// through the raw bytes.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <numeric>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/safetensors.h"
#include "test_util.h"

namespace minipuzzle {
namespace {

const DType kAllDtypes[] = {DType::BOOL, DType::U8,  DType::I8,  DType::I16,     DType::U16,
                            DType::F16,  DType::BF16, DType::I32, DType::U32,    DType::F32,
                            DType::F64,  DType::I64, DType::U64, DType::F8_E4M3, DType::F8_E5M2};

std::vector<uint8_t> pattern(std::size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = uint8_t(seed + 31 * i);
  return v;
}

// The JSON header text of a written file, padding included.
std::string header_text(const std::filesystem::path& path, uint64_t* n_out = nullptr) {
  std::string bytes = read_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[i]);
  if (n_out) *n_out = n;
  return bytes.substr(8, n);
}

class RoundTrip : public ::testing::TestWithParam<DType> {};

TEST_P(RoundTrip, PreservesDtypeShapeAndBytes) {
  test::TempDir dir;
  const DType dt = GetParam();
  const std::vector<int64_t> shape{3, 5};
  auto bytes = pattern(15 * dtype_size(dt), 7);
  write_safetensors(dir / "t.safetensors", {{"w", dt, shape, bytes.data(), bytes.size()}});

  auto f = SafetensorsFile::open(dir / "t.safetensors");
  const TensorInfo* t = f->find("w");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, dt);
  EXPECT_EQ(t->shape, shape);
  ASSERT_EQ(t->nbytes(), bytes.size());
  EXPECT_EQ(std::memcmp(f->data(*t), bytes.data(), bytes.size()), 0);
}

INSTANTIATE_TEST_SUITE_P(EveryDtype, RoundTrip, ::testing::ValuesIn(kAllDtypes),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(DTypeTable, NamesRoundTripAndSizesMatchTheFormat) {
  const std::size_t sizes[] = {1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8, 1, 1};
  for (std::size_t i = 0; i < std::size(kAllDtypes); ++i) {
    EXPECT_EQ(dtype_from_name(dtype_name(kAllDtypes[i])), kAllDtypes[i]);
    EXPECT_EQ(dtype_size(kAllDtypes[i]), sizes[i]) << dtype_name(kAllDtypes[i]);
  }
  EXPECT_FALSE(dtype_from_name("bf16").has_value());  // names are case-sensitive
}

TEST(Writer, PadsHeaderWithSpacesSoDataStartsAtAMultipleOf8) {
  test::TempDir dir;
  uint8_t byte = 1;
  for (std::string name : {"a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh"}) {
    write_safetensors(dir / "t.safetensors", {{name, DType::U8, {1}, &byte, 1}});
    uint64_t n;
    std::string text = header_text(dir / "t.safetensors", &n);
    EXPECT_EQ((8 + n) % 8, 0u) << name;
    auto last = text.find_last_not_of(' ');
    EXPECT_EQ(text[last], '}');
    EXPECT_LT(text.size() - last - 1, 8u);
  }
}

TEST(Writer, StoresTensorsContiguouslyInNameOrder) {
  test::TempDir dir;
  auto a = pattern(4, 1), b = pattern(8, 2), c = pattern(2, 3);
  write_safetensors(dir / "t.safetensors", {{"c", DType::U8, {2}, c.data(), 2},
                                            {"a", DType::F32, {1}, a.data(), 4},
                                            {"b", DType::I64, {1}, b.data(), 8}});
  auto f = SafetensorsFile::open(dir / "t.safetensors");
  std::vector<std::string> order;
  uint64_t expected_begin = 0;
  for (const auto& t : f->tensors()) {
    order.push_back(t.name);
    EXPECT_EQ(t.begin, expected_begin);
    expected_begin = t.end;
  }
  EXPECT_EQ(order, (std::vector<std::string>{"a", "b", "c"}));
}

TEST(Writer, HeaderIsCompactJsonWithMetadataFirst) {
  test::TempDir dir;
  uint8_t byte = 1;
  write_safetensors(dir / "t.safetensors", {{"A", DType::U8, {1}, &byte, 1}});
  std::string text = header_text(dir / "t.safetensors");
  EXPECT_EQ(text.rfind("{\"__metadata__\":{\"format\":\"pt\"},\"A\":{", 0), 0u) << text;
  EXPECT_EQ(text.find('\n'), std::string::npos);
}

TEST(Writer, EntryFieldsAreDtypeShapeDataOffsetsLikeTheReference) {
  test::TempDir dir;
  uint8_t byte = 1;
  write_safetensors(dir / "t.safetensors", {{"A", DType::U8, {1}, &byte, 1}}, {});
  EXPECT_EQ(header_text(dir / "t.safetensors").rfind(
                "{\"A\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 0),
            0u);
}

TEST(Writer, TensorNamedMetadataIsAProgrammingError) {
  test::TempDir dir;
  uint8_t byte = 1;
  EXPECT_THROW(write_safetensors(dir / "t.safetensors", {{"__metadata__", DType::U8, {1}, &byte, 1}}),
               std::invalid_argument);
}

TEST(Writer, DefaultMetadataIsFormatPt) {
  test::TempDir dir;
  write_safetensors(dir / "t.safetensors", {});
  std::map<std::string, std::string> want{{"format", "pt"}};
  EXPECT_EQ(SafetensorsFile::open(dir / "t.safetensors")->metadata(), want);
}

TEST(Writer, CustomMetadataRoundTrips) {
  test::TempDir dir;
  std::map<std::string, std::string> meta{{"format", "pt"}, {"source", "prune \"x\" ü"}};
  write_safetensors(dir / "t.safetensors", {}, meta);
  EXPECT_EQ(SafetensorsFile::open(dir / "t.safetensors")->metadata(), meta);
}

TEST(Writer, EmptyMetadataOmitsTheMetadataKey) {
  test::TempDir dir;
  write_safetensors(dir / "t.safetensors", {}, {});
  EXPECT_EQ(header_text(dir / "t.safetensors").find("__metadata__"), std::string::npos);
}

TEST(Writer, DuplicateNamesAreAProgrammingError) {
  test::TempDir dir;
  uint8_t byte = 1;
  EXPECT_THROW(write_safetensors(dir / "t.safetensors", {{"x", DType::U8, {1}, &byte, 1},
                                                         {"x", DType::U8, {1}, &byte, 1}}),
               std::invalid_argument);
  EXPECT_FALSE(std::filesystem::exists(dir / "t.safetensors"));
}

TEST(Writer, ByteCountThatDisagreesWithShapeIsAProgrammingError) {
  test::TempDir dir;
  uint8_t bytes[6] = {};
  EXPECT_THROW(write_safetensors(dir / "t.safetensors", {{"x", DType::BF16, {2, 2}, bytes, 6}}),
               std::invalid_argument);
}

TEST(Writer, LeavesOnlyTheTargetFileInTheDirectory) {
  test::TempDir dir;
  write_safetensors(dir / "t.safetensors", {});
  auto n = std::distance(std::filesystem::directory_iterator(dir.path()),
                         std::filesystem::directory_iterator());
  EXPECT_EQ(n, 1);
}

}  // namespace
}  // namespace minipuzzle
