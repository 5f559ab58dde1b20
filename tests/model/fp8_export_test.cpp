// FP8 export (save_model with kFloat8_e4m3fn): the layout written, the
// quantization error, loading it back, and damaged FP8 checkpoints.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>

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

fs::path fp8_test_dir(const std::string& name) { return minipuzzle::testing::fresh_dir("mp_fp8_", name); }

// Per element, E4M3 rounding (3 mantissa bits, round to nearest) is off by at
// most 2^-4 of the value for normals and 2^-10 (half the subnormal step
// 2^-9) in units of the row's scale for subnormals. Small fp32 slack on top.
void expect_within_fp8_error(const torch::Tensor& w, const torch::Tensor& dq, const torch::Tensor& scale) {
  auto err = (w - dq).abs();
  auto bound = w.abs() * std::ldexp(1.0, -4) + scale * std::ldexp(1.0, -10) + w.abs() * 1e-6;
  EXPECT_TRUE((err <= bound).all().item<bool>()) << "max excess " << (err - bound).max().item<float>();
  // The row-relative L2 error stays under 2^-3 (the bound asked of FP8 exports; 2^-4 holds in fact).
  auto rel = (w - dq).norm(2, {1}) / w.norm(2, {1}).clamp_min(1e-30);
  EXPECT_LE(rel.max().item<double>(), std::ldexp(1.0, -4)) << rel;
}

HybridLM tiny_model(uint64_t seed) {
  HybridLM m(tiny_config());
  m->init_random(seed);
  return m;
}

// Rewrites DIR/model.safetensors into OUT/model.safetensors through `edit`
// (return false to drop a tensor), plus `extra` tensors; copies config.json.
void rewrite(const fs::path& dir, const fs::path& out, const std::function<bool(TensorView&)>& edit,
             std::vector<TensorView> extra = {}) {
  fs::create_directories(out);
  fs::copy_file(dir / "config.json", out / "config.json");
  auto f = SafetensorsFile::open(dir / "model.safetensors");
  std::vector<TensorView> views;
  for (const auto& t : f->tensors()) {
    TensorView v{t.name, t.dtype, t.shape, f->data(t), t.nbytes()};
    if (edit(v)) views.push_back(v);
  }
  for (auto& v : extra) views.push_back(v);
  write_safetensors(out / "model.safetensors", views);
}

void expect_fp8_load_error(const fs::path& dir, const std::string& needle) { minipuzzle::testing::expect_load_error(dir, needle); }

}  // namespace

TEST(Fp8, QuantizeRowsStaysWithinFp8Error) {
  torch::manual_seed(0);
  // Rows of very different magnitudes (1e-6 .. 1e3), one all-zero row, one row with a single outlier.
  auto w = torch::randn({12, 200}) * torch::pow(10.0, torch::linspace(-6, 3, 12)).unsqueeze(1);
  w[3].zero_();
  w[5][17] = 1000.0;
  auto q = quantize_fp8_rows(w);
  EXPECT_EQ(q.values.scalar_type(), torch::kFloat8_e4m3fn);
  EXPECT_EQ(q.scale_inv.scalar_type(), torch::kFloat32);
  EXPECT_EQ(q.scale_inv.sizes().vec(), (std::vector<int64_t>{12, 1}));
  auto dq = dequantize_fp8(q.values, q.scale_inv);
  expect_within_fp8_error(w, dq, q.scale_inv);
  // Each row's largest magnitude maps to +-448 exactly; the zero row stays zero with scale 1.
  auto vmax = q.values.to(torch::kFloat32).abs().amax({1});
  for (int64_t r = 0; r < 12; ++r)
    if (r != 3) {
      EXPECT_EQ(vmax[r].item<float>(), 448.0f) << "row " << r;
    }
  EXPECT_EQ(q.scale_inv[3][0].item<float>(), 1.0f);
  EXPECT_TRUE(torch::equal(dq[3], torch::zeros({200})));
  // Non-2-D and non-finite inputs are refused.
  EXPECT_THROW(quantize_fp8_rows(torch::ones({4})), std::invalid_argument);
  auto bad = torch::ones({2, 2});
  bad[1][1] = NAN;
  EXPECT_THROW(quantize_fp8_rows(bad), std::invalid_argument);
}

