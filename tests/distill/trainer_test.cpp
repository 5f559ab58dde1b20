// The distillation loop and its parts: schedule, AdamW (against LibTorch's
// own AdamW), the window order, and exact resume.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#if MINIPUZZLE_TEST_CUDA_SYNCS
#include "../model/cuda_sync_counter.h"
#endif

#include "../model/tiny_config.h"
#include "adamw_test_tensors.h"
#include "minipuzzle/activation_checkpointing.h"
#include "minipuzzle/adamw.h"
#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/device_memory.h"
#include "minipuzzle/distill_trainer.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/lr_schedule.h"
#include "minipuzzle/teacher_cache.h"
#include "minipuzzle/window_order.h"

namespace minipuzzle {
namespace {

namespace fs = std::filesystem;

TEST(LrSchedule, WarmupThenCosineToMinLr) {
  LrSchedule s;
  s.lr = 1.0;
  s.min_lr = 0.1;
  s.warmup_steps = 4;
  s.total_steps = 14;
  EXPECT_DOUBLE_EQ(s.at(0), 0.25);
  EXPECT_DOUBLE_EQ(s.at(3), 1.0);
  EXPECT_DOUBLE_EQ(s.at(4), 1.0);                        // cosine starts at the peak
  EXPECT_NEAR(s.at(9), 0.1 + 0.45 * (1 + std::cos(M_PI * 0.5)), 1e-12);
  EXPECT_NEAR(s.at(14), 0.1, 1e-12);
  for (int64_t i = 4; i < 14; ++i) EXPECT_LE(s.at(i + 1), s.at(i));
}

TEST(LrSchedule, WsdHoldsThenDecaysLinearly) {
  LrSchedule s;
  s.kind = LrSchedule::Kind::Wsd;
  s.lr = 2.0;
  s.min_lr = 0.0;
  s.total_steps = 10;
  s.decay_fraction = 0.3;  // the last 3 steps decay
  for (int64_t i = 0; i < 7; ++i) EXPECT_DOUBLE_EQ(s.at(i), 2.0) << i;
  EXPECT_NEAR(s.at(7), 2.0 * 2 / 3, 1e-12);
  EXPECT_NEAR(s.at(8), 2.0 / 3, 1e-12);
  EXPECT_NEAR(s.at(9), 0.0, 1e-12);
}

TEST(LrSchedule, RejectsBadValues) {
  LrSchedule s;
  s.lr = 0;
  EXPECT_THROW(s.validate(), InputError);
  s = LrSchedule{};
  s.warmup_steps = 5;
  s.total_steps = 4;
  EXPECT_THROW(s.validate(), InputError);
  s = LrSchedule{};
  s.min_lr = 1.0;
  EXPECT_THROW(s.validate(), InputError);
  EXPECT_THROW(LrSchedule::parse_kind("linear"), InputError);
}

TEST(AdamW, MatchesLibTorchAdamW) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  auto w0 = torch::randn({5, 3}, gen), b0 = torch::randn({5}, gen);
  auto ours_w = w0.clone().requires_grad_(), ours_b = b0.clone().requires_grad_();
  auto ref_w = w0.clone().requires_grad_(), ref_b = b0.clone().requires_grad_();
  AdamWOptions o;
  o.weight_decay = 0.1;
  AdamW ours({{"layer.weight", ours_w}, {"layer.bias", ours_b}}, o);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{ref_w},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1)));
  groups.emplace_back(std::vector<torch::Tensor>{ref_b},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.0)));
  torch::optim::AdamW ref(groups);
  for (int step = 0; step < 6; ++step) {
    auto x = torch::randn({4, 3}, gen);
    auto loss_ours = (torch::matmul(x, ours_w.t()) + ours_b).square().sum();
    auto loss_ref = (torch::matmul(x, ref_w.t()) + ref_b).square().sum();
    loss_ours.backward();
    loss_ref.backward();
    ours.step(1e-2);
    ref.step();
    ours.zero_grad();
    ref.zero_grad();
  }
  EXPECT_TRUE(torch::allclose(ours_w, ref_w, 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(ours_b, ref_b, 1e-6, 1e-7));
  EXPECT_FALSE(torch::allclose(ours_w, w0));
}

