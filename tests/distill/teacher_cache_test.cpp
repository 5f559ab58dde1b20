// The offline teacher cache: what it holds equals teacher_topk of the
// teacher's logits on the trainer's windows, the loss from it equals the
// online top-k loss, a killed write resumes to the same bytes, and damaged
// or mismatched caches are refused.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <cstring>
#include <functional>
#include <random>
#include <unistd.h>

#include "../model/tiny_config.h"
#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/safetensors.h"
#include "minipuzzle/teacher_cache.h"
#include "minipuzzle/token_batches.h"
#include "minipuzzle/window_order.h"

#if MINIPUZZLE_TEST_CUDA_SYNCS
#include "../model/cuda_sync_counter.h"
#endif

namespace minipuzzle {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int64_t kSeqLen = 8;

// Runs f, expects InputError whose message contains `needle`.
template <typename F>
void expect_input_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no InputError (wanted one about " << needle << ")";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

class TeacherCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("mp_teacher_cache_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    remove_tree(root_);
    fs::create_directories(root_);
    HybridLM t(testing::tiny_config("M*-M-"));
    t->init_random(11);
    save_model(t, root_ / "teacher", torch::kFloat32);
    data_ = write_data("data", 3);
  }
  void TearDown() override { remove_tree(root_); }

  std::string write_data(const std::string& name, uint64_t seed) {
    const std::string prefix = (root_ / name).string();
    IndexedDatasetBuilder b(prefix, TokenDType::U16);
    std::mt19937_64 rng(seed);
    for (int d = 0; d < 3; ++d) {
      std::vector<int64_t> doc(50);
      for (auto& t : doc) t = static_cast<int64_t>(rng() % 97);
      b.add_document(doc);
    }
    b.finish();
    return prefix;
  }

  // 150 tokens: 18 windows of 8 per epoch; 23 windows run into epoch 1;
  // 5 windows per shard -> 5 shards (the last holds 3).
  TeacherCacheOptions options(const std::string& out) const {
    TeacherCacheOptions o;
    o.teacher = root_ / "teacher";
    o.data = data_;
    o.out = root_ / out;
    o.seq_len = kSeqLen;
    o.windows = 23;
    o.seed = 77;
    o.k = 6;
    o.temperature = 1.5;
    o.batch = 2;
    o.shard_tokens = 40;
    o.teacher_config_hash = "cfg";
    o.teacher_weights_hash = "wts";
    return o;
  }

  void edit_cache_json(const fs::path& dir, const std::function<void(json&)>& f) {
    json j = json::parse(read_file(dir / "cache.json"));
    f(j);
    write_file_atomic(dir / "cache.json", j.dump(2));
  }

  // Rewrites a shard with `edit` applied to copies of its tensors (same metadata).
  void edit_shard(const fs::path& file,
                  const std::function<void(std::map<std::string, std::pair<TensorInfo, std::vector<uint8_t>>>&)>& f,
                  const std::function<void(std::map<std::string, std::string>&)>& edit_metadata = nullptr) {
    std::map<std::string, std::pair<TensorInfo, std::vector<uint8_t>>> t;
    std::map<std::string, std::string> md;
    {
      auto sf = SafetensorsFile::open(file);
      md = sf->metadata();
      for (const auto& info : sf->tensors())
        t[info.name] = {info, std::vector<uint8_t>(sf->data(info), sf->data(info) + info.nbytes())};
    }
    f(t);
    if (edit_metadata) edit_metadata(md);
    std::vector<TensorView> views;
    for (auto& [name, p] : t) views.push_back({name, p.first.dtype, p.first.shape, p.second.data(), p.second.size()});
    write_safetensors(file, views, md);
  }

  fs::path root_;
  std::string data_;
};