TEST(Fp8, DequantizeAcceptsBlockGrids) {
  auto v = torch::arange(-8, 8, torch::kFloat32).reshape({4, 4}).to(torch::kFloat8_e4m3fn);
  auto per_tensor = dequantize_fp8(v, torch::full({1, 1}, 0.5f));
  EXPECT_TRUE(torch::equal(per_tensor, v.to(torch::kFloat32) * 0.5));
  auto blocks = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f}).reshape({2, 2});  // 2x2 blocks of 2x2
  auto dq = dequantize_fp8(v, blocks);
  EXPECT_EQ(dq[0][0].item<float>(), -8.0f * 1);
  EXPECT_EQ(dq[1][3].item<float>(), -1.0f * 2);
  EXPECT_EQ(dq[2][1].item<float>(), 1.0f * 3);
  EXPECT_EQ(dq[3][2].item<float>(), 6.0f * 4);
  EXPECT_THROW(dequantize_fp8(v, torch::ones({3, 1})), std::invalid_argument);
}

TEST(Fp8, ExportLayoutAndConfig) {
  auto d = fp8_test_dir("layout");
  auto m = tiny_model(21);
  save_model(m, d / "out", torch::kFloat8_e4m3fn);
  auto f = SafetensorsFile::open(d / "out" / "model.safetensors");
  EXPECT_EQ(f->metadata().at("format"), "pt");
  int64_t quantized = 0, widest = 0;
  for (auto& p : m->named_parameters()) {
    const TensorInfo* t = f->find(p.key());
    ASSERT_NE(t, nullptr) << p.key();
    EXPECT_EQ(t->shape, p.value().sizes().vec()) << p.key();
    const TensorInfo* s = f->find(p.key() + "_scale_inv");
    if (p.key().size() > 12 && p.key().substr(p.key().size() - 12) == "_proj.weight") {
      ++quantized;
      widest = std::max(widest, p.value().size(1));
      EXPECT_EQ(t->dtype, DType::F8_E4M3) << p.key();
      ASSERT_NE(s, nullptr) << p.key();
      EXPECT_EQ(s->dtype, DType::F32);
      EXPECT_EQ(s->shape, (std::vector<int64_t>{p.value().size(0), 1}));
    } else {
      EXPECT_EQ(t->dtype, DType::BF16) << p.key();
      EXPECT_EQ(s, nullptr) << p.key();
    }
  }
  // M*-M-: 2 Mamba x (in, out) + attention q/k/v/o + 2 MLP x (up, down)
  EXPECT_EQ(quantized, 2 * 2 + 4 + 2 * 2);
  EXPECT_EQ(f->tensors().size(), m->named_parameters().size() + quantized);
  auto cfg = nlohmann::json::parse(read_file(d / "out" / "config.json"));
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
  const auto& qc = cfg.at("quantization_config");
  EXPECT_EQ(qc.at("quant_method"), "fp8");
  EXPECT_EQ(qc.at("fmt"), "e4m3");
  EXPECT_EQ(qc.at("activation_scheme"), "dynamic");
  EXPECT_EQ(qc.at("weight_block_size"), nlohmann::json::array({1, widest}));
  EXPECT_EQ(qc.at("modules_to_not_convert"), nlohmann::json::array({"lm_head"}));
}

TEST(Fp8, RoundTripWithinFp8ErrorAndLogitsCloseToBf16) {
  auto d = fp8_test_dir("roundtrip");
  auto m = tiny_model(22);
  save_model(m, d / "fp8", torch::kFloat8_e4m3fn);
  save_model(m, d / "bf16", torch::kBFloat16);
  auto back = load_model(d / "fp8");  // fp32 model
  auto f = SafetensorsFile::open(d / "fp8" / "model.safetensors");
  auto orig = m->named_parameters();
  for (auto& p : back->named_parameters()) {
    auto w = orig[p.key()];
    if (is_fp8_projection(p.key())) {
      auto scale = tensor_view(f, *f->find(fp8_scale_name(p.key())));
      expect_within_fp8_error(w, p.value(), scale);
      // and it is exactly what our quantizer gives
      auto q = quantize_fp8_rows(w);
      EXPECT_TRUE(torch::equal(p.value(), dequantize_fp8(q.values, q.scale_inv))) << p.key();
    } else {
      EXPECT_TRUE(torch::equal(p.value(), w.to(torch::kBFloat16).to(torch::kFloat32))) << p.key();
    }
  }
  // Logits. E4M3's unit roundoff (2^-4) is 16x bf16's (2^-8); to first order
  // the logit error grows with the weight error, so the FP8 model may be at
  // most 32x (16x, with 2x margin) further from the fp32 logits than the
  // bf16 export is, and (triangle inequality) at most 33x that error away from
  // the bf16 export's logits. (This tiny random model amplifies weight error
  // a lot: bf16 alone moves the logits by ~3% of their spread, FP8 by ~9x that.)
  torch::NoGradGuard ng;
  torch::manual_seed(5);
  auto tokens = torch::randint(0, 97, {2, 19}, torch::kInt64);
  auto ref = m->forward(tokens);
  auto l8 = back->forward(tokens);
  auto lb = load_model(d / "bf16")->forward(tokens);
  double err8 = (l8 - ref).abs().max().item<double>(), errb = (lb - ref).abs().max().item<double>();
  RecordProperty("fp8_err", std::to_string(err8));
  RecordProperty("bf16_err", std::to_string(errb));
  RecordProperty("logit_std", std::to_string(ref.std().item<double>()));
  EXPECT_GT(err8, errb);  // FP8 does cost something
  EXPECT_LE(err8, 32 * errb) << "fp8 " << err8 << " bf16 " << errb;
  EXPECT_LE((l8 - lb).abs().max().item<double>(), 33 * errb);
}

