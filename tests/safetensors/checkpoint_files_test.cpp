// Sharded checkpoints: how write_checkpoint_weights splits and names files,
// and the rules CheckpointFiles::open enforces on a directory.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/safetensors.h"
#include "test_util.h"

namespace minipuzzle {
namespace {
namespace fs = std::filesystem;
using test::contains;

// Five F32 tensors of 100 bytes each, names t0..t4, byte i of tk = k + i.
class Checkpoint : public ::testing::Test {
 protected:
  Checkpoint() {
    for (int k = 0; k < 5; ++k) {
      data_[k].resize(100);
      for (int i = 0; i < 100; ++i) data_[k][i] = uint8_t(k + i);
    }
  }
  std::vector<TensorView> views() {
    std::vector<TensorView> v;
    for (int k = 4; k >= 0; --k)  // out of order on purpose
      v.push_back({"t" + std::to_string(k), DType::F32, {25}, data_[k].data(), 100});
    return v;
  }
  std::vector<std::string> files_in_dir() {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_.path())) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }
  std::string open_error() {
    return test::input_error([&] { CheckpointFiles::open(dir_.path()); });
  }
  void write_index(const std::string& text) {
    test::write_bytes(dir_ / "model.safetensors.index.json", text);
  }
  test::TempDir dir_;
  std::vector<uint8_t> data_[5];
};

TEST_F(Checkpoint, FitsInOneFileUnderTheShardLimit) {
  auto names = write_checkpoint_weights(dir_.path(), views(), 500);
  EXPECT_EQ(names, std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(files_in_dir(), std::vector<std::string>{"model.safetensors"});
}

TEST_F(Checkpoint, ShardsGreedilyInNameOrderWithTheIndexLast) {
  auto names = write_checkpoint_weights(dir_.path(), views(), 250);
  std::vector<std::string> want{"model-00001-of-00003.safetensors",
                                "model-00002-of-00003.safetensors",
                                "model-00003-of-00003.safetensors", "model.safetensors.index.json"};
  EXPECT_EQ(names, want);
  auto first = SafetensorsFile::open(dir_ / names[0]);
  ASSERT_EQ(first->tensors().size(), 2u);
  EXPECT_EQ(first->tensors()[0].name, "t0");
  EXPECT_EQ(first->tensors()[1].name, "t1");
  std::map<std::string, std::string> pt{{"format", "pt"}};
  EXPECT_EQ(first->metadata(), pt);
}

TEST_F(Checkpoint, IndexHoldsTotalSizeAndTheWeightMap) {
  write_checkpoint_weights(dir_.path(), views(), 250);
  auto index = nlohmann::json::parse(read_file(dir_ / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 500);
  EXPECT_EQ(index["weight_map"].size(), 5u);
  EXPECT_EQ(index["weight_map"]["t4"], "model-00003-of-00003.safetensors");
}

TEST_F(Checkpoint, TensorLargerThanTheLimitGetsAShardOfItsOwn) {
  auto names = write_checkpoint_weights(dir_.path(), views(), 99);
  EXPECT_EQ(names.size(), 6u);
  EXPECT_EQ(names[4], "model-00005-of-00005.safetensors");
}

TEST_F(Checkpoint, ShardsReadBackThroughCheckpointFiles) {
  write_checkpoint_weights(dir_.path(), views(), 250);
  auto ckpt = CheckpointFiles::open(dir_.path());
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"t0", "t1", "t2", "t3", "t4"}));
  EXPECT_EQ(ckpt.files().size(), 3u);
  for (int k = 0; k < 5; ++k) {
    const auto* e = ckpt.find("t" + std::to_string(k));
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(std::memcmp(e->file->data(*e->info), data_[k].data(), 100), 0);
  }
  EXPECT_EQ(ckpt.find("t5"), nullptr);
}

TEST_F(Checkpoint, RewritingAsOneFileRemovesTheOldShardsAndIndex) {
  write_checkpoint_weights(dir_.path(), views(), 250);
  write_checkpoint_weights(dir_.path(), views(), 1000);
  EXPECT_EQ(files_in_dir(), std::vector<std::string>{"model.safetensors"});
}