TEST_F(TeacherCacheTest, HoldsTeacherTopKOfTheTrainingOrderWindows) {
  const auto o = options("cache");
  const TeacherCacheSummary s = write_teacher_cache(o);
  EXPECT_FALSE(s.already_complete);
  EXPECT_EQ(s.windows, 23u);
  EXPECT_EQ(s.shards, 5u);
  EXPECT_EQ(s.shards_written, 5u);
  const TeacherCache c = TeacherCache::open(o.out);
  EXPECT_EQ(c.windows(), 23u);
  EXPECT_EQ(c.k(), 6);
  EXPECT_EQ(c.seq_len(), kSeqLen);
  EXPECT_TRUE(c.covers(22));
  EXPECT_FALSE(c.covers(23));

  // The windows are those the trainer takes from the start, across the epoch boundary.
  auto data = IndexedDataset::open(data_);
  const WindowOrder order(data->total_tokens(), kSeqLen, o.seed);
  ASSERT_EQ(order.windows(), 18u);
  WindowOrder::Position pos;
  const auto want_starts = order.take(pos, 23);
  const auto all = c.batch(0, 23);
  EXPECT_EQ(all.starts, want_starts);

  HybridLM teacher = load_model(o.teacher);
  torch::NoGradGuard no_grad;
  auto rows = gather_windows(*data, want_starts, kSeqLen, 97);
  const TeacherTopK ref = teacher_topk(teacher->forward(rows.narrow(1, 0, kSeqLen)), o.k, o.temperature);
  EXPECT_TRUE(torch::equal(all.indices, ref.indices));
  EXPECT_TRUE(torch::allclose(all.values, ref.values, 0, 1e-5)) << (all.values - ref.values).abs().max();
  EXPECT_TRUE(torch::allclose(all.rest_lse, ref.rest_lse, 0, 1e-5));
  EXPECT_EQ(all.values.sizes(), (std::vector<int64_t>{23, kSeqLen, 6}));
  EXPECT_EQ(all.indices.scalar_type(), torch::kLong);

  // A batch across a shard boundary is the same slice.
  const auto part = c.batch(4, 7);
  EXPECT_EQ(part.starts, std::vector<uint64_t>(want_starts.begin() + 4, want_starts.begin() + 11));
  EXPECT_TRUE(torch::equal(part.values, all.values.narrow(0, 4, 7)));
  EXPECT_TRUE(torch::equal(part.indices, all.indices.narrow(0, 4, 7)));
  EXPECT_TRUE(torch::equal(part.rest_lse, all.rest_lse.narrow(0, 4, 7)));
  EXPECT_THROW(c.batch(20, 4), InputError);
  EXPECT_THROW(c.batch(23, 1), InputError);

  // The cache matches runs with these settings only.
  const ModelConfig cfg = testing::tiny_config();
  EXPECT_NO_THROW(c.check_matches(cfg, data_, data->total_tokens(), kSeqLen, o.seed));
  EXPECT_THROW(c.check_matches(cfg, data_, data->total_tokens(), kSeqLen + 1, o.seed), InputError);
  EXPECT_THROW(c.check_matches(cfg, data_, data->total_tokens(), kSeqLen, o.seed + 1), InputError);
  EXPECT_THROW(c.check_matches(cfg, data_, data->total_tokens() + 1, kSeqLen, o.seed), InputError);
  ModelConfig other_vocab = cfg;
  other_vocab.vocab_size = 98;
  EXPECT_THROW(c.check_matches(other_vocab, data_, data->total_tokens(), kSeqLen, o.seed), InputError);
  const std::string other = write_data("other", 4);  // same length, other tokens
  expect_input_error([&] { c.check_matches(cfg, other, data->total_tokens(), kSeqLen, o.seed); }, "fingerprint");
  EXPECT_NO_THROW(c.check_teacher("cfg", "wts"));
  EXPECT_THROW(c.check_teacher("cfg2", ""), InputError);
  EXPECT_THROW(c.check_teacher("", "wts2"), InputError);
}

TEST_F(TeacherCacheTest, CachedLossEqualsOnlineTopKLoss) {
  const auto o = options("cache");
  write_teacher_cache(o);
  const TeacherCache c = TeacherCache::open(o.out);
  auto data = IndexedDataset::open(data_);
  HybridLM teacher = load_model(o.teacher);
  HybridLM student(testing::tiny_config("M-"));
  student->init_random(5);

  const auto b = c.batch(3, 4);
  auto rows = gather_windows(*data, b.starts, kSeqLen, 97);
  auto in = rows.narrow(1, 0, kSeqLen), tg = rows.narrow(1, 1, kSeqLen);
  KdOptions kd;
  kd.temperature = o.temperature;
  kd.ce_weight = 0.3;
  kd.chunk_tokens = 5;

  TeacherTopK ref;
  {
    torch::NoGradGuard no_grad;
    ref = teacher_topk(teacher->forward(in), o.k, o.temperature);
  }
  auto& w = student->lm_head_weights->weight;
  auto h1 = student->forward_hidden(in);
  KdResult online = kd_loss_topk(student, h1, ref.values, ref.indices, ref.rest_lse, tg, kd);
  online.loss.backward();
  const auto g_online = w.grad().clone();
  w.grad().zero_();
  auto h2 = student->forward_hidden(in);
  KdResult cached = cached_kd_loss(student, h2, b, tg, kd);
  cached.loss.backward();
  EXPECT_NEAR(cached.loss.item<double>(), online.loss.item<double>(), 1e-5);
  const KdSums cached_sums = cached.host_sums(), online_sums = online.host_sums();
  EXPECT_NEAR(cached_sums.kd_sum, online_sums.kd_sum, 1e-4);
  EXPECT_EQ(cached.tokens, 4 * kSeqLen);
  EXPECT_EQ(cached_sums.agree, online_sums.agree);
  EXPECT_TRUE(torch::allclose(w.grad(), g_online, 1e-4, 1e-6));

  KdOptions other_t = kd;
  other_t.temperature = 1.0;
  expect_input_error([&] { cached_kd_loss(student, h2.detach(), b, tg, other_t); }, "temperature 1.5");
  EXPECT_THROW(cached_kd_loss(student, h2.detach().narrow(0, 0, 3), b, tg.narrow(0, 0, 3), kd), InputError);
}

