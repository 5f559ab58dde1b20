// The small ops of the Mamba2 mixer against direct formulas.
#include <gtest/gtest.h>

#include "minipuzzle/causal_conv1d.h"
#include "minipuzzle/rms_norm.h"

using namespace minipuzzle;

TEST(CausalConv1d, MatchesTheDirectSumWithZeroLeftContext) {
  torch::manual_seed(0);
  const int64_t b = 2, L = 7, C = 5, K = 4;
  auto x = torch::randn({b, L, C}), w = torch::randn({C, 1, K}), bias = torch::randn({C});
  auto y = causal_conv1d_silu(x, w, bias);
  auto ref = torch::zeros({b, L, C});
  for (int64_t t = 0; t < L; ++t)
    for (int64_t k = 0; k < K; ++k) {
      int64_t src = t - (K - 1) + k;
      if (src >= 0) ref.select(1, t) += x.select(1, src) * w.select(2, k).squeeze(1);
    }
  ref = torch::silu(ref + bias);
  EXPECT_LT((y - ref).abs().max().item<double>(), 1e-5);
}

TEST(CausalConv1d, OutputNeverSeesTheFuture) {
  torch::manual_seed(1);
  auto x = torch::randn({1, 10, 3}), w = torch::randn({3, 1, 4}), bias = torch::randn({3});
  auto y1 = causal_conv1d_silu(x, w, bias);
  auto x2 = x.clone();
  x2.narrow(1, 6, 4).normal_();
  auto y2 = causal_conv1d_silu(x2, w, bias);
  EXPECT_TRUE(torch::equal(y1.narrow(1, 0, 6), y2.narrow(1, 0, 6)));
}

TEST(RmsNorm, NormalisesInFp32AndScales) {
  auto x = torch::tensor({{3.0f, 4.0f}});
  auto w = torch::tensor({1.0f, 2.0f});
  auto y = rms_norm(x, w, 0.0);
  double rms = std::sqrt((9.0 + 16.0) / 2.0);
  EXPECT_NEAR(y[0][0].item<double>(), 3.0 / rms, 1e-6);
  EXPECT_NEAR(y[0][1].item<double>(), 2.0 * 4.0 / rms, 1e-6);
}

TEST(GatedRmsNorm, NormalisesEachGroupSeparatelyAfterTheGate) {
  torch::manual_seed(2);
  auto x = torch::randn({3, 8}), z = torch::randn({3, 8}), w = torch::rand({8}) + 0.5;
  auto y = gated_rms_norm(x, z, w, /*group_size=*/4, 1e-5);
  auto g = (x * torch::silu(z)).view({3, 2, 4});
  auto ref = (g * torch::rsqrt(g.pow(2).mean(-1, true) + 1e-5)).view({3, 8}) * w;
  EXPECT_LT((y - ref).abs().max().item<double>(), 1e-5);
}
