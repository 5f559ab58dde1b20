#include "minipuzzle/moe_grouped_experts.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <numeric>

namespace minipuzzle {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Runs fn(expert, first row, rows) for every expert with rows. On the CPU
// with several threads, the threads take experts one at a time (largest
// first) from a shared counter and run each expert's ops on one thread: one
// parallel region for the whole loop instead of one per small op (each of
// which waits for every thread), and when a busy machine deschedules one
// thread the others take over its share instead of waiting for it.
template <typename Fn>
void for_each_expert(const std::vector<int64_t>& counts, bool cpu, Fn&& fn) {
  const int64_t E = static_cast<int64_t>(counts.size());
  std::vector<int64_t> first(static_cast<size_t>(E) + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), first.begin() + 1);
  std::vector<int64_t> order;
  for (int64_t e = 0; e < E; ++e)
    if (counts[e] > 0) order.push_back(e);
  const int64_t threads = cpu ? std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(order.size())) : 1;
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t e : order) fn(e, first[e], counts[e]);
    return;
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return counts[a] > counts[b]; });
  std::atomic<size_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (size_t i; (i = next.fetch_add(1)) < order.size();) fn(order[i], first[order[i]], counts[order[i]]);
  });
}

// Row t of the result: the rows slot_of[t, 0], slot_of[t, 1], ... (times
// their `weight` when defined, in fp32) added in that order, which is each
// token's experts ascending. One [T, D] gather per choice, not a [T*k, D]
// buffer; not index_add, whose CPU kernel is serial.
Tensor sum_token_slots(const Tensor& rows, const Tensor& weight, const Tensor& slot_of) {
  const auto per_choice = slot_of.t().contiguous();  // [k, T]
  Tensor out;
  for (int64_t j = 0; j < per_choice.size(0); ++j) {
    const auto idx = per_choice[j];
    auto part = rows.index_select(0, idx);
    if (weight.defined()) part = part * weight.index_select(0, idx).unsqueeze(1);
    out = j == 0 ? part : out.add_(part);
  }
  return out;
}

class GroupedExpertsFunction : public torch::autograd::Function<GroupedExpertsFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& slot_weight, at::TensorList up,
                        at::TensorList down, const Tensor& token, const Tensor& slot_of,
                        const std::vector<int64_t>& counts, GroupedExpertsTrace* trace) {
    const int64_t N = token.size(0), F = up[0].size(0), Din = x.size(1);
    auto pre = at::empty({N, F}, x.options());
    auto y = at::empty({N, Din}, x.options());
    auto act = trace ? at::empty({N, F}, x.options()) : Tensor();
    for_each_expert(counts, x.device().is_cpu(), [&](int64_t e, int64_t r0, int64_t n) {
      auto p = pre.narrow(0, r0, n);
      at::mm_out(p, x.index_select(0, token.narrow(0, r0, n)), up[e].t());
      // relu then square, as transformers' ReLUSquaredActivation.
      auto a = act.defined() ? act.narrow(0, r0, n) : at::empty_like(p);
      at::clamp_min_out(a, p, 0);  // = relu
      a.mul_(a);
      auto y_e = y.narrow(0, r0, n);
      at::mm_out(y_e, a, down[e].t());
    });
    // bf16 expert outputs times fp32 routing weights, summed in fp32 in
    // ascending expert order, as transformers' per-expert index_add_ into
    // zeros does.
    auto out = sum_token_slots(y, slot_weight, slot_of);
    if (trace) {
      trace->activations = act;
      trace->weighted = y * slot_weight.unsqueeze(1);
    }
    // The weights too, as saved variables: autograd then refuses a backward
    // after an in-place update of them.
    std::vector<Tensor> keep = {x, slot_weight, token, slot_of, pre, y};
    keep.insert(keep.end(), up.begin(), up.end());
    keep.insert(keep.end(), down.begin(), down.end());
    ctx->save_for_backward(keep);
    ctx->saved_data["counts"] = counts;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &slot_weight = saved[1], &token = saved[2], &slot_of = saved[3], &pre = saved[4],
                 &y = saved[5];
    const std::vector<int64_t> counts = ctx->saved_data["counts"].toIntVector();
    const auto E = static_cast<int64_t>(counts.size());
    variable_list grads(static_cast<size_t>(2 + 2 * E + 4));
    const Tensor& g = grad_outputs[0];
    if (!g.defined()) return grads;
    auto g_weight = at::empty_like(slot_weight);
    auto g_xs = at::empty({token.size(0), x.size(1)}, x.options());
    for_each_expert(counts, x.device().is_cpu(), [&](int64_t e, int64_t r0, int64_t n) {
      const Tensor& up = saved[static_cast<size_t>(6 + e)];
      const Tensor& down = saved[static_cast<size_t>(6 + E + e)];
      const auto tok = token.narrow(0, r0, n);
      // The product's two gradients, as autograd forms them: the routing
      // weight's in fp32, the expert output's cast to the experts' dtype.
      auto g_e = g.index_select(0, tok);
      auto gw_e = g_weight.narrow(0, r0, n);
      at::sum_out(gw_e, g_e * y.narrow(0, r0, n), 1);
      auto gy_e = g_e.mul_(slot_weight.narrow(0, r0, n).unsqueeze(1)).to(x.scalar_type());
      auto r = at::relu(pre.narrow(0, r0, n));
      grads[static_cast<size_t>(2 + E + e)] = at::mm(gy_e.t(), r * r);
      // d/d pre of relu(pre)^2 is 2 relu(pre): zero wherever relu is.
      auto g_pre = at::mm(gy_e, down).mul_(r.mul_(2));
      grads[static_cast<size_t>(2 + e)] = at::mm(g_pre.t(), x.index_select(0, tok));
      auto g_x_e = g_xs.narrow(0, r0, n);
      at::mm_out(g_x_e, g_pre, up);
    });
    grads[1] = g_weight;
    grads[0] = sum_token_slots(g_xs, Tensor(), slot_of);
    return grads;
  }
};

}  // namespace

torch::Tensor grouped_experts(const torch::Tensor& x, const ExpertSlots& slots, const torch::Tensor& slot_weight,
                              const std::vector<torch::Tensor>& up, const std::vector<torch::Tensor>& down,
                              GroupedExpertsTrace* trace) {
  TORCH_CHECK(up.size() == slots.counts.size() && down.size() == up.size(), "grouped_experts: one count per expert");
  return GroupedExpertsFunction::apply(x, slot_weight, at::TensorList(up), at::TensorList(down), slots.token,
                                       slots.slot_of, slots.counts, trace);
}

}  // namespace minipuzzle
