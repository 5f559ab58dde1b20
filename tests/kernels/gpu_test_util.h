// Shared by the kernel parity tests: skip without the kernels or a GPU, run
// a block with the kernels switched off, and compare with a tolerance that
// names the quantity.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "minipuzzle/kernel_dispatch.h"

namespace minipuzzle::testing {

#define MINIPUZZLE_REQUIRE_CUDA_KERNELS()                                                     \
  do {                                                                                        \
    if (!::minipuzzle::cuda_kernels_compiled()) GTEST_SKIP() << "built without kernels/";     \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";                       \
    ::minipuzzle::set_cuda_kernels_enabled(true);                                             \
  } while (0)

// Runs f() with the references forced, restoring the switch afterwards.
template <typename F>
auto with_references(F&& f) {
  struct Restore {
    bool was = cuda_kernels_enabled();
    ~Restore() { set_cuda_kernels_enabled(was); }
  } restore;
  set_cuda_kernels_enabled(false);
  return f();
}

// max |a - b| <= atol + rtol * max |b|, compared in fp32 on the CPU.
inline void expect_close(const torch::Tensor& a, const torch::Tensor& b, double atol, double rtol,
                         const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const auto af = a.detach().to(torch::kCPU, torch::kFloat32), bf = b.detach().to(torch::kCPU, torch::kFloat32);
  const double err = (af - bf).abs().max().item<double>();
  const double scale = bf.abs().max().item<double>();
  EXPECT_LE(err, atol + rtol * scale) << what << ": max abs error " << err << " (max |reference| " << scale << ")";
}

inline double tolerance_for(torch::ScalarType t) {
  switch (t) {
    case torch::kBFloat16: return 2e-2;
    case torch::kFloat16: return 4e-3;
    default: return 2e-5;
  }
}

}  // namespace minipuzzle::testing
