// minipuzzle prune DIR [--scores SCORES_DIR] (--candidate FILE[#RANK] | --set key=value ...) --out OUT
//                  [--dtype fp32|bf16|fp16] [--expert-ranking output_norm|frequency|contribution]
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iostream>

#include "cli_common.h"
#include "commands.h"
#include "minipuzzle/candidates_json.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/expert_ranking.h"
#include "minipuzzle/model_folder_files.h"
#include "minipuzzle/importance_scores.h"
#include "minipuzzle/prune_model.h"
#include "minipuzzle/prune_plan.h"
#include "minipuzzle/tensor_bridge.h"

namespace minipuzzle::cli {

namespace {

// "file.json#3" -> ("file.json", 3); no "#N" suffix -> rank 1.
std::pair<std::string, int64_t> split_candidate(const std::string& spec) {
  const auto hash = spec.rfind('#');
  if (hash == std::string::npos) return {spec, 1};
  const std::string rank = spec.substr(hash + 1);
  if (rank.empty() || rank.size() > 9 || rank.find_first_not_of("0123456789") != std::string::npos ||
      std::stoll(rank) < 1)
    throw InputError("--candidate " + spec + ": expected FILE or FILE#RANK with RANK >= 1");
  return {spec.substr(0, hash), std::stoll(rank)};
}

// The dtype the parent's weights are stored in (lm_head.weight), when it is
// one we write; else fp32.
torch::ScalarType stored_dtype(const std::string& dir) {
  CheckpointFiles files = CheckpointFiles::open(dir);
  const auto* e = files.find("lm_head.weight");
  if (!e) return torch::kFloat32;
  switch (e->info->dtype) {
    case DType::BF16: return torch::kBFloat16;
    case DType::F16: return torch::kFloat16;
    default: return torch::kFloat32;
  }
}

const char* dtype_label(torch::ScalarType t) {
  return t == torch::kBFloat16 ? "bf16" : t == torch::kFloat16 ? "fp16" : "fp32";
}

}  // namespace

int cmd_prune(const Args& args) {
  const std::string usage =
      "minipuzzle prune DIR [--scores SCORES_DIR] (--candidate candidates.json[#RANK] | --set key=value ...) "
      "--out OUT [--dtype fp32|bf16|fp16] [--expert-ranking output_norm|frequency|contribution]";
  po::options_description opts("options");
  opts.add_options()
      ("dir", po::value<std::string>(), "parent checkpoint directory")
      ("scores", po::value<std::string>(),
       "importance scores of DIR (from minipuzzle score); needed for every axis that is narrowed and for keep_*")
      ("candidate", po::value<std::string>(),
       "prune to a search candidate: candidates.json#RANK (RANK 1 = best, the default)")
      ("set", po::value<std::vector<std::string>>()->multitoken()->composing(),
       "prune by hand, key=value (repeatable): hidden_size, intermediate_size, num_attention_heads, "
       "mamba_num_heads, mamba_head_dim, n_routed_experts, moe_intermediate_size, "
       "moe_shared_expert_intermediate_size, drop_layers=I,J,..., keep_mamba/keep_attention/keep_mlp/keep_moe=N")
      ("out", po::value<std::string>(), "output checkpoint directory (must not exist, or be empty)")
      ("dtype", po::value<std::string>(), "weight dtype of the output: fp32 | bf16 | fp16 (default: the parent's)")
      ("expert-ranking", po::value<std::string>(),
       "which routed experts an MoE layer keeps when n_routed_experts shrinks: contribution (routing frequency x "
       "weighted-output norm per routed token, the default) | frequency | output_norm (ModelOpt's per-token norm)");
  po::positional_options_description pos;
  pos.add("dir", 1);
  po::variables_map vm;
  if (!parse_args(usage, args, opts, pos, vm)) return 0;
  require(vm, "dir", usage);
  require(vm, "out", usage);
  if (vm.count("candidate") == vm.count("set"))
    throw InputError("give either --candidate FILE[#RANK] or --set key=value (not both, not neither); usage: " + usage);
  const ExpertRanking expert_ranking = vm.count("expert-ranking")
                                           ? parse_expert_ranking(vm["expert-ranking"].as<std::string>())
                                           : kDefaultExpertRanking;
  const std::string dir = vm["dir"].as<std::string>();
  const std::string out = vm["out"].as<std::string>();
  std::error_code ec;
  if (std::filesystem::exists(out, ec) && !std::filesystem::is_empty(out, ec))
    throw InputError(out + " already exists and is not empty; choose a new output directory");

  const ModelConfig parent_config = ModelConfig::load(dir);
  check_model_folder_files(dir);  // a broken tokenizer file is refused before anything is written
  if (parent_config.has_moe()) {
    // The streamed rewrite reads the Hub's per-expert tensors only.
    const CheckpointReader probe = CheckpointReader::open(dir);
    if (!probe.contains(fmt::format("backbone.layers.{}.mixer.experts.0.up_proj.weight", parent_config.pattern.find('E'))))
      throw InputError(dir + " holds fused expert tensors (transformers-5 layout): `minipuzzle export` it first "
                             "(that writes the Hub layout), then prune the export");
  }
  ImportanceScores scores;
  if (vm.count("scores")) scores = load_importance_for(vm["scores"].as<std::string>(), dir);

  PrunePlan plan;
  if (vm.count("candidate")) {
    const auto [file, rank] = split_candidate(vm["candidate"].as<std::string>());
    const SearchResult result = load_candidates(file);
    const Candidate* chosen = nullptr;
    for (const auto& c : result.candidates)
      if (c.rank == rank) chosen = &c;
    if (!chosen)
      throw InputError(fmt::format("{}: no candidate of rank {} (it holds {} candidates)", file, rank,
                                   result.candidates.size()));
    try {
      plan = plan_from_scores(parent_config, scores, chosen->config, chosen->kept_layers, expert_ranking);
    } catch (const InputError& e) {
      throw InputError(fmt::format("{} rank {} does not fit the model in {}: {} (a search of another model?)", file,
                                   rank, dir, e.what()));
    }
  } else {
    plan = plan_from_set(parent_config, scores, vm["set"].as<std::vector<std::string>>(), expert_ranking);
  }
  // Keys we do not interpret (token ids, ...) carry over from the parent.
  for (auto it = parent_config.extra.begin(); it != parent_config.extra.end(); ++it)
    if (!plan.target.extra.contains(it.key())) plan.target.extra[it.key()] = it.value();

  const torch::ScalarType dtype =
      vm.count("dtype") ? parse_model_dtype(vm["dtype"].as<std::string>()) : stored_dtype(dir);
  // Streamed from the parent's files, tensor by tensor (the parent is never
  // loaded); prune_recipes is the slicing prune_model applies in memory.
  const CheckpointReader reader = CheckpointReader::open(dir);
  // The tokenizer and generation files travel with the weights (same vocab).
  std::vector<std::string> copied;
  RewriteOptions options;
  options.add_files = [&](const std::filesystem::path& staging) { copied = copy_model_folder_files(dir, staging); };
  const int64_t after = rewrite_checkpoint(reader, parent_config, plan.target, prune_recipes(parent_config, plan),
                                           dtype, out, 5'000'000'000ULL, options);
  int64_t before = 0;
  for (const auto& r : identity_recipes(parent_config)) {
    int64_t n = 1;
    for (int64_t d : r.shape) n *= d;
    before += n;
  }
  std::cout << fmt::format("pruned {} -> {} parameters ({:.1f}%): {}\nwrote {} ({})\n", before, after,
                           100.0 * static_cast<double>(after) / static_cast<double>(before),
                           plan.summary(parent_config), out, dtype_label(dtype));
  if (!copied.empty()) std::cout << fmt::format("copied {} from {}\n", fmt::join(copied, ", "), dir);
  return 0;
}

}  // namespace minipuzzle::cli