TEST_F(Checkpoint, RewritingAsShardsRemovesTheOldSingleFileAndExtraShards) {
  write_checkpoint_weights(dir_.path(), views(), 1000);
  write_checkpoint_weights(dir_.path(), views(), 99);  // 5 shards
  write_checkpoint_weights(dir_.path(), views(), 250);  // 3 shards
  test::write_bytes(dir_ / "config.json", "{}");        // not ours: must survive
  write_checkpoint_weights(dir_.path(), views(), 250);
  std::vector<std::string> want{"config.json", "model-00001-of-00003.safetensors",
                                "model-00002-of-00003.safetensors",
                                "model-00003-of-00003.safetensors", "model.safetensors.index.json"};
  EXPECT_EQ(files_in_dir(), want);
  EXPECT_EQ(CheckpointFiles::open(dir_.path()).names().size(), 5u);
}

TEST_F(Checkpoint, SingleFileWithAnotherNameIsUsedWithoutAnIndex) {
  write_safetensors(dir_ / "weights.safetensors", views());
  EXPECT_EQ(CheckpointFiles::open(dir_.path()).names().size(), 5u);
}

TEST_F(Checkpoint, MissingDirectoryIsRejected) {
  auto msg = test::input_error([&] { CheckpointFiles::open(dir_ / "nope"); });
  EXPECT_TRUE(contains(msg, "does not exist"));
}

TEST_F(Checkpoint, DirectoryWithoutWeightsIsRejected) {
  EXPECT_TRUE(contains(open_error(), dir_.path().string() +
                                         ": no model.safetensors or model.safetensors.index.json"));
}

TEST_F(Checkpoint, SeveralFilesWithoutAnIndexAreRejected) {
  write_safetensors(dir_ / "a.safetensors", {});
  write_safetensors(dir_ / "b.safetensors", {});
  EXPECT_TRUE(contains(open_error(), "2 .safetensors files but no model.safetensors.index.json"));
}

TEST_F(Checkpoint, IndexWithoutWeightMapIsRejected) {
  write_index("{\"metadata\":{}}");
  EXPECT_TRUE(contains(open_error(), "has no \"weight_map\" object"));
}

TEST_F(Checkpoint, IndexWithDuplicateWeightIsRejected) {
  write_checkpoint_weights(dir_.path(), views(), 250);
  write_index("{\"weight_map\":{\"t0\":\"model-00001-of-00003.safetensors\","
              "\"t0\":\"model-00001-of-00003.safetensors\"}}");
  EXPECT_TRUE(contains(open_error(), "duplicate key \"t0\""));
}

TEST_F(Checkpoint, IndexWithNonStringShardIsRejected) {
  write_index("{\"weight_map\":{\"t0\":1}}");
  EXPECT_TRUE(contains(open_error(), "weight_map[\"t0\"] is not a file name string"));
}

TEST_F(Checkpoint, ShardNameWithParentDirectoryIsRejected) {
  write_index("{\"weight_map\":{\"t0\":\"..model.safetensors\"}}");
  EXPECT_TRUE(contains(open_error(), "is not a file name inside the checkpoint directory"));
}

TEST_F(Checkpoint, ShardNameWithSlashIsRejected) {
  write_index("{\"weight_map\":{\"t0\":\"sub/model.safetensors\"}}");
  EXPECT_TRUE(contains(open_error(), "is not a file name inside the checkpoint directory"));
}

TEST_F(Checkpoint, ShardNameWithBackslashIsRejected) {
  write_index("{\"weight_map\":{\"t0\":\"sub\\\\model.safetensors\"}}");
  EXPECT_TRUE(contains(open_error(), "is not a file name inside the checkpoint directory"));
}

TEST_F(Checkpoint, AbsoluteShardNameIsRejected) {
  write_index("{\"weight_map\":{\"t0\":\"/etc/model.safetensors\"}}");
  EXPECT_TRUE(contains(open_error(), "is not a file name inside the checkpoint directory"));
}

TEST_F(Checkpoint, MissingShardIsRejected) {
  write_index("{\"weight_map\":{\"t0\":\"model-00001-of-00001.safetensors\"}}");
  EXPECT_TRUE(contains(open_error(), "shard \"model-00001-of-00001.safetensors\" (holding \"t0\") does not exist"));
}

