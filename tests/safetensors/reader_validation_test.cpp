// One test per rule the reader enforces: each file breaks exactly that rule
// and the InputError must say which.
#include <gtest/gtest.h>

#include "minipuzzle/safetensors.h"
#include "test_util.h"

namespace minipuzzle {
namespace {
using test::contains;

class ReaderRule : public ::testing::Test {
 protected:
  // Writes the image to a file and returns the InputError message of opening it.
  std::string open_error(const std::string& bytes) {
    auto path = dir_ / "model.safetensors";
    test::write_bytes(path, bytes);
    return test::input_error([&] { SafetensorsFile::open(path); });
  }
  std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                    const std::string& offsets) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
           ",\"data_offsets\":" + offsets + "}";
  }
  test::TempDir dir_;
};

TEST_F(ReaderRule, ErrorNamesTheFileOnOneLine) {
  auto msg = open_error("short");
  EXPECT_TRUE(contains(msg, (dir_ / "model.safetensors").string() + ": "));
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

TEST_F(ReaderRule, MissingFileIsInputError) {
  auto msg = test::input_error([&] { SafetensorsFile::open(dir_ / "absent.safetensors"); });
  EXPECT_TRUE(contains(msg, "absent.safetensors: cannot open"));
}

TEST_F(ReaderRule, FileShorterThan8BytesIsRejected) {
  EXPECT_TRUE(contains(open_error("1234567"), "shorter than the 8-byte header length"));
}

TEST_F(ReaderRule, HeaderLengthAboveLimitIsRejected) {
  EXPECT_TRUE(contains(open_error(test::image("{}", "", 100'000'001)), "exceeds the limit"));
}

TEST_F(ReaderRule, HeaderLengthPastEndOfFileIsRejected) {
  EXPECT_TRUE(contains(open_error(test::image("{}", "", 3)), "runs past the end"));
}

TEST_F(ReaderRule, HeaderThatIsNotUtf8IsRejected) {
  EXPECT_TRUE(contains(open_error(test::image("{\"\xff\":1}")), "not valid UTF-8"));
}

TEST_F(ReaderRule, HeaderNotStartingWithBraceIsRejected) {
  EXPECT_TRUE(contains(open_error(test::image(" {}")), "does not start with '{'"));
}

TEST_F(ReaderRule, HeaderThatIsNotJsonIsRejected) {
  EXPECT_TRUE(contains(open_error(test::image("{\"x\":")), "header is not valid JSON"));
}

TEST_F(ReaderRule, TrailingNonSpaceAfterHeaderObjectIsRejected) {
  EXPECT_TRUE(contains(open_error(test::image("{}  x")), "header is not valid JSON"));
}

TEST_F(ReaderRule, DuplicateTensorNameIsRejected) {
  auto h = "{" + entry("x", "U8", "[1]", "[0,1]") + "," + entry("x", "U8", "[1]", "[1,2]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h, "ab")), "duplicate key \"x\""));
}

TEST_F(ReaderRule, DuplicateFieldInsideEntryIsRejected) {
  auto h = std::string("{\"x\":{\"dtype\":\"U8\",\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]}}");
  EXPECT_TRUE(contains(open_error(test::image(h, "a")), "duplicate key \"dtype\""));
}

TEST_F(ReaderRule, MetadataThatIsNotAnObjectIsRejected) {
  EXPECT_TRUE(contains(open_error(test::image("{\"__metadata__\":[1]}")),
                       "__metadata__ is not an object of strings"));
}

TEST_F(ReaderRule, MetadataValueThatIsNotAStringIsRejected) {
  EXPECT_TRUE(contains(open_error(test::image("{\"__metadata__\":{\"step\":3}}")),
                       "__metadata__ value of \"step\" is not a string"));
}

TEST_F(ReaderRule, TensorEntryThatIsNotAnObjectIsRejected) {
  EXPECT_TRUE(contains(open_error(test::image("{\"x\":3}")), "tensor \"x\" is not an object"));
}

TEST_F(ReaderRule, TensorEntryWithoutShapeIsRejected) {
  auto h = std::string("{\"x\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}");
  EXPECT_TRUE(contains(open_error(test::image(h, "a")), "tensor \"x\" has no \"shape\""));
}

TEST_F(ReaderRule, UnknownDtypeIsRejected) {
  auto h = "{" + entry("x", "Q4", "[1]", "[0,1]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h, "a")), "unknown dtype \"Q4\""));
}

