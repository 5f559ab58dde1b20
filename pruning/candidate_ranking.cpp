#include "minipuzzle/candidate_ranking.h"

#include <fmt/format.h>

#include <algorithm>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/host_to_device.h"
#include "minipuzzle/logit_comparison.h"
#include "minipuzzle/prune_model.h"
#include "minipuzzle/token_batches.h"
#include "minipuzzle/token_windows.h"

namespace minipuzzle {

void check_rank_options(const RankOptions& opt, const IndexedDataset& data) {
  if (opt.by != "agreement" && opt.by != "accuracy" && opt.by != "loss" && opt.by != "kl")
    throw InputError(fmt::format("--rank-by '{}': expected agreement, accuracy, loss or kl", opt.by));
  if (opt.seq_len <= 0 || opt.batch <= 0) throw InputError("--rank-seq-len and --rank-batch must be positive");
  if (data.total_tokens() < static_cast<uint64_t>(opt.seq_len) + 1)
    throw InputError(fmt::format("--rank-data {} has {} tokens, fewer than one window of {} + 1", data.prefix(),
                                 data.total_tokens(), opt.seq_len));
  // (tokens / seq_len = 0 would mean "every window" to sequential_windows.)
  if (opt.tokens < static_cast<uint64_t>(opt.seq_len))
    throw InputError(fmt::format("--rank-tokens {} is less than one window of {} tokens", opt.tokens, opt.seq_len));
}

namespace {

// The ranking windows in batches of opt.batch: inputs and next-token targets.
struct RankBatches {
  std::vector<torch::Tensor> inputs, targets;
};

RankBatches rank_batches(const IndexedDataset& data, const RankOptions& opt, int64_t vocab,
                         const torch::Device& device) {
  check_rank_options(opt, data);
  const auto starts = sequential_windows(data.total_tokens(), opt.seq_len, opt.tokens / opt.seq_len);
  RankBatches b;
  for (std::size_t i = 0; i < starts.size(); i += opt.batch) {
    std::vector<uint64_t> part(starts.begin() + i, starts.begin() + std::min(starts.size(), i + opt.batch));
    auto rows = to_device_async(gather_windows(data, part, opt.seq_len, vocab), device);
    b.inputs.push_back(rows.narrow(1, 0, opt.seq_len));
    b.targets.push_back(rows.narrow(1, 1, opt.seq_len));
  }
  return b;
}

void record(Candidate& c, const LogitComparison& sum) {
  const double n = static_cast<double>(sum.tokens);
  c.measured = {{"loss", sum.ce_other_sum / n},
                {"accuracy", sum.other_correct / n},
                {"agreement", sum.agree / n},
                {"kl", sum.kl_sum / n},
                {"parent_loss", sum.ce_reference_sum / n},
                {"tokens", n},
                {"proxy_rank", static_cast<double>(c.rank)}};
}

void sort_by_measure(SearchResult& result, const std::string& by) {
  std::stable_sort(result.candidates.begin(), result.candidates.end(), [&](const Candidate& a, const Candidate& b) {
    const double x = a.measured.at(by), y = b.measured.at(by);
    if (by == "loss" || by == "kl") return x < y;
    if (x != y) return x > y;
    return by == "agreement" && a.measured.at("accuracy") > b.measured.at("accuracy");
  });
  for (std::size_t i = 0; i < result.candidates.size(); ++i) {
    Candidate& c = result.candidates[i];
    c.rank = static_cast<int64_t>(i) + 1;
    c.why = fmt::format("rank {} by {} on {} tokens ({} {:.4f}; proxy rank {}); {}", c.rank, by,
                        static_cast<uint64_t>(c.measured.at("tokens")), by, c.measured.at(by),
                        static_cast<int64_t>(c.measured.at("proxy_rank")), c.why);
  }
}

}  // namespace

void rank_candidates_on_data(HybridLM& parent, const ImportanceScores& scores, SearchResult& result,
                             const IndexedDataset& data, const RankOptions& opt,
                             const std::function<void(int64_t, int64_t)>& on_candidate) {
  torch::NoGradGuard no_grad;
  parent->eval();
  const RankBatches batches = rank_batches(data, opt, parent->config().vocab_size, parent->device());
  std::vector<torch::Tensor> parent_hidden;
  for (const auto& x : batches.inputs) parent_hidden.push_back(parent->forward_hidden(x));

  const auto total = static_cast<int64_t>(result.candidates.size());
  for (int64_t k = 0; k < total; ++k) {
    Candidate& c = result.candidates[k];
    const PrunePlan plan = plan_from_scores(parent->config(), scores, c.config, c.kept_layers);
    HybridLM student = prune_model(parent, plan);
    student->eval();
    LogitComparison sum;
    for (size_t b = 0; b < batches.inputs.size(); ++b)
      sum += compare_logits(parent, parent_hidden[b], student, student->forward_hidden(batches.inputs[b]),
                            batches.targets[b]);
    record(c, sum);
    if (on_candidate) on_candidate(k + 1, total);
  }
  sort_by_measure(result, opt.by);
}

ResidencyOptions rank_residency_needs(const ModelConfig& parent, const RankOptions& opt, torch::ScalarType dtype) {
  ResidencyOptions o;
  const uint64_t tokens = opt.seq_len > 0 ? opt.tokens / static_cast<uint64_t>(opt.seq_len) * opt.seq_len : 0;
  o.extra_working_bytes = tokens * static_cast<uint64_t>(parent.hidden_size) * c10::elementSize(dtype) +
                          comparison_working_bytes(parent, dtype, opt.batch * opt.seq_len);
  return o;
}

uint64_t rank_candidates_on_data(const std::filesystem::path& dir, torch::ScalarType dtype, torch::Device device,
                                 const ResidencyPlan& residency, const ImportanceScores& scores, SearchResult& result,
                                 const IndexedDataset& data, const RankOptions& opt,
                                 const std::function<void(int64_t, int64_t)>& on_candidate) {
  if (!residency.streamed) {
    auto parent = load_model(dir, dtype, device);
    rank_candidates_on_data(parent, scores, result, data, opt, on_candidate);
    uint64_t bytes = 0;
    for (const auto& t : parent->parameters()) bytes += static_cast<uint64_t>(t.numel()) * t.element_size();
    return bytes;
  }
  torch::NoGradGuard no_grad;
  const ModelConfig parent_config = ModelConfig::load(dir);
  const int64_t vocab = parent_config.vocab_size;
  const RankBatches batches = rank_batches(data, opt, vocab, device);
  std::vector<torch::Tensor> parent_hidden(batches.inputs.size());
  uint64_t peak = 0;
  {
    ForwardModel parent(dir, dtype, device, residency);
    parent.forward_hidden(batches.inputs, [&](size_t b, const torch::Tensor& h) { parent_hidden[b] = h; });
    peak = parent.peak_bytes_held();
  }

  const auto total = static_cast<int64_t>(result.candidates.size());
  for (int64_t k = 0; k < total; ++k) {
    Candidate& c = result.candidates[k];
    const PrunePlan plan = plan_from_scores(parent_config, scores, c.config, c.kept_layers);
    ForwardModel student(dir, plan.target, prune_recipes(parent_config, plan), dtype, device, residency);
    const LogitComparison sum = compare_with_head_passes(
        nullptr, parent_hidden, student, batches.inputs, batches.targets,
        opt.head_pass_bytes ? opt.head_pass_bytes : comparison_head_pass_bytes(parent_config, dtype));
    record(c, sum);
    peak = std::max(peak, student.peak_bytes_held());
    if (on_candidate) on_candidate(k + 1, total);
  }
  sort_by_measure(result, opt.by);
  return peak;
}

}  // namespace minipuzzle
