#include "minipuzzle/model_folder_files.h"
#include "minipuzzle/distill_trainer.h"

#include <fmt/format.h>

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint_reader.h"
#include "minipuzzle/background_job.h"
#include "minipuzzle/activation_checkpointing.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/data_parallel.h"
#include "minipuzzle/device_memory.h"
#include "minipuzzle/distill_report.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/host_to_device.h"
#include "minipuzzle/json_read_back.h"
#include "minipuzzle/logit_comparison.h"
#include "minipuzzle/overlapped_all_reduce.h"
#include "minipuzzle/sharded_adamw.h"
#include "minipuzzle/sharded_checkpoint.h"
#include "minipuzzle/sharded_model_writer.h"
#include "minipuzzle/sharded_parameters.h"
#include "minipuzzle/teacher_cache.h"
#include "minipuzzle/token_batches.h"
#include "minipuzzle/token_windows.h"
#include "minipuzzle/window_order.h"
#include "rank_state_bytes.h"

namespace minipuzzle {
namespace fs = std::filesystem;
using nlohmann::json;

std::atomic<bool>& distill_stop_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}

namespace {

// The options that define the run: a resume with other values would not
// continue the same run.
json run_identity(const DistillOptions& o, int world_size) {
  json id = {{"teacher", o.teacher},
          {"teacher_cache", o.teacher_cache},
          {"student", o.student},
          {"data", o.data},
          {"seq_len", o.seq_len},
          {"micro_batch", o.micro_batch},
          {"global_batch", o.global_batch},
          {"steps", o.schedule.total_steps},
          {"lr", o.schedule.lr},
          {"min_lr", o.schedule.min_lr},
          {"warmup", o.schedule.warmup_steps},
          {"schedule", LrSchedule::kind_name(o.schedule.kind)},
          {"decay_fraction", o.schedule.decay_fraction},
          {"weight_decay", o.adamw.weight_decay},
          {"beta1", o.adamw.beta1},
          {"beta2", o.adamw.beta2},
          {"eps", o.adamw.eps},
          {"clip_grad", o.clip_grad},
          {"kd_loss", kd_loss_name(o.kd.loss)},
          {"temperature", o.kd.temperature},
          {"ce_weight", o.kd.ce_weight},
          {"seed", o.seed},
          {"dtype", o.dtype},
          {"mode", o.train_from_scratch ? "train" : "distill"},
          {"world_size", world_size}};
  // Runs from before the sharded levels have no "shard": none.
  if (o.shard != ShardLevel::None) id["shard"] = shard_level_name(o.shard);
  if (o.train_from_scratch)  // no teacher: the KD settings play no part
    for (const char* k : {"teacher", "teacher_cache", "kd_loss", "temperature", "ce_weight"}) id.erase(k);
  return id;
}

void validate(const DistillOptions& o) {
  if (o.seq_len <= 0) throw InputError("--seq-len must be positive");
  // fp16 gradients underflow without loss scaling, which this loop does not do.
  if (parse_model_dtype(o.dtype) == torch::kFloat16)
    throw InputError("--dtype fp16: fp16 gradients underflow without loss scaling; train in bf16 (or fp32)");
  if (o.micro_batch <= 0 || o.global_batch <= 0) throw InputError("--micro-batch and --global-batch must be positive");
  if (o.global_batch % o.micro_batch != 0)
    throw InputError(fmt::format("--global-batch {} must be a multiple of --micro-batch {}", o.global_batch,
                                 o.micro_batch));
  o.schedule.validate();
  if (o.eval_every < 0 || o.save_every < 0) throw InputError("--eval-every and --save-every must be >= 0");
  if (o.keep_last < 1) throw InputError("--keep-last must be at least 1");
  if (o.clip_grad < 0) throw InputError("--clip-grad must be >= 0");
  if (!(o.adamw.beta1 >= 0 && o.adamw.beta1 < 1 && o.adamw.beta2 >= 0 && o.adamw.beta2 < 1))
    throw InputError("--beta1 and --beta2 must be in [0, 1)");
  if (o.adamw.weight_decay < 0) throw InputError("--weight-decay must be >= 0");
  if (o.stop_at_step < 0) throw InputError("--stop-at-step must be >= 0 (0: no stop)");
  if (o.bucket_bytes < 1) throw InputError("--bucket-size must be positive");
  if (o.out.empty()) throw InputError("missing --out");
  if (o.train_from_scratch && (!o.teacher.empty() || !o.teacher_cache.empty()))
    throw InputError("train uses no teacher");
  if (!o.train_from_scratch && o.teacher.empty() && o.teacher_cache.empty())
    throw InputError("give --teacher, --teacher-cache or both");
  // final/ carries these files: a broken one is refused now, not after training.
  for (const auto& dir : {o.teacher, o.student})
    if (!dir.empty()) check_model_folder_files(dir);
}

// Peak resident memory of this process (host memory; device memory is
// logged per step from the caching allocator).
uint64_t max_rss_bytes() {
  struct rusage u;
  if (::getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;
}

// Plain next-token cross-entropy (train mode), reported as a KdResult
// (kd_sum = agree = 0; ce_sum = the loss sum), its sums left on the device.
KdResult cross_entropy_loss(HybridLM& student, const torch::Tensor& normed, const torch::Tensor& targets) {
  auto logits = student->lm_head(normed.reshape({-1, normed.size(-1)}));
  auto t = targets.reshape({-1});
  KdResult r;
  r.loss = torch::nn::functional::cross_entropy(logits, t);
  r.tokens = t.numel();
  torch::NoGradGuard no_grad;
  const auto zero = torch::zeros({}, logits.options().dtype(torch::kDouble));
  r.sums = torch::stack({zero, r.loss.detach().to(torch::kDouble) * static_cast<double>(r.tokens),
                         logits.argmax(-1).eq(t).sum().to(torch::kDouble), zero});
  return r;
}

std::string step_name(int64_t step) { return fmt::format("step-{:08d}", step); }

// MINIPUZZLE_TEST_DIE_IN_CHECKPOINT=RANK:STEP: that rank of a sharded run
// dies (SIGKILL, by its own hand) while it writes its part of the checkpoint
// of that step, leaving half of its optimizer shard in the staging
// directory. The test of a rank dying mid-checkpoint
// (tests/distill/test_sharded_distill.py) needs the death at that moment,
// which a kill from outside hits only by chance. Unset: never.
std::optional<std::pair<int, int64_t>> die_in_checkpoint() {
  const char* v = std::getenv("MINIPUZZLE_TEST_DIE_IN_CHECKPOINT");
  if (v == nullptr || *v == '\0') return std::nullopt;
  int rank = -1;
  long long step = -1;
  char tail = 0;
  if (std::sscanf(v, "%d:%lld%c", &rank, &step, &tail) != 2 || rank < 0 || step < 0)
    throw InputError(fmt::format("MINIPUZZLE_TEST_DIE_IN_CHECKPOINT: expected RANK:STEP, got '{}'", v));
  return std::make_pair(rank, static_cast<int64_t>(step));
}

// Completed checkpoints, oldest first (partial ones are hidden directories).
std::vector<fs::path> list_checkpoints(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step-", 0) == 0 && fs::exists(e.path() / "trainer_state.json")) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

struct EvalMetrics {
  double loss = 0, kl = 0, accuracy = 0, agreement = 0;
  uint64_t tokens = 0;
  bool cut_short = false;  // a stop signal ended it early: not a measurement
};

// Each rank evaluates every world_size-th window; the sums are combined.
// Without a teacher (offline cache only), KL and agreement are NaN. A
// stoppable evaluation ends before its next batch once a stop is requested
// (a long one would hold a SIGTERM off for minutes, past a scheduler's grace
// period); every rank still joins the final sum, so all of them see the cut.
// Parameter-sharded models (units non-null) gather unit by unit: every rank
// runs as many batches as the rank with the most windows (one without a
// window only takes part in the gathers) and all agree on a stop before each.
EvalMetrics evaluate_against_teacher(HybridLM* teacher, HybridLM& student, const IndexedDataset& data,
                                     int64_t seq_len, int64_t batch, uint64_t max_tokens, DataParallel& dp,
                                     bool stoppable, ShardedParameters* student_units,
                                     ShardedParameters* teacher_units) {
  torch::NoGradGuard no_grad;
  student->eval();
  const auto all = sequential_windows(data.total_tokens(), seq_len, std::max<uint64_t>(1, max_tokens / seq_len));
  std::vector<uint64_t> starts;
  for (std::size_t i = static_cast<std::size_t>(dp.rank()); i < all.size(); i += dp.world_size()) starts.push_back(all[i]);
  LogitComparison sum;
  bool cut = false;
  if (student_units) {
    const std::size_t most = (all.size() + dp.world_size() - 1) / dp.world_size();
    for (std::size_t i = 0; i < most; i += batch) {
      if (dp.all_reduce_sum(stoppable && distill_stop_flag().load() ? 1.0 : 0.0) > 0) {
        cut = true;
        break;
      }
      torch::Tensor in, tg;
      if (i < starts.size()) {
        std::vector<uint64_t> part(starts.begin() + i, starts.begin() + std::min(starts.size(), i + batch));
        auto rows = to_device_async(gather_windows(data, part, seq_len, student->config().vocab_size), student->device());
        in = rows.narrow(1, 0, seq_len);
        tg = rows.narrow(1, 1, seq_len);
      }
      // The teacher first: its head is all it holds while the student runs.
      torch::Tensor t_hidden;
      if (teacher_units)
        t_hidden = teacher_units->forward_hidden(in);
      else if (teacher && in.defined())
        t_hidden = (*teacher)->forward_hidden(in);
      auto s_hidden = student_units->forward_hidden(in);
      if (in.defined()) {
        if (teacher)
          sum += compare_logits(*teacher, t_hidden, student, s_hidden, tg);
        else
          sum += compare_logits(student, s_hidden, student, s_hidden, tg);
      }
      student_units->release(student_units->head_unit());
      if (teacher_units) teacher_units->release(teacher_units->head_unit());
    }
  }
  for (std::size_t i = 0; i < starts.size() && !student_units; i += batch) {
    if (stoppable && distill_stop_flag().load()) {
      cut = true;
      break;
    }
    std::vector<uint64_t> part(starts.begin() + i, starts.begin() + std::min(starts.size(), i + batch));
    auto rows = to_device_async(gather_windows(data, part, seq_len, student->config().vocab_size), student->device());
    auto in = rows.narrow(1, 0, seq_len), tg = rows.narrow(1, 1, seq_len);
    auto s_hidden = student->forward_hidden(in);
    if (teacher) {
      sum += compare_logits(*teacher, (*teacher)->forward_hidden(in), student, s_hidden, tg);
    } else {
      // The student against itself: KL 0 and agreement 1 are discarded below.
      sum += compare_logits(student, s_hidden, student, s_hidden, tg);
    }
  }
  student->train();
  std::vector<double> v = {sum.ce_other_sum, sum.kl_sum, static_cast<double>(sum.other_correct),
                           static_cast<double>(sum.agree), static_cast<double>(sum.tokens), cut ? 1.0 : 0.0};
  dp.all_reduce_sum(v);
  const double n = v[4];
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (v[5] > 0) return {nan, nan, nan, nan, static_cast<uint64_t>(n), true};
  return {v[0] / n, teacher ? v[1] / n : nan, v[2] / n, teacher ? v[3] / n : nan, static_cast<uint64_t>(n), false};
}

DistillSummary run_distillation_in(const DistillOptions& o,
                                   const std::function<void(const DistillStatus&)>& on_step);

}  // namespace

void validate_distill_options(const DistillOptions& o) { validate(o); }

DistillSummary run_distillation(const DistillOptions& o, const std::function<void(const DistillStatus&)>& on_step) {
  // A new run that stops on bad input before its first checkpoint (a token id
  // beyond the vocabulary deep in the data, say) leaves nothing behind:
  // its run.json would make the corrected rerun ask for --resume.
  std::error_code ec;
  const bool out_existed = fs::exists(o.out, ec);
  const bool new_run = !o.resume && !fs::exists(o.out / "run.json", ec) && list_checkpoints(o.out / "checkpoints").empty();
  try {
    return run_distillation_in(o, on_step);
  } catch (const InputError&) {
    bool root = false;
    try {
      root = DistEnv::from_environment().rank == 0;
    } catch (const InputError&) {
    }
    if (new_run && root && list_checkpoints(o.out / "checkpoints").empty()) {
      if (!out_existed) {
        remove_tree(o.out);
      } else {  // only what this run wrote
        for (const char* name : {"run.json", "metrics.jsonl"}) fs::remove(o.out / name, ec);
        fs::remove(o.out / "checkpoints", ec);  // if empty
      }
    }
    throw;
  }
}

namespace {

DistillSummary run_distillation_in(const DistillOptions& o,
                                   const std::function<void(const DistillStatus&)>& on_step) {
  validate(o);
  const DistEnv env = DistEnv::from_environment();
  const int64_t local_batch = data_parallel_local_batch(o.global_batch, o.micro_batch, env.world_size);
  const auto data = IndexedDataset::open(o.data);
  const auto eval_data = IndexedDataset::open(o.eval_data.empty() ? o.data : o.eval_data);
  const WindowOrder order(data->total_tokens(), o.seq_len, o.seed);
  if (order.windows() < static_cast<uint64_t>(o.global_batch))
    throw InputError(fmt::format("dataset {} holds {} windows of --seq-len {}, fewer than one --global-batch of {}",
                                 data->prefix(), order.windows(), o.seq_len, o.global_batch));
  if (eval_data->total_tokens() < static_cast<uint64_t>(o.seq_len) + 1)
    throw InputError(fmt::format("--eval-data {} has fewer than one window of --seq-len {} + 1 tokens",
                                 eval_data->prefix(), o.seq_len));

  // The run directory: a new one, or the one being resumed.
  const fs::path ckpt_dir = o.out / "checkpoints";
  const json identity = run_identity(o, env.world_size);
  std::error_code ec;
  auto existing = list_checkpoints(ckpt_dir);
  if (!o.resume && (fs::exists(o.out / "run.json") || !existing.empty()))
    throw InputError(fmt::format("{} already holds a distillation run; pass --resume to continue it or choose a "
                                 "new --out",
                                 o.out.string()));
  if (o.resume && fs::exists(o.out / "run.json")) {
    json before = parse_json_read_back(read_file(o.out / "run.json"));
    // A sharded run re-shards its optimizer state on load: it may go on at
    // another world size (the global batch, and so the data order, is the same).
    if (o.shard != ShardLevel::None && before.is_object() && before.contains("world_size") &&
        before.value("shard", "none") == shard_level_name(o.shard))
      before["world_size"] = env.world_size;
    if (before.is_discarded() || before != identity) {
      std::string diff;
      if (!before.is_discarded())
        for (const auto& [k, v] : identity.items())
          if (!before.contains(k) || before[k] != v) diff += (diff.empty() ? "" : ", ") + k;
      throw InputError(fmt::format("--resume: options differ from the run in {} ({})", o.out.string(),
                                   diff.empty() ? "unreadable run.json" : diff));
    }
  }

  const auto dtype = parse_model_dtype(o.dtype);
  torch::Device device = parse_device(o.device);
  // One device per process: rank r of a node uses cuda:LOCAL_RANK.
  if (device.is_cuda() && env.world_size > 1) device = torch::Device(torch::kCUDA, env.local_rank);
  DataParallelOptions dp_options;
  dp_options.bucket_bytes = o.bucket_bytes;
  // MINIPUZZLE_PROCESS_GROUP=1: a single process still builds its process
  // group (NCCL on CUDA, Gloo on the CPU) and runs every collective over its
  // one rank, so the sharded code paths and their communication can be
  // measured on one GPU (bench/distill/bench_shard_levels.py).
  if (const char* v = std::getenv("MINIPUZZLE_PROCESS_GROUP"); v != nullptr && std::string(v) == "1")
    dp_options.force_group = true;
  DataParallel dp(env, device, dp_options);
  // Every rank has checked the run directory before rank 0 writes into it.
  dp.barrier();
  std::optional<TeacherCache> cache;
  if (!o.teacher_cache.empty()) {
    cache = TeacherCache::open(o.teacher_cache);
    // The teacher runs the evaluations, the cache feeds the steps: the same model.
    if (!o.teacher.empty()) cache->check_teacher(o.teacher_config_hash, o.teacher_weights_hash);
    if (std::abs(cache->temperature() - o.kd.temperature) > 1e-12)
      throw InputError(fmt::format("--teacher-cache was written at temperature {}, this run uses --temperature {}",
                                   cache->temperature(), o.kd.temperature));
  }
  // --shard parameters: each model holds only this rank's range of its
  // weights, read straight from the checkpoint (sharded_parameters.h).
  const bool shard_weights = o.shard == ShardLevel::Parameters;
  auto gathered = std::make_shared<GatheredBytes>();
  auto load_sharded = [&](const fs::path& dir, bool trainable) {
    std::error_code dir_ec;
    if (!fs::is_directory(dir, dir_ec)) throw InputError(dir.string() + ": not a checkpoint directory");
    const ModelConfig cfg = ModelConfig::load(dir);
    const CheckpointReader reader = CheckpointReader::open(dir);
    auto units = std::make_unique<ShardedParameters>(
        HybridLM(cfg, torch::TensorOptions().dtype(dtype).device(device), /*placeholders=*/true), dp, trainable,
        gathered);
    // Each rank reads its own range: one that fails stops them all (none
    // waits in a collective for it), with its line or, elsewhere, this one.
    std::string bad;
    try {
      units->load(reader);
    } catch (const InputError& e) {
      bad = e.what();
    }
    if (dp.all_reduce_sum(bad.empty() ? 0.0 : 1.0) > 0)
      throw InputError(bad.empty() ? fmt::format("{}: another rank could not read its range of the weights",
                                                 dir.string())
                                   : bad);
    return units;
  };
  HybridLM teacher{nullptr};
  std::unique_ptr<ShardedParameters> teacher_units;
  if (!o.teacher.empty()) {
    if (shard_weights) {
      teacher_units = load_sharded(o.teacher, /*trainable=*/false);
      teacher = teacher_units->model();
    } else {
      teacher = load_model(o.teacher, dtype, device);
    }
    teacher->eval();
    for (auto& p : teacher->parameters()) p.set_requires_grad(false);
  }

  DistillSummary summary;
  int64_t start_step = 0;
  WindowOrder::Position pos;
  fs::path resume_from;
  if (o.resume && !existing.empty()) resume_from = existing.back();
  // Student weights: fp32 when training in fp32 (CPU); in bf16 the optimizer
  // keeps fp32 masters and the model holds the rounded copy.
  const fs::path student_dir = resume_from.empty() ? fs::path(o.student) : resume_from;
  std::unique_ptr<ShardedParameters> student_units;
  if (shard_weights) student_units = load_sharded(student_dir, /*trainable=*/true);
  HybridLM student = shard_weights ? student_units->model() : load_model(student_dir, dtype, device);
  if (teacher && student->config().vocab_size != teacher->config().vocab_size)
    throw InputError(fmt::format("teacher vocab {} != student vocab {}: distillation needs the same tokenizer",
                                 teacher->config().vocab_size, student->config().vocab_size));
  if (cache) {
    cache->check_matches(student->config(), o.data, data->total_tokens(), o.seq_len, o.seed);
    const uint64_t need = static_cast<uint64_t>(o.schedule.total_steps) * static_cast<uint64_t>(o.global_batch);
    if (!cache->covers(need - 1))
      throw InputError(fmt::format("--teacher-cache holds {} windows; {} steps x --global-batch {} need {}",
                                   cache->windows(), o.schedule.total_steps, o.global_batch, need));
  }
  student->train();
  std::vector<std::pair<std::string, torch::Tensor>> named;
  std::vector<torch::Tensor> params;
  for (auto& p : student->named_parameters()) {
    // A frozen parameter (an MoE router's e_score_correction_bias) is not
    // the optimizer's: no moments, no decay, never changed. Sharded weights
    // keep it in their flat layout, where its gradient stays zero.
    if (shard_weights || p.value().requires_grad()) named.emplace_back(p.key(), p.value());
    params.push_back(p.value());
  }
  // Replicas start bit-identical (also after a resume, where every rank read
  // the same checkpoint; the broadcast makes it exact regardless). Sharded
  // weights: each rank read its own range of that checkpoint.
  if (!shard_weights) dp.broadcast_parameters(params);
  // Either the whole optimizer state on every rank or this rank's range of it.
  std::optional<AdamW> whole_optimizer;
  std::unique_ptr<ShardedAdamW> sharded;
  if (o.shard == ShardLevel::None)
    whole_optimizer.emplace(named, o.adamw);
  else
    sharded = std::make_unique<ShardedAdamW>(named, o.adamw, dp, o.shard,
                                             shard_weights ? student_units->shard() : torch::Tensor());
  if (student_units)
    student_units->set_gradient_sink(
        [opt = sharded.get()](int64_t lo, const torch::Tensor& mean) { opt->accumulate_gradient(lo, mean); });
  auto optimizer_steps = [&] { return sharded ? sharded->steps() : whole_optimizer->steps(); };

  if (dp.is_root()) fs::create_directories(ckpt_dir, ec);
  if (ec) throw InputError(fmt::format("cannot create {}: {}", ckpt_dir.string(), ec.message()));
  // All but the newest --keep-last complete checkpoints.
  auto remove_old_checkpoints = [&] {
    auto all = list_checkpoints(ckpt_dir);
    for (std::size_t i = 0; i + static_cast<std::size_t>(o.keep_last) < all.size(); ++i) {
      // Hidden first (one rename), then removed: a kill midway never leaves a
      // visible checkpoint with files missing; the next run removes the rest.
      const fs::path doomed = ckpt_dir / fmt::format(".{}.partial-{}", all[i].filename().string(), ::getpid());
      std::error_code rename_ec;
      fs::rename(all[i], doomed, rename_ec);
      remove_tree(rename_ec ? all[i] : doomed);
    }
  };
  if (dp.is_root()) {  // what a killed run left: checkpoints half written or half removed, temporary files,
    remove_stale_temporaries(ckpt_dir);  // checkpoints beyond --keep-last (killed before removing them)
    // and the staging directories of sharded checkpoints never completed.
    std::vector<fs::path> staging;
    for (const auto& e : fs::directory_iterator(ckpt_dir, ec)) {
      const std::string n = e.path().filename().string();
      if (n.rfind(".step-", 0) == 0 && n.size() > 7 && n.compare(n.size() - 7, 7, ".shards") == 0)
        staging.push_back(e.path());
    }
    for (const auto& p : staging) remove_tree(p);
    remove_stale_temporaries(o.out);
    remove_old_checkpoints();
  }
  std::vector<std::string> metric_lines;
  uint64_t tokens = 0;  // trained tokens, across resumes
  if (!resume_from.empty()) {
    if (sharded) {
      // The manifest is the same for every rank (they fail together); each
      // rank checks the old ranks' files that overlap its range, and all
      // agree on which failed before any stops.
      const json manifest = read_optimizer_manifest(resume_from, sharded->layout(), o.shard);
      const FlatParameterLayout& layout = sharded->layout();
      const auto mine = optimizer_shards_over(manifest, layout.begin(dp.rank()),
                                              std::min(layout.end(dp.rank()), layout.total));
      std::string bad;
      std::vector<double> failed(manifest["files"].size(), 0.0);
      for (int q : mine) {
        const std::string why = check_optimizer_shard(resume_from, manifest, q);
        if (!why.empty()) {
          failed[static_cast<std::size_t>(q)] = 1.0;
          if (bad.empty()) bad = why;
        }
      }
      dp.all_reduce_sum(failed);
      if (!bad.empty()) throw InputError(bad);
      for (std::size_t q = 0; q < failed.size(); ++q)
        if (failed[q] > 0)
          throw InputError(fmt::format("{}: optimizer shard of rank {} is missing or corrupt",
                                       (resume_from / manifest["files"][q].value("file", "?")).string(), q));
      sharded->load(resume_from, manifest);
    } else {
      whole_optimizer->load(resume_from / "optimizer.safetensors");
    }
    json st = parse_json_read_back(read_file(resume_from / "trainer_state.json"));
    auto count = [&](const char* key) {
      return st.contains(key) && st[key].is_number_integer() && st[key].get<int64_t>() >= 0;
    };
    if (!st.is_object() || !count("step") || !count("epoch") || !count("index") ||
        (st.contains("tokens") && !count("tokens")))
      throw InputError(fmt::format("{}: unreadable trainer_state.json", resume_from.string()));
    start_step = st["step"].get<int64_t>();
    pos.epoch = st["epoch"].get<uint64_t>();
    pos.index = st["index"].get<uint64_t>();
    tokens = st.value("tokens", uint64_t{0});
    // Keep the metrics up to the checkpoint: the resumed run rewrites the rest.
    // The final evaluation runs again after the last step (a run killed after
    // it but before its report), so its record goes too.
    std::ifstream in(o.out / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      json j = parse_json_read_back(line);
      // A line of the wrong shape is dropped, like an unparsable one (value() would throw).
      if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer() ||
          (j.contains("eval") && !j["eval"].is_boolean()))
        continue;
      const int64_t s = j["step"].get<int64_t>();
      const bool final_eval = j.value("eval", false) && s == o.schedule.total_steps;
      if (s <= start_step && !final_eval) metric_lines.push_back(line);
    }
  }
  // Only rank 0 writes files.
  std::ofstream metrics;
  if (dp.is_root()) {
    write_file_atomic(o.out / "run.json", identity.dump(2) + "\n");
    std::string kept;
    for (const auto& l : metric_lines) kept += l + "\n";
    write_file_atomic(o.out / "metrics.jsonl", kept);
    metrics.open(o.out / "metrics.jsonl", std::ios::app);
  }
  auto log = [&](const json& j) {
    if (!dp.is_root()) return;
    metrics << j.dump() << "\n" << std::flush;
    // A full disk: stop here with the last checkpoint intact rather than train on without a record.
    if (!metrics) throw std::runtime_error(fmt::format("write failed for {}", (o.out / "metrics.jsonl").string()));
  };

  // The evaluations at the start and every --eval-every steps give way to a
  // stop signal: the run then checkpoints the step it is at and stops, and
  // the resumed run evaluates that step again (below), so its metrics equal
  // an uninterrupted run's. The final one, after the last step, runs whole.
  auto run_eval = [&](int64_t step, bool stoppable) {
    const EvalMetrics m = evaluate_against_teacher(teacher ? &teacher : nullptr, student, *eval_data, o.seq_len,
                                                   o.micro_batch, o.eval_tokens, dp, stoppable, student_units.get(),
                                                   teacher_units.get());
    if (m.cut_short) return m;  // no record
    json rec = {{"step", step}, {"eval", true}, {"loss", m.loss}, {"accuracy", m.accuracy}, {"tokens", m.tokens}};
    if (teacher) {
      rec["kl"] = m.kl;
      rec["agreement"] = m.agreement;
    }
    log(rec);
    return m;
  };
  // Checkpoints are taken at the end of a step (copies on the host) and
  // written on a helper thread while training goes on; one at a time. A
  // write's error stops the run at the next checkpoint or at the end, with
  // the checkpoints before it intact.
  BackgroundJob checkpoint_writer;  // after everything its jobs use: destroyed (waited for) first
  const auto die_at = die_in_checkpoint();
  // Sharded: every rank writes its optimizer shard into a staging directory
  // (now, on this thread), their sizes and checksums are summed to rank 0,
  // which moves the files into the checkpoint with the manifest before the
  // checkpoint is renamed into place. The sum is the barrier that makes this
  // safe: each part is written atomically (fsynced) before its rank joins
  // it, so the manifest never names a part that is not durable, and a rank
  // that dies before it leaves the others failing in that collective (or in
  // the weights' gathers before it) with the previous checkpoint the latest.
  auto save_sharded_checkpoint = [&](int64_t step) {
    const fs::path target = ckpt_dir / step_name(step);
    if (fs::exists(target / "trainer_state.json")) {  // the same answer on every rank
      dp.barrier();
      return target;
    }
    const fs::path staging = optimizer_shard_staging(target);
    std::error_code mk;
    fs::create_directories(staging, mk);
    const int world = dp.world_size(), rank = dp.rank();
    const fs::path mine = staging / optimizer_shard_file_name(rank, world);
    ShardedAdamW::write_state(sharded->snapshot(), sharded->layout(), rank, mine);
    if (die_at && die_at->first == rank && die_at->second == step) {
      fs::resize_file(mine, fs::file_size(mine) / 2);
      std::raise(SIGKILL);
    }
    // Sharded weights: gathered tensor by tensor, rank 0 writes them here now.
    const fs::path model_files = staging / "model";
    if (student_units) {
      if (dp.is_root()) fs::create_directories(model_files);
      write_sharded_model(*student_units, dp, model_files, torch::kFloat32);
    }
    const ShardFileRecord record = shard_file_record(mine);
    std::vector<double> v(2 * static_cast<std::size_t>(world), 0.0);  // bytes and CRC-32: exact in a double
    v[2 * static_cast<std::size_t>(rank)] = static_cast<double>(record.bytes);
    v[2 * static_cast<std::size_t>(rank) + 1] = static_cast<double>(record.crc32);
    dp.all_reduce_sum(v);
    if (dp.is_root()) {
      std::vector<ShardFileRecord> files;
      for (int r = 0; r < world; ++r)
        files.push_back({optimizer_shard_file_name(r, world), static_cast<int64_t>(v[2 * r]),
                         static_cast<uint32_t>(v[2 * r + 1])});
      checkpoint_writer.finish();
      std::shared_ptr<ModelSnapshot> model;
      if (!student_units) model = std::make_shared<ModelSnapshot>(snapshot_model(student, torch::kFloat32));
      json st = {{"step", step}, {"epoch", pos.epoch}, {"index", pos.index}, {"tokens", tokens},
                 {"optimizer_steps", optimizer_steps()}, {"lr_next", o.schedule.at(step)},
                 {"note", "no other random state: the window order is keyed by seed"}};
      const std::string manifest = optimizer_manifest(sharded->layout(), o.shard, step, files).dump(2) + "\n";
      checkpoint_writer.start([target, staging, files, model, model_files, manifest, state = st.dump(2) + "\n",
                               &remove_old_checkpoints] {
        remove_tree(target);
        AtomicDirectory dir(target);
        if (model) {
          write_model_snapshot(*model, dir.path());
        } else {
          std::vector<fs::path> written;
          for (const auto& e : fs::directory_iterator(model_files)) written.push_back(e.path());
          for (const auto& f : written) fs::rename(f, dir.path() / f.filename());
        }
        for (const auto& f : files) fs::rename(staging / f.file, dir.path() / f.file);
        write_file_atomic(dir.path() / kOptimizerManifest, manifest);
        write_file_atomic(dir.path() / "trainer_state.json", state);
        dir.commit();
        remove_tree(staging);
        remove_old_checkpoints();
      });
    }
    dp.barrier();
    return target;
  };
  auto save_checkpoint = [&](int64_t step) {
    if (sharded) return save_sharded_checkpoint(step);
    const fs::path target = ckpt_dir / step_name(step);
    if (!dp.is_root() || fs::exists(target / "trainer_state.json")) {  // rank 0 writes; others wait
      dp.barrier();
      return target;
    }
    checkpoint_writer.finish();
    auto model = std::make_shared<ModelSnapshot>(snapshot_model(student, torch::kFloat32));
    auto optimizer_state = std::make_shared<AdamW::State>(whole_optimizer->snapshot());
    json st = {{"step", step}, {"epoch", pos.epoch}, {"index", pos.index}, {"tokens", tokens},
               {"optimizer_steps", optimizer_steps()},
               {"lr_next", o.schedule.at(step)}, {"note", "no other random state: the window order is keyed by seed"}};
    checkpoint_writer.start([target, model, optimizer_state, state = st.dump(2) + "\n", &remove_old_checkpoints] {
      remove_tree(target);
      AtomicDirectory dir(target);
      write_model_snapshot(*model, dir.path());
      AdamW::write_state(*optimizer_state, dir.path() / "optimizer.safetensors");
      write_file_atomic(dir.path() / "trainer_state.json", state);
      dir.commit();
      remove_old_checkpoints();
    });
    dp.barrier();
    return target;
  };

  const int64_t steps = o.schedule.total_steps;
  // The evaluation due at the step the run starts from: at step 0, or where a
  // stop cut the one due at a checkpointed step (its record is then missing).
  bool cut_at_start = false;
  if (start_step == 0) {
    const EvalMetrics m = run_eval(0, /*stoppable=*/true);
    cut_at_start = m.cut_short;
    summary.first_eval_loss = m.loss;
  } else if (o.eval_every > 0 && start_step % o.eval_every == 0 && start_step < steps) {
    bool recorded = false;
    for (const auto& l : metric_lines) {
      const json j = parse_json_read_back(l);
      recorded = recorded || (j.value("eval", false) && j["step"].get<int64_t>() == start_step);
    }
    if (!recorded) cut_at_start = run_eval(start_step, /*stoppable=*/true).cut_short;
  }
  if (cut_at_start) {
    summary.last_checkpoint = save_checkpoint(start_step);  // at step 0 the untrained student, to resume from
    summary.interrupted = true;
  }
  const int64_t accum = local_batch / o.micro_batch;  // micro-batches per rank and step
  const auto t0 = std::chrono::steady_clock::now();
  const uint64_t tokens_at_start = tokens;
  DistillStatus status;
  status.steps = steps;
  int64_t step = start_step;
  OverlappedAllReduce sync(dp, params);  // armed anew each step
  for (; step < steps && !cut_at_start; ++step) {
    const double lr = o.schedule.at(step);
    reset_device_peak(device);
    // The step's sums stay on the device until all its micro-batches are
    // queued: one host synchronisation per step, none per micro-batch.
    torch::Tensor step_loss = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device));
    torch::Tensor step_sums = torch::zeros({4}, step_loss.options());
    int64_t step_tokens = 0;
    // Every rank advances through the same global list; each trains its slice.
    const uint64_t first_window = pos.epoch * order.windows() + pos.index;  // the cache's numbering
    const auto mine = data_parallel_slice(order.take(pos, o.global_batch), dp.rank(), dp.world_size());
    for (int64_t m = 0; m < accum; ++m) {
      const std::vector<uint64_t> starts(mine.begin() + m * o.micro_batch, mine.begin() + (m + 1) * o.micro_batch);
      auto rows = to_device_async(gather_windows(*data, starts, o.seq_len, student->config().vocab_size), device);
      auto in = rows.narrow(1, 0, o.seq_len), tg = rows.narrow(1, 1, o.seq_len);
      KdResult r;
      auto student_hidden = [&] {
        if (student_units) return student_units->forward_hidden(in);  // gathered unit by unit, blocks recomputed
        return o.activation_checkpointing ? forward_hidden_checkpointed(student, in) : student->forward_hidden(in);
      };
      if (o.train_from_scratch) {
        r = cross_entropy_loss(student, student_hidden(), tg);
      } else if (cache) {
        const uint64_t w = first_window + static_cast<uint64_t>(dp.rank() * local_batch + m * o.micro_batch);
        const TeacherCache::Batch b = cache->batch(w, o.micro_batch);
        if (b.starts != starts)
          throw InputError(fmt::format("--teacher-cache windows {}.. do not match the training order (another "
                                       "seed, seq-len or dataset?)",
                                       w));
        r = cached_kd_loss(student, student_hidden(), b, tg, o.kd);
      } else {
        torch::Tensor t_hidden;
        {
          torch::NoGradGuard no_grad;
          t_hidden = teacher_units ? teacher_units->forward_hidden(in) : teacher->forward_hidden(in);
        }
        r = kd_loss_online(student, student_hidden(), teacher, t_hidden, tg, o.kd);
        // The loss took the teacher's logits in its forward: its head can go.
        if (teacher_units) teacher_units->release(teacher_units->head_unit());
      }
      if (o.overlap_all_reduce && m + 1 == accum) {  // the step's gradients are final in this backward
        if (sharded)
          sharded->arm();
        else
          sync.arm();
      }
      (r.loss / static_cast<double>(accum)).backward();
      if (student_units) student_units->finish_backward();  // every unit's gradient in its owner's shard
      step_loss += r.loss.detach().to(torch::kDouble) / static_cast<double>(accum);
      step_sums += r.sums;
      step_tokens += r.tokens;
    }
    // The mean over ranks (sharded: into each owner's range), before clipping.
    if (sharded)
      sharded->finish();
    else
      sync.finish();
    // Norm, clip factor and update stay on the device: the optimizer step is
    // queued before the host waits for anything.
    const torch::Tensor grad_norm_on_device = sharded ? sharded->clip_grad_norm_on_device(o.clip_grad)
                                                      : whole_optimizer->clip_grad_norm_on_device(o.clip_grad);
    if (sharded) {
      sharded->step(lr);  // this rank's range, then the all-gather of the parameters
      sharded->zero_grad();
    } else {
      whole_optimizer->step(lr);
      whole_optimizer->zero_grad();
    }
    // The step's numbers, summed over ranks in one collective and read in the
    // step's one wait: loss, kd_sum, ce_sum (KdResult::sums' order), tokens,
    // and the stop flag (a signal to any rank stops all of them at the same
    // step); the gradient norm, the same on every rank, joins them after the sum.
    auto stats = torch::cat({step_loss.view({1}), step_sums.narrow(0, 0, 2),
                             torch::full({1}, static_cast<double>(step_tokens), step_loss.options()),
                             torch::full({1}, distill_stop_flag().load() ? 1.0 : 0.0, step_loss.options())});
    dp.all_reduce_sum_in_place(stats);
    const auto host = torch::cat({stats, grad_norm_on_device.to(stats.device()).view({1})}).cpu();
    const auto h = host.accessor<double, 1>();
    const double loss_sum = h[0] / dp.world_size(), kd_sum = h[1], ce_sum = h[2];
    step_tokens = static_cast<int64_t>(h[3]);
    const bool stop_signal = h[4] > 0;
    const double grad_norm = h[5];
    tokens += static_cast<uint64_t>(step_tokens);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    json rec = {{"max_rss_bytes", max_rss_bytes()},
                {"step", step + 1},         {"loss", loss_sum},      {"kd", kd_sum / step_tokens},
                {"ce", ce_sum / step_tokens}, {"lr", lr},            {"grad_norm", grad_norm},
                {"tokens", tokens},         {"seconds", seconds},    {"tokens_per_second", (tokens - tokens_at_start) / std::max(seconds, 1e-9)}};
    // This step's peak on the accelerator: teacher + student + activations + optimizer.
    if (const auto peak = device_peak_allocated_bytes(device)) rec["device_peak_bytes"] = *peak;
    // What each rank holds, by the planner's kinds (`distill --plan`), in the
    // run's first step record (a resumed run keeps that record).
    if (step == 0) {
      OptimizerBytes ob;
      int64_t buckets = sync.buffer_bytes();
      if (sharded) {
        const ShardedAdamW::StateBytes b = sharded->state_bytes();
        ob = {b.master, b.moments, b.gradients, b.gradients_peak};
        buckets = b.buckets;
        // state_bytes counts the parameters' .grad itself: only the shard is extra.
        for (const auto& p : params)
          if (p.grad().defined()) ob.extra_gradients -= static_cast<int64_t>(p.grad().nbytes());
      } else {
        const AdamW::StateBytes b = whole_optimizer->state_bytes();
        ob = {b.master, b.moments, 0, -1};
      }
      HeldWeights held;
      if (student_units) {
        // Weights: this rank's ranges, and the most gathered units held at
        // once (both models); gradients: the shard plus the largest unit's
        // gradient while it was flattened; buckets: the reduces in flight.
        held = {teacher_units ? teacher_units->shard_bytes() : -1, student_units->shard_bytes(), gathered->peak};
        ob.gradients_peak = ob.extra_gradients + student_units->unit_gradient_peak_bytes();
        buckets = student_units->reduce_peak_bytes();
      }
      rec["state_bytes"] = rank_state_bytes(teacher ? &teacher : nullptr, student, ob, buckets, dp, held);
      rec["process_group"] = dp.backend_name();  // none, gloo or nccl
    }
    log(rec);
    status.step = step + 1;
    status.tokens = tokens;
    status.loss = loss_sum;
    status.lr = lr;
    status.seconds = seconds;
    status.tokens_per_second = (tokens - tokens_at_start) / std::max(seconds, 1e-9);
    if (on_step) on_step(status);

    const bool last = step + 1 == steps;
    bool stop = stop_signal || (o.stop_at_step > 0 && step + 1 >= o.stop_at_step);
    if (o.eval_every > 0 && (step + 1) % o.eval_every == 0 && !last)
      stop = run_eval(step + 1, /*stoppable=*/true).cut_short || stop;
    if (last || stop || (o.save_every > 0 && (step + 1) % o.save_every == 0))
      summary.last_checkpoint = save_checkpoint(step + 1);
    if (stop && !last) {
      summary.interrupted = true;
      ++step;
      break;
    }
  }
  summary.steps_done = step;
  checkpoint_writer.finish();  // the last checkpoint is whole before anything reports it
  if (summary.interrupted) {
    dp.barrier();
    return summary;
  }

