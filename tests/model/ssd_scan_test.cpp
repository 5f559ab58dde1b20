// The chunked SSD scan against the plain recurrence (computed in fp64).
#include <gtest/gtest.h>

#include "minipuzzle/ssd_scan.h"

using namespace minipuzzle;

namespace {

struct Shape {
  int64_t b, L, H, P, G, N, chunk;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << "b=" << s.b << " L=" << s.L << " H=" << s.H << " P=" << s.P << " G=" << s.G << " N=" << s.N
      << " chunk=" << s.chunk;
}

struct Inputs {
  torch::Tensor x, dt, A, B, C, D;
};

Inputs random_inputs(const Shape& s, uint64_t seed) {
  torch::manual_seed(seed);
  Inputs in;
  in.x = torch::randn({s.b, s.L, s.H, s.P});
  in.dt = torch::nn::functional::softplus(torch::randn({s.b, s.L, s.H}) - 1.0);
  in.A = -torch::exp(torch::rand({s.H}) * 2.0);
  in.B = torch::randn({s.b, s.L, s.G, s.N});
  in.C = torch::randn({s.b, s.L, s.G, s.N});
  in.D = torch::rand({s.H}) + 0.5;
  return in;
}

class SsdScanShapes : public ::testing::TestWithParam<Shape> {};

TEST_P(SsdScanShapes, ChunkedMatchesSequentialRecurrence) {
  Shape s = GetParam();
  auto in = random_inputs(s, 7);
  auto y = ssd_scan(in.x, in.dt, in.A, in.B, in.C, in.D, s.chunk);
  auto ref = ssd_scan_sequential(in.x, in.dt, in.A, in.B, in.C, in.D);
  ASSERT_EQ(y.sizes(), ref.sizes());
  EXPECT_EQ(y.scalar_type(), torch::kFloat32);
  double err = (y - ref).abs().max().item<double>();
  EXPECT_LT(err, 2e-4) << "max abs error " << err;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SsdScanShapes,
    ::testing::Values(Shape{1, 16, 2, 4, 1, 4, 8},     // L a multiple of the chunk
                      Shape{2, 21, 4, 8, 2, 8, 8},     // L not a multiple; G > 1
                      Shape{1, 5, 4, 4, 4, 16, 8},     // shorter than one chunk; G = H
                      Shape{2, 67, 6, 3, 3, 5, 16},    // odd sizes, several chunks
                      Shape{1, 40, 8, 16, 1, 32, 40}),  // a single full chunk
    [](const ::testing::TestParamInfo<Shape>& i) {
      const Shape& s = i.param;
      return "b" + std::to_string(s.b) + "_L" + std::to_string(s.L) + "_H" + std::to_string(s.H) + "_P" +
             std::to_string(s.P) + "_G" + std::to_string(s.G) + "_N" + std::to_string(s.N) + "_chunk" +
             std::to_string(s.chunk);
    });

TEST(SsdScan, ChunkSizeDoesNotChangeTheResult) {
  Shape s{1, 50, 4, 8, 2, 8, 8};
  auto in = random_inputs(s, 3);
  auto a = ssd_scan(in.x, in.dt, in.A, in.B, in.C, in.D, 8);
  auto b = ssd_scan(in.x, in.dt, in.A, in.B, in.C, in.D, 32);
  EXPECT_LT((a - b).abs().max().item<double>(), 1e-4);
}

TEST(SsdScan, IsDifferentiable) {
  Shape s{1, 12, 2, 4, 1, 4, 8};
  auto in = random_inputs(s, 5);
  in.x.set_requires_grad(true);
  in.B.set_requires_grad(true);
  auto y = ssd_scan(in.x, in.dt, in.A, in.B, in.C, in.D, s.chunk);
  y.square().sum().backward();
  EXPECT_TRUE(in.x.grad().defined());
  EXPECT_TRUE(torch::isfinite(in.B.grad()).all().item<bool>());
  EXPECT_GT(in.B.grad().abs().sum().item<double>(), 0.0);
}

TEST(SsdScan, WithoutDSkipHasNoSkipTerm) {
  Shape s{1, 9, 2, 4, 1, 4, 8};
  auto in = random_inputs(s, 11);
  auto with = ssd_scan(in.x, in.dt, in.A, in.B, in.C, in.D, 8);
  auto without = ssd_scan(in.x, in.dt, in.A, in.B, in.C, torch::Tensor(), 8);
  auto skip = in.D.view({1, 1, 2, 1}) * in.x;
  EXPECT_LT((with - without - skip).abs().max().item<double>(), 1e-5);
}

}  // namespace
