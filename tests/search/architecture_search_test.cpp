// The search: only feasible candidates, the paper's grid and its 47B point,
// exact agreement with the plain reference, ranking and bad input.
#include "minipuzzle/architecture_search.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>

#include "minipuzzle/candidates_json.h"
#include "minipuzzle/errors.h"
#include "search_test_util.h"

namespace minipuzzle {
namespace {

using test::paper_budget;
using test::paper_deployment;
using test::reference_config;
using test::tiny_config;

SearchOptions paper_options(int64_t top_k = 20) {
  SearchOptions o;
  o.deployment = paper_deployment();
  o.budget_bytes = paper_budget();
  o.top_k = top_k;
  return o;
}

// A small hybrid with every width axis open: fast vs reference on it.
ModelConfig small_hybrid() {
  ModelConfig c = tiny_config();
  c.pattern = "M-M*-M-M*-";
  c.hidden_size = 512;
  c.intermediate_size = 512;
  return c;
}

CandidateSpace small_space(const ModelConfig& c) {
  CandidateSpace s = CandidateSpace::depth_only(c);
  s.set_axis("ffn=128:512:128", c);
  s.set_axis("hidden=256:512:128", c);
  s.set_axis("mamba_heads=2:4:2", c);
  s.set_axis("mamba_head_dim=4:8:4", c);
  s.set_axis("attention_heads=2:4:2", c);
  return s;
}

SearchOptions small_options(const ModelConfig& c, int64_t top_k) {
  SearchOptions o;
  o.deployment.context = 64;
  o.budget_bytes = 0.6 * memory_breakdown(c, o.deployment).total;
  o.top_k = top_k;
  return o;
}

TEST(Search, PaperGridReturnsOnlyCandidatesWithinTheBudget) {
  const ModelConfig parent = reference_config("56b");
  const SearchResult r = search_architectures(parent, SearchImportance::synthetic(parent), CandidateSpace::paper_grid(parent),
                                              paper_options(50));
  EXPECT_GE(r.evaluated, 100000);
  EXPECT_GT(r.feasible, 0);
  ASSERT_EQ(r.candidates.size(), 50u);
  for (const Candidate& c : r.candidates) {
    EXPECT_LE(c.memory.total, paper_budget());
    EXPECT_DOUBLE_EQ(c.memory.total, memory_breakdown(c.config, paper_deployment()).total);
    EXPECT_EQ(c.params.total, count_parameters(c.config).total);
  }
}

TEST(Search, Published47BShapeIsAFeasibleMaximalPointOfThePaperGrid) {
  const ModelConfig parent = reference_config("56b");
  CandidateSpace s = CandidateSpace::paper_grid(parent);
  s.set_axis("mamba_layers=45", parent);
  s.set_axis("attention_layers=5", parent);
  s.set_axis("mlp_layers=48", parent);
  s.set_axis("ffn=30720", parent);
  const SearchResult r = search_architectures(parent, SearchImportance::synthetic(parent), s, paper_options());
  ASSERT_EQ(r.feasible, 1);
  const Candidate& c = r.candidates.at(0);
  EXPECT_EQ(c.params.total, test::transformers_counts("nemotron-h-47b").total);
  EXPECT_NEAR(c.memory.total / kGiB, 31.69, 0.01);
  EXPECT_EQ(c.dropped_layers.size(), 20u);

  // No one step up on any axis of the grid fits: the 47B leaves no room.
  for (const char* up : {"mamba_layers=46", "attention_layers=6", "mlp_layers=49", "ffn=31744"}) {
    CandidateSpace bigger = s;
    bigger.set_axis(up, parent);
    EXPECT_THROW(search_architectures(parent, SearchImportance::synthetic(parent), bigger, paper_options()), InputError)
        << up;
  }
}

TEST(Search, MaximalOnlyKeepsThe47BShape) {
  const ModelConfig parent = reference_config("56b");
  CandidateSpace s = CandidateSpace::paper_grid(parent);
  s.maximal_only = true;
  SearchOptions o = paper_options(1000000);
  const SearchResult r = search_architectures(parent, SearchImportance::synthetic(parent), s, o);
  const bool found = std::any_of(r.candidates.begin(), r.candidates.end(), [](const Candidate& c) {
    return c.config.count(LayerType::Mamba) == 45 && c.config.count(LayerType::Attention) == 5 &&
           c.config.count(LayerType::Mlp) == 48 && c.config.intermediate_size == 30720;
  });
  EXPECT_TRUE(found);
  EXPECT_EQ(static_cast<int64_t>(r.candidates.size()), r.feasible);
}

TEST(Search, InfeasibleBudgetStatesTheSmallestReachableMemory) {
  const ModelConfig parent = reference_config("56b");
  SearchOptions o = paper_options();
  o.budget_bytes = 1.0 * kGiB;
  try {
    search_architectures(parent, SearchImportance::synthetic(parent), CandidateSpace::paper_grid(parent), o);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    // The smallest point: embeddings, lm_head, norm_f and one MLP layer at
    // FFN 24576 (transformers' count of that config), at 4 bits; no KV
    // cache or state without attention or Mamba layers.
    const double bytes = test::transformers_counts("nemotron-h-56b-one-mlp-ffn24576").total / 2.0;
    char want[96];
    std::snprintf(want, sizeof want, "smallest memory reachable in the allowed space is %.2f GiB", bytes / kGiB);
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what() << "\nexpected: " << want;
  }
}

TEST(Search, BadOptionsAreInputErrors) {
  const ModelConfig parent = small_hybrid();
  SearchOptions o = small_options(parent, 5);
  o.top_k = 0;
  EXPECT_THROW(search_architectures(parent, SearchImportance::uniform(parent), small_space(parent), o), InputError);
  o.top_k = 5;
  o.budget_bytes = -1;
  EXPECT_THROW(search_architectures(parent, SearchImportance::uniform(parent), small_space(parent), o), InputError);
  CandidateSpace bad = small_space(parent);
  bad.set_axis("mamba_heads=1:4:1", parent);
  EXPECT_THROW(search_architectures(parent, SearchImportance::uniform(parent), bad, small_options(parent, 5)),
               InputError);
}

TEST(Search, TopKIsOrderedByProxy) {
  const ModelConfig parent = reference_config("56b");
  const SearchResult r = search_architectures(parent, SearchImportance::synthetic(parent, 3),
                                              CandidateSpace::paper_grid(parent), paper_options(30));
  for (size_t i = 0; i < r.candidates.size(); ++i) {
    EXPECT_EQ(r.candidates[i].rank, static_cast<int64_t>(i) + 1);
    if (i > 0) {
      EXPECT_GE(r.candidates[i - 1].proxy_score, r.candidates[i].proxy_score);
    }
    EXPECT_FALSE(r.candidates[i].why.empty());
  }
}

TEST(Search, IsDeterministic) {
  const ModelConfig parent = reference_config("56b");
  auto run = [&] {
    return candidates_to_json(search_architectures(parent, SearchImportance::synthetic(parent),
                                                   CandidateSpace::paper_grid(parent), paper_options(10)));
  };
  EXPECT_EQ(run().dump(), run().dump());
}

TEST(Search, FastSearchEqualsTheReferenceOnEveryAxis) {
  const ModelConfig parent = small_hybrid();
  const SearchImportance imp = SearchImportance::synthetic(parent, 11);
  for (bool maximal : {false, true}) {
    CandidateSpace s = small_space(parent);
    s.maximal_only = maximal;
    s.max_depth_reduction = 0.7;
    const SearchOptions o = small_options(parent, 25);
    const SearchResult fast = search_architectures(parent, imp, s, o);
    const SearchResult ref = search_architectures_reference(parent, imp, s, o);
    EXPECT_GT(fast.feasible, 25);
    EXPECT_EQ(fast.evaluated, ref.evaluated);
    EXPECT_EQ(fast.feasible, ref.feasible);
    EXPECT_EQ(candidates_to_json(fast).dump(), candidates_to_json(ref).dump());
  }
}

// The export formats keep embeddings and norms bf16 and pack only the
// widths their group divides: the fast search's per-layer costs must still
// equal the memory model's bytes for every candidate.
TEST(Search, FastSearchEqualsTheReferenceAtTheExportFormats) {
  const ModelConfig parent = small_hybrid();
  const SearchImportance imp = SearchImportance::synthetic(parent, 5);
  for (Precision w : {Precision::Fp8, Precision::Nvfp4, Precision::Int4}) {
    CandidateSpace s = small_space(parent);
    s.max_depth_reduction = 0.7;
    SearchOptions o = small_options(parent, 25);
    o.deployment.weights = w;
    o.budget_bytes = 0.6 * memory_breakdown(parent, o.deployment).total;
    const SearchResult fast = search_architectures(parent, imp, s, o);
    const SearchResult ref = search_architectures_reference(parent, imp, s, o);
    EXPECT_GT(fast.feasible, 5) << precision_name(w);
    EXPECT_EQ(fast.feasible, ref.feasible) << precision_name(w);
    EXPECT_EQ(candidates_to_json(fast).dump(), candidates_to_json(ref).dump()) << precision_name(w);
  }
}

TEST(Search, KeepsTheTopScoringLayersOfEachType) {
  const ModelConfig parent = small_hybrid();
  SearchImportance imp = SearchImportance::uniform(parent);
  imp.layer = {5, 1, 2, 9, 7, 3, 4, 6, 8, 0};  // pattern M-M*-M-M*-
  CandidateSpace s = CandidateSpace::depth_only(parent);
  s.set_axis("mamba_layers=2", parent);
  s.set_axis("attention_layers=1", parent);
  s.set_axis("mlp_layers=3", parent);
  SearchOptions o = small_options(parent, 1);
  o.budget_bytes = memory_breakdown(parent, o.deployment).total;
  const SearchResult r = search_architectures(parent, imp, s, o);
  ASSERT_EQ(r.candidates.size(), 1u);
  // Mamba 0,2,5,7 -> 7 (6), 0 (5); attention 3,8 -> 3 (9); MLP 1,4,6,9 -> 4, 6, 1.
  EXPECT_EQ(r.candidates[0].kept_layers, (std::vector<int64_t>{0, 1, 3, 4, 6, 7}));
  EXPECT_EQ(r.candidates[0].config.pattern, "M-*--M");
  EXPECT_EQ(layer_keep_order(parent, imp, LayerType::Mlp), (std::vector<int64_t>{4, 6, 1, 9}));
  EXPECT_NEAR(r.candidates[0].proxy_score, (6 + 5 + 9 + 7 + 4 + 1) / 45.0, 1e-12);
}

TEST(Search, TheParentItselfKeepsAllImportance) {
  const ModelConfig parent = small_hybrid();
  SearchOptions o = small_options(parent, 1);
  o.budget_bytes = memory_breakdown(parent, o.deployment).total;
  const SearchResult r = search_architectures(parent, SearchImportance::synthetic(parent), small_space(parent), o);
  EXPECT_NEAR(r.candidates.at(0).proxy_score, 1.0, 1e-12);
  EXPECT_TRUE(r.candidates[0].config == parent);
  EXPECT_TRUE(r.candidates[0].dropped_layers.empty());
}

}  // namespace
}  // namespace minipuzzle

