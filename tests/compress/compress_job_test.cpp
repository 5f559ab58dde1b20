// The compress job file: every key reaches its field, relative paths resolve
// against the job file (YAML) or the current directory (--set), and every
// mistake names its key path and what was expected.
#include <gtest/gtest.h>

#include "compress/compress_job.h"
#include "minipuzzle/errors.h"

namespace minipuzzle {
namespace {

const char* kMinimal = R"(
teacher: models/parent
out: runs/job
data:
  train: data/train
search:
  budget: 0.8MiB
short_distill:
  tokens: 200K
long_distill:
  tokens: 1e6
)";

CompressJob parse(const std::string& text, const std::vector<std::string>& sets = {}, bool dry_run = false) {
  return parse_compress_job(text, "/jobs/demo/job.yaml", sets, "/home/me", dry_run);
}

// The message of the InputError the parse throws ("" when it does not throw).
std::string error_of(const std::string& text, const std::vector<std::string>& sets = {}) {
  try {
    parse(text, sets);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(CompressJob, MinimalJobGetsDefaultsAndResolvedPaths) {
  const CompressJob j = parse(kMinimal);
  EXPECT_EQ(j.teacher, "/jobs/demo/models/parent");
  EXPECT_EQ(j.out, "/jobs/demo/runs/job");
  EXPECT_EQ(j.train_data, "/jobs/demo/data/train");
  EXPECT_EQ(j.validation_data, j.train_data);  // default: the training data
  EXPECT_EQ(j.search.budget, "0.8MiB");
  EXPECT_EQ(j.short_distill.tokens, 200000u);
  EXPECT_EQ(j.long_distill.tokens, 1000000u);
  EXPECT_EQ(j.search.space, "paper");
  EXPECT_EQ(j.short_candidates, 3);
  EXPECT_EQ(j.device, "cpu");
  EXPECT_EQ(j.export_.dtype, "bf16");
}

TEST(CompressJob, EveryKindOfValueReachesItsField) {
  const CompressJob j = parse(std::string(kMinimal) + R"(
compute: {device: "cuda:1", dtype: bf16}
score: {samples: 64, seq_len: 256, batch: 8, seed: 7, aggregation: "seq=l2,batch=mean", layer_metrics: mse}
rank: {tokens: 1.5M, by: accuracy}
distill: {global_batch: 16, micro_batch: 4, loss: rkl, temperature: 2, activation_checkpointing: yes}
export: {dtype: fp8, max_shard_size: 2GiB}
estimate: {tflops: 12.5}
evaluate: {tokens: 7B}
)", {"search.axes.attention_layers=1", "search.maximal_only=true", "search.precision=fp4"});
  EXPECT_EQ(j.device, "cuda:1");
  EXPECT_EQ(j.dtype, "bf16");
  EXPECT_EQ(j.score.samples, 64);
  EXPECT_EQ(j.score.seed, 7u);
  EXPECT_EQ(j.score.aggregation, "seq=l2,batch=mean");
  EXPECT_EQ(j.rank.tokens, 1500000u);
  EXPECT_EQ(j.rank.by, "accuracy");
  EXPECT_EQ(j.distill.global_batch, 16);
  EXPECT_EQ(j.distill.loss, "rkl");
  EXPECT_DOUBLE_EQ(j.distill.temperature, 2.0);
  EXPECT_TRUE(j.distill.activation_checkpointing);
  EXPECT_EQ(j.export_.dtype, "fp8");
  EXPECT_DOUBLE_EQ(j.estimate_tflops, 12.5);
  EXPECT_EQ(j.evaluate.tokens, 7000000000u);
  EXPECT_EQ(j.search.axes.at("attention_layers"), "1");
  EXPECT_TRUE(j.search.maximal_only);
  EXPECT_EQ(j.search.precision, "fp4");
}

TEST(CompressJob, SetOverridesTheFileAndResolvesAgainstTheCurrentDirectory) {
  const CompressJob j = parse(kMinimal, {"out=elsewhere/run", "search.budget=2GiB", "data.validation=/abs/val"});
  EXPECT_EQ(j.out, "/home/me/elsewhere/run");
  EXPECT_EQ(j.search.budget, "2GiB");
  EXPECT_EQ(j.validation_data, "/abs/val");
  EXPECT_EQ(j.train_data, "/jobs/demo/data/train");
}

TEST(CompressJob, UnknownKeysNameTheirPathAndTheKnownOnes) {
  const std::string e = error_of(std::string(kMinimal) + "search_space: full\n");
  EXPECT_NE(e.find("/jobs/demo/job.yaml: search_space: unknown key"), std::string::npos) << e;
  const std::string nested = error_of(std::string(kMinimal) + "score:\n  sample: 3\n");
  EXPECT_NE(nested.find("score.sample: unknown key (known under score: aggregation, batch, layer_metrics, samples"),
            std::string::npos)
      << nested;
  const std::string section = error_of(kMinimal, {"search=5"});
  EXPECT_NE(section.find("search: a section, not a key"), std::string::npos) << section;
  const std::string nowhere = error_of(kMinimal, {"foo.bar=1"});
  EXPECT_NE(nowhere.find("foo.bar: unknown key (known: compute"), std::string::npos) << nowhere;
  const std::string zero = error_of(kMinimal, {"search.budget=0"});
  EXPECT_NE(zero.find("search.budget: expected a positive size"), std::string::npos) << zero;
  const std::string axis = error_of(kMinimal, {"search.axes.ffm=1024"});
  EXPECT_NE(axis.find("--set: search.axes.ffm: unknown axis"), std::string::npos) << axis;
}

TEST(CompressJob, MoeSearchKeysReachTheSearch) {
  EXPECT_EQ(parse(kMinimal).search.max_active_params, 0u);  // no limit
  const CompressJob j = parse(kMinimal, {"search.max_active_params=3.2B", "search.axes.moe_experts=64:128:8",
                                         "search.axes.moe_expert_ffn=1280", "search.axes.moe_shared_ffn=2688:3712:256",
                                         "search.axes.moe_layers=20:23"});
  EXPECT_EQ(j.search.max_active_params, 3200000000u);
  EXPECT_EQ(j.search.axes.at("moe_experts"), "64:128:8");
  EXPECT_EQ(j.search.axes.at("moe_layers"), "20:23");
  EXPECT_EQ(j.to_json().at("search.max_active_params"), 3200000000u);
  EXPECT_EQ(first_stage_reading("search.max_active_params"), CompressStage::Search);
  const std::string bad = error_of(kMinimal, {"search.max_active_params=lots"});
  EXPECT_NE(bad.find("search.max_active_params: expected a parameter count such as 800M"), std::string::npos) << bad;
}

TEST(CompressJob, WrongTypesNameTheKeyAndTheExpectedType) {
  EXPECT_NE(error_of(std::string(kMinimal) + "score: {samples: ten}\n").find("score.samples: expected an integer in [1, 16777216], got 'ten'"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "score: {seq_len: 0}\n").find("score.seq_len: expected an integer"),
            std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"search.maximal_only=maybe"}).find("search.maximal_only: expected true or false, got 'maybe'"),
            std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"rank.tokens=lots"}).find("rank.tokens: expected a token count"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"rank.tokens=1.5"}).find("rank.tokens: expected a token count"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"search.precision=int3"}).find("search.precision"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"search.space=huge"}).find("search.space: expected one of paper, depth or full, got 'huge'"),
            std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"compute.device=tpu"}).find("compute.device: expected cpu, cuda or cuda:N"),
            std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"search.budget=lots"}).find("search.budget"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"distill.temperature=0"}).find("distill.temperature: expected a number in (0"),
            std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"export.max_shard_size=big"}).find("export.max_shard_size"), std::string::npos);
  // A section given a value, a value given a section or a list.
  EXPECT_NE(error_of(std::string(kMinimal) + "score: 3\n").find("score: expected a mapping of keys"), std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "compute: {device: [cpu]}\n").find("compute.device: expected cpu, cuda or cuda:N, got a list"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "compute: {device: }\n").find("compute.device: expected cpu, cuda or cuda:N, got nothing"),
            std::string::npos);
}