TEST(AdamW, ClipsTheGlobalNormAndSkipsDecayOnVectorsAndConv) {
  EXPECT_TRUE(AdamW::decays("backbone.layers.0.mixer.in_proj.weight", torch::zeros({4, 4})));
  EXPECT_FALSE(AdamW::decays("backbone.layers.0.mixer.conv1d.weight", torch::zeros({4, 1, 4})));
  EXPECT_FALSE(AdamW::decays("backbone.layers.0.mixer.A_log", torch::zeros({4})));
  // Gradients (3, 4) then (0.3, 0.4), clipped to norm 1, step like (0.6, 0.8)
  // then (0.3, 0.4) unclipped: the factor scales the first step's gradient
  // and no other (Adam's first step alone hardly depends on the scale; the
  // second sees the ratio of the two gradients).
  auto p = torch::zeros({2}, torch::requires_grad());
  auto q = torch::zeros({2}, torch::requires_grad());
  AdamW opt({{"p", p}}, {}), plain({{"q", q}}, {});
  const float scale[] = {1.0f, 0.1f};
  for (int step = 0; step < 2; ++step) {
    (p * torch::tensor({3.0f, 4.0f}) * scale[step]).sum().backward();
    (q * torch::tensor({0.6f, 0.8f}) * (step == 0 ? 1.0f : 0.5f)).sum().backward();
    EXPECT_NEAR(opt.clip_grad_norm(1.0), 5.0 * scale[step], 1e-6);
    EXPECT_NEAR(opt.grad_norm(), 5.0 * scale[step], 1e-6);  // the gradients themselves stay as they are
    plain.step(0.1);
    opt.step(0.1);
    EXPECT_TRUE(torch::allclose(p, q, 1e-5, 1e-6)) << p << q;
    opt.zero_grad();
    plain.zero_grad();
  }
  EXPECT_TRUE(torch::equal(p.grad(), torch::zeros({2})));
}

// The clip factor taken from the sum of squares on the device is the host's
// rule bit for bit: the same fp64 operations, rounded to fp32 once. Both a
// clipped and an unclipped step, and fp32 and bf16 parameters.
TEST(AdamW, ClipOnTheDeviceEqualsTheHostFactor) {
  torch::manual_seed(17);
  for (const double max_norm : {0.5, 1e6}) {
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      auto make = [&] {
        torch::manual_seed(18);
        return testing::random_adamw_tensors({{7, dtype}, {300, dtype}});
      };
      AdamWTensors host = make(), device = make();
      AdamWStepFactors f;
      f.lr = 1e-2;
      f.weight_decay = 0.1;
      f.step = 3;
      const double sq = grad_sum_of_squares_reference(host.params);
      const double norm = std::sqrt(sq);
      AdamWStepFactors fh = f;
      fh.grad_scale = norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
      adamw_update_reference(host, fh);
      AdamWStepFactors fd = f;
      fd.grad_sum_of_squares = grad_sum_of_squares_reference_on_device(device.params);
      fd.max_grad_norm = max_norm;
      EXPECT_EQ(clip_factor_reference(fd.grad_sum_of_squares, max_norm).item<float>(),
                static_cast<float>(fh.grad_scale));
      adamw_update_reference(device, fd);
      const std::string what = "max_norm " + std::to_string(max_norm) + " " + c10::toString(dtype);
      if (max_norm < 1) {
        EXPECT_LT(fh.grad_scale, 0.5) << what << ": the case must clip";
      } else {
        EXPECT_EQ(fh.grad_scale, 1.0) << what;
      }
      for (std::size_t i = 0; i < host.params.size(); ++i) {
        EXPECT_TRUE(torch::equal(host.params[i], device.params[i])) << what;
        EXPECT_TRUE(torch::equal(host.masters[i], device.masters[i])) << what;
        EXPECT_TRUE(torch::equal(host.exp_avgs[i], device.exp_avgs[i])) << what;
        EXPECT_TRUE(torch::equal(host.exp_avg_sqs[i], device.exp_avg_sqs[i])) << what;
      }
    }
  }
  AdamWStepFactors bad;
  bad.grad_sum_of_squares = torch::ones({}, torch::kDouble);  // and no max_grad_norm
  AdamWTensors none;
  EXPECT_THROW(adamw_update_reference(none, bad), c10::Error);
}

