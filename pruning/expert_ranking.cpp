#include "minipuzzle/expert_ranking.h"

#include <fmt/format.h>

#include "minipuzzle/errors.h"

namespace minipuzzle {

namespace {

const std::vector<float>& layer_vector(const std::vector<std::vector<float>>& v, int64_t layer) {
  static const std::vector<float> kNone;
  return layer >= 0 && layer < static_cast<int64_t>(v.size()) ? v[static_cast<size_t>(layer)] : kNone;
}

}  // namespace

ExpertRanking parse_expert_ranking(const std::string& text) {
  if (text == "output_norm") return ExpertRanking::OutputNorm;
  if (text == "frequency") return ExpertRanking::Frequency;
  if (text == "contribution") return ExpertRanking::Contribution;
  throw InputError(fmt::format("--expert-ranking {}: expected output_norm, frequency or contribution", text));
}

const char* expert_ranking_name(ExpertRanking ranking) {
  switch (ranking) {
    case ExpertRanking::OutputNorm: return "output_norm";
    case ExpertRanking::Frequency: return "frequency";
    case ExpertRanking::Contribution: return "contribution";
  }
  return "?";
}

std::vector<float> expert_ranking_scores(const ImportanceScores& s, int64_t layer, ExpertRanking ranking) {
  const auto& norm = layer_vector(s.moe_experts, layer);
  if (ranking == ExpertRanking::OutputNorm) return norm;
  const auto& freq = layer_vector(s.moe_expert_frequency, layer);
  if (norm.empty() && freq.empty()) return {};
  const std::string why = fmt::format("--expert-ranking {} (layer {})", expert_ranking_name(ranking), layer);
  if (freq.empty())
    throw InputError(why + ": the scores hold no routing frequency for the layer's experts (rescore with "
                           "`minipuzzle score`, or rank by output_norm)");
  if (ranking == ExpertRanking::Frequency) return freq;
  if (freq.size() != norm.size())
    throw InputError(fmt::format("{}: the scores hold {} expert frequencies and {} expert output norms", why,
                                 freq.size(), norm.size()));
  // n_e is a mean over the expert's own routed tokens; times its share of
  // the tokens it is the mean over all tokens (an unchosen expert: 0).
  std::vector<float> out(norm.size());
  for (size_t e = 0; e < norm.size(); ++e) out[e] = freq[e] * norm[e];
  return out;
}

}  // namespace minipuzzle