TEST_F(ReaderRule, NegativeDimensionIsRejected) {
  auto h = "{" + entry("x", "U8", "[-1]", "[0,0]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h)), "not an array of non-negative integers"));
}

TEST_F(ReaderRule, FractionalDimensionIsRejected) {
  auto h = "{" + entry("x", "U8", "[1.5]", "[0,1]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h, "a")), "not an array of non-negative integers"));
}

TEST_F(ReaderRule, DataOffsetsThatAreNotAPairAreRejected) {
  auto h = "{" + entry("x", "U8", "[1]", "[0,1,1]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h, "a")), "is not [begin, end]"));
}

TEST_F(ReaderRule, DataOffsetsWithBeginAfterEndAreRejected) {
  auto h = "{" + entry("x", "U8", "[0]", "[1,0]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h, "a")), "begin > end"));
}

TEST_F(ReaderRule, ShapeWhoseElementCountOverflowsIsRejected) {
  auto h = "{" + entry("x", "U8", "[4294967296,4294967296]", "[0,0]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h)), "overflows the element count"));
}

TEST_F(ReaderRule, ShapeWhoseByteSizeOverflowsIsRejected) {
  auto h = "{" + entry("x", "F64", "[4611686018427387904]", "[0,0]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h)), "overflows the byte size"));
}

TEST_F(ReaderRule, OffsetsThatDisagreeWithShapeAndDtypeAreRejected) {
  auto h = "{" + entry("x", "BF16", "[3,2]", "[0,10]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h, std::string(10, 'a'))),
                       "tensor \"x\" data_offsets [0, 10] but BF16 [3,2] needs 12 bytes"));
}

TEST_F(ReaderRule, FirstTensorNotAtOffsetZeroIsRejected) {
  auto h = "{" + entry("x", "U8", "[1]", "[1,2]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h, "ab")), "begins at byte 1, not 0"));
}

TEST_F(ReaderRule, GapBetweenTensorsIsRejected) {
  auto h = "{" + entry("a", "U8", "[1]", "[0,1]") + "," + entry("b", "U8", "[1]", "[2,3]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h, "abc")), "gap of 1 bytes"));
}

TEST_F(ReaderRule, OverlappingTensorsAreRejected) {
  auto h = "{" + entry("a", "U8", "[2]", "[0,2]") + "," + entry("b", "U8", "[2]", "[1,3]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h, "abc")), "overlap"));
}

TEST_F(ReaderRule, BufferLongerThanTheTensorsIsRejected) {
  auto h = "{" + entry("a", "U8", "[2]", "[0,2]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h, "abc")),
                       "tensors cover 2 bytes but the data buffer holds 3 bytes"));
}

TEST_F(ReaderRule, TensorsRunningPastTheBufferAreRejected) {
  auto h = "{" + entry("a", "U8", "[4]", "[0,4]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h, "ab")),
                       "tensors cover 4 bytes but the data buffer holds 2 bytes"));
}

TEST_F(ReaderRule, FromMemoryAppliesTheSameRulesAndNamesTheSource) {
  auto bytes = test::image("{\"x\":3}");
  auto msg = test::input_error([&] {
    SafetensorsFile::from_memory(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                 "fuzz-input");
  });
  EXPECT_TRUE(contains(msg, "fuzz-input: tensor \"x\" is not an object"));
}

// Found by fuzzing (tests/fuzz): nlohmann reports a number past the double
// range as out_of_range, not parse_error, and it escaped as a non-InputError.
TEST_F(ReaderRule, NumberPastTheDoubleRangeIsRejected) {
  auto h = "{" + entry("a", "F32", "[1e9999]", "[0,4]") + "}";
  EXPECT_TRUE(contains(open_error(test::image(h, "abcd")), "header is not valid JSON"));
}

// Found by fuzzing: a deeply nested header overflowed the stack (nlohmann
// copies and dumps recursively); nesting is limited to kMaxJsonNesting.
TEST_F(ReaderRule, DeeplyNestedHeaderIsRejected) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_TRUE(contains(open_error(test::image("{\"__metadata__\":" + deep + "}")), "nested deeper than 64"));
  // 64 levels (the top-level object is level 1) are fine as far as nesting goes.
  const std::string ok = std::string(62, '[') + std::string(62, ']');
  EXPECT_TRUE(contains(open_error(test::image("{\"__metadata__\":{\"k\":" + ok + "}}")),
                       "__metadata__ value of \"k\" is not a string"));
}

}  // namespace
}  // namespace minipuzzle