TEST(AdamW, StateRoundTripsExactlyAndRejectsAnotherModel) {
  const fs::path dir = fs::temp_directory_path() / ("mp_adamw_" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  auto p = torch::randn({3, 2}).requires_grad_();
  AdamW a({{"p", p}}, {});
  (p * 2).sum().backward();
  a.step(0.1);
  a.save(dir / "opt.safetensors");
  auto q = p.detach().clone().requires_grad_();
  AdamW b({{"p", q}}, {});
  b.load(dir / "opt.safetensors");
  EXPECT_EQ(b.steps(), 1);
  // One more identical step on both gives identical parameters.
  a.zero_grad();
  (p * 3).sum().backward();
  (q * 3).sum().backward();
  a.step(0.1);
  b.step(0.1);
  EXPECT_TRUE(torch::equal(p, q));
  AdamW other({{"r", torch::zeros({3, 2}, torch::requires_grad())}}, {});
  EXPECT_THROW(other.load(dir / "opt.safetensors"), InputError);
  remove_tree(dir);
}

// Checkpoints are written from snapshots while training goes on: a
// snapshot must not change when the model and the optimizer step on, also
// when nothing needs converting (CPU, fp32).
TEST(Snapshots, DoNotFollowTheModelOrTheOptimizer) {
  HybridLM m(testing::tiny_config("M-"));
  m->init_random(4);
  auto params = m->named_parameters();
  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (auto& p : params) named.emplace_back(p.key(), p.value());
  AdamW opt(named, {});
  for (auto& p : params) p.value().mutable_grad() = torch::ones_like(p.value());
  opt.step(0.1);
  const ModelSnapshot model = snapshot_model(m, torch::kFloat32);
  const AdamW::State state = opt.snapshot();
  std::vector<torch::Tensor> model_before, state_before;
  for (const auto& [name, t] : model.tensors) model_before.push_back(t.clone());
  for (const auto& [name, t] : state.tensors) state_before.push_back(t.clone());
  opt.step(0.1);  // moves the weights and both moments in place
  for (std::size_t i = 0; i < model.tensors.size(); ++i)
    EXPECT_TRUE(torch::equal(model.tensors[i].second, model_before[i])) << model.tensors[i].first;
  for (std::size_t i = 0; i < state.tensors.size(); ++i)
    EXPECT_TRUE(torch::equal(state.tensors[i].second, state_before[i])) << state.tensors[i].first;
  EXPECT_FALSE(torch::equal(params[0].value(), model_before[0]));  // the step did move them
}

TEST(WindowOrder, EveryWindowOncePerEpochInAnOrderThatChanges) {
  WindowOrder order(1000, 10, 7);  // (1000-1)/10 = 99 windows
  ASSERT_EQ(order.windows(), 99u);
  std::set<uint64_t> e0, e1;
  std::vector<uint64_t> first0, first1;
  for (uint64_t i = 0; i < 99; ++i) {
    e0.insert(order.start(0, i));
    e1.insert(order.start(1, i));
    first0.push_back(order.start(0, i));
    first1.push_back(order.start(1, i));
  }
  EXPECT_EQ(e0.size(), 99u);
  EXPECT_EQ(e1, e0);
  EXPECT_EQ(*e0.rbegin(), 980u);
  EXPECT_NE(first0, first1);
  EXPECT_EQ(WindowOrder(1000, 10, 7).start(0, 5), order.start(0, 5));
  EXPECT_NE(WindowOrder(1000, 10, 8).start(0, 5) + WindowOrder(1000, 10, 8).start(0, 6),
            order.start(0, 5) + order.start(0, 6));
  WindowOrder::Position pos{0, 97};
  auto three = order.take(pos, 3);
  EXPECT_EQ(three[2], order.start(1, 0));
  EXPECT_EQ(pos.epoch, 1u);
  EXPECT_EQ(pos.index, 1u);
  EXPECT_THROW(WindowOrder(5, 10, 1), InputError);
}

TEST(ActivationCheckpointing, SameOutputAndGradientsAsThePlainForward) {
  HybridLM m(testing::tiny_config("M*-M-*"));
  m->init_random(9);
  auto tokens = torch::randint(0, 97, {2, 19}, at::make_generator<at::CPUGeneratorImpl>(4), torch::kInt64);
  auto plain = m->forward_hidden(tokens);
  (plain.square().sum()).backward();
  std::map<std::string, torch::Tensor> expected;
  for (auto& p : m->named_parameters())  // lm_head is not part of forward_hidden
    if (p.value().grad().defined()) expected[p.key()] = p.value().grad().clone();
  ASSERT_EQ(expected.size() + 1, m->named_parameters().size());
  for (auto& p : m->parameters())
    if (p.grad().defined()) p.mutable_grad().zero_();
  auto ckpt = forward_hidden_checkpointed(m, tokens);
  EXPECT_TRUE(torch::equal(ckpt, plain));
  (ckpt.square().sum()).backward();
  for (auto& p : m->named_parameters()) {
    if (!expected.count(p.key())) continue;
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(torch::allclose(p.value().grad(), expected[p.key()], 1e-6, 1e-7)) << p.key();
    EXPECT_GT(expected[p.key()].abs().sum().item<double>(), 0.0) << p.key();
  }
}

// Teacher and student checkpoints plus a dataset, in a temp directory.
class DistillRun : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mp_distill_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    remove_tree(dir_);
    fs::create_directories(dir_);
    HybridLM teacher(testing::tiny_config("M*-M-"));
    teacher->init_random(3);
    save_model(teacher, dir_ / "teacher", torch::kFloat32);
    HybridLM student(testing::tiny_config("M-M-"));
    student->init_random(4);
    save_model(student, dir_ / "student", torch::kFloat32);
    IndexedDatasetBuilder b((dir_ / "data").string(), TokenDType::U16);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
    for (int d = 0; d < 6; ++d) {
      auto t = torch::randint(0, 97, {200}, gen, torch::kInt64);
      b.add_document(std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()));
    }
    b.finish();
  }
  void TearDown() override { remove_tree(dir_); }

  DistillOptions options(const std::string& out) const {
    DistillOptions o;
    o.teacher = (dir_ / "teacher").string();
    o.student = (dir_ / "student").string();
    o.data = (dir_ / "data").string();
    o.out = dir_ / out;
    o.seq_len = 16;
    o.micro_batch = 2;
    o.global_batch = 4;
    o.schedule.lr = 3e-3;
    o.schedule.min_lr = 3e-4;
    o.schedule.warmup_steps = 2;
    o.schedule.total_steps = 8;
    o.eval_tokens = 128;
    o.eval_every = 4;
    o.save_every = 3;
    return o;
  }

  static std::vector<std::string> step_lines(const fs::path& run) {
    std::vector<std::string> out;
    std::ifstream in(run / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      j.erase("seconds");
      j.erase("tokens_per_second");
      j.erase("max_rss_bytes");
      j.erase("device_peak_bytes");
      out.push_back(j.dump());
    }
    return out;
  }

  fs::path dir_;
};

