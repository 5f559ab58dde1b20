// Our CUDA kernel bodies run on the CPU (cuda_emulator.h) against the
// LibTorch references: their arithmetic is checked in every build, with or
// without a GPU. The same bodies are what nvcc compiles in kernels/.
#include "cuda_emulator.h"

#define MINIPUZZLE_KERNEL_DETAIL emulated
#include "adamw_kernels.cuh"
#include "causal_conv1d_silu_kernels.cuh"
#include "forward_kl_kernels.cuh"
#include "forward_kl_topk_kernels.cuh"
#include "gated_rms_norm_kernels.cuh"
#include "ssd_scan_steps.cuh"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "gpu_test_util.h"
#include "cuda_ops/adamw_slots.h"
#include "minipuzzle/adamw_update.h"
#include "minipuzzle/causal_conv1d.h"
#include "minipuzzle/forward_kl.h"
#include "minipuzzle/rms_norm.h"
#include "minipuzzle/ssd_scan.h"

namespace minipuzzle {
namespace {

namespace emu = kernels::emulated;
using cuda_emulator::launch;
using testing::expect_close;
using testing::tolerance_for;

// The emulated kernels' element type for a torch dtype.
template <typename F>
void with_element_type(torch::ScalarType t, F&& body) {
  if (t == torch::kBFloat16) {
    body(__nv_bfloat16{});
  } else if (t == torch::kFloat16) {
    body(__half{});
  } else {
    body(float{});
  }
}

template <int K>
void run_conv(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, const torch::Tensor& dout,
              torch::Tensor& out, torch::Tensor& dx, torch::Tensor& dw, torch::Tensor& db) {
  kernels::Conv1dShape shape{x.size(0), x.size(1), x.size(2), K, x.stride(0), x.stride(1)};
  dim3 grid;
  ASSERT_TRUE(emu::grid_for(shape, grid));
  const float* bias = b.defined() ? b.data_ptr<float>() : nullptr;
  with_element_type(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    launch(emu::conv_forward_kernel<T, K>, grid, emu::kChannelsPerBlock, shape, static_cast<const T*>(x.data_ptr()),
           static_cast<const float*>(w.data_ptr<float>()), bias, static_cast<T*>(out.data_ptr()));
    launch(emu::conv_backward_kernel<T, K>, grid, emu::kChannelsPerBlock, shape, static_cast<const T*>(x.data_ptr()),
           static_cast<const float*>(w.data_ptr<float>()), bias, static_cast<const T*>(dout.data_ptr()),
           static_cast<T*>(dx.data_ptr()), dw.data_ptr<float>(), b.defined() ? db.data_ptr<float>() : nullptr);
  });
}

struct ConvCase {
  int64_t batch, len, channels, width;
  torch::ScalarType dtype;
  bool bias;
  bool strided = false;  // x a channel slice of a wider tensor, as in the Mamba2 mixer
};

#ifdef MINIPUZZLE_EMULATOR_UNDER_TSAN
// kernels_racecheck_test: ThreadSanitizer does not see the synchronization
// inside LibTorch's OpenMP pool (libgomp is not instrumented) and would report
// its reductions as races. The references run on one thread, so every report
// is about the emulated kernels' own threads.
const bool references_on_one_thread = [] {
  at::set_num_threads(1);
  return true;
}();
#endif

// Records, per launch, the order its blocks ran in.
std::vector<unsigned> block_log;
void log_block(int) {
  if (threadIdx.x == 0) block_log.push_back(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
}

TEST(EmulatedKernels, BlocksRunOnceEachInAShuffledOrder) {
  // A kernel whose blocks depend on each other's order must fail somewhere:
  // every block runs once, not in index order, and not in the same order in
  // every launch.
  if (const char* v = std::getenv("MINIPUZZLE_EMULATOR_BLOCK_ORDER"); v && std::string(v) == "in_order")
    GTEST_SKIP() << "MINIPUZZLE_EMULATOR_BLOCK_ORDER=in_order";
  std::vector<std::vector<unsigned>> orders;
  for (int i = 0; i < 2; ++i) {
    block_log.clear();
    launch(log_block, dim3(4, 3, 2), 64, 0);
    orders.push_back(block_log);
  }
  for (const auto& order : orders) {
    std::vector<unsigned> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    std::vector<unsigned> each(24);
    for (unsigned b = 0; b < 24; ++b) each[b] = b;
    EXPECT_EQ(sorted, each);
    EXPECT_NE(order, each);
  }
  EXPECT_NE(orders[0], orders[1]);
}

TEST(EmulatedKernels, CausalConv1dSiluForwardAndBackward) {
  const ConvCase cases[] = {
      {2, 150, 130, 4, torch::kFloat32, true}, {1, 65, 3, 3, torch::kFloat32, false},
      {2, 70, 40, 2, torch::kFloat32, true},   {1, 129, 20, 4, torch::kBFloat16, true},
      {1, 1, 5, 4, torch::kFloat16, true},
      {2, 70, 33, 4, torch::kFloat32, true, true},
  };
  torch::manual_seed(51);
  for (const auto& c : cases) {
    const std::string what = "L " + std::to_string(c.len) + " C " + std::to_string(c.channels) + " K " +
                             std::to_string(c.width) + " " + c10::toString(c.dtype);
    auto x = c.strided ? torch::randn({c.batch, c.len, c.channels + 9}).to(c.dtype).narrow(2, 4, c.channels)
                       : torch::randn({c.batch, c.len, c.channels}).to(c.dtype);
    auto w = torch::randn({c.channels, c.width}) * 0.5;
    auto b = c.bias ? torch::randn({c.channels}) * 0.1 : torch::Tensor();
    auto dout = torch::randn({c.batch, c.len, c.channels}).to(c.dtype);
    // Reference: fp32 weights (the kernels' contract), autograd for the gradients.
    auto xr = x.to(torch::kFloat32).requires_grad_(true);
    auto wr = w.view({c.channels, 1, c.width}).clone().requires_grad_(true);
    auto br = c.bias ? b.clone().requires_grad_(true) : torch::Tensor();
    auto ref = causal_conv1d_silu_reference(xr, wr, br);
    (ref * dout.to(torch::kFloat32)).sum().backward();

    auto out = torch::empty(x.sizes(), x.options()), dx = torch::empty(x.sizes(), x.options());
    auto dw = torch::zeros({c.channels, c.width}), db = torch::zeros({c.channels});
    switch (c.width) {
      case 2: run_conv<2>(x, w, b, dout, out, dx, dw, db); break;
      case 3: run_conv<3>(x, w, b, dout, out, dx, dw, db); break;
      default: run_conv<4>(x, w, b, dout, out, dx, dw, db); break;
    }
    const double tol = tolerance_for(c.dtype);
    expect_close(out, ref, tol * 0.1, tol, what + " out");
    expect_close(dx, xr.grad(), tol * 0.1, tol, what + " dx");
    expect_close(dw, wr.grad().view({c.channels, c.width}), tol * 0.1, tol, what + " dweight");
    if (c.bias) expect_close(db, br.grad(), tol * 0.1, tol, what + " dbias");
  }
}

struct NormCase {
  int64_t rows, channels, groups;
  torch::ScalarType dtype;
};

TEST(EmulatedKernels, GatedRmsNormForwardAndBackward) {
  const NormCase cases[] = {
      {6, 96, 3, torch::kFloat32},  // group of 32 < one block of threads
      {3, 600, 1, torch::kFloat32},  // group of 600: three channels per thread
      {33, 64, 1, torch::kFloat32},  // two tiles of rows in backward
      {4, 128, 4, torch::kBFloat16},
  };
  torch::manual_seed(52);
  for (const auto& c : cases) {
    const std::string what = "rows " + std::to_string(c.rows) + " D " + std::to_string(c.channels) + " G " +
                             std::to_string(c.groups) + " " + c10::toString(c.dtype);
    const int64_t gs = c.channels / c.groups;
    auto x = torch::randn({c.rows, c.channels}).to(c.dtype), z = torch::randn({c.rows, c.channels}).to(c.dtype);
    auto w = (1 + 0.1 * torch::randn({c.channels})).to(c.dtype);
    auto dout = torch::randn({c.rows, c.channels}).to(c.dtype);
    auto xr = x.clone().requires_grad_(true), zr = z.clone().requires_grad_(true), wr = w.clone().requires_grad_(true);
    auto ref = gated_rms_norm_reference(xr, zr, wr, gs, 1e-5);
    (ref.to(torch::kFloat32) * dout.to(torch::kFloat32)).sum().backward();

    kernels::GatedNormShape shape{c.rows, c.channels, gs};
    ASSERT_TRUE(emu::shape_ok(shape));
    dim3 fgrid, bgrid;
    ASSERT_TRUE(emu::forward_grid(shape, fgrid));
    ASSERT_TRUE(emu::backward_grid(shape, bgrid));
    auto out = torch::empty_like(x), dx = torch::empty_like(x), dz = torch::empty_like(z);
    auto rstd = torch::empty({c.rows, c.groups}), dw = torch::zeros({c.channels});
    with_element_type(c.dtype, [&](auto tag) {
      using T = decltype(tag);
      launch(emu::gated_norm_forward_kernel<T>, fgrid, emu::kNormThreads, static_cast<const T*>(x.data_ptr()),
             static_cast<const T*>(z.data_ptr()), static_cast<const T*>(w.data_ptr()), 1e-5f,
             static_cast<T*>(out.data_ptr()), rstd.data_ptr<float>(), c.channels, gs);
      launch(emu::gated_norm_backward_kernel<T>, bgrid, emu::kNormThreads, static_cast<const T*>(x.data_ptr()),
             static_cast<const T*>(z.data_ptr()), static_cast<const T*>(w.data_ptr()),
             static_cast<const float*>(rstd.data_ptr<float>()), static_cast<const T*>(dout.data_ptr()),
             static_cast<T*>(dx.data_ptr()), static_cast<T*>(dz.data_ptr()), dw.data_ptr<float>(), c.rows,
             c.channels, gs);
    });
    const double tol = tolerance_for(c.dtype);
    expect_close(out, ref, tol * 0.1, tol, what + " out");
    expect_close(dx, xr.grad(), tol * 0.1, tol, what + " dx");
    expect_close(dz, zr.grad(), tol * 0.1, tol, what + " dz");
    expect_close(dw, wr.grad(), tol * 0.1, tol, what + " dweight");
  }
}

// Our loss names and the kernels' for each divergence.
const std::pair<KdLoss, kernels::Divergence> kDivergences[] = {{KdLoss::ForwardKl, kernels::Divergence::ForwardKl},
                                                              {KdLoss::ReverseKl, kernels::Divergence::ReverseKl},
                                                              {KdLoss::Jsd, kernels::Divergence::Jsd}};

struct KlCase {
  int64_t rows, vocab;
  torch::ScalarType student, teacher;
  double temperature;
};

// Every divergence (forward KL, reverse KL, JSD) against logit_divergence_reference.
TEST(EmulatedKernels, ForwardKlLossGradientAndArgmax) {
  const KlCase cases[] = {
      {3, 1000, torch::kFloat32, torch::kFloat32, 1.0},
      {2, 5000, torch::kFloat32, torch::kBFloat16, 2.0},
      {2, 777, torch::kBFloat16, torch::kBFloat16, 0.7},
      {1, 5, torch::kFloat32, torch::kFloat32, 1.0},  // fewer entries than threads
  };
  torch::manual_seed(53);
  for (const auto& d : kDivergences)
    for (const auto& c : cases) {
#ifdef MINIPUZZLE_EMULATOR_UNDER_TSAN
      // V 5000 takes the same barriers as V 1000 (more strides of one loop)
      // and was 60% of this test's time under ThreadSanitizer.
      if (c.vocab > 1000) continue;
#endif
      const KdLoss loss = d.first;
      const kernels::Divergence divergence = d.second;
      const std::string what = "divergence " + std::to_string(static_cast<int>(loss)) + " rows " +
                               std::to_string(c.rows) + " V " + std::to_string(c.vocab) + " T " +
                               std::to_string(c.temperature) + " " + c10::toString(c.student) + "/" +
                               c10::toString(c.teacher);
      auto s = (torch::randn({c.rows, c.vocab}) * 4).to(c.student);
      // A teacher that overlaps the student: with independent rows the
      // divergences saturate (JSD at log 2) and their gradients all but vanish.
      auto t = (s.to(torch::kFloat32) * 0.7 + torch::randn({c.rows, c.vocab}) * 2).to(c.teacher);
      if (c.vocab > 600) {  // a tied maximum: the first index wins, as in torch.argmax
        s.select(1, 10).fill_(30);
        s.select(1, 590).fill_(30);
        t.select(1, 3).fill_(30);
        t.select(1, 599).fill_(30);
      }
      const double scale = 0.37;
      auto ref = logit_divergence_reference(s, t, loss, c.temperature, scale, true);
      ASSERT_EQ(ref.student_argmax[0].item<int64_t>(), c.vocab > 600 ? 10 : ref.student_argmax[0].item<int64_t>());
      auto kl = torch::empty({c.rows}), grad = torch::empty_like(s);
      auto s_arg = torch::empty({c.rows}, torch::kLong), t_arg = torch::empty({c.rows}, torch::kLong);
      with_element_type(c.student, [&](auto s_tag) {
        using TS = decltype(s_tag);
        with_element_type(c.teacher, [&](auto t_tag) {
          using TT = decltype(t_tag);
          launch(emu::forward_kl_kernel<TS, TT>, dim3(static_cast<unsigned>(c.rows)), emu::kKlThreads,
                 static_cast<const TS*>(s.data_ptr()), static_cast<const TT*>(t.data_ptr()), c.vocab, c.vocab, c.vocab,
                 static_cast<float>(1.0 / c.temperature), static_cast<float>(scale), kl.data_ptr<float>(),
                 static_cast<TS*>(grad.data_ptr()), s_arg.data_ptr<int64_t>(), t_arg.data_ptr<int64_t>(), divergence);
        });
      });
      expect_close(kl, ref.kl, 2e-5, 2e-5, what + " kl");
      // Reverse KL and JSD subtract the divergence (a difference of log-sum-exps) from
      // each entry: fp32 rounding of a few 1e-6 there, against gradients of about 0.03.
      // The reference's exp/log are LibTorch's vectorised ones, whose last bits differ
      // between CPUs: 1.3e-4 relative was seen on an AMD EPYC at V 5000 (2026-12-06).
      const double fp32_rtol = loss == KdLoss::ForwardKl ? 1e-5 : 3e-4;
      expect_close(grad, ref.grad, 1e-7, c.student == torch::kFloat32 ? fp32_rtol : 1e-2, what + " grad");
      EXPECT_TRUE(torch::equal(s_arg, ref.student_argmax)) << what;
      EXPECT_TRUE(torch::equal(t_arg, ref.teacher_argmax)) << what;
    }
}

struct TopkCase {
  int64_t rows, vocab, k;
  torch::ScalarType student;
  double temperature;
  bool no_rest;  // k = vocab: the rest bucket is empty (rest_lse = -inf)
};

TEST(EmulatedKernels, TopkDivergencesLossGradientAndArgmax) {
  const TopkCase cases[] = {
      {2, 1000, 20, torch::kFloat32, 1.0, false},
      {2, 777, 64, torch::kBFloat16, 2.0, false},
      {2, 40, 40, torch::kFloat32, 1.0, true},
      {1, 600, 1, torch::kFloat32, 0.5, false},
  };
  torch::manual_seed(56);
  for (const auto& c : cases) {
    const std::string what = "rows " + std::to_string(c.rows) + " V " + std::to_string(c.vocab) + " k " +
                             std::to_string(c.k) + " T " + std::to_string(c.temperature);
    auto s = (torch::randn({c.rows, c.vocab}) * 3).to(c.student);
    // A teacher row, its top k (tempered) and the rest, as teacher_topk makes them.
    auto t = torch::randn({c.rows, c.vocab}) * 3 / c.temperature;
    auto top_k = t.topk(c.k, -1);
    auto vals = std::get<0>(top_k), ids = std::get<1>(top_k);
    auto rest = c.no_rest ? torch::full({c.rows}, -std::numeric_limits<float>::infinity())
                          : torch::logsumexp(t.scatter(1, ids, -std::numeric_limits<float>::infinity()), -1);
    auto perm = torch::randperm(c.k);  // the kernel must not rely on sorted values
    vals = vals.index_select(1, perm).contiguous();
    ids = ids.index_select(1, perm).contiguous();
    for (const auto& [loss, divergence] : kDivergences) {
      const std::string w = what + " divergence " + std::to_string(static_cast<int>(loss));
      auto ref = topk_divergence_reference(s, vals, ids, rest, loss, c.temperature, 0.37, true);
      auto kl = torch::empty({c.rows}), grad = torch::empty_like(s);
      auto s_arg = torch::empty({c.rows}, torch::kLong), t_arg = torch::empty({c.rows}, torch::kLong);
      with_element_type(c.student, [&](auto tag) {
        using TS = decltype(tag);
        cuda_emulator::launch_with_shared(
            emu::forward_kl_topk_kernel<TS>, dim3(static_cast<unsigned>(c.rows)), emu::kKlTopkThreads,
            emu::topk_bitmap_bytes(c.vocab), static_cast<const TS*>(s.data_ptr()),
            static_cast<const float*>(vals.data_ptr<float>()), static_cast<const int64_t*>(ids.data_ptr<int64_t>()),
            static_cast<const float*>(rest.data_ptr<float>()), c.vocab, c.k, c.vocab,
            static_cast<float>(1.0 / c.temperature), 0.37f, kl.data_ptr<float>(), static_cast<TS*>(grad.data_ptr()),
            s_arg.data_ptr<int64_t>(), t_arg.data_ptr<int64_t>(), divergence);
      });
      expect_close(kl, ref.kl, 2e-5, 2e-5, w + " kl");
      // Reverse KL and JSD: q_v (a_b - D) with a_b and D of order 10, rounded
      // in fp32 (about 1e-6 each), times q_v <= 1 and the scale.
      const bool centred = loss != KdLoss::ForwardKl;
      expect_close(grad, ref.grad, centred ? 5e-7 : 1e-7,
                   c.student != torch::kFloat32 ? 1e-2 : centred ? 1e-4 : 1e-5, w + " grad");
      EXPECT_TRUE(torch::equal(s_arg, ref.student_argmax)) << w;
      EXPECT_TRUE(torch::equal(t_arg, ref.teacher_argmax)) << w;
    }
  }
}

// The top-k reference with k = V equals the full-vocabulary one.
TEST(EmulatedKernels, TopkReferenceWithEveryIdEqualsFullKl) {
  torch::manual_seed(57);
  auto s = torch::randn({3, 50}) * 2, t = torch::randn({3, 50}) * 2;
  auto top_k = (t / 1.5).topk(50, -1);
  auto vals = std::get<0>(top_k), ids = std::get<1>(top_k);
  auto topk = forward_kl_topk_reference(s, vals, ids, torch::full({3}, -INFINITY), 1.5, 0.5, true);
  auto full = forward_kl_reference(s, t, 1.5, 0.5, true);
  expect_close(topk.kl, full.kl, 1e-5, 1e-5, "kl");
  expect_close(topk.grad, full.grad, 1e-6, 1e-5, "grad");
}

// block_gemm's tile of C = A B, with A [M x K] and B [K x N] read from fp32.
template <int Flags>
__global__ void block_gemm_kernel(int64_t M, int64_t N, int64_t K, const float* a, const float* b, float* c) {
  emu::block_gemm<__nv_bfloat16, Flags>(
      blockIdx.x * emu::kGemmTileM, blockIdx.y * emu::kGemmTileN, M, N, K,
      [&](int64_t i, int64_t k) { return a[i * K + k]; }, [&](int64_t k, int64_t j) { return b[k * N + j]; },
      [&](int64_t i, int64_t j, float v) { c[i * N + j] = v; });
}

template <int Flags>
torch::Tensor block_gemm_product(const torch::Tensor& a, const torch::Tensor& b) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  auto c = torch::full({M, N}, NAN);
  launch(block_gemm_kernel<Flags>, dim3(emu::gemm_tiles(M), emu::gemm_tiles(N)), emu::kGemmThreads, M, N, K,
         static_cast<const float*>(a.data_ptr<float>()), static_cast<const float*>(b.data_ptr<float>()),
         c.data_ptr<float>());
  return c;
}

// Tiles, slabs and the zero padding at every edge (no size a multiple of 16).
// Unsplit operands give the product of the bf16-rounded operands; split ones
// (hi + lo) the fp32 product to about 2^-16 of it.
TEST(EmulatedKernels, BlockGemmOnTensorCoreTiles) {
  torch::manual_seed(57);
  const int64_t M = 77, N = 130, K = 45;
  auto a = torch::randn({M, K}), b = torch::randn({K, N});
  auto exact = torch::matmul(a.to(torch::kFloat64), b.to(torch::kFloat64)).to(torch::kFloat32);
  auto rounded = torch::matmul(a.to(torch::kBFloat16).to(torch::kFloat64), b.to(torch::kBFloat16).to(torch::kFloat64))
                     .to(torch::kFloat32);
  for (const bool a_fast : {false, true}) {
    const auto plain = a_fast ? block_gemm_product<emu::kGemmAKFast>(a, b) : block_gemm_product<0>(a, b);
    expect_close(plain, rounded, 1e-5, 1e-6, "unsplit operands");
    EXPECT_GT((plain - exact).abs().max().item<float>(), 1e-3);  // bf16 rounding shows
  }
  expect_close(block_gemm_product<emu::kGemmSplitA | emu::kGemmSplitB | emu::kGemmBKFast>(a, b), exact, 1e-5, 2e-5,
               "split operands");
  // Only B exact in bf16: splitting A alone recovers the product.
  auto b16 = b.to(torch::kBFloat16).to(torch::kFloat32);
  auto exact_b16 = torch::matmul(a.to(torch::kFloat64), b16.to(torch::kFloat64)).to(torch::kFloat32);
  expect_close(block_gemm_product<emu::kGemmSplitA>(a, b16), exact_b16, 1e-5, 2e-5, "split A, bf16 B");
}

struct AdamWCase {
  int64_t numel;
  torch::ScalarType dtype;
  bool decay, misaligned = false, has_grad = true;
};

// A parameter list like a model's, with masters and moments part-way
// through training; `misaligned` storage forces the scalar path.
AdamWTensors adamw_tensors(const std::vector<AdamWCase>& cases) {
  AdamWTensors t;
  for (const auto& c : cases) {
    auto p = c.misaligned ? torch::randn({c.numel + 1}).to(c.dtype).narrow(0, 1, c.numel) : torch::randn({c.numel}).to(c.dtype);
    if (c.has_grad) p.mutable_grad() = torch::randn({c.numel}).to(c.dtype);
    t.params.push_back(p);
    t.masters.push_back(c.dtype == torch::kFloat32 ? p : p.to(torch::kFloat32) + torch::randn({c.numel}) * 1e-3);
    t.exp_avgs.push_back(torch::randn({c.numel}) * 0.1);
    t.exp_avg_sqs.push_back(torch::rand({c.numel}) * 0.01);
    t.decay.push_back(c.decay);
  }
  return t;
}

AdamWTensors deep_copy(const AdamWTensors& t) {
  AdamWTensors c = t;
  for (std::size_t i = 0; i < t.params.size(); ++i) {
    c.params[i] = t.params[i].clone();
    if (t.params[i].grad().defined()) c.params[i].mutable_grad() = t.params[i].grad().clone();
    c.masters[i] = t.masters[i].is_same(t.params[i]) ? c.params[i] : t.masters[i].clone();
    c.exp_avgs[i] = t.exp_avgs[i].clone();
    c.exp_avg_sqs[i] = t.exp_avg_sqs[i].clone();
  }
  return c;
}

// Every dtype (fp32 its own master), the decay flag both ways, tensors of 1,
// 3 and 45 elements, one over two chunks with a ragged end, one that starts
// off the vector alignment, one without a gradient; four steps (see below).
TEST(EmulatedKernels, AdamWUpdateAndGradSumOfSquares) {
  torch::manual_seed(61);
  const int64_t big = 2 * kernels::kAdamWChunk + 7;
  AdamWTensors ours = adamw_tensors({{3, torch::kFloat32, false},
                                     {big, torch::kBFloat16, true},
                                     {45, torch::kFloat16, true},
                                     {kernels::kAdamWChunk + 1, torch::kFloat32, true},
                                     {1, torch::kBFloat16, false},
                                     {50, torch::kBFloat16, true, /*misaligned=*/true},
                                     {20, torch::kFloat32, true, false, /*has_grad=*/false}});
  AdamWTensors ref = deep_copy(ours);
  const auto untouched = ours.params.back().clone();
  const auto slots = cuda_ops::adamw_slots(ours);  // the CUDA wrapper's table, in host memory
  ASSERT_EQ(slots.size(), 6u);
  EXPECT_FALSE(slots[5].vector_ok);
  EXPECT_TRUE(slots[1].vector_ok);
  const auto chunks = kernels::adamw_chunks(slots.data(), static_cast<int64_t>(slots.size()));
  ASSERT_EQ(chunks.size(), 1u + 3u + 1u + 2u + 1u + 1u);
  const dim3 grid(static_cast<unsigned>(chunks.size()));

  std::vector<float> partials(chunks.size());
  double sum = -1;
  launch(emu::grad_squares_kernel, grid, emu::kAdamWThreads, slots.data(), chunks.data(), partials.data());
  launch(emu::sum_partials_kernel, dim3(1), emu::kAdamWThreads, static_cast<const float*>(partials.data()),
         static_cast<int64_t>(partials.size()), &sum);
  const double expected = grad_sum_of_squares_reference(ref.params);
  EXPECT_NEAR(sum, expected, 1e-6 * expected);

  // A host factor, none, then the clip factor from the sum of squares in
  // "device" memory (the trainer's way): clipping, then not.
  struct Step {
    int64_t step;
    double scale, max_norm;
  };
  for (const Step& st : {Step{1, 0.37, 0}, Step{3, 1.0, 0}, Step{4, 1.0, 0.5}, Step{6, 1.0, 1e6}}) {
    const int64_t step = st.step;
    AdamWStepFactors f;
    f.lr = 1e-2;
    f.weight_decay = 0.1;
    f.step = step;
    f.grad_scale = st.scale;
    auto factors = kernels::adamw_factors(f.lr, f.beta1, f.beta2, f.eps, f.weight_decay, f.step, f.grad_scale);
    const double* device_sum = nullptr;
    if (st.max_norm > 0) {
      launch(emu::grad_squares_kernel, grid, emu::kAdamWThreads, slots.data(), chunks.data(), partials.data());
      launch(emu::sum_partials_kernel, dim3(1), emu::kAdamWThreads, static_cast<const float*>(partials.data()),
             static_cast<int64_t>(partials.size()), &sum);
      device_sum = &sum;
      factors.max_grad_norm = st.max_norm;
      // The reference takes the kernel's sum, so the two clip factors agree exactly.
      f.grad_sum_of_squares = torch::full({}, sum, torch::kDouble);
      f.max_grad_norm = st.max_norm;
      const double norm = std::sqrt(sum);
      EXPECT_EQ(norm > st.max_norm, st.max_norm < 1) << "step " << step << ": norm " << norm;
    }
    launch(emu::adamw_update_kernel, grid, emu::kAdamWThreads, slots.data(), chunks.data(), factors, device_sum);
    adamw_update_reference(ref, f);
    for (std::size_t i = 0; i < ours.params.size(); ++i) {
      const std::string what = "step " + std::to_string(step) + " tensor " + std::to_string(i) + " " +
                               c10::toString(ours.params[i].scalar_type());
      expect_close(ours.exp_avgs[i], ref.exp_avgs[i], 1e-7, 1e-6, what + " exp_avg");
      expect_close(ours.exp_avg_sqs[i], ref.exp_avg_sqs[i], 1e-9, 1e-6, what + " exp_avg_sq");
      expect_close(ours.masters[i], ref.masters[i], 1e-7, 1e-6, what + " master");
      // The parameter is its master rounded, whatever the path.
      EXPECT_TRUE(torch::equal(ours.params[i], ours.masters[i].to(ours.params[i].scalar_type()))) << what;
    }
    // A new gradient for the next step.
    for (std::size_t i = 0; i < ours.params.size(); ++i)
      if (ours.params[i].grad().defined()) {
        auto g = torch::randn(ours.params[i].sizes()).to(ours.params[i].scalar_type());
        ours.params[i].mutable_grad().copy_(g);
        ref.params[i].mutable_grad().copy_(g);
      }
  }
  EXPECT_TRUE(torch::equal(ours.params.back(), untouched));  // no gradient, no update
}

struct SsdCase {
  int64_t batch, len, heads, head_dim, groups, state, chunk;
  torch::ScalarType dtype;
  bool with_d;
  bool tensor_cores = true;  // bf16 only: off runs the CUDA-core kernels
};

const SsdCase kSsdCases[] = {
    {2, 21, 4, 3, 2, 5, 8, torch::kFloat32, true},   // last chunk short, 2 heads per group
    {1, 16, 2, 4, 1, 8, 16, torch::kFloat32, false},  // one full chunk
    {1, 9, 2, 4, 2, 4, 4, torch::kBFloat16, true},
    {1, 9, 2, 4, 2, 4, 4, torch::kBFloat16, true, false},
    {1, 5, 3, 2, 3, 3, 1, torch::kFloat32, true},  // chunk 1: the recurrence step by step
    // Tensor cores (bf16): chunk 128 = two row tiles of 64 and a short last
    // chunk, head_dim and state two column tiles each (one partial), 2 heads
    // per group summed in dB and dC.
    {1, 150, 2, 80, 1, 72, 128, torch::kBFloat16, true},
    {2, 37, 2, 16, 1, 16, 16, torch::kBFloat16, false},
};

std::string ssd_name(const SsdCase& c) {
  return "b " + std::to_string(c.batch) + " L " + std::to_string(c.len) + " H " + std::to_string(c.heads) + " G " +
         std::to_string(c.groups) + " chunk " + std::to_string(c.chunk) + " " + c10::toString(c.dtype) +
         (c.tensor_cores ? "" : " CUDA cores");
}

// Inputs as the mixer has them: x, B, C views of one [b, L, conv_dim] tensor.
struct SsdInputs {
  torch::Tensor xbc, x, B, C, dt, A, D;
  kernels::SsdShape shape;
};

SsdInputs ssd_inputs(const SsdCase& c) {
  SsdInputs in;
  const int64_t di = c.heads * c.head_dim, gn = c.groups * c.state;
  in.xbc = torch::randn({c.batch, c.len, di + 2 * gn}).to(c.dtype);
  in.x = in.xbc.narrow(-1, 0, di).reshape({c.batch, c.len, c.heads, c.head_dim});
  in.B = in.xbc.narrow(-1, di, gn).reshape({c.batch, c.len, c.groups, c.state});
  in.C = in.xbc.narrow(-1, di + gn, gn).reshape({c.batch, c.len, c.groups, c.state});
  in.dt = torch::softplus(torch::randn({c.batch, c.len, c.heads}) - 1);
  in.A = -torch::exp(torch::randn({c.heads}) * 0.5);
  if (c.with_d) in.D = torch::randn({c.heads});
  kernels::SsdShape& s = in.shape;
  s.batch = c.batch, s.len = c.len, s.heads = c.heads, s.head_dim = c.head_dim, s.groups = c.groups;
  s.state = c.state, s.chunk = c.chunk;
  s.x_batch_stride = in.x.stride(0), s.x_token_stride = in.x.stride(1);
  s.b_batch_stride = in.B.stride(0), s.b_token_stride = in.B.stride(1);
  s.c_batch_stride = in.C.stride(0), s.c_token_stride = in.C.stride(1);
  s.tensor_cores = c.tensor_cores;
  return in;
}

// A dense fp32 dt used as given (no softplus, no bias).
emu::SsdDtIn<float> plain_dt(const torch::Tensor& dt) {
  return {dt.data_ptr<float>(), dt.stride(0), dt.stride(1), nullptr, false, 0.0f};
}

int64_t ssd_workspace_bytes(const kernels::SsdShape& s) {
  size_t sizes[emu::kSsdPieces], total = 0;
  emu::ssd_piece_sizes(s, sizes);
  for (size_t v : sizes) total += v;
  return static_cast<int64_t>(total);
}

kernels::DType kernel_dtype_of(torch::ScalarType t) {
  if (t == torch::kBFloat16) return kernels::DType::BF16;
  return t == torch::kFloat16 ? kernels::DType::F16 : kernels::DType::F32;
}

int64_t ssd_backward_workspace_bytes(const kernels::SsdShape& s, torch::ScalarType dtype) {
  size_t sizes[emu::kSsdBackwardPieces], total = 0;
  emu::ssd_backward_piece_sizes(s, kernel_dtype_of(dtype), sizes);
  for (size_t v : sizes) total += v;
  return static_cast<int64_t>(total);
}

// dA and ddt_bias sum over every token of a sequence terms that largely
// cancel, so the tensor cores' split operands (about 2^-16 relative, not
// fp32's 2^-24) show there most: measured up to 1.0e-3 of the largest value
// on these cases (2.6e-4 without the softplus test's dt of 25).
double sequence_sum_rtol(const SsdCase& c, double fp32_rtol) {
  return c.dtype == torch::kBFloat16 && c.tensor_cores ? 3e-3 : fp32_rtol;
}

// launch() with the SSD kernels' block size.
const auto ssd_launch = [](auto kernel, dim3 grid, auto... args) { launch(kernel, grid, emu::kSsdThreads, args...); };

// Scratch memory of the backward at the 8B model's shapes (TARGETS.md: b=1,
// L=8192, 128 heads x 64, 8 groups, state 128, chunk 128). The tensor-core
// path keeps neither y nor dxdt, and W is per group on both paths.
TEST(EmulatedKernels, SsdBackwardWorkspaceAtThe8bShapes) {
  kernels::SsdShape s;
  s.batch = 1, s.len = 8192, s.heads = 128, s.head_dim = 64, s.groups = 8, s.state = 128, s.chunk = 128;
  const auto mib = [&](torch::ScalarType t, bool tensor_cores) {
    s.tensor_cores = tensor_cores;
    return ssd_backward_workspace_bytes(s, t) / (1 << 20);
  };
  EXPECT_EQ(mib(torch::kBFloat16, true), 608);    // states and reverse states: 256 MiB each
  EXPECT_EQ(mib(torch::kBFloat16, false), 1108);  // + y and dxdt, 256 MiB each, - the 3 x 4 MiB partials
  EXPECT_EQ(mib(torch::kFloat32, true), 1108);    // fp32: CUDA cores whatever the switch says
}

TEST(EmulatedKernels, SsdScanForward) {
  torch::manual_seed(54);
  for (const auto& c : kSsdCases) {
    SsdInputs in = ssd_inputs(c);
    auto ref = ssd_scan_reference(in.x, in.dt, in.A, in.B, in.C, in.D, c.chunk);
    auto ws = torch::empty({ssd_workspace_bytes(in.shape)}, torch::kUInt8);
    auto y = torch::empty({c.batch, c.len, c.heads, c.head_dim});
    with_element_type(c.dtype, [&](auto tag) {
      using T = decltype(tag);
      emu::ssd_forward_steps(in.shape, static_cast<const T*>(in.x.data_ptr()), plain_dt(in.dt),
                             in.A.data_ptr<float>(), static_cast<const T*>(in.B.data_ptr()),
                             static_cast<const T*>(in.C.data_ptr()), c.with_d ? in.D.data_ptr<float>() : nullptr,
                             y.data_ptr<float>(), emu::ssd_workspace(in.shape, ws.data_ptr()), ssd_launch);
    });
    expect_close(y, ref, 1e-5, 1e-5, ssd_name(c) + " y");
  }
}

TEST(EmulatedKernels, SsdScanBackward) {
  torch::manual_seed(55);
  for (const auto& c : kSsdCases) {
    const std::string what = ssd_name(c);
    SsdInputs in = ssd_inputs(c);
    // Reference gradients of sum(dy * y) through autograd, on separate leaves.
    auto leaf = [](const torch::Tensor& t) { return t.detach().clone().requires_grad_(true); };
    auto x = leaf(in.x), B = leaf(in.B), C = leaf(in.C), dt = leaf(in.dt), A = leaf(in.A);
    auto D = c.with_d ? leaf(in.D) : torch::Tensor();
    auto y = ssd_scan_reference(x, dt, A, B, C, D, c.chunk);
    auto dy = torch::randn(y.sizes());
    (y * dy).sum().backward();

    auto ws = torch::empty({ssd_backward_workspace_bytes(in.shape, c.dtype)}, torch::kUInt8);
    auto dx = torch::empty({c.batch, c.len, c.heads, c.head_dim}), ddt = torch::empty({c.batch, c.len, c.heads});
    auto dB = torch::empty({c.batch, c.len, c.groups, c.state}), dC = torch::empty_like(dB);
    auto dA = torch::zeros({c.heads}), dD = torch::zeros({c.heads});
    with_element_type(c.dtype, [&](auto tag) {
      using T = decltype(tag);
      emu::ssd_backward_steps(in.shape, static_cast<const T*>(in.x.data_ptr()), plain_dt(in.dt),
                              in.A.data_ptr<float>(), static_cast<const T*>(in.B.data_ptr()),
                              static_cast<const T*>(in.C.data_ptr()), c.with_d ? in.D.data_ptr<float>() : nullptr,
                              dy.data_ptr<float>(), dx.data_ptr<float>(), ddt.data_ptr<float>(), dA.data_ptr<float>(),
                              dB.data_ptr<float>(), dC.data_ptr<float>(), c.with_d ? dD.data_ptr<float>() : nullptr,
                              nullptr, emu::ssd_backward_workspace(in.shape, kernel_dtype_of(c.dtype), ws.data_ptr()),
                              ssd_launch);
    });
    // Leaves of bf16 inputs get bf16 gradients: one rounding apart.
    const double tol = c.dtype == torch::kFloat32 ? 1e-5 : tolerance_for(c.dtype);
    expect_close(dx, x.grad(), tol, tol, what + " dx");
    expect_close(dB, B.grad(), tol, tol, what + " dB");
    expect_close(dC, C.grad(), tol, tol, what + " dC");
    expect_close(ddt, dt.grad(), 1e-5, 1e-5, what + " ddt");
    expect_close(dA, A.grad(), 1e-5, sequence_sum_rtol(c, 1e-5), what + " dA");
    if (c.with_d) expect_close(dD, D.grad(), 1e-5, 1e-5, what + " dD");
  }
}

// The mixer's dt step inside the kernels: dt_raw is a strided slice of an
// in_proj-like tensor in the model dtype, with values that hit softplus's
// threshold (> 20) and the clamp at dt_min; forward and every gradient,
// dt_raw and dt_bias included, against autograd of the reference.
TEST(EmulatedKernels, SsdScanSoftplusDtForwardAndBackward) {
  torch::manual_seed(56);
  const double dt_min = 0.05;
  for (const auto& c : kSsdCases) {
    const std::string what = ssd_name(c) + " softplus dt";
    SsdInputs in = ssd_inputs(c);
    auto zxbcdt = (torch::randn({c.batch, c.len, c.heads + 3}) * 3).to(c.dtype);
    auto dt_raw = zxbcdt.narrow(-1, 2, c.heads);
    dt_raw.select(1, 0).fill_(25.0);   // above the threshold: softplus(u) = u
    dt_raw.select(1, 1).fill_(-10.0);  // softplus tiny: clamped at dt_min, no gradient
    auto dt_bias = torch::randn({c.heads}) * 0.5;

    auto leaf = [](const torch::Tensor& t) { return t.detach().clone().requires_grad_(true); };
    auto x = leaf(in.x), B = leaf(in.B), C = leaf(in.C), A = leaf(in.A), raw = leaf(dt_raw), bias = leaf(dt_bias);
    auto D = c.with_d ? leaf(in.D) : torch::Tensor();
    auto y_ref = ssd_scan_reference(x, softplus_dt_reference(raw.to(torch::kFloat32), bias, dt_min), A, B, C, D,
                                    c.chunk);
    auto dy = torch::randn(y_ref.sizes());
    (y_ref * dy).sum().backward();

    auto y = torch::empty({c.batch, c.len, c.heads, c.head_dim});
    auto fwd_ws = torch::empty({ssd_workspace_bytes(in.shape)}, torch::kUInt8);
    auto bwd_ws = torch::empty({ssd_backward_workspace_bytes(in.shape, c.dtype)}, torch::kUInt8);
    auto dx = torch::empty({c.batch, c.len, c.heads, c.head_dim}), ddt = torch::empty({c.batch, c.len, c.heads});
    auto dB = torch::empty({c.batch, c.len, c.groups, c.state}), dC = torch::empty_like(dB);
    auto dA = torch::zeros({c.heads}), dD = torch::zeros({c.heads}), dbias = torch::zeros({c.heads});
    with_element_type(c.dtype, [&](auto tag) {
      using T = decltype(tag);
      const emu::SsdDtIn<T> dt_in{static_cast<const T*>(dt_raw.data_ptr()), dt_raw.stride(0), dt_raw.stride(1),
                                  dt_bias.data_ptr<float>(), true, static_cast<float>(dt_min)};
      const T* xp = static_cast<const T*>(in.x.data_ptr());
      const T* Bp = static_cast<const T*>(in.B.data_ptr());
      const T* Cp = static_cast<const T*>(in.C.data_ptr());
      const float* Dp = c.with_d ? in.D.data_ptr<float>() : nullptr;
      emu::ssd_forward_steps(in.shape, xp, dt_in, in.A.data_ptr<float>(), Bp, Cp, Dp, y.data_ptr<float>(),
                             emu::ssd_workspace(in.shape, fwd_ws.data_ptr()), ssd_launch);
      emu::ssd_backward_steps(in.shape, xp, dt_in, in.A.data_ptr<float>(), Bp, Cp, Dp, dy.data_ptr<float>(),
                              dx.data_ptr<float>(), ddt.data_ptr<float>(), dA.data_ptr<float>(), dB.data_ptr<float>(),
                              dC.data_ptr<float>(), c.with_d ? dD.data_ptr<float>() : nullptr,
                              dbias.data_ptr<float>(),
                              emu::ssd_backward_workspace(in.shape, kernel_dtype_of(c.dtype), bwd_ws.data_ptr()),
                              ssd_launch);
    });
    const double tol = c.dtype == torch::kFloat32 ? 1e-5 : tolerance_for(c.dtype);
    expect_close(y, y_ref, 1e-5, 1e-5, what + " y");
    expect_close(dx, x.grad(), tol, tol, what + " dx");
    expect_close(dB, B.grad(), tol, tol, what + " dB");
    expect_close(dC, C.grad(), tol, tol, what + " dC");
    expect_close(ddt, raw.grad().to(torch::kFloat32), tol, tol, what + " ddt_raw");
    // dA sums dt * (...) over every token, with dt up to 25 here: float summation order.
    expect_close(dbias, bias.grad(), 1e-5, sequence_sum_rtol(c, 5e-5), what + " ddt_bias");
    expect_close(dA, A.grad(), 1e-5, sequence_sum_rtol(c, 5e-5), what + " dA");
    if (c.with_d) expect_close(dD, D.grad(), 1e-5, 1e-5, what + " dD");
    // The clamped tokens pass no gradient to dt_raw; those above the threshold pass it unchanged.
    EXPECT_EQ(ddt.select(1, 1).abs().max().item<float>(), 0.0f) << what;
    EXPECT_GT(ddt.select(1, 0).abs().max().item<float>(), 0.0f) << what;
  }
}

}  // namespace
}  // namespace minipuzzle
