#include "rank_state_bytes.h"

namespace minipuzzle {

namespace {

double bytes_of(const std::vector<torch::Tensor>& tensors, bool grads) {
  double sum = 0;
  for (const auto& t : tensors) {
    const torch::Tensor& x = grads ? t.grad() : t;
    if (x.defined()) sum += static_cast<double>(x.nbytes());
  }
  return sum;
}

constexpr const char* kKinds[] = {"teacher_weights", "student_weights", "gradients", "master",
                                  "moments",         "buckets",         "gradients_peak", "gathered_blocks"};
constexpr std::size_t kNumKinds = sizeof(kKinds) / sizeof(kKinds[0]);

}  // namespace

nlohmann::json rank_state_bytes(HybridLM* teacher, HybridLM& student, const OptimizerBytes& opt,
                                int64_t bucket_bytes, DataParallel& dp, const HeldWeights& held) {
  const auto params = student->parameters();
  const double gradients = bytes_of(params, true) + static_cast<double>(opt.extra_gradients);
  const double teacher_weights = held.teacher >= 0                 ? static_cast<double>(held.teacher)
                                 : teacher && *teacher ? bytes_of((*teacher)->parameters(), false)
                                                       : 0.0;
  const double mine[kNumKinds] = {teacher_weights,
                                  held.student >= 0 ? static_cast<double>(held.student) : bytes_of(params, false),
                                  gradients,
                                  static_cast<double>(opt.master),
                                  static_cast<double>(opt.moments),
                                  static_cast<double>(bucket_bytes),
                                  opt.gradients_peak >= 0 ? static_cast<double>(opt.gradients_peak) : gradients,
                                  static_cast<double>(held.gathered)};
  // One slot per rank and kind, each rank filling its own: one sum gathers them.
  const auto world = static_cast<std::size_t>(dp.world_size());
  std::vector<double> all(world * kNumKinds, 0.0);
  for (std::size_t k = 0; k < kNumKinds; ++k) all[static_cast<std::size_t>(dp.rank()) * kNumKinds + k] = mine[k];
  dp.all_reduce_sum(all);
  nlohmann::json out = nlohmann::json::array();
  for (std::size_t r = 0; r < world; ++r) {
    nlohmann::json rank = {{"rank", r}};
    for (std::size_t k = 0; k < kNumKinds; ++k) rank[kKinds[k]] = static_cast<int64_t>(all[r * kNumKinds + k]);
    out.push_back(rank);
  }
  return out;
}

}  // namespace minipuzzle