TEST_F(DistillRun, LearnsTheTeacherAndWritesItsOutputs) {
  auto o = options("run");
  o.schedule.total_steps = 30;
  o.save_every = 0;
  const DistillSummary s = run_distillation(o);
  EXPECT_FALSE(s.interrupted);
  EXPECT_EQ(s.steps_done, 30);
  EXPECT_LT(s.final_eval_kl, 0.9 * s.first_eval_loss + 1.0);  // sanity: finite
  // KL to the teacher on held-out tokens falls.
  std::vector<double> kl;
  std::ifstream in(o.out / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.value("eval", false)) kl.push_back(j["kl"].get<double>());
  }
  ASSERT_GE(kl.size(), 2u);
  EXPECT_LT(kl.back(), 0.8 * kl.front());
  for (const char* f : {"run.json", "report.md", "loss.png", "eval.png", "final/config.json",
                        "final/model.safetensors"})
    EXPECT_TRUE(fs::exists(o.out / f)) << f;
  HybridLM final_student = load_model(o.out / "final");
  EXPECT_EQ(final_student->config().pattern, "M-M-");
}

// Every step line of a run, parsed.
std::vector<nlohmann::json> step_records(const fs::path& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (!j.value("eval", false)) out.push_back(j);
  }
  return out;
}

TEST(DeviceMemory, CpuHasNoDevicePeak) {
  EXPECT_FALSE(device_peak_allocated_bytes(torch::Device(torch::kCPU)).has_value());
  reset_device_peak(torch::Device(torch::kCPU));  // a no-op, not an error
}

