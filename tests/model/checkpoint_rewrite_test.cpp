// Loading straight to the target dtype, and export written tensor by tensor:
// both must give exactly what the old whole-model path gave (load in fp32,
// convert, save_model), which stays the definition.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "checkpoint_test_util.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/checkpoint_reader.h"
#include "minipuzzle/checkpoint_rewrite.h"
#include "minipuzzle/errors.h"
#include "tiny_config.h"

namespace fs = std::filesystem;
using namespace minipuzzle;
using minipuzzle::testing::tiny_config;

namespace {

fs::path rewrite_dir(const std::string& name) { return minipuzzle::testing::fresh_dir("mp_rewrite_", name); }

std::string bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Every file of two directories, byte for byte.
void expect_same_files(const fs::path& a, const fs::path& b) {
  std::set<std::string> names_a, names_b;
  for (const auto& e : fs::directory_iterator(a)) names_a.insert(e.path().filename().string());
  for (const auto& e : fs::directory_iterator(b)) names_b.insert(e.path().filename().string());
  ASSERT_EQ(names_a, names_b);
  for (const auto& n : names_a) EXPECT_TRUE(bytes_of(a / n) == bytes_of(b / n)) << n << " differs";
}

// A checkpoint in `dtype` (a bf16 one has values that fp32 holds exactly).
fs::path saved_model(const fs::path& dir, torch::ScalarType dtype, const std::string& pattern = "M*-M-") {
  HybridLM m(tiny_config(pattern));
  m->init_random(5);
  save_model(m, dir, dtype);
  return dir;
}

}  // namespace

TEST(LoadModel, BuildsInTheTargetDtypeWithTheOldValues) {
  auto d = rewrite_dir("load");
  for (auto file_dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat8_e4m3fn}) {
    const auto src = saved_model(d / c10::toString(file_dtype), file_dtype);
    auto fp32 = load_model(src, torch::kFloat32);
    for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      auto direct = load_model(src, dtype);
      auto old = fp32->named_parameters();
      for (const auto& p : direct->named_parameters()) {
        EXPECT_EQ(p.value().scalar_type(), dtype);
        EXPECT_TRUE(torch::equal(p.value(), old[p.key()].to(dtype))) << p.key() << " from " << file_dtype;
      }
    }
  }
}

TEST(Export, StreamedEqualsSaveModelOfTheLoadedModelByteForByte) {
  auto d = rewrite_dir("export");
  for (auto src_dtype : {torch::kFloat32, torch::kBFloat16}) {
    const auto src = saved_model(d / ("src-" + std::string(c10::toString(src_dtype))), src_dtype);
    const ModelConfig cfg = ModelConfig::load(src);
    for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16, torch::kFloat8_e4m3fn}) {
      for (uint64_t shard : {uint64_t{5'000'000'000ULL}, uint64_t{20'000}}) {
        const std::string tag = std::string(c10::toString(src_dtype)) + "-" + c10::toString(dtype) + "-" +
                                std::to_string(shard);
        auto whole = load_model(src, torch::kFloat32);
        save_model(whole, d / ("old-" + tag), dtype, shard);
        const auto reader = CheckpointReader::open(src);
        const int64_t n = rewrite_checkpoint(reader, cfg, cfg, identity_recipes(cfg), dtype, d / ("new-" + tag), shard);
        int64_t params = 0;
        for (const auto& p : whole->parameters()) params += p.numel();
        EXPECT_EQ(n, params);
        expect_same_files(d / ("old-" + tag), d / ("new-" + tag));
      }
    }
  }
}

