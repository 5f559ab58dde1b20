#include "minipuzzle/candidate_ranking.h"

#include <fmt/format.h>

#include <algorithm>

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

void rank_candidates_on_data(HybridLM& parent, const ImportanceScores& scores, SearchResult& result,
                             const IndexedDataset& data, const RankOptions& opt,
                             const std::function<void(int64_t, int64_t)>& on_candidate) {
  check_rank_options(opt, data);
  const auto starts = sequential_windows(data.total_tokens(), opt.seq_len, opt.tokens / opt.seq_len);

  torch::NoGradGuard no_grad;
  parent->eval();
  const int64_t vocab = parent->config().vocab_size;
  struct Batch {
    torch::Tensor inputs, targets, parent_hidden;
  };
  std::vector<Batch> batches;
  for (std::size_t i = 0; i < starts.size(); i += opt.batch) {
    std::vector<uint64_t> part(starts.begin() + i, starts.begin() + std::min(starts.size(), i + opt.batch));
    auto rows = to_device_async(gather_windows(data, part, opt.seq_len, vocab), parent->device());
    Batch b{rows.narrow(1, 0, opt.seq_len), rows.narrow(1, 1, opt.seq_len), {}};
    b.parent_hidden = parent->forward_hidden(b.inputs);
    batches.push_back(std::move(b));
  }

  const auto total = static_cast<int64_t>(result.candidates.size());
  for (int64_t k = 0; k < total; ++k) {
    Candidate& c = result.candidates[k];
    const PrunePlan plan = plan_from_scores(parent->config(), scores, c.config, c.kept_layers);
    HybridLM student = prune_model(parent, plan);
    student->eval();
    LogitComparison sum;
    for (const Batch& b : batches)
      sum += compare_logits(parent, b.parent_hidden, student, student->forward_hidden(b.inputs), b.targets);
    const double n = static_cast<double>(sum.tokens);
    c.measured = {{"loss", sum.ce_other_sum / n},
                  {"accuracy", sum.other_correct / n},
                  {"agreement", sum.agree / n},
                  {"kl", sum.kl_sum / n},
                  {"parent_loss", sum.ce_reference_sum / n},
                  {"tokens", n},
                  {"proxy_rank", static_cast<double>(c.rank)}};
    if (on_candidate) on_candidate(k + 1, total);
  }

  const std::string by = opt.by;
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

}  // namespace minipuzzle