TEST_F(Checkpoint, CorruptShardIsRejectedNamingTheShard) {
  test::write_bytes(dir_ / "model-00001-of-00001.safetensors", "junk");
  write_index("{\"weight_map\":{\"t0\":\"model-00001-of-00001.safetensors\"}}");
  EXPECT_TRUE(contains(open_error(), "model-00001-of-00001.safetensors: file is 4 bytes"));
}

TEST_F(Checkpoint, WeightAbsentFromItsShardIsRejected) {
  write_checkpoint_weights(dir_.path(), views(), 250);
  auto index = nlohmann::json::parse(read_file(dir_ / "model.safetensors.index.json"));
  index["weight_map"]["t9"] = "model-00001-of-00003.safetensors";
  write_index(index.dump());
  EXPECT_TRUE(contains(open_error(), "tensor \"t9\" is not in its shard"));
}

TEST_F(Checkpoint, ShardHoldingAnUnlistedTensorIsRejected) {
  write_checkpoint_weights(dir_.path(), views(), 250);
  auto index = nlohmann::json::parse(read_file(dir_ / "model.safetensors.index.json"));
  index["weight_map"].erase("t1");
  write_index(index.dump());
  EXPECT_TRUE(contains(open_error(), "holds tensor \"t1\" that the weight_map does not assign"));
}

TEST(ParseByteSize, DecimalUnitsArePowersOf1000) {
  EXPECT_EQ(parse_byte_size("5GB"), 5'000'000'000ULL);
  EXPECT_EQ(parse_byte_size("500MB"), 500'000'000ULL);
  EXPECT_EQ(parse_byte_size("10KB"), 10'000ULL);
  EXPECT_EQ(parse_byte_size("2TB"), 2'000'000'000'000ULL);
}

TEST(ParseByteSize, BinaryUnitsArePowersOf1024) {
  EXPECT_EQ(parse_byte_size("2MiB"), 2ULL << 20);
  EXPECT_EQ(parse_byte_size("1.5GiB"), 3ULL << 29);
  EXPECT_EQ(parse_byte_size("4KiB"), 4096ULL);
}

TEST(ParseByteSize, PlainNumbersAreBytes) {
  EXPECT_EQ(parse_byte_size("1024"), 1024ULL);
  EXPECT_EQ(parse_byte_size("7B"), 7ULL);
}

TEST(ParseByteSize, UnitsAreCaseInsensitive) {
  EXPECT_EQ(parse_byte_size("5gb"), 5'000'000'000ULL);
  EXPECT_EQ(parse_byte_size("2mib"), 2ULL << 20);
  EXPECT_EQ(parse_byte_size("1.5 GIB"), 3ULL << 29);
}

TEST(ParseByteSize, FractionsOfDecimalUnitsAreExact) {
  EXPECT_EQ(parse_byte_size("0.5GB"), 500'000'000ULL);
  EXPECT_EQ(parse_byte_size("1.25KB"), 1250ULL);
}

TEST(ParseByteSize, JunkNegativeZeroAndFractionalBytesAreInputErrors) {
  for (std::string bad : {"", "GB", "abc", "-5GB", "0", "0GB", "5XB", "5 G B", "1.2.3MB", "0.5",
                          "1.5B", "99999999999999999999999TB"})
    EXPECT_TRUE(contains(test::input_error([&] { parse_byte_size(bad); }), "byte size")) << bad;
}

// Found by fuzzing (tests/fuzz): deep nesting in the index overflowed the stack.
TEST_F(Checkpoint, DeeplyNestedIndexIsRejected) {
  write_checkpoint_weights(dir_.path(), views(), 250);
  write_index("{\"metadata\": " + std::string(100000, '[') + std::string(100000, ']') + ", \"weight_map\": {}}");
  EXPECT_TRUE(contains(open_error(), "index is nested deeper than 64 levels"));
}

TEST_F(Checkpoint, IndexNumberPastTheDoubleRangeIsRejected) {
  write_checkpoint_weights(dir_.path(), views(), 250);
  write_index("{\"metadata\": {\"total_size\": 1e999}, \"weight_map\": {}}");
  EXPECT_TRUE(contains(open_error(), "index is not valid JSON"));
}

}  // namespace
}  // namespace minipuzzle
