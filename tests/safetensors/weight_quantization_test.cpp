// The compressed-tensors weight formats (weight_quantization.h) on values
// whose answer is known by hand: FP4 ties to even, nibble order, int4 offset
// and packing, scale conventions, and W' within each format's rounding.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "minipuzzle/weight_quantization.h"

namespace minipuzzle {
namespace {

TEST(WeightQuantization, Fp4CodesRoundToNearestTiesToEven) {
  // midpoints 0.25 .75 1.25 1.75 2.5 3.5 5 go to the even code (0 2 2 4 4 6 6)
  auto x = torch::tensor({0.0f, 0.25f, 0.26f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 5.1f, 6.0f, -0.5f, -6.0f, -0.2f});
  auto codes = fp4_e2m1_codes(x);
  std::vector<int> want = {0, 0, 1, 2, 2, 4, 4, 6, 6, 7, 7, 8 | 1, 8 | 7, 0};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(codes[i].item<int>(), want[i]) << "x=" << x[i].item<float>();
  auto back = fp4_e2m1_values(codes);
  EXPECT_TRUE(torch::equal(back.slice(0, 10, 13), torch::tensor({6.0f, -0.5f, -6.0f})));
}

TEST(WeightQuantization, Nvfp4PacksEvenElementsInTheLowNibble) {
  // one row of 16: max 6 -> gs = 448 (6 x 448 / 6), group scale fp8(6/6 x 448) = 448, W / (448/448) = W
  std::vector<float> v = {0.5f, 6.0f, -1.0f, 3.0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2.0f};
  auto w = torch::tensor(v).reshape({1, 16});
  auto gs = nvfp4_global_scale(6.0);
  EXPECT_FLOAT_EQ(gs.item<float>(), 448.0f);
  auto q = quantize_rows(WeightFormat::kNvfp4, w, gs);
  ASSERT_EQ(q.values.sizes(), (std::vector<int64_t>{1, 8}));
  EXPECT_EQ(q.values[0][0].item<int>(), 1 | (7 << 4));        // 0.5, 6
  EXPECT_EQ(q.values[0][1].item<int>(), (8 | 2) | (5 << 4));  // -1, 3
  EXPECT_EQ(q.values[0][7].item<int>(), 0 | (4 << 4));        // 0, 2
  EXPECT_EQ(q.scale.scalar_type(), torch::kFloat8_e4m3fn);
  EXPECT_FLOAT_EQ(q.scale.to(torch::kFloat32)[0][0].item<float>(), 448.0f);
  EXPECT_TRUE(torch::equal(q.dequantized.to(torch::kFloat32), w));
}

TEST(WeightQuantization, Int4StoresQPlus8EightPerWordLowNibbleFirst) {
  // a group of 128 with max 7.5: s = 1, q = round(W)
  auto w = torch::zeros({1, 128});
  w[0][0] = 7.5f;  // RNE(7.5) = 8, clamped to 7
  w[0][1] = -7.5f;
  w[0][2] = 2.5f;  // RNE -> 2
  w[0][3] = -1.0f;
  auto q = quantize_rows(WeightFormat::kInt4Group128, w);
  ASSERT_EQ(q.values.scalar_type(), torch::kInt32);
  ASSERT_EQ(q.values.sizes(), (std::vector<int64_t>{1, 16}));
  EXPECT_FLOAT_EQ(q.scale.to(torch::kFloat32)[0][0].item<float>(), 1.0f);
  // nibbles (q+8): 15, 0 (-8), 10, 7, then 8s
  const uint32_t word = static_cast<uint32_t>(q.values[0][0].item<int32_t>());
  EXPECT_EQ(word, 0x88887A0Fu);
  auto dq = q.dequantized.to(torch::kFloat32);
  EXPECT_FLOAT_EQ(dq[0][0].item<float>(), 7.0f);
  EXPECT_FLOAT_EQ(dq[0][1].item<float>(), -8.0f);
  EXPECT_FLOAT_EQ(dq[0][2].item<float>(), 2.0f);
  EXPECT_FLOAT_EQ(dq[0][3].item<float>(), -1.0f);
}

TEST(WeightQuantization, DequantizedIsWithinEachFormatsRoundingOfRandomWeights) {
  torch::manual_seed(3);
  auto w = torch::randn({64, 256}) * 0.02;
  const double amax = w.abs().max().item<double>();
  struct Case {
    WeightFormat f;
    double max_rel;
  } cases[] = {{WeightFormat::kFp8Channel, 0.04}, {WeightFormat::kNvfp4, 0.12}, {WeightFormat::kInt4Group128, 0.13}};
  for (const auto& c : cases) {
    auto q = quantize_rows(c.f, w, nvfp4_global_scale(amax));
    auto dq = q.dequantized.to(torch::kFloat32);
    ASSERT_EQ(dq.sizes(), w.sizes());
    const double rel = ((dq - w).norm() / w.norm()).item<double>();
    EXPECT_GT(rel, 0) << weight_format_name(c.f);
    EXPECT_LT(rel, c.max_rel) << weight_format_name(c.f);
    // chunks give the same bytes as the whole tensor (rows are independent)
    auto a = quantize_rows(c.f, w.slice(0, 0, 10), nvfp4_global_scale(amax));
    EXPECT_TRUE(torch::equal(a.values.view(torch::kUInt8), q.values.slice(0, 0, 10).contiguous().view(torch::kUInt8)));
    EXPECT_TRUE(torch::equal(dequantize_rows(c.f, q.values, q.scale, nvfp4_global_scale(amax)), q.dequantized));
  }
}

TEST(WeightQuantization, RefusesWidthsTheGroupDoesNotDivideAndNonFiniteValues) {
  EXPECT_THROW(quantize_rows(WeightFormat::kInt4Group128, torch::ones({2, 96})), std::invalid_argument);
  EXPECT_THROW(quantize_rows(WeightFormat::kNvfp4, torch::ones({2, 24}), nvfp4_global_scale(1)), std::invalid_argument);
  EXPECT_THROW(quantize_rows(WeightFormat::kNvfp4, torch::ones({2, 32})), std::invalid_argument);  // no global scale
  auto bad = torch::ones({1, 128});
  bad[0][5] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(quantize_rows(WeightFormat::kFp8Channel, bad), std::invalid_argument);
  EXPECT_NO_THROW(quantize_rows(WeightFormat::kFp8Channel, torch::ones({2, 7})));  // any width
}

TEST(WeightQuantization, AllZeroGroupsDequantizeToZero) {
  auto z = torch::zeros({2, 128});
  for (auto f : {WeightFormat::kFp8Channel, WeightFormat::kNvfp4, WeightFormat::kInt4Group128}) {
    auto q = quantize_rows(f, z, nvfp4_global_scale(0));
    EXPECT_TRUE(torch::equal(q.dequantized.to(torch::kFloat32), z)) << weight_format_name(f);
  }
}

}  // namespace
}  // namespace minipuzzle