#if MINIPUZZLE_TEST_CUDA_SYNCS
// On a GPU the host waits once per shard, however many windows it holds.
TEST_F(TeacherCacheTest, CudaWaitsOncePerShardNotPerWindow) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto syncs = [&](const std::string& name, uint64_t windows_per_shard) {
    TeacherCacheOptions o = options(name);
    o.device = "cuda";
    o.batch = 1;
    o.windows = 2 * windows_per_shard;  // two shards
    o.shard_tokens = windows_per_shard * kSeqLen;
    testing::CudaSyncCounter counter;
    EXPECT_EQ(write_teacher_cache(o).shards_written, 2u);
    return std::make_pair(counter.count, counter.where);
  };
  syncs("warm", 1);
  const auto [small, small_sites] = syncs("small", 1);
  const auto [large, large_sites] = syncs("large", 6);
  EXPECT_EQ(large, small) << "syncs past the smaller count:\n"
                          << testing::CudaSyncCounter::format_sites(large_sites, small);
  EXPECT_GT(small, 0) << "the counter saw nothing (is the sync debug mode still reported as a warning?)";
}
#endif

TEST_F(TeacherCacheTest, InterruptedWriteResumesToTheSameBytes) {
  const auto full = options("full");
  write_teacher_cache(full);

  auto o = options("resumed");
  o.stop_after_shards = 2;
  const TeacherCacheSummary first = write_teacher_cache(o);
  EXPECT_TRUE(first.interrupted);
  EXPECT_EQ(first.shards_written, 2u);
  EXPECT_FALSE(fs::exists(o.out / "cache.json"));
  EXPECT_TRUE(fs::exists(o.out / "shard-00001.safetensors"));
  EXPECT_FALSE(fs::exists(o.out / "shard-00002.safetensors"));
  expect_input_error([&] { TeacherCache::open(o.out); }, "no cache.json");

  // Another setting on the incomplete directory: refused, nothing touched.
  auto other = options("resumed");
  other.temperature = 2.0;
  expect_input_error([&] { write_teacher_cache(other); }, "other settings (temperature differ");

  o.stop_after_shards = 0;
  const TeacherCacheSummary second = write_teacher_cache(o);
  EXPECT_FALSE(second.interrupted);
  EXPECT_EQ(second.shards_reused, 2u);
  EXPECT_EQ(second.shards_written, 3u);
  for (const char* f : {"cache.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors",
                        "shard-00003.safetensors", "shard-00004.safetensors"}) {
    const std::string a = read_file(full.out / f), b = read_file(o.out / f);
    EXPECT_TRUE(a == b) << f;
  }
  // Complete: a rerun does nothing; other settings are refused.
  const TeacherCacheSummary third = write_teacher_cache(o);
  EXPECT_TRUE(third.already_complete);
  EXPECT_EQ(third.shards_written, 0u);
  auto other_k = options("resumed");
  other_k.k = 7;
  expect_input_error([&] { write_teacher_cache(other_k); }, "complete teacher cache made with other settings (k)");
}