TEST(DeviceMemory, CudaPeakCountsATensorAndResets) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device cuda(torch::kCUDA, 0);
  reset_device_peak(cuda);
  const uint64_t before = device_peak_allocated_bytes(cuda).value();
  {
    auto t = torch::empty({64 << 20}, torch::TensorOptions().dtype(torch::kUInt8).device(cuda));
    EXPECT_GE(device_peak_allocated_bytes(cuda).value(), before + (64u << 20));
  }
  reset_device_peak(cuda);
  EXPECT_LT(device_peak_allocated_bytes(cuda).value(), before + (64u << 20));
}

TEST_F(DistillRun, CpuStepsLogHostMemoryOnly) {
  auto o = options("cpu");
  o.schedule.total_steps = 2;
  o.save_every = 0;
  o.eval_every = 0;
  run_distillation(o);
  const auto steps = step_records(o.out);
  ASSERT_EQ(steps.size(), 2u);
  for (const auto& j : steps) {
    EXPECT_GT(j.at("max_rss_bytes").get<uint64_t>(), 0u);
    EXPECT_FALSE(j.contains("device_peak_bytes"));
  }
}

TEST_F(DistillRun, CudaStepsLogTheirPeakDeviceMemory) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto o = options("cuda");
  o.device = "cuda";
  o.schedule.total_steps = 3;
  o.save_every = 0;
  o.eval_every = 0;
  run_distillation(o);
  // Lower bound: the teacher's weights and the student's weights, gradients
  // and two AdamW moments (fp32 here) are all on the device during a step.
  int64_t floats = 0;
  for (const auto& p : load_model(dir_ / "teacher")->parameters()) floats += p.numel();
  for (const auto& p : load_model(dir_ / "student")->parameters()) floats += 4 * p.numel();
  const auto steps = step_records(o.out);
  ASSERT_EQ(steps.size(), 3u);
  for (const auto& j : steps) EXPECT_GE(j.at("device_peak_bytes").get<uint64_t>(), static_cast<uint64_t>(4 * floats));
}

#if MINIPUZZLE_TEST_CUDA_SYNCS
// A step's micro-batches never wait for the device: the syncs of a step (the
// gradient norm, the step's sums) do not grow with the micro-batches in it.
TEST_F(DistillRun, CudaHostSyncsPerStepDoNotGrowWithMicroBatches) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto syncs_per_step = [&](const std::string& name, int64_t global_batch, bool cache) {
    auto o = options(name);
    o.device = "cuda";
    o.global_batch = global_batch;
    o.schedule.total_steps = 4;
    o.save_every = 0;
    o.eval_every = 0;
    if (cache) {
      TeacherCacheOptions c;
      c.teacher = dir_ / "teacher";
      c.data = (dir_ / "data").string();
      c.out = dir_ / (name + "-cache");
      c.seq_len = o.seq_len;
      c.seed = o.seed;
      c.windows = static_cast<uint64_t>(o.schedule.total_steps * o.global_batch);
      c.k = 8;
      write_teacher_cache(c);
      o.teacher.clear();
      o.teacher_cache = c.out.string();
    }
    testing::CudaSyncCounter counter;
    std::vector<int64_t> at_step;
    run_distillation(o, [&](const DistillStatus&) { at_step.push_back(counter.count); });
    EXPECT_EQ(at_step.size(), 4u);
    // A step in the steady state, and where its syncs came from.
    return std::make_pair(at_step.at(3) - at_step.at(2), counter.sites_since(at_step.at(2)));
  };
  for (bool cache : {false, true}) {
    const std::string what = cache ? "teacher cache" : "online teacher";
    const auto [one, one_sites] = syncs_per_step(cache ? "c1" : "o1", 2, cache);    // one micro-batch of 2
    const auto [four, four_sites] = syncs_per_step(cache ? "c4" : "o4", 8, cache);  // four
    EXPECT_EQ(four, one) << what << "\n" << four_sites;
    EXPECT_GT(one, 0) << what << ": the counter saw nothing (is the sync debug mode still reported as a warning?)";
    EXPECT_LE(one, 1) << what << ": more than the one read of the step's numbers\n" << one_sites;
  }
}
#endif