  const EvalMetrics final_eval = run_eval(steps, /*stoppable=*/false);
  summary.final_eval_loss = final_eval.loss;
  summary.final_eval_kl = final_eval.kl;
  // The shippable student: weights in the dtype the student came in.
  const fs::path final_dir = o.out / "final";
  const auto final_dtype = dtype == torch::kFloat32 ? torch::kFloat32 : torch::kBFloat16;
  // Sharded weights: gathered one tensor at a time, rank 0 writes (the
  // same answer to "written already?" on every rank: rank 0 cannot commit
  // before every rank has joined the write).
  if (student_units && !fs::exists(final_dir / "config.json")) {
    std::optional<AtomicDirectory> staged;
    if (dp.is_root()) {
      remove_tree(final_dir);
      staged.emplace(final_dir);
    }
    write_sharded_model(*student_units, dp, staged ? staged->path() : final_dir, final_dtype);
    if (staged) staged->commit();
  }
  if (dp.is_root()) {
    metrics.close();
    if (!student_units && !fs::exists(final_dir / "config.json")) {
      remove_tree(final_dir);
      save_model(student, final_dir, final_dtype);
    }
    // The teacher's tokenizer / generation files (the student's when the
    // teacher folder has none, e.g. an offline-cache run).
    const bool teacher_has = !o.teacher.empty() && !check_model_folder_files(o.teacher).empty();
    if (teacher_has || !o.student.empty()) copy_model_folder_files(teacher_has ? o.teacher : o.student, final_dir);
    write_distill_report(o.out);
  }
  summary.final_dir = final_dir;
  dp.barrier();
  return summary;
}

}  // namespace
}  // namespace minipuzzle
