// Checkpoint directories: save/load round trip, both naming styles, and the
// errors a user meets with a wrong or damaged checkpoint.
#include <gtest/gtest.h>

#include <filesystem>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint.h"
#include "checkpoint_test_util.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/tensor_bridge.h"
#include "tiny_config.h"

namespace fs = std::filesystem;
using namespace minipuzzle;
using minipuzzle::testing::tiny_config;

namespace {

fs::path fresh_dir(const std::string& name) { return minipuzzle::testing::fresh_dir("mp_ckpt_", name); }

// Writes `model`'s tensors with names passed through `rename` (or dropped
// when it returns ""), optionally replacing one tensor.
void write_variant(HybridLM& model, const fs::path& dir, const std::function<std::string(const std::string&)>& rename,
                   const std::string& replace_name = "", torch::Tensor replacement = {}) {
  fs::create_directories(dir);
  model->config().save(dir);
  std::vector<torch::Tensor> keep;
  std::vector<TensorView> views;
  for (auto& p : model->named_parameters()) {
    std::string n = rename(p.key());
    if (n.empty()) continue;
    auto t = (p.key() == replace_name ? replacement : p.value()).contiguous();
    keep.push_back(t);
    views.push_back({n, DType::F32, t.sizes().vec(), t.data_ptr(), static_cast<size_t>(t.nbytes())});
  }
  write_safetensors(dir / "model.safetensors", views);
}

std::string same(const std::string& n) { return n; }

void expect_input_error(const fs::path& dir, const std::string& needle) { minipuzzle::testing::expect_load_error(dir, needle); }

}  // namespace

TEST(Checkpoint, SaveThenLoadGivesIdenticalLogits) {
  auto d = fresh_dir("roundtrip");
  HybridLM m(tiny_config());
  m->init_random(9);
  save_model(m, d / "out", torch::kFloat32);
  auto back = load_model(d / "out");
  torch::NoGradGuard ng;
  auto tokens = torch::randint(0, 97, {1, 9}, torch::kInt64);
  EXPECT_TRUE(torch::equal(m->forward(tokens), back->forward(tokens)));
  auto saved = back->config().to_json();
  EXPECT_EQ(saved["torch_dtype"], "float32");
  saved.erase("torch_dtype");
  EXPECT_EQ(saved, m->config().to_json());
}

TEST(Checkpoint, SavesHubNamesAndFormatMetadata) {
  auto d = fresh_dir("hubnames");
  HybridLM m(tiny_config("M-"));
  m->init_random(1);
  save_model(m, d / "out", torch::kBFloat16);
  auto f = SafetensorsFile::open(d / "out" / "model.safetensors");
  EXPECT_NE(f->find("backbone.layers.0.mixer.A_log"), nullptr);
  EXPECT_EQ(f->find("backbone.layers.0.mixer.A_log")->dtype, DType::BF16);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  auto cfg = nlohmann::json::parse(read_file(d / "out" / "config.json"));
  EXPECT_EQ(cfg["hybrid_override_pattern"], "M-");
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
}

TEST(Checkpoint, LoadsTransformers5Names) {
  auto d = fresh_dir("hf5");
  HybridLM m(tiny_config());
  m->init_random(2);
  write_variant(m, d, [](const std::string& n) {
    return n.rfind("backbone.", 0) == 0 ? "model." + n.substr(9) : n;
  });
  auto back = load_model(d);
  EXPECT_TRUE(torch::equal(back->named_parameters()["backbone.embeddings.weight"],
                           m->named_parameters()["backbone.embeddings.weight"]));
}

TEST(Checkpoint, MissingTensorIsNamed) {
  auto d = fresh_dir("missing");
  HybridLM m(tiny_config());
  m->init_random(3);
  write_variant(m, d, [](const std::string& n) { return n == "backbone.layers.1.mixer.k_proj.weight" ? "" : n; });
  expect_input_error(d, "tensor backbone.layers.1.mixer.k_proj.weight is missing");
}

TEST(Checkpoint, WrongShapeIsNamedWithBothShapes) {
  auto d = fresh_dir("shape");
  HybridLM m(tiny_config());
  m->init_random(4);
  write_variant(m, d, same, "backbone.layers.2.mixer.up_proj.weight", torch::zeros({47, 32}));
  expect_input_error(d, "backbone.layers.2.mixer.up_proj.weight has wrong shape: expected [48, 32], got [47, 32]");
}

TEST(Checkpoint, UnexpectedTensorIsNamed) {
  auto d = fresh_dir("extra");
  HybridLM m(tiny_config("M-"));
  m->init_random(5);
  write_variant(m, d, [](const std::string& n) { return n == "lm_head.weight" ? "lm_head.weight" : n; });
  // Add a stray tensor by rewriting with one more entry.
  auto f = SafetensorsFile::open(d / "model.safetensors");
  std::vector<TensorView> views;
  for (const auto& t : f->tensors()) views.push_back({t.name, t.dtype, t.shape, f->data(t), t.nbytes()});
  float stray[2] = {1, 2};
  views.push_back({"backbone.layers.7.mixer.q_proj.weight", DType::F32, {2}, stray, sizeof(stray)});
  write_safetensors(d / "model2.safetensors", views);
  fs::remove(d / "model.safetensors");
  fs::rename(d / "model2.safetensors", d / "model.safetensors");
  expect_input_error(d, "unexpected tensor backbone.layers.7.mixer.q_proj.weight");
}

TEST(Checkpoint, MissingDirectoryAndConfigAreInputErrors) {
  expect_input_error("/nonexistent-ckpt-xyz", "not a checkpoint directory");
  auto d = fresh_dir("noconfig");
  expect_input_error(d, "config.json");
}

TEST(Checkpoint, SaveRefusesANonEmptyDirectory) {
  auto d = fresh_dir("nonempty");
  write_file_atomic(d / "keep.txt", "x");
  HybridLM m(tiny_config("M"));
  m->init_random(6);
  EXPECT_THROW(save_model(m, d, torch::kFloat32), InputError);
  EXPECT_EQ(read_file(d / "keep.txt"), "x");
}