TEST(CompressJob, MissingRequiredKeysAndInconsistentSettings) {
  EXPECT_NE(error_of("out: x\nsearch: {budget: 1GiB}\n").find("teacher: required"), std::string::npos);
  EXPECT_NE(error_of("teacher: t\nout: x\ndata: {train: d}\nshort_distill: {tokens: 1}\nlong_distill: {tokens: 1}\n")
                .find("search.budget: required"),
            std::string::npos);
  // data.train is needed to run, not for a dry run.
  const std::string no_data = "teacher: t\nout: x\nsearch: {budget: 1GiB}\nshort_distill: {tokens: 1}\nlong_distill: {tokens: 1}\n";
  EXPECT_NE(error_of(no_data).find("data.train: required"), std::string::npos);
  EXPECT_NO_THROW(parse(no_data, {}, /*dry_run=*/true));
  EXPECT_NE(error_of(kMinimal, {"distill.global_batch=6", "distill.micro_batch=4"}).find("multiple of distill.micro_batch"),
            std::string::npos);
  // Each of N data-parallel ranks takes whole micro-batches of every global batch.
  EXPECT_NE(error_of(kMinimal, {"distill.global_batch=8", "distill.micro_batch=2", "distill.processes=3"})
                .find("multiple of distill.micro_batch 2 x distill.processes 3"),
            std::string::npos);
  EXPECT_EQ(parse(kMinimal, {"distill.global_batch=8", "distill.micro_batch=2", "distill.processes=4"}).distill.processes,
            4);
  EXPECT_NE(error_of(kMinimal, {"distill.processes=0"}).find("distill.processes"), std::string::npos);
  // What each rank keeps of the training state (distill --shard).
  EXPECT_EQ(parse(kMinimal, {}).distill.shard, "none");
  EXPECT_EQ(parse(kMinimal, {"distill.shard=gradients"}).distill.shard, "gradients");
  EXPECT_EQ(parse(kMinimal, {"distill.shard=parameters"}).distill.shard, "parameters");
  EXPECT_NE(error_of(kMinimal, {"distill.shard=zero3"}).find("distill.shard"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"short_distill.candidates=5", "search.top_k=2"}).find("more than search.top_k"),
            std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"long_distill.min_lr=1"}).find("long_distill.min_lr 1 is above its lr"), std::string::npos);
}