TEST_F(DistillRun, ResumedRunIsBitIdenticalToAnUninterruptedOne) {
  auto full = options("full");
  run_distillation(full);
  auto part = options("part");
  part.stop_at_step = 5;  // checkpoints at 3 (save_every) and 5 (the stop)
  DistillSummary s1 = run_distillation(part);
  EXPECT_TRUE(s1.interrupted);
  EXPECT_EQ(s1.steps_done, 5);
  part.stop_at_step = 0;
  EXPECT_THROW(run_distillation(part), InputError);  // not without --resume
  part.resume = true;
  DistillSummary s2 = run_distillation(part);
  EXPECT_FALSE(s2.interrupted);
  EXPECT_EQ(step_lines(full.out), step_lines(part.out));
  HybridLM a = load_model(full.out / "final"), b = load_model(part.out / "final");
  auto pa = a->named_parameters(), pb = b->named_parameters();
  for (const auto& p : pa) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
  // keep_last = 2: only the newest two checkpoints remain.
  std::vector<std::string> kept;
  for (const auto& e : fs::directory_iterator(part.out / "checkpoints")) kept.push_back(e.path().filename().string());
  std::sort(kept.begin(), kept.end());
  EXPECT_EQ(kept, (std::vector<std::string>{"step-00000006", "step-00000008"}));
}

// A stop signal during an evaluation (a long one would hold SIGTERM off):
// the evaluation is abandoned, the step the run is at is checkpointed, and
// the resumed run evaluates that step again, so its metrics equal an
// uninterrupted run's. Before the first evaluation that checkpoint is step 0.
TEST_F(DistillRun, AStopDuringAnEvaluationCheckpointsThatStepAndTheResumeEvaluatesIt) {
  struct ClearStopFlag {
    ~ClearStopFlag() { distill_stop_flag().store(false); }
  } clear;
  auto full = options("full");
  run_distillation(full);
  auto has_eval_at = [](const fs::path& run, int64_t step) {
    std::ifstream in(run / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j.value("eval", false) && j["step"] == step) return true;
    }
    return false;
  };

  auto at0 = options("at0");
  distill_stop_flag().store(true);  // as if SIGTERM came during start-up
  DistillSummary s0 = run_distillation(at0);
  distill_stop_flag().store(false);
  EXPECT_TRUE(s0.interrupted);
  EXPECT_EQ(s0.steps_done, 0);
  EXPECT_TRUE(fs::exists(at0.out / "checkpoints" / "step-00000000" / "trainer_state.json"));
  EXPECT_FALSE(has_eval_at(at0.out, 0));
  at0.resume = true;
  EXPECT_FALSE(run_distillation(at0).interrupted);
  EXPECT_EQ(step_lines(full.out), step_lines(at0.out));

  auto at4 = options("at4");  // eval_every 4: the signal arrives as step 4's evaluation starts
  DistillSummary s4 = run_distillation(at4, [](const DistillStatus& st) {
    if (st.step == 4) distill_stop_flag().store(true);
  });
  distill_stop_flag().store(false);
  EXPECT_TRUE(s4.interrupted);
  EXPECT_EQ(s4.steps_done, 4);
  EXPECT_TRUE(fs::exists(at4.out / "checkpoints" / "step-00000004" / "trainer_state.json"));
  EXPECT_FALSE(has_eval_at(at4.out, 4));
  at4.resume = true;
  run_distillation(at4);
  EXPECT_TRUE(has_eval_at(at4.out, 4));
  EXPECT_EQ(step_lines(full.out), step_lines(at4.out));
}

TEST_F(DistillRun, ActivationCheckpointingGivesTheSameRun) {
  auto plain = options("plain");
  run_distillation(plain);
  auto ckpt = options("ckpt");
  ckpt.activation_checkpointing = true;
  run_distillation(ckpt);
  auto a = step_lines(plain.out), b = step_lines(ckpt.out);
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto ja = nlohmann::json::parse(a[i]), jb = nlohmann::json::parse(b[i]);
    EXPECT_NEAR(ja["loss"].get<double>(), jb["loss"].get<double>(), 1e-6 * std::abs(ja["loss"].get<double>())) << i;
  }
}