TEST(Export, RowChunksGiveTheSameBytesAsOneChunk) {
  // A tensor larger than one chunk is converted in several: the FP8 scales
  // and values of the rows must not depend on where the chunks fall.
  auto d = rewrite_dir("chunks");
  nlohmann::json j = tiny_config().to_json();
  j["vocab_size"] = (kRewriteChunkElements / 32) + 7;  // the embeddings take two chunks at hidden 32
  ModelConfig cfg = ModelConfig::from_json(j, "big-vocab");
  HybridLM m(cfg);
  m->init_random(3);
  save_model(m, d / "src", torch::kFloat32);
  for (auto dtype : {torch::kBFloat16, torch::kFloat8_e4m3fn}) {
    const std::string tag = c10::toString(dtype);
    save_model(m, d / ("old-" + tag), dtype);
    rewrite_checkpoint(CheckpointReader::open(d / "src"), cfg, cfg, identity_recipes(cfg), dtype, d / ("new-" + tag));
    expect_same_files(d / ("old-" + tag), d / ("new-" + tag));
  }
}

TEST(Export, RefusesABadSourceBeforeWritingAnything) {
  auto d = rewrite_dir("bad");
  const auto src = saved_model(d / "src", torch::kFloat32);
  nlohmann::json j = ModelConfig::load(src).to_json();
  j["intermediate_size"] = 50;  // the weights say 48
  const ModelConfig wrong = ModelConfig::from_json(j, "wrong");
  const auto reader = CheckpointReader::open(src);
  try {
    rewrite_checkpoint(reader, wrong, wrong, identity_recipes(wrong), torch::kBFloat16, d / "out");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("wrong shape"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(d / "out"));
  for (const auto& e : fs::directory_iterator(d)) EXPECT_EQ(e.path().filename().string().find(".out.partial"), std::string::npos);
}

TEST(CheckpointReader, ATruncatedShardIsAnErrorNamingTheFile) {
  auto d = rewrite_dir("truncated");
  const auto src = saved_model(d / "src", torch::kFloat32);
  const auto reader = CheckpointReader::open(src);
  fs::resize_file(src / "model.safetensors", fs::file_size(src / "model.safetensors") / 2);
  try {
    reader.read("lm_head.weight", torch::kFloat32);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors: the file shrank"), std::string::npos) << e.what();
  }
}

TEST(CheckpointReader, ReadRowsOfAnFp8TensorEqualsTheRowsOfTheWhole) {
  auto d = rewrite_dir("fp8rows");
  const auto src = saved_model(d / "src", torch::kFloat8_e4m3fn);
  const auto reader = CheckpointReader::open(src);
  const std::string name = "backbone.layers.0.mixer.in_proj.weight";
  auto whole = reader.read(name, torch::kFloat32);
  auto rows = torch::tensor({5, 0, 17, 3}, torch::kInt64);
  EXPECT_TRUE(torch::equal(reader.read_rows(name, rows, torch::kFloat32), whole.index_select(0, rows)));
  EXPECT_TRUE(torch::equal(reader.read_rows(name, 4, 9, torch::kFloat32), whole.narrow(0, 4, 9)));
}

// A large plain tensor is read a piece of rows at a time, each piece's file
// pages released as it goes (what keeps a 0.93B load's peak from holding the
// 0.5 GB embedding's file pages beside its copy): the same values as one
// whole copy, for every tensor and conversion, pieces of one row or many.
TEST(CheckpointReader, APieceByPieceReadEqualsTheWholeRead) {
  auto d = rewrite_dir("pieces");
  for (auto stored : {torch::kFloat32, torch::kBFloat16}) {
    const auto src = saved_model(d / (stored == torch::kFloat32 ? "f32" : "bf16"), stored);
    const auto whole = CheckpointReader::open(src);
    auto pieces = CheckpointReader::open(src);
    const ModelConfig cfg = ModelConfig::load(src);
    for (int64_t piece : {int64_t{1}, int64_t{256}}) {
      pieces.set_read_piece_bytes(piece);
      for (const auto& r : identity_recipes(cfg))
        for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
          const auto want = whole.read(r.name, dtype), got = pieces.read(r.name, dtype);
          EXPECT_EQ(got.dtype(), want.dtype());
          EXPECT_TRUE(torch::equal(got, want)) << r.name << " piece " << piece;
          // read_into (load_model's path) takes the same pieces.
          auto into = torch::full_like(want, 7);
          pieces.read_into(r.name, into);
          EXPECT_TRUE(torch::equal(into, want)) << r.name << " read_into, piece " << piece;
        }
    }
  }
}
