// grouped_experts (moe_grouped_experts.h): the one-node routed-expert
// computation and its hand-written backward against the same math composed
// of plain autograd ops, in fp64, on one and on two threads, with an expert
// no token chose.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "minipuzzle/moe_grouped_experts.h"

namespace minipuzzle {
namespace {

struct Problem {
  int64_t T = 29, k = 3, E = 7, F = 12, D = 10;
  torch::Tensor x, indices, weights;  // weights [T, k]
  std::vector<torch::Tensor> up, down;
};

Problem make_problem(torch::ScalarType dtype) {
  torch::manual_seed(11);
  Problem p;
  auto opts = torch::TensorOptions().dtype(dtype);
  p.x = torch::randn({p.T, p.D}, opts);
  // Distinct experts per token, never expert 4: it gets no slot.
  auto pick = torch::rand({p.T, p.E - 1}).argsort(int64_t{1}).narrow(1, 0, p.k);
  p.indices = pick + (pick >= 4).to(torch::kInt64);
  p.weights = torch::rand({p.T, p.k}, torch::kFloat32).to(dtype == torch::kFloat64 ? dtype : torch::kFloat32);
  for (int64_t e = 0; e < p.E; ++e) {
    p.up.push_back(torch::randn({p.F, p.D}, opts) * 0.4);
    p.down.push_back(torch::randn({p.D, p.F}, opts) * 0.4);
  }
  return p;
}

// As moe_mixer.cpp sorts them.
ExpertSlots slots_of(const Problem& p, torch::Tensor* slot_weight) {
  auto [sorted, perm] = p.indices.sort(1);
  auto flat = sorted.reshape({-1});
  auto order = std::get<1>(flat.sort(true, 0, false));
  ExpertSlots s;
  s.token = order.div(p.k, "floor");
  s.slot_of = torch::empty_like(order).scatter_(0, order, torch::arange(p.T * p.k)).view({p.T, p.k});
  auto counts = torch::bincount(flat, {}, p.E);
  s.counts.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + p.E);
  *slot_weight = p.weights.gather(1, perm).reshape({-1}).index_select(0, order);
  return s;
}

// Every expert on every token, masked by the routing: plain autograd ops.
torch::Tensor reference(const Problem& p, const torch::Tensor& x, const torch::Tensor& w,
                        const std::vector<torch::Tensor>& up, const std::vector<torch::Tensor>& down) {
  auto out = torch::zeros({p.T, p.D}, x.options());
  for (int64_t e = 0; e < p.E; ++e) {
    auto y = torch::linear(torch::relu(torch::linear(x, up[e])).square(), down[e]);
    out = out + y * ((p.indices == e).to(x.scalar_type()) * w).sum(-1, true);
  }
  return out;
}

std::vector<torch::Tensor> leaves(const Problem& p, torch::Tensor* x, torch::Tensor* w, std::vector<torch::Tensor>* up,
                                  std::vector<torch::Tensor>* down) {
  *x = p.x.clone().requires_grad_(true);
  *w = p.weights.clone().requires_grad_(true);
  std::vector<torch::Tensor> all = {*x, *w};
  for (int64_t e = 0; e < p.E; ++e) {
    up->push_back(p.up[e].clone().requires_grad_(true));
    down->push_back(p.down[e].clone().requires_grad_(true));
    all.push_back(up->back());
    all.push_back(down->back());
  }
  return all;
}

class GroupedExperts : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    threads_ = at::get_num_threads();
    at::set_num_threads(GetParam());
  }
  void TearDown() override { at::set_num_threads(threads_); }
  int threads_ = 1;
};

TEST_P(GroupedExperts, ForwardAndEveryGradientMatchPlainAutograd) {
  const Problem p = make_problem(torch::kFloat64);
  torch::Tensor x1, w1, x2, w2;
  std::vector<torch::Tensor> up1, down1, up2, down2;
  auto ours_leaves = leaves(p, &x1, &w1, &up1, &down1);
  auto ref_leaves = leaves(p, &x2, &w2, &up2, &down2);
  auto probe = torch::randn({p.T, p.D}, torch::kFloat64);

  torch::Tensor slot_weight;
  Problem shadow = p;
  shadow.weights = w1;
  const ExpertSlots s = slots_of(shadow, &slot_weight);
  EXPECT_EQ(s.counts[4], 0);
  auto ours = grouped_experts(x1, s, slot_weight, up1, down1);
  auto ref = reference(p, x2, w2, up2, down2);
  EXPECT_LT((ours - ref).abs().max().item<double>(), 1e-12);
  (ours * probe).sum().backward();
  (ref * probe).sum().backward();
  for (size_t i = 0; i < ours_leaves.size(); ++i) {
    const auto& a = ours_leaves[i].grad();
    const auto& b = ref_leaves[i].grad();
    if (i == 2 + 2 * 4 || i == 3 + 2 * 4) {  // expert 4's up and down: no token, no gradient
      EXPECT_FALSE(a.defined()) << i;
      EXPECT_EQ(b.abs().max().item<double>(), 0.0) << i;
      continue;
    }
    ASSERT_TRUE(a.defined()) << i;
    EXPECT_LT((a - b).abs().max().item<double>(), 1e-12 * (1 + b.abs().max().item<double>())) << "leaf " << i;
  }
}

TEST_P(GroupedExperts, Bf16SumsTheWeightedOutputsInFp32) {
  const Problem p = make_problem(torch::kBFloat16);
  torch::Tensor slot_weight;
  const ExpertSlots s = slots_of(p, &slot_weight);
  auto ours = grouped_experts(p.x, s, slot_weight, p.up, p.down);
  EXPECT_EQ(ours.scalar_type(), torch::kFloat32);
  // The reference on the same bf16 expert outputs, weighted and summed in fp32.
  auto ref = torch::zeros({p.T, p.D});
  for (int64_t e = 0; e < p.E; ++e) {
    auto y = torch::linear(torch::relu(torch::linear(p.x, p.up[e])).square(), p.down[e]);
    ref += y.to(torch::kFloat32) * ((p.indices == e).to(torch::kFloat32) * p.weights).sum(-1, true);
  }
  EXPECT_LT((ours - ref).abs().max().item<double>(), 1e-5 * (1 + ref.abs().max().item<double>()));
}

TEST_P(GroupedExperts, RepeatedRunsGiveTheSameBits) {
  const Problem p = make_problem(torch::kFloat32);
  torch::Tensor slot_weight;
  const ExpertSlots s = slots_of(p, &slot_weight);
  auto run = [&] {
    auto x = p.x.clone().requires_grad_(true);
    auto out = grouped_experts(x, s, slot_weight, p.up, p.down);
    out.square().sum().backward();
    return std::make_pair(out.detach(), x.grad());
  };
  const auto a = run(), b = run();
  EXPECT_TRUE(torch::equal(a.first, b.first));
  EXPECT_TRUE(torch::equal(a.second, b.second));
}

INSTANTIATE_TEST_SUITE_P(Threads, GroupedExperts, ::testing::Values(1, 2));

}  // namespace
}  // namespace minipuzzle