// ---------------------------------------------------------------------------
// MoE (E) layers: expert count, expert width and shared width axes, every
// expert resident in memory, the active-parameter limit
// ---------------------------------------------------------------------------

namespace minipuzzle {
namespace {

// 12 routed experts in 3 router groups (2 groups per token), 2 per token.
ModelConfig small_moe() {
  ModelConfig c = small_hybrid();
  c.pattern = "ME*EM-E";
  c.hidden_size = 256;
  c.n_routed_experts = 12;
  c.n_group = 3;
  c.topk_group = 2;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 64;
  c.moe_shared_expert_intermediate_size = 96;
  c.validate("small moe");
  return c;
}

CandidateSpace small_moe_space(const ModelConfig& c) {
  CandidateSpace s = CandidateSpace::depth_only(c);
  s.set_axis("hidden=128:256:128", c);
  s.set_axis("moe_experts=6:12:3", c);
  s.set_axis("moe_expert_ffn=32:64:16", c);
  s.set_axis("moe_shared_ffn=48:96:48", c);
  return s;
}

TEST(MoeSearch, FastSearchEqualsTheReferenceWithAndWithoutAnActiveLimit) {
  const ModelConfig parent = small_moe();
  const SearchImportance imp = SearchImportance::synthetic(parent, 5);
  ASSERT_EQ(imp.moe_experts.size(), 12u);
  for (double limit : {0.0, 0.5 * static_cast<double>(count_parameters(parent).active)})
    for (bool maximal : {false, true}) {
      CandidateSpace s = small_moe_space(parent);
      s.maximal_only = maximal;
      SearchOptions o = small_options(parent, 25);
      o.max_active_params = limit;
      const SearchResult fast = search_architectures(parent, imp, s, o);
      const SearchResult ref = search_architectures_reference(parent, imp, s, o);
      EXPECT_GT(fast.feasible, 10);
      EXPECT_EQ(fast.evaluated, ref.evaluated);
      EXPECT_EQ(fast.feasible, ref.feasible);
      EXPECT_EQ(candidates_to_json(fast).dump(), candidates_to_json(ref).dump());
      bool narrowed = false;
      for (const Candidate& c : fast.candidates) {
        EXPECT_LE(c.memory.total, o.budget_bytes);
        if (limit > 0) {
          EXPECT_LE(static_cast<double>(c.params.active), limit);
        }
        // Memory holds every routed expert; the active count only k of them.
        EXPECT_EQ(c.memory.weights, static_cast<double>(count_parameters(c.config).total) * 2);
        EXPECT_EQ(c.config.n_routed_experts % 3, 0);
        narrowed |= c.config.n_routed_experts < 12 || c.config.moe_intermediate_size < 64;
      }
      EXPECT_TRUE(narrowed);
    }
}

TEST(MoeSearch, AnUnreachableActiveLimitNamesTheSmallestReachableCount) {
  const ModelConfig parent = small_moe();
  const SearchImportance imp = SearchImportance::synthetic(parent, 5);
  SearchOptions o = small_options(parent, 5);
  o.budget_bytes = 10 * memory_breakdown(parent, o.deployment).total;
  const SearchResult unlimited = search_architectures(parent, imp, small_moe_space(parent), o);
  const double smallest = unlimited.min_active_params;
  // The smallest: one Mamba layer (the cheapest layer here) at hidden 128.
  ModelConfig one = parent;
  one.pattern = "M";
  one.hidden_size = 128;
  EXPECT_EQ(smallest, static_cast<double>(count_parameters(one).active));
  o.max_active_params = smallest;
  const SearchResult at = search_architectures(parent, imp, small_moe_space(parent), o);
  EXPECT_EQ(static_cast<double>(at.candidates[0].params.active), smallest);
  o.max_active_params = smallest - 1;
  try {
    search_architectures(parent, imp, small_moe_space(parent), o);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    const std::string want = "smallest active count reachable in the allowed space is " +
                             std::to_string(static_cast<int64_t>(smallest));
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
}

TEST(MoeSearch, TheProxyUsesTheExpertImportances) {
  const ModelConfig parent = small_moe();
  CandidateSpace s = CandidateSpace::depth_only(parent);
  for (const char* a : {"mamba_layers=2", "attention_layers=1", "mlp_layers=1", "moe_layers=3", "moe_experts=6"})
    s.set_axis(a, parent);
  SearchOptions o = small_options(parent, 1);
  o.budget_bytes = memory_breakdown(parent, o.deployment).total;
  // The routed experts' share of an E layer's active weights.
  const double routed = 2.0 * 2 * 256 * 64, shared = 2.0 * 256 * 96, r = routed / (routed + shared);
  SearchImportance imp = SearchImportance::uniform(parent);
  // Two of each group's four experts hold all the importance: keeping six
  // (two per group) keeps all of it.
  imp.moe_experts = {5, 0, 5, 0, 0, 5, 0, 5, 5, 5, 0, 0};
  EXPECT_NEAR(search_architectures(parent, imp, s, o).candidates[0].width_factor_moe, 1.0, 1e-12);
  // Uniform experts: six of twelve keep half of the routed part.
  imp.moe_experts.assign(12, 1.0);
  const Candidate c = search_architectures(parent, imp, s, o).candidates[0];
  EXPECT_NEAR(c.width_factor_moe, r * 0.5 + (1 - r), 1e-12);
  EXPECT_NEAR(c.proxy_score, (7 - 3 + 3 * (r * 0.5 + (1 - r))) / 7.0, 1e-12);
  EXPECT_NE(c.why.find("routed experts 12->6"), std::string::npos) << c.why;
}

TEST(MoeSearch, ExpertAxesTheRouterCannotUseAreInputErrors) {
  const ModelConfig parent = small_moe();
  auto message = [&](const char* axis) {
    CandidateSpace s = CandidateSpace::depth_only(parent);
    try {
      s.set_axis(axis, parent);
      s.validate(parent);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("moe_experts=4:12:4").find("multiples of n_group"), std::string::npos);
  EXPECT_NE(message("moe_experts=3:12:3").find("fewest the router can use"), std::string::npos);
  EXPECT_NE(message("moe_experts=15").find("above the parent"), std::string::npos);
  EXPECT_EQ(message("moe_experts=6:12:3"), "no error");
  EXPECT_EQ(min_moe_experts(parent), 6);
  // The full space starts the expert axis where the router still works.
  const CandidateSpace full = CandidateSpace::full(parent);
  EXPECT_EQ(full.moe_experts.min, 6);
  EXPECT_EQ(full.moe_experts.max, 12);
  // A dense parent has no MoE axes to open.
  const ModelConfig dense = small_hybrid();
  CandidateSpace d = CandidateSpace::depth_only(dense);
  d.set_axis("moe_experts=4", dense);
  EXPECT_THROW(d.validate(dense), InputError);
}

}  // namespace
}  // namespace minipuzzle
