// The distillation memory planner: its formulas on a hand-checkable config,
// the per-parameter identities of each shard level, how it moves with the
// world size, the smallest world size and shard level, refusals, and the
// published configs' table in the README.
#include "minipuzzle/training_memory_plan.h"

#include <gtest/gtest.h>

#include <numeric>

#include "minipuzzle/errors.h"
#include "minipuzzle/training_plan_report.h"
#include "../model/tiny_config.h"
#include "search_test_util.h"

namespace minipuzzle {
namespace {

using test::tiny_config;

ModelConfig published(const std::string& name) {
  return ModelConfig::load(std::string(MINIPUZZLE_SOURCE_DIR) + "/tests/search/configs/" + name + ".config.json");
}

// A teacher -> student job on the tiny config: the student drops the MLP.
TrainingJob tiny_job(Precision dtype = Precision::Bf16) {
  TrainingJob j;
  j.teacher = tiny_config();
  j.student = tiny_config();
  j.student.pattern = "M*M";
  j.seq_len = 128;
  j.micro_batch = 1;
  j.dtype = dtype;
  return j;
}

double params(const ModelConfig& c) { return static_cast<double>(count_parameters(c).total); }

TEST(TrainingPlan, ParameterOrderCoversEveryParameterOnce) {
  for (const ModelConfig& c : {tiny_config(), published("nemotron-h-56b"), published("nemotron-nano-12b-v2")}) {
    const auto n = parameter_numels_in_order(c);
    EXPECT_EQ(std::accumulate(n.begin(), n.end(), int64_t{0}), count_parameters(c).total);
  }
  // tiny "M*-M": embeddings, then per block its norm and the mixer's own
  // parameters (A_log, D, dt_bias) before in_proj, conv1d, norm, out_proj.
  const auto n = parameter_numels_in_order(tiny_config());
  const std::vector<int64_t> head = {6400, 64, 4, 4, 4, 64 * 132, 96 * 4, 96, 32, 64 * 32, 64, 4096, 2048, 2048, 4096};
  ASSERT_GE(n.size(), head.size());
  EXPECT_EQ(std::vector<int64_t>(n.begin(), n.begin() + head.size()), head);
  EXPECT_EQ(n.back(), 6400);  // lm_head, after norm_f
}

TEST(TrainingPlan, BucketsAreCutAsMakeBucketsCutsThem) {
  // 40 KB buckets over the tiny model's fp32 gradients: the 25,600-byte
  // embedding and the 256-byte norm fit one; in_proj (33,792) opens the next.
  const auto b = gradient_bucket_bytes(tiny_config(), 40000);
  EXPECT_DOUBLE_EQ(b.front(), 4.0 * (6400 + 64 + 12));
  EXPECT_DOUBLE_EQ(std::accumulate(b.begin(), b.end(), 0.0), 4.0 * params(tiny_config()));
  for (double x : b) EXPECT_LE(x, 40000.0);
  // A tensor larger than a bucket gets one of its own.
  const auto one = gradient_bucket_bytes(tiny_config(), 1);
  EXPECT_EQ(one.size(), parameter_numels_in_order(tiny_config()).size());
}

TEST(TrainingPlan, NoShardingCosts2TPlus16SInBf16) {
  const TrainingJob j = tiny_job(Precision::Bf16);
  const double S = params(j.student), T = params(*j.teacher);
  const RankBytes b = plan_training_memory(j, 2, ShardLevel::None).bytes;
  EXPECT_DOUBLE_EQ(b.teacher_weights, 2 * T);
  EXPECT_DOUBLE_EQ(b.student_weights, 2 * S);
  EXPECT_DOUBLE_EQ(b.gradients, 2 * S);
  EXPECT_DOUBLE_EQ(b.master, 4 * S);
  EXPECT_DOUBLE_EQ(b.moments, 8 * S);
  EXPECT_DOUBLE_EQ(b.persistent(), 2 * T + 16 * S);
  EXPECT_EQ(b.gathered_blocks, 0);
}

TEST(TrainingPlan, Fp32WeightsAreTheirOwnMasterSoStill16S) {
  const TrainingJob j = tiny_job(Precision::Fp32);
  const double S = params(j.student), T = params(*j.teacher);
  const RankBytes b = plan_training_memory(j, 1, ShardLevel::None).bytes;
  EXPECT_DOUBLE_EQ(b.master, 0);
  EXPECT_DOUBLE_EQ(b.persistent(), 4 * T + 16 * S);
}

TEST(TrainingPlan, OptimizerShardingIs2TPlus4SPlus12SOverN) {
  const TrainingJob j = tiny_job();
  const double S = params(j.student), T = params(*j.teacher);
  for (int n : {2, 3, 8}) {
    const RankBytes b = plan_training_memory(j, n, ShardLevel::Optimizer).bytes;
    EXPECT_DOUBLE_EQ(b.persistent(), 2 * T + 4 * S + 12 * S / n) << n;
  }
}

TEST(TrainingPlan, GradientShardingAlsoSplitsTheGradients) {
  const TrainingJob j = tiny_job();
  const double S = params(j.student), T = params(*j.teacher);
  const RankBytes b = plan_training_memory(j, 4, ShardLevel::Gradients).bytes;
  EXPECT_DOUBLE_EQ(b.persistent(), 2 * T + 2 * S + 14 * S / 4);
}

TEST(TrainingPlan, ParameterShardingIs2TPlus16SOverNPlusTwoGatheredUnitsOfEach) {
  const TrainingJob j = tiny_job();
  const double S = params(j.student), T = params(*j.teacher);
  const RankBytes b = plan_training_memory(j, 4, ShardLevel::Parameters).bytes;
  // Neighbouring units are gathered together (one runs while the next
  // arrives): the student's largest pair is a Mamba block and the attention
  // block (11,084 + 12,352 parameters), the teacher's the attention and MLP
  // blocks (12,352 + 16,448 = 28,800); while the student runs, the teacher's
  // head (6,464) waits for the loss: 6,464 + 23,436 = 29,900 is the most, bf16.
  EXPECT_DOUBLE_EQ(b.gathered_blocks, 2 * (6464.0 + 11084 + 12352));
  EXPECT_DOUBLE_EQ(b.persistent() - b.gathered_blocks, (2 * T + 16 * S) / 4);
  // Buckets larger than any unit: each unit's gradient reduces as one fp32
  // bucket, two neighbouring units in flight.
  EXPECT_DOUBLE_EQ(b.buckets, 4 * (11084.0 + 12352));
  // Smaller buckets cut each unit: two full buckets in flight.
  TrainingJob small = j;
  small.bucket_bytes = 4096;
  EXPECT_DOUBLE_EQ(plan_training_memory(small, 4, ShardLevel::Parameters).bytes.buckets, 2 * 4096.0);
  // 10,000 elements: backward reduces the head (6,464) and then the last
  // block's first bucket (10,000 of its 11,084) next to it.
  small.bucket_bytes = 40000;
  EXPECT_DOUBLE_EQ(plan_training_memory(small, 4, ShardLevel::Parameters).bytes.buckets, 4 * (10000.0 + 6464));
  // One rank gathers the same way (a copy of its whole range).
  EXPECT_DOUBLE_EQ(plan_training_memory(j, 1, ShardLevel::Parameters).bytes.gathered_blocks, b.gathered_blocks);
  const auto units = parameter_unit_numels(j.student);
  EXPECT_EQ(units, (std::vector<int64_t>{6400, 11084, 12352, 11084, 6464}));
  EXPECT_EQ(std::accumulate(units.begin(), units.end(), int64_t{0}), count_parameters(j.student).total);
}

TEST(TrainingPlan, TheAllReduceHoldsAnFp32CopyOfEveryGradient) {
  TrainingJob j = tiny_job(Precision::Fp32);
  const double S = params(j.student);
  EXPECT_EQ(plan_training_memory(j, 1, ShardLevel::None).bytes.buckets, 0);  // no collectives
  EXPECT_DOUBLE_EQ(plan_training_memory(j, 2, ShardLevel::None).bytes.buckets, 4 * S);
  EXPECT_EQ(plan_training_memory(j, 2, ShardLevel::None).bytes.bucket_scratch, 0);
  j.dtype = Precision::Bf16;  // plus the last bucket's per-tensor fp32 copies while it is concatenated
  const TrainingMemoryPlan bf16 = plan_training_memory(j, 2, ShardLevel::None);
  EXPECT_DOUBLE_EQ(bf16.bytes.buckets, 4 * S);
  EXPECT_DOUBLE_EQ(bf16.bytes.bucket_scratch, bf16.largest_bucket);
  j.overlap_all_reduce = false;  // one bucket at a time
  EXPECT_DOUBLE_EQ(plan_training_memory(j, 2, ShardLevel::None).bytes.buckets, bf16.largest_bucket);
  // The sharded levels reduce-scatter bucket by bucket: two in flight.
  for (ShardLevel l : {ShardLevel::Optimizer, ShardLevel::Gradients})
    EXPECT_DOUBLE_EQ(plan_training_memory(j, 2, l).bytes.buckets, 2 * bf16.largest_bucket) << shard_level_name(l);
}

TEST(TrainingPlan, ActivationFormulasByHandOnTheTinyConfig) {
  // D = 64, e = 4 (fp32), n = 128 tokens, one sequence. The pre-norm keeps
  // the fp32 input, the normalised value and rsqrt, and its output is kept
  // by the mixer's first linear: 64*4 + 64*4 + 4 + 64*4 = 772 per token.
  ActivationSetting s;
  s.seq_len = 128;
  s.element_bytes = 4;
  s.ops = TrainingOps::Reference;
  const ModelConfig c = tiny_config();
  const double n = 128;
  EXPECT_DOUBLE_EQ(block_saved_bytes(c, LayerType::Mlp, s), n * (772 + 2 * 128 * 4));
  // q and the kv heads repeated to the 4 query heads: 4 x 64 values, + lse.
  EXPECT_DOUBLE_EQ(block_saved_bytes(c, LayerType::Attention, s), n * (772 + 4 * 64 * 4 + 4 * 4));
  EXPECT_DOUBLE_EQ(block_input_bytes(c, s), n * 64 * 4);
  // Mamba (H 4, P 8, d_inner 32, G 2, N 16, conv_dim 96, in_proj 132, T 128):
  // in_proj output 132, conv output (128 + 3 columns) and SiLU output of 96,
  // softplus and clamp inputs 2 x 4, the scan (decay and M 2 x 4 x 128,
  // C.B 2 x 128, four B/C copies 4 x 32, four [d_inner] 4 x 32, two [H]
  // 2 x 4; per chunk two states 2 x 4*8*16 and the chunk decay 4), the gated
  // norm's four fp32 [d_inner] and rstd (2), out_proj's input 32; all x 4 B.
  const double per_token = 772 + 4 * (132 + 96 + 96 + 8 + (1024 + 256 + 128 + 128 + 8) + 4 * 32 + 2 + 32);
  const double per_sequence = 4 * (3 * 96 + 2 * 512 + 4);
  EXPECT_DOUBLE_EQ(block_saved_bytes(c, LayerType::Mamba, s), n * per_token + per_sequence);
  EXPECT_DOUBLE_EQ(final_norm_saved_bytes(c, s), n * (64 * 4 + 64 * 4 + 4));
}

// The search tests' tiny config with tiny_moe_config's E layers.
ModelConfig tiny_moe(const std::string& pattern, int64_t latent = 0) {
  return testing::tiny_moe_config(pattern, latent, tiny_config());
}

TEST(TrainingPlan, MoeParametersInOrderWithEveryExpert) {
  for (int64_t latent : {0, 24}) {
    const ModelConfig c = tiny_moe("M*E-E", latent);
    const auto n = parameter_numels_in_order(c);
    // Every expert counted (all resident), the correction bias not (no gradient).
    EXPECT_EQ(std::accumulate(n.begin(), n.end(), int64_t{0}), count_parameters(c).total);
    const auto u = parameter_unit_numels(c);
    EXPECT_EQ(std::accumulate(u.begin(), u.end(), int64_t{0}), count_parameters(c).total + 2 * 6);
  }
  // "E" alone: embeddings, the block's norm, router [6, 64], each expert's
  // up [10, 64] and down [64, 10], the shared [14, 64] and [64, 14], norm_f, lm_head.
  const auto n = parameter_numels_in_order(tiny_moe("E"));
  std::vector<int64_t> want = {6400, 64, 384};
  for (int e = 0; e < 6; ++e) want.insert(want.end(), {640, 640});
  want.insert(want.end(), {896, 896, 64, 6400});
  EXPECT_EQ(n, want);
  // With a latent size 24 the experts work at 24 and fc1 [24, 64], fc2 [64, 24] follow.
  const auto l = parameter_numels_in_order(tiny_moe("E", 24));
  EXPECT_EQ(l[3], 240);
  EXPECT_EQ(std::vector<int64_t>(l.end() - 4, l.end() - 2), (std::vector<int64_t>{1536, 1536}));
  EXPECT_EQ(parameter_unit_numels(tiny_moe("E"))[1], 64 + 384 + 6 + 6 * 1280 + 2 * 896);
}

TEST(TrainingPlan, MoeActivationsByHand) {
  ActivationSetting s;
  s.seq_len = 128;
  s.element_bytes = 4;
  s.ops = TrainingOps::Reference;
  const double n = 128;
  // fp32, per token: the pre-norm's 772 (as above); the router's sigmoid
  // scores 6 x 4, the gathered indices and chosen weights 2 x (8 + 4), their
  // sum 4; per slot (2 per token) four int64 indices 4 x 8, the grouped
  // experts' pre-activation 10 x 4 and output 64 x 4, the routing weight 4;
  // the shared expert 2 x 14 x 4.
  const double moe = 24 + 24 + 4 + 2 * (32 + 40 + 256 + 4) + 112;
  EXPECT_DOUBLE_EQ(block_saved_bytes(tiny_moe("E"), LayerType::Moe, s), n * (772 + moe));
  // A latent size of 24: the experts' rows shrink to 24 values, fc1's output
  // and fc2's input (24 each) are kept.
  const double latent = 24 + 24 + 4 + 2 * (32 + 40 + 96 + 4) + 2 * 96 + 112;
  EXPECT_DOUBLE_EQ(block_saved_bytes(tiny_moe("E", 24), LayerType::Moe, s), n * (772 + latent));
  // bf16: the router's linear also keeps an fp32 copy of its input.
  ActivationSetting b = s;
  b.element_bytes = 2;
  const double pre_norm_bf16 = 64 * 4 + 64 * 2 + 4 + 64 * 2;
  const double moe_bf16 = 24 + 24 + 4 + 256 + 2 * (32 + 20 + 128 + 4) + 56;
  EXPECT_DOUBLE_EQ(block_saved_bytes(tiny_moe("E"), LayerType::Moe, b), n * (pre_norm_bf16 + moe_bf16));
  EXPECT_GT(block_forward_transient_bytes(tiny_moe("E"), LayerType::Moe, s), 0);
  EXPECT_GT(block_backward_scratch_bytes(tiny_moe("E"), LayerType::Moe, s), 0);
}

TEST(TrainingPlan, MoeStudentAndTeacherArePlanned) {
  TrainingJob j;
  j.teacher = tiny_moe("M*E-E");
  j.student = tiny_moe("M*E");
  j.seq_len = 128;
  j.micro_batch = 1;
  j.dtype = Precision::Fp32;
  const TrainingMemoryPlan p = plan_training_memory(j, 1, ShardLevel::None);
  // Weights, gradients and the two moments of every expert: 16 bytes per
  // student parameter in fp32 (the weights are their own master).
  EXPECT_DOUBLE_EQ(p.bytes.persistent() - p.bytes.teacher_weights, 16.0 * params(j.student));
  EXPECT_DOUBLE_EQ(p.bytes.teacher_weights, 4.0 * params(*j.teacher));
  ActivationSetting s;
  s.seq_len = 128;
  s.element_bytes = 4;
  s.ops = TrainingOps::Reference;
  EXPECT_GE(p.bytes.step_peak, block_saved_bytes(j.student, LayerType::Moe, s));
  const TrainingMemoryPlan sharded = plan_training_memory(j, 2, ShardLevel::Parameters);
  EXPECT_LT(sharded.bytes.peak(), p.bytes.peak());
}

TEST(TrainingPlan, CheckpointingKeepsBlockInputsAndOneRecompute) {
  TrainingJob j = tiny_job();
  const TrainingMemoryPlan off = plan_training_memory(j, 1, ShardLevel::None);
  j.activation_checkpointing = true;
  const TrainingMemoryPlan on = plan_training_memory(j, 1, ShardLevel::None);
  double widest = 0, all = 0;
  for (const auto& b : off.activations.blocks) {
    widest = std::max(widest, b.saved);
    all += static_cast<double>(b.count) * b.saved;
  }
  EXPECT_DOUBLE_EQ(off.activations.kept, all);
  EXPECT_DOUBLE_EQ(on.activations.kept, 3 * 128 * 64 * 2.0);  // three blocks' bf16 inputs
  EXPECT_DOUBLE_EQ(on.activations.recompute, widest);
  EXPECT_LT(on.bytes.step_peak, off.bytes.step_peak);
}

TEST(TrainingPlan, ACacheReplacesTheTeachersOutputAndWeightsUnlessTheTeacherIsGiven) {
  TrainingJob j = tiny_job();
  j.cache_top_k = 8;
  const TrainingMemoryPlan with_teacher = plan_training_memory(j, 1, ShardLevel::None);
  EXPECT_GT(with_teacher.bytes.teacher_weights, 0);  // loaded for evaluation
  EXPECT_EQ(with_teacher.activations.teacher_hidden, 0);
  EXPECT_DOUBLE_EQ(with_teacher.bytes.teacher_cache_batch, 128 * (8 * 12 + 4.0));
  j.teacher.reset();
  EXPECT_EQ(plan_training_memory(j, 1, ShardLevel::None).bytes.teacher_weights, 0);
}

TEST(TrainingPlan, PeakIsPersistentPlusTheLargestPhase) {
  const RankBytes b = plan_training_memory(tiny_job(), 2, ShardLevel::None).bytes;
  EXPECT_DOUBLE_EQ(b.peak(),
                   b.persistent() + std::max({b.step_peak, b.buckets + b.bucket_scratch, b.optimizer_scratch}));
  EXPECT_LE(b.step_peak, b.activations + b.kd_loss + b.teacher_cache_batch);
}

TEST(TrainingPlan, ShardedLevelsShrinkWithTheWorldSizeAndNoneDoesNot) {
  const TrainingJob j = tiny_job();
  const double alone = plan_training_memory(j, 1, ShardLevel::None).bytes.peak();
  for (int n = 2; n <= 64; ++n) {
    EXPECT_GE(plan_training_memory(j, n, ShardLevel::None).bytes.peak(), alone);
    EXPECT_DOUBLE_EQ(plan_training_memory(j, n, ShardLevel::None).bytes.peak(),
                     plan_training_memory(j, 2, ShardLevel::None).bytes.peak());
    for (ShardLevel l : {ShardLevel::Optimizer, ShardLevel::Gradients, ShardLevel::Parameters})
      if (n > 2)
        EXPECT_LE(plan_training_memory(j, n, l).bytes.peak(), plan_training_memory(j, n - 1, l).bytes.peak())
            << shard_level_name(l) << " " << n;
    // Sharding the optimizer, then the gradients, never needs more at the same
    // size. (Sharding the parameters can: its gathered units cost more than
    // the shards save on few ranks.)
    EXPECT_LE(plan_training_memory(j, n, ShardLevel::Optimizer).bytes.peak(),
              plan_training_memory(j, n, ShardLevel::None).bytes.peak());
    EXPECT_LE(plan_training_memory(j, n, ShardLevel::Gradients).bytes.peak(),
              plan_training_memory(j, n, ShardLevel::Optimizer).bytes.peak());
  }
}

TEST(TrainingPlan, SmallestWorldSizeIsTheFirstThatFits) {
  const TrainingJob j = tiny_job();
  for (ShardLevel l : kShardLevels) {
    for (double device : {1e5, 3e5, 4e5, 6e5, 1e6, 1e9}) {
      const auto n = smallest_world_size(j, l, device, 256);
      int expected = 0;
      for (int w = 1; w <= 256 && !expected; ++w)
        if (plan_training_memory(j, w, l).fits(device)) expected = w;
      EXPECT_EQ(n.value_or(0), expected) << shard_level_name(l) << " " << device;
    }
  }
  EXPECT_EQ(smallest_world_size(j, ShardLevel::None, 1e12).value(), 1);
  EXPECT_FALSE(smallest_world_size(j, ShardLevel::Parameters, 1).has_value());
}

TEST(TrainingPlan, SmallestShardLevelIsTheFirstThatFits) {
  const TrainingJob j = tiny_job();
  EXPECT_EQ(smallest_shard_level(j, 8, 1e12).value(), ShardLevel::None);
  const double between = plan_training_memory(j, 8, ShardLevel::Optimizer).bytes.peak();
  EXPECT_EQ(smallest_shard_level(j, 8, between).value(), ShardLevel::Optimizer);
  EXPECT_FALSE(smallest_shard_level(j, 8, 1).has_value());
}

TEST(TrainingPlan, RefusesJobsTheTrainerWouldRefuse) {
  TrainingJob j = tiny_job();
  j.dtype = Precision::Fp16;
  EXPECT_THROW(plan_training_memory(j, 1, ShardLevel::None), InputError);
  j = tiny_job();
  j.teacher->vocab_size = 101;
  EXPECT_THROW(plan_training_memory(j, 1, ShardLevel::None), InputError);
  j = tiny_job();
  j.teacher.reset();  // and no cache
  EXPECT_THROW(plan_training_memory(j, 1, ShardLevel::None), InputError);
  j = tiny_job();
  j.seq_len = 0;
  EXPECT_THROW(plan_training_memory(j, 1, ShardLevel::None), InputError);
  EXPECT_THROW(plan_training_memory(tiny_job(), 0, ShardLevel::None), InputError);
}

TEST(TrainingPlan, ShardLevelNames) {
  for (ShardLevel l : kShardLevels) EXPECT_EQ(parse_shard_level(shard_level_name(l)), l);
  EXPECT_EQ(parse_shard_level("Optimizer"), ShardLevel::Optimizer);
  try {
    parse_shard_level("zero3");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "--shard: unknown shard level 'zero3'; expected none, optimizer, gradients or parameters");
  }
}

TEST(TrainingPlanReport, RefusalNamesTheSmallestWorldSizeAndShardLevel) {
  const TrainingJob j = tiny_job();
  const TrainingMemoryPlan plan = plan_training_memory(j, 8, ShardLevel::None);
  const double device = plan_training_memory(j, 8, ShardLevel::Gradients).bytes.peak();
  const std::string line = plan_refusal(j, plan, device, "--device-memory");
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_NE(line.find("smallest world size that fits at --shard none: no world size fits"), std::string::npos) << line;
  EXPECT_NE(line.find("smallest shard level that fits at 8 ranks: gradients"), std::string::npos) << line;
}

TEST(TrainingPlanReport, JsonAndTextCarryEveryKind) {
  const TrainingJob j = tiny_job();
  const TrainingMemoryPlan plan = plan_training_memory(j, 2, ShardLevel::None);
  PlanSources src;
  src.teacher = "t";
  src.student = "s";
  src.device_bytes = 1e9;
  const nlohmann::json js = training_plan_json(j, plan, src);
  for (const char* k : {"teacher_weights", "student_weights", "gathered_blocks", "gradients", "master", "moments",
                        "activations", "kd_loss", "buckets", "peak"})
    EXPECT_TRUE(js["bytes"].contains(k)) << k;
  EXPECT_EQ(js["fits"], true);
  EXPECT_EQ(js["smallest_world_size"]["none"], 1);
  EXPECT_EQ(js["smallest_shard_level"], "none");
  EXPECT_EQ(js["activations"]["blocks"].size(), 2u);
  const std::string text = training_plan_text(j, plan, src);
  for (const char* k : {"teacher weights", "student weights", "gathered-block buffers", "gradients", "fp32 master",
                        "moments", "activations", "KD loss", "communication buckets", "peak", "fits"})
    EXPECT_NE(text.find(k), std::string::npos) << k;
}

// The README's table ("Distillation at scale"): bf16, sequence 8192, one
// window per rank, activation checkpointing, today's CUDA ops, 80 GB.
struct PaperJob {
  const char* teacher;
  const char* student;
  std::optional<int> none, optimizer, gradients, parameters;
};

TEST(TrainingPlanPublished, SmallestWorldSizesOn80GBGpus) {
  const PaperJob jobs[] = {
      {"nemotron-h-8b", "nemotron-h-4b", std::nullopt, 2, 2, 2},
      {"nemotron-nano-12b-v2", "nemotron-nano-9b-v2", std::nullopt, 12, 5, 3},
      {"nemotron-h-56b", "nemotron-h-47b", std::nullopt, std::nullopt, std::nullopt, 18},
  };
  for (const PaperJob& p : jobs) {
    TrainingJob j;
    j.teacher = published(p.teacher);
    j.student = published(p.student);
    j.seq_len = 8192;
    j.activation_checkpointing = true;
    EXPECT_EQ(smallest_world_size(j, ShardLevel::None, 80e9), p.none) << p.teacher;
    EXPECT_EQ(smallest_world_size(j, ShardLevel::Optimizer, 80e9), p.optimizer) << p.teacher;
    EXPECT_EQ(smallest_world_size(j, ShardLevel::Gradients, 80e9), p.gradients) << p.teacher;
    EXPECT_EQ(smallest_world_size(j, ShardLevel::Parameters, 80e9), p.parameters) << p.teacher;
  }
}

TEST(TrainingPlanPublished, EightBToFourBStateIs2TPlus16S) {
  TrainingJob j;
  j.teacher = published("nemotron-h-8b");
  j.student = published("nemotron-h-4b");
  j.seq_len = 8192;
  const RankBytes b = plan_training_memory(j, 8, ShardLevel::None).bytes;
  EXPECT_DOUBLE_EQ(b.persistent(), 2.0 * 8100852736 + 16.0 * static_cast<double>(count_parameters(j.student).total));
  EXPECT_NEAR(b.persistent() / kGiB, 81.98, 0.01);  // before activations: over an 80 GB GPU already
}

}  // namespace
}  // namespace minipuzzle