TEST(CompressJob, MalformedYamlAndSetSyntax) {
  const std::string e = error_of("teacher: [unclosed\n");
  EXPECT_NE(e.find("not valid YAML"), std::string::npos) << e;
  EXPECT_NE(e.find("line "), std::string::npos) << e;
  EXPECT_NE(error_of("- a\n- b\n").find("expected a mapping of keys at the top, got a list"), std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "teacher: again\n").find("teacher: given twice"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"budget"}).find("--set budget: expected key.path=value"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"search.axes.ffn=a lot"}).find("search.axes.ffn: expected min:max[:step]"),
            std::string::npos);
}

// Found by fuzz_compress_job: invalid UTF-8 reached job.json, whose writer
// throws a JSON type error (exit 1) instead of a clear input error.
TEST(CompressJob, TextThatIsNotUtf8IsAnInputError) {
  std::string bad = kMinimal;
  bad.replace(bad.find("parent"), 3, "\xff\xfe\x80");
  EXPECT_NE(error_of(bad).find("teacher: the value is not valid UTF-8"), std::string::npos) << error_of(bad);
  EXPECT_NE(error_of(kMinimal, {"out=run\xed\xa0\x80"}).find("out: the value is not valid UTF-8"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"out=run\xc0\xaf"}).find("not valid UTF-8"), std::string::npos);
  EXPECT_EQ(parse(kMinimal, {"out=r\xc3\xa9sultats/\xe2\x82\xac/\xf0\x9f\x98\x80"}).out,
            "/home/me/r\xc3\xa9sultats/\xe2\x82\xac/\xf0\x9f\x98\x80");
}

TEST(CompressJob, RecordedSettingsAreCompleteAndStable) {
  const CompressJob a = parse(kMinimal, {"search.axes.ffn=64:128:32"});
  const auto j = a.to_json();
  EXPECT_EQ(j.at("search.budget"), "0.8MiB");
  EXPECT_EQ(j.at("search.axes").at("ffn"), "64:128:32");
  EXPECT_EQ(j.at("long_distill.tokens"), 1000000u);
  // Every documented key is recorded, so a rerun with any change is caught.
  for (const auto& [key, what] : compress_job_keys())
    if (key != "search.axes.NAME") {
      EXPECT_TRUE(j.contains(key)) << key;
    }
  EXPECT_EQ(parse(kMinimal, {"search.axes.ffn=64:128:32"}).to_json(), j);
}

TEST(CompressJob, EachSettingBelongsToTheFirstStageThatReadsIt) {
  EXPECT_EQ(first_stage_reading("score.samples"), CompressStage::Score);
  EXPECT_EQ(first_stage_reading("teacher"), CompressStage::Score);
  EXPECT_EQ(first_stage_reading("compute.dtype"), CompressStage::Score);
  EXPECT_EQ(first_stage_reading("data.validation"), CompressStage::Search);
  EXPECT_EQ(first_stage_reading("rank.tokens"), CompressStage::Search);
  EXPECT_EQ(first_stage_reading("search.axes"), CompressStage::Search);
  // Shared by both distillations: the short one comes first.
  EXPECT_EQ(first_stage_reading("distill.seq_len"), CompressStage::ShortDistill);
  EXPECT_EQ(first_stage_reading("short_distill.tokens"), CompressStage::ShortDistill);
  EXPECT_EQ(first_stage_reading("short_distill.candidates"), CompressStage::Pick);
  EXPECT_EQ(first_stage_reading("long_distill.warmup_steps"), CompressStage::LongDistill);
  EXPECT_EQ(first_stage_reading("export.dtype"), CompressStage::Export);
  EXPECT_EQ(first_stage_reading("evaluate.tokens"), CompressStage::Compare);
  EXPECT_EQ(first_stage_reading("estimate.tflops"), std::nullopt);
  EXPECT_EQ(first_stage_reading("out"), std::nullopt);
  // A key the table does not know reruns everything rather than nothing.
  EXPECT_EQ(first_stage_reading("some.future_key"), CompressStage::Score);
  // Every recorded key that is not result-neutral has a stage.
  const auto recorded = parse(kMinimal).to_json();
  for (const auto& [key, value] : recorded.items())
    if (key.rfind("estimate.", 0) != 0 && key != "out") {
      EXPECT_TRUE(first_stage_reading(key).has_value()) << key;
    }
  EXPECT_STREQ(compress_stage_name(CompressStage::LongDistill), "long distill");
}

TEST(CompressJob, StepsRoundTokensUpToWholeSteps) {
  CompressJob j = parse(kMinimal, {"distill.seq_len=256", "distill.global_batch=16"});
  EXPECT_EQ(j.steps_for(4096), 1);
  EXPECT_EQ(j.steps_for(4097), 2);
  EXPECT_EQ(j.steps_for(200000), 49);
}

}  // namespace
}  // namespace minipuzzle
