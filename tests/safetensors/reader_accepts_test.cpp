// What the reader accepts, matching the reference implementation.
#include <gtest/gtest.h>

#include <cstring>

#include "minipuzzle/safetensors.h"
#include "test_util.h"

namespace minipuzzle {
namespace {

std::shared_ptr<SafetensorsFile> from(const std::string& bytes) {
  return SafetensorsFile::from_memory(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                      "mem");
}

TEST(ReaderAccepts, HeaderPaddedWithTrailingSpaces) {
  auto bytes = test::image("{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}     ", "ab");
  auto f = from(bytes);
  ASSERT_NE(f->find("x"), nullptr);
  EXPECT_EQ(std::memcmp(f->data(*f->find("x")), "ab", 2), 0);
}

TEST(ReaderAccepts, EmptyHeaderWithoutTensors) {
  auto bytes = test::image("{}");
  EXPECT_TRUE(from(bytes)->tensors().empty());
}

TEST(ReaderAccepts, UnknownEntryFieldsAreIgnoredAsTheReferenceDoes) {
  auto bytes = test::image(
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"note\":\"hi\"}}", "a");
  EXPECT_EQ(from(bytes)->tensors().size(), 1u);
}

TEST(ReaderAccepts, NullMetadataAsNoMetadata) {
  auto bytes = test::image("{\"__metadata__\":null}");
  EXPECT_TRUE(from(bytes)->metadata().empty());
}

TEST(ReaderAccepts, MetadataOfStrings) {
  auto bytes = test::image("{\"__metadata__\":{\"format\":\"pt\",\"step\":\"3\"}}");
  std::map<std::string, std::string> want{{"format", "pt"}, {"step", "3"}};
  EXPECT_EQ(from(bytes)->metadata(), want);
}

TEST(ReaderAccepts, ZeroSizedTensorsSharingAnOffset) {
  auto bytes = test::image(
      "{\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},"
      "\"s\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}",
      "z");
  auto f = from(bytes);
  EXPECT_EQ(f->find("e")->numel(), 0);
  EXPECT_EQ(f->find("s")->numel(), 1);  // a scalar: empty shape, one element
}

TEST(ReaderAccepts, EntriesInAnyHeaderOrderAndListsThemInOffsetOrder) {
  auto bytes = test::image(
      "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]},"
      "\"b\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[0,2]}}",
      "xyz");
  auto f = from(bytes);
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[0].name, "b");
  EXPECT_EQ(f->tensors()[1].name, "a");
  EXPECT_EQ(*f->data(*f->find("a")), 'z');
}

TEST(ReaderAccepts, FindReturnsNullForAnAbsentName) {
  auto bytes = test::image("{}");
  EXPECT_EQ(from(bytes)->find("nope"), nullptr);
}

}  // namespace
}  // namespace minipuzzle