TEST_F(DistillRun, ResumeWithOtherOptionsAndBadOptionsAreInputErrors) {
  auto o = options("run");
  o.stop_at_step = 2;
  run_distillation(o);
  o.stop_at_step = 0;
  o.resume = true;
  o.schedule.lr = 1e-2;
  EXPECT_THROW(run_distillation(o), InputError);
  auto bad = options("bad");
  bad.global_batch = 3;
  EXPECT_THROW(run_distillation(bad), InputError);
  bad = options("bad");
  bad.data = (dir_ / "missing").string();
  EXPECT_THROW(run_distillation(bad), InputError);
  bad = options("bad");
  bad.seq_len = 5000;
  EXPECT_THROW(run_distillation(bad), InputError);
  EXPECT_FALSE(fs::exists(dir_ / "bad" / "checkpoints"));
}

// The run's own files, damaged or hand-edited, are read with outside-input
// bounds: a wrong type or unbounded nesting is one InputError, not a crash.
TEST_F(DistillRun, DamagedRunFilesOnResumeAreInputErrors) {
  auto o = options("run");
  o.stop_at_step = 2;
  run_distillation(o);
  o.stop_at_step = 0;
  o.resume = true;
  const fs::path state = o.out / "checkpoints" / "step-00000002" / "trainer_state.json";
  ASSERT_TRUE(fs::exists(state));
  const std::string good_state = read_file(state), good_run = read_file(o.out / "run.json");
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  auto expect_message = [&](const std::string& want) {
    try {
      run_distillation(o);
      ADD_FAILURE() << "expected an InputError with " << want;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  write_file_atomic(o.out / "run.json", deep);
  expect_message("unreadable run.json");
  write_file_atomic(o.out / "run.json", good_run);
  for (const std::string& bad : {deep, std::string(R"({"step": "2", "epoch": 0, "index": 0})"),
                                 std::string(R"({"step": 2, "epoch": -1, "index": 0})"),
                                 std::string(R"({"step": 2, "epoch": 0, "index": 0, "tokens": "x"})")}) {
    write_file_atomic(state, bad);
    expect_message("unreadable trainer_state.json");
  }
  // A metrics line of the wrong shape is dropped like an unparsable one; the run finishes.
  write_file_atomic(state, good_state);
  {
    std::ofstream m(o.out / "metrics.jsonl", std::ios::app);
    m << R"({"step": "1", "eval": 3})" << "\n" << deep << "\n";
  }
  const DistillSummary s = run_distillation(o);
  EXPECT_EQ(s.steps_done, 8);
}

TEST_F(DistillRun, TeacherCacheWithTheWholeVocabularyEqualsTheOnlineTeacher) {
  auto online = options("online");
  online.eval_every = 0;
  run_distillation(online);
  TeacherCacheOptions c;
  c.teacher = dir_ / "teacher";
  c.data = (dir_ / "data").string();
  c.out = dir_ / "cache";
  c.seq_len = online.seq_len;
  c.seed = online.seed;
  c.windows = static_cast<uint64_t>(online.schedule.total_steps * online.global_batch);
  c.k = 97;  // every token: the k+1-bucket KL is the full KL
  write_teacher_cache(c);
  auto cached = options("cached");
  cached.eval_every = 0;
  cached.teacher_cache = (dir_ / "cache").string();
  run_distillation(cached);  // the teacher model is still given: evaluation uses it
  auto a = step_lines(online.out), b = step_lines(cached.out);
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto ja = nlohmann::json::parse(a[i]), jb = nlohmann::json::parse(b[i]);
    EXPECT_NEAR(ja["loss"].get<double>(), jb["loss"].get<double>(), 1e-6 + 1e-4 * std::abs(ja["loss"].get<double>()))
        << i;
  }
  // Without the teacher model: trains from the cache alone, evaluation without KL.
  auto alone = options("alone");
  alone.eval_every = 0;
  alone.teacher.clear();
  alone.teacher_cache = (dir_ / "cache").string();
  const DistillSummary s = run_distillation(alone);
  EXPECT_TRUE(std::isnan(s.final_eval_kl));
  EXPECT_TRUE(fs::exists(alone.out / "report.md"));
  // A cache too short for the run, or written at another temperature, is refused.
  auto longer = options("longer");
  longer.teacher_cache = (dir_ / "cache").string();
  longer.schedule.total_steps = 100;
  EXPECT_THROW(run_distillation(longer), InputError);
  auto hotter = options("hotter");
  hotter.teacher_cache = (dir_ / "cache").string();
  hotter.kd.temperature = 2.0;
  EXPECT_THROW(run_distillation(hotter), InputError);
}

}  // namespace
}  // namespace minipuzzle
