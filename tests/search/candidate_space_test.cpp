// Axes, bounds and the rules that keep a candidate prunable.
#include "minipuzzle/candidate_space.h"

#include <gtest/gtest.h>

#include "minipuzzle/errors.h"
#include "minipuzzle/search_importance.h"
#include "search_test_util.h"

namespace minipuzzle {
namespace {

using test::reference_config;
using test::tiny_config;

TEST(CandidateSpace, PaperGridOn56BIsLayerCountsTimesNineFfnWidths) {
  const ModelConfig c = reference_config("56b");
  const CandidateSpace s = CandidateSpace::paper_grid(c);
  s.validate(c);
  EXPECT_EQ(s.ffn.min, 24576);
  EXPECT_EQ(s.ffn.max, 32768);
  EXPECT_EQ(s.ffn.step, 1024);
  EXPECT_DOUBLE_EQ(s.grid_size(), 55.0 * 11 * 55 * 9);
}

TEST(CandidateSpace, FullSpaceRespectsDivisibility) {
  const ModelConfig c = reference_config("56b");
  const CandidateSpace s = CandidateSpace::full(c);
  s.validate(c);
  for (int64_t h : s.mamba_heads.values()) EXPECT_EQ(h % c.n_groups, 0);
  for (int64_t h : s.attention_heads.values()) EXPECT_EQ(h % c.num_key_value_heads, 0);
  EXPECT_EQ(s.hidden.step, 256);
}

TEST(CandidateSpace, MambaHeadsNotMultipleOfGroupsIsInputError) {
  const ModelConfig c = reference_config("56b");
  CandidateSpace s = CandidateSpace::depth_only(c);
  s.set_axis("mamba_heads=128:256:4", c);
  EXPECT_THROW(s.validate(c), InputError);
  s.set_axis("mamba_heads=100:256:4", c);
  EXPECT_THROW(s.validate(c), InputError);
  s.set_axis("mamba_heads=128:256", c);  // default step n_groups
  EXPECT_NO_THROW(s.validate(c));
}

TEST(CandidateSpace, AttentionHeadsNotMultipleOfKvHeadsIsInputError) {
  const ModelConfig c = reference_config("56b");
  CandidateSpace s = CandidateSpace::depth_only(c);
  s.set_axis("attention_heads=60:64:4", c);
  EXPECT_THROW(s.validate(c), InputError);
  s.set_axis("attention_heads=36", c);
  EXPECT_THROW(s.validate(c), InputError);
  s.set_axis("attention_heads=32:64", c);
  EXPECT_NO_THROW(s.validate(c));
}

TEST(CandidateSpace, RangesThatAreNotWholeStepsOrGrowTheModelAreInputErrors) {
  const ModelConfig c = reference_config("56b");
  CandidateSpace s = CandidateSpace::depth_only(c);
  s.set_axis("ffn=24000:32768:1024", c);
  EXPECT_THROW(s.validate(c), InputError);
  s = CandidateSpace::depth_only(c);
  s.set_axis("ffn=32768:40960:1024", c);
  EXPECT_THROW(s.validate(c), InputError);
  s = CandidateSpace::depth_only(c);
  s.set_axis("mlp_layers=0:60", c);
  EXPECT_THROW(s.validate(c), InputError);
  EXPECT_THROW(s.set_axis("depth=3", c), InputError);
  EXPECT_THROW(s.set_axis("ffn=a:b", c), InputError);
}

TEST(CandidateSpace, WidthReductionBoundDropsNarrowValues) {
  const ModelConfig c = reference_config("56b");
  CandidateSpace s = CandidateSpace::paper_grid(c);
  s.max_width_reduction = 0.1;  // keep >= 29492 of 32768
  EXPECT_EQ(s.allowed(s.ffn, c.intermediate_size), (std::vector<int64_t>{29696, 30720, 31744, 32768}));
  s.set_axis("ffn=24576:28672:1024", c);
  EXPECT_THROW(s.validate(c), InputError);
}

TEST(CandidateSpace, DepthBoundCountsAllTypes) {
  const ModelConfig c = reference_config("56b");
  CandidateSpace s = CandidateSpace::depth_only(c);
  s.max_depth_reduction = 0.2;
  EXPECT_EQ(s.min_layers(c), 95);  // ceil(118 * 0.8)
}

TEST(KeptFraction, GroupAwareKeepsTheBestPerGroup) {
  // Two groups of three: {3, 1, 2} and {10, 0, 4}; keep 2 heads = 1 per group.
  const std::vector<double> v = {3, 1, 2, 10, 0, 4};
  EXPECT_DOUBLE_EQ(kept_fraction(v, 6, 2, 2), (3.0 + 10.0) / 20);
  EXPECT_DOUBLE_EQ(kept_fraction(v, 6, 2, 1), (10.0 + 4.0) / 20);
  EXPECT_DOUBLE_EQ(kept_fraction({}, 6, 3), 0.5);
  EXPECT_DOUBLE_EQ(kept_fraction(v, 6, 6, 2), 1.0);
}

TEST(SearchImportance, ScoresFromAnotherModelAreInputError) {
  SearchImportance s = SearchImportance::synthetic(reference_config("8b"));
  EXPECT_THROW(s.validate(reference_config("56b")), InputError);
  EXPECT_NO_THROW(s.validate(reference_config("8b")));
}

TEST(SearchImportance, SyntheticIsDeterministic) {
  const ModelConfig c = tiny_config();
  EXPECT_EQ(SearchImportance::synthetic(c, 7).layer, SearchImportance::synthetic(c, 7).layer);
  EXPECT_NE(SearchImportance::synthetic(c, 7).layer, SearchImportance::synthetic(c, 8).layer);
}

}  // namespace
}  // namespace minipuzzle