TEST(Fp8, ReExportDropsTheQuantizationConfig) {
  auto d = fp8_test_dir("reexport");
  auto m = tiny_model(23);
  save_model(m, d / "fp8", torch::kFloat8_e4m3fn);
  auto back = load_model(d / "fp8");
  EXPECT_TRUE(back->config().extra.contains("quantization_config"));
  for (auto dt : {torch::kBFloat16, torch::kFloat16, torch::kFloat32}) {
    auto out = d / ("plain_" + std::to_string(static_cast<int>(dt)));
    save_model(back, out, dt);
    auto cfg = nlohmann::json::parse(read_file(out / "config.json"));
    EXPECT_FALSE(cfg.contains("quantization_config")) << cfg.dump();
  }
  // fp8 -> fp8 again: same bytes (requantizing a dequantized row is exact)
  save_model(back, d / "fp8_again", torch::kFloat8_e4m3fn);
  EXPECT_EQ(read_file(d / "fp8" / "model.safetensors"), read_file(d / "fp8_again" / "model.safetensors"));
}

TEST(Fp8, DamagedCheckpointsAreInputErrors) {
  auto d = fp8_test_dir("damaged");
  auto m = tiny_model(24);
  save_model(m, d / "good", torch::kFloat8_e4m3fn);
  const std::string w = "backbone.layers.2.mixer.up_proj.weight", s = w + "_scale_inv";  // [48, 32]

  rewrite(d / "good", d / "no_scale", [&](TensorView& v) { return v.name != s; });
  expect_fp8_load_error(d / "no_scale", "tensor " + w + " is F8_E4M3 but its scale " + s + " is missing");

  std::vector<float> ones(49, 1.0f);
  rewrite(d / "good", d / "flat_scale", [&](TensorView& v) {
    if (v.name == s) v.shape = {48};  // [rows] instead of [rows, 1]
    return true;
  });
  expect_fp8_load_error(d / "flat_scale", "scale " + s + " has shape [48]; expected [48, 1]");

  rewrite(d / "good", d / "rows_scale", [&](TensorView& v) { return v.name != s; },
          {{s, DType::F32, {49, 1}, ones.data(), 49 * sizeof(float)}});
  expect_fp8_load_error(d / "rows_scale", "scale " + s + " has shape [49, 1]");

  std::vector<float> nan_scale(48, 1.0f);
  nan_scale[7] = NAN;
  rewrite(d / "good", d / "nan_scale", [&](TensorView& v) { return v.name != s; },
          {{s, DType::F32, {48, 1}, nan_scale.data(), 48 * sizeof(float)}});
  expect_fp8_load_error(d / "nan_scale", "scale " + s + " holds negative or non-finite values");

  std::vector<int32_t> int_scale(48, 1);
  rewrite(d / "good", d / "int_scale", [&](TensorView& v) { return v.name != s; },
          {{s, DType::I32, {48, 1}, int_scale.data(), 48 * sizeof(int32_t)}});
  expect_fp8_load_error(d / "int_scale", "scale " + s + " has dtype I32");

  // A 1-D tensor stored as F8 (norms are never quantized).
  const std::string norm = "backbone.layers.0.norm.weight";  // [32]
  std::vector<uint8_t> f8(32, 0x38);                          // 1.0 in E4M3
  rewrite(d / "good", d / "f8_norm", [&](TensorView& v) { return v.name != norm; },
          {{norm, DType::F8_E4M3, {32}, f8.data(), 32}});
  expect_fp8_load_error(d / "f8_norm", "tensor " + norm + " is F8_E4M3, but only 2-D weights can be FP8");

  // A scale next to a weight that is not FP8 is a stray tensor.
  std::vector<float> lm_scale(97, 1.0f);
  rewrite(d / "good", d / "stray_scale", [&](TensorView&) { return true; },
          {{"lm_head.weight_scale_inv", DType::F32, {97, 1}, lm_scale.data(), 97 * sizeof(float)}});
  expect_fp8_load_error(d / "stray_scale", "unexpected tensor lm_head.weight_scale_inv");
}