TEST_F(TeacherCacheTest, RefusesDamagedOrMismatchedCaches) {
  auto fresh = [&](const std::string& name) {
    auto o = options(name);
    write_teacher_cache(o);
    return o.out;
  };
  // cache.json says another k than its shards.
  {
    const auto d = fresh("k");
    edit_cache_json(d, [](json& j) { j["identity"]["k"] = 5; });
    expect_input_error([&] { TeacherCache::open(d); }, "identity differs from cache.json in k");
  }
  // Missing key, wrong type, wrong format name, shard path outside the cache.
  {
    const auto d = fresh("keys");
    edit_cache_json(d, [](json& j) { j["identity"].erase("seed"); });
    expect_input_error([&] { TeacherCache::open(d); }, "missing key \"seed\"");
    edit_cache_json(d, [](json& j) { j["identity"]["seed"] = "77"; });
    expect_input_error([&] { TeacherCache::open(d); }, "\"seed\" must be");
    edit_cache_json(d, [](json& j) {
      j["identity"]["seed"] = 77;
      j["format"] = "other";
    });
    expect_input_error([&] { TeacherCache::open(d); }, "\"format\"");
    edit_cache_json(d, [](json& j) {
      j["format"] = kTeacherCacheFormat;
      j["shards"][1]["file"] = "../shard-00001.safetensors";
    });
    expect_input_error([&] { TeacherCache::open(d); }, "shards[1]");
    edit_cache_json(d, [](json& j) { j["shards"][1]["file"] = "shard-00001.safetensors"; });
    EXPECT_NO_THROW(TeacherCache::open(d));
    // A window count near 2^64 (once written for --windows -1): the shard
    // count must not wrap to a small number that the list then matches.
    const json before = json::parse(read_file(d / "cache.json"));
    edit_cache_json(d, [](json& j) {
      j["identity"]["windows"] = std::numeric_limits<uint64_t>::max();
      j["shards"] = json::array();
    });
    expect_input_error([&] { TeacherCache::open(d); }, "\"windows\"");
    edit_cache_json(d, [&](json& j) { j = before; });
    EXPECT_NO_THROW(TeacherCache::open(d));
    write_file_atomic(d / "cache.json", "{not json");
    expect_input_error([&] { TeacherCache::open(d); }, "invalid JSON");
    write_file_atomic(d / "cache.json", "[1, 2]");
    expect_input_error([&] { TeacherCache::open(d); }, "not a JSON object");
    // Deep nesting would overflow the stack when the parsed value is destroyed.
    write_file_atomic(d / "cache.json", std::string(200000, '[') + std::string(200000, ']'));
    expect_input_error([&] { TeacherCache::open(d); }, "nested deeper than");
  }
  // A shard whose identity metadata is not JSON, or nested without bound.
  {
    const auto d = fresh("identity");
    edit_shard(d / "shard-00001.safetensors", [](auto&) {}, [](auto& md) { md["identity"] = "{oops"; });
    expect_input_error([&] { TeacherCache::open(d); }, "metadata \"identity\": invalid JSON");
    edit_shard(d / "shard-00001.safetensors", [](auto&) {},
               [](auto& md) { md["identity"] = std::string(200000, '[') + std::string(200000, ']'); });
    expect_input_error([&] { TeacherCache::open(d); }, "nested deeper than");
  }
  // A truncated shard, a missing shard.
  {
    const auto d = fresh("trunc");
    fs::resize_file(d / "shard-00002.safetensors", fs::file_size(d / "shard-00002.safetensors") / 2);
    expect_input_error([&] { TeacherCache::open(d); }, "shard-00002.safetensors");
    fs::remove(d / "shard-00002.safetensors");
    expect_input_error([&] { TeacherCache::open(d); }, "missing");
  }
  // Wrong shape, wrong dtype, other window starts.
  {
    const auto d = fresh("shape");
    edit_shard(d / "shard-00001.safetensors", [](auto& t) {
      auto& [info, bytes] = t["values"];
      info.shape.back() -= 1;
      bytes.resize(bytes.size() / 6 * 5);
    });
    expect_input_error([&] { TeacherCache::open(d); }, "tensor values is F32 [5, 8, 5]");
  }
  {
    const auto d = fresh("dtype");
    edit_shard(d / "shard-00000.safetensors", [](auto& t) { t["indices"].first.dtype = DType::F32; });
    expect_input_error([&] { TeacherCache::open(d); }, "tensor indices is F32");
  }
  {
    const auto d = fresh("starts");
    edit_shard(d / "shard-00003.safetensors", [](auto& t) {
      auto& bytes = t["window_starts"].second;
      std::swap_ranges(bytes.begin(), bytes.begin() + 8, bytes.begin() + 8);
    });
    expect_input_error([&] { TeacherCache::open(d); }, "window_starts[0]");
  }
  // Out-of-vocabulary ids are refused when read.
  {
    const auto d = fresh("ids");
    edit_shard(d / "shard-00000.safetensors", [](auto& t) {
      int32_t big = 97;
      std::memcpy(t["indices"].second.data(), &big, 4);
    });
    const TeacherCache c = TeacherCache::open(d);
    expect_input_error([&] { c.batch(0, 1); }, "outside [0, 97)");
    EXPECT_NO_THROW(c.batch(5, 1));
  }
  EXPECT_THROW(TeacherCache::open(root_ / "absent"), InputError);
  // Bad options.
  auto o = options("bad");
  o.k = 98;
  EXPECT_THROW(write_teacher_cache(o), InputError);
  o = options("bad");
  o.tokens = 100;
  EXPECT_THROW(write_teacher_cache(o), InputError);  // both windows and tokens
  o.windows = 0;
  EXPECT_EQ(write_teacher_cache(o).windows, 13u);  // ceil(100 / 8)
  o = options("bad2");
  o.seq_len = 200;  // longer than the dataset
  EXPECT_THROW(write_teacher_cache(o), InputError);
}

}  // namespace
}  // namespace minipuzzle
