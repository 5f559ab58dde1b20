// The options and run of `minipuzzle distill` and `minipuzzle train`: one
// loop (distill_trainer.h); train is distill with no teacher and plain
// cross-entropy.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "cli_common.h"
#include "commands.h"
#include "distill_plan.h"
#include "training_command.h"
#include "minipuzzle/distill_trainer.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/importance_scores.h"
#include "minipuzzle/memory_model.h"
#include "minipuzzle/progress.h"

namespace minipuzzle::cli {

namespace {
void request_stop(int) { distill_stop_flag().store(true); }

// MINIPUZZLE_TEST_HOLD_AFTER_STEP=N: after step N is logged, wait for a stop
// signal (at most 10 minutes) before going on. The interrupt-and-resume tests
// signal a run they see at step N, and without the hold a fast machine
// finishes the run first. 0 or unset: no hold.
int64_t hold_after_step() {
  const char* v = std::getenv("MINIPUZZLE_TEST_HOLD_AFTER_STEP");
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  if (*end != '\0' || n < 0)
    throw InputError(fmt::format("MINIPUZZLE_TEST_HOLD_AFTER_STEP: expected a step number, got '{}'", v));
  return n;
}

void wait_for_stop_signal() {
  const auto until = std::chrono::steady_clock::now() + std::chrono::minutes(10);
  while (!distill_stop_flag().load() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

std::string training_usage(bool from_scratch) {
  return std::string(from_scratch
                      ? "minipuzzle train --student DIR --data PREFIX --out RUN_DIR [--eval-data PREFIX]\n"
                      : "minipuzzle distill (--teacher DIR | --teacher-cache DIR) --student DIR --data PREFIX --out "
                        "RUN_DIR [--eval-data PREFIX]\n") +
      "       [--steps N | --tokens N] [--seq-len N] [--micro-batch N] [--global-batch N] [--lr X] [--min-lr X]\n"
      "       [--warmup N] [--schedule cosine|wsd|constant]" +
      (from_scratch ? "" : " [--loss forward_kl|reverse_kl|jsd] [--temperature T] [--ce-weight W]") +
      "\n       [--eval-every N] [--save-every N] [--keep-last N] [--resume] [--bucket-size SIZE]" +
      (from_scratch ? "" : "\n       [--world-size N] [--shard none|optimizer|gradients] [--device-memory SIZE]\n"
                           "   or: minipuzzle distill --plan (--teacher DIR | --teacher-cache DIR) --student DIR "
                           "[--world-size N] [--shard LEVEL] [--seq-len N] [--micro-batch N] [--device-memory SIZE] "
                           "[--json]");
}

po::options_description training_options(bool from_scratch) {
  po::options_description opts("options");
  // The teacher's options exist for distill only: train refuses them as unknown.
  if (!from_scratch)
    opts.add_options()
        ("teacher", po::value<std::string>(), "teacher checkpoint directory")
        ("teacher-cache", po::value<std::string>(), "top-k teacher logits from `minipuzzle teacher-logits` (same --data, --seq-len, --seed)")
        ("loss", po::value<std::string>()->default_value("forward_kl"), "forward_kl|fkl | reverse_kl|rkl | jsd")
        ("temperature", po::value<double>()->default_value(1.0), "KD temperature")
        ("ce-weight", po::value<double>()->default_value(0.0), "weight of the student's LM loss (0 = logits only)");
  opts.add_options()
      ("student", po::value<std::string>(), "model to train: a checkpoint directory (e.g. from `minipuzzle prune`, or `tools/make_tiny_model.py` for train)")
      ("data", po::value<std::string>(), "training dataset prefix")
      ("eval-data", po::value<std::string>(), "held-out dataset prefix (default: --data)")
      ("val-data", po::value<std::string>(), "same as --eval-data")
      ("out", po::value<std::string>(), "run directory (metrics, checkpoints, final student, report)")
      ("steps", po::value<int64_t>()->default_value(1000), "optimizer steps")
      ("tokens", po::value<uint64_t>(), "train on this many tokens instead: steps = ceil(N / (global-batch x seq-len))")
      ("seq-len", po::value<int64_t>()->default_value(2048), "tokens per window")
      ("micro-batch", po::value<int64_t>()->default_value(1), "windows per forward/backward")
      ("global-batch", po::value<int64_t>()->default_value(8), "windows per optimizer step (gradient accumulation)")
      ("lr", po::value<double>()->default_value(1e-4), "peak learning rate")
      ("min-lr", po::value<double>()->default_value(1e-5), "final learning rate")
      ("warmup", po::value<int64_t>()->default_value(0), "linear warmup steps")
      ("schedule", po::value<std::string>()->default_value("cosine"), "cosine | wsd | constant")
      ("decay-fraction", po::value<double>()->default_value(0.2), "wsd: share of the steps spent decaying")
      ("weight-decay", po::value<double>()->default_value(0.1), "AdamW decoupled weight decay (matrices only)")
      ("beta1", po::value<double>()->default_value(0.9), "AdamW beta1")
      ("beta2", po::value<double>()->default_value(0.95), "AdamW beta2")
      ("clip-grad", po::value<double>()->default_value(1.0), "global gradient-norm clip (0 = off)")
      ("chunk-tokens", po::value<int64_t>()->default_value(0), "tokens per loss chunk (0 = ~2^24 logits)")
      ("eval-every", po::value<int64_t>()->default_value(0), "evaluate every N steps (and always at start and end)")
      ("eval-tokens", po::value<uint64_t>()->default_value(1 << 16), "held-out tokens per evaluation (whole windows, at least one)")
      ("save-every", po::value<int64_t>()->default_value(0), "checkpoint every N steps (always at the end and on SIGINT/SIGTERM)")
      ("keep-last", po::value<int64_t>()->default_value(2), "checkpoints kept")
      ("seed", po::value<uint64_t>()->default_value(1234), "data order")
      ("dtype", po::value<std::string>()->default_value("fp32"), "compute dtype: fp32 | bf16 (fp32 master weights)")
      ("device", po::value<std::string>()->default_value("cpu"), "cpu | cuda | cuda:N")
      ("resume", po::bool_switch(), "continue the run in --out from its last checkpoint")
      ("activation-checkpointing", po::bool_switch(), "recompute each block in backward: less memory, ~1/3 more compute")
      ("no-overlap-all-reduce", po::bool_switch(),
       "data-parallel: all-reduce the gradients after backward instead of during it (same result)")
      ("bucket-size", po::value<std::string>()->default_value("25MiB"),
       "data-parallel: fp32 bytes per gradient bucket (one collective each; at --shard parameters a unit's "
       "gradient is cut into buckets of at most this), e.g. 25MiB")
      ("stop-at-step", po::value<int64_t>()->default_value(0), "stop after this step as if interrupted (time-boxed runs, tests)");
  if (!from_scratch) add_plan_options(opts);
  return opts;
}

// The run's options as the flags give them; reads no file.
DistillOptions options_from(const po::variables_map& vm, bool from_scratch) {
  DistillOptions o;
  if (vm.count("teacher")) o.teacher = vm["teacher"].as<std::string>();
  if (vm.count("teacher-cache")) o.teacher_cache = vm["teacher-cache"].as<std::string>();
  o.student = vm["student"].as<std::string>();
  o.data = vm["data"].as<std::string>();
  if (vm.count("eval-data")) o.eval_data = vm["eval-data"].as<std::string>();
  if (vm.count("val-data")) o.eval_data = vm["val-data"].as<std::string>();
  o.train_from_scratch = from_scratch;
  o.out = vm["out"].as<std::string>();
  o.seq_len = vm["seq-len"].as<int64_t>();
  o.micro_batch = vm["micro-batch"].as<int64_t>();
  o.global_batch = vm["global-batch"].as<int64_t>();
  o.schedule.kind = LrSchedule::parse_kind(vm["schedule"].as<std::string>());
  o.schedule.lr = vm["lr"].as<double>();
  o.schedule.min_lr = vm["min-lr"].as<double>();
  o.schedule.warmup_steps = vm["warmup"].as<int64_t>();
  o.schedule.total_steps = vm["steps"].as<int64_t>();
  if (vm.count("tokens")) {
    if (vm["steps"].defaulted() == false) throw InputError("give --steps or --tokens, not both");
    const uint64_t per_step = static_cast<uint64_t>(std::max<int64_t>(1, o.global_batch * o.seq_len));
    o.schedule.total_steps = static_cast<int64_t>((vm["tokens"].as<uint64_t>() + per_step - 1) / per_step);
    if (o.schedule.total_steps <= 0) throw InputError("--tokens must be positive");
  }
  o.schedule.decay_fraction = vm["decay-fraction"].as<double>();
  o.adamw.weight_decay = vm["weight-decay"].as<double>();
  o.adamw.beta1 = vm["beta1"].as<double>();
  o.adamw.beta2 = vm["beta2"].as<double>();
  o.clip_grad = vm["clip-grad"].as<double>();
  if (!from_scratch) {
    o.kd.loss = parse_kd_loss(vm["loss"].as<std::string>());
    o.kd.temperature = vm["temperature"].as<double>();
    o.kd.ce_weight = vm["ce-weight"].as<double>();
  }
  o.kd.chunk_tokens = vm["chunk-tokens"].as<int64_t>();
  if (!(o.kd.temperature > 0)) throw InputError("--temperature must be positive");
  if (o.kd.ce_weight < 0) throw InputError("--ce-weight must be >= 0");
  if (o.kd.chunk_tokens < 0) throw InputError("--chunk-tokens must be >= 0");
  o.eval_every = vm["eval-every"].as<int64_t>();
  o.eval_tokens = vm["eval-tokens"].as<uint64_t>();
  o.save_every = vm["save-every"].as<int64_t>();
  o.keep_last = vm["keep-last"].as<int64_t>();
  o.seed = vm["seed"].as<uint64_t>();
  o.dtype = vm["dtype"].as<std::string>();
  o.device = vm["device"].as<std::string>();
  o.resume = vm["resume"].as<bool>();
  o.activation_checkpointing = vm["activation-checkpointing"].as<bool>();
  o.overlap_all_reduce = !vm["no-overlap-all-reduce"].as<bool>();
  o.stop_at_step = vm["stop-at-step"].as<int64_t>();
  {
    const double bucket = parse_bytes(vm["bucket-size"].as<std::string>(), "--bucket-size");
    if (!(bucket >= 1)) throw InputError("--bucket-size must be at least one byte");
    o.bucket_bytes = static_cast<int64_t>(bucket);
  }
  if (!from_scratch) o.shard = parse_shard_level(vm["shard"].as<std::string>());
  return o;
}

}  // namespace

int run_training_command(const Args& args, bool from_scratch) {
  const std::string usage = training_usage(from_scratch);
  po::options_description opts = training_options(from_scratch);
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_args(usage, args, opts, pos, vm)) return 0;
  if (!from_scratch && plan_requested(vm)) return print_distill_plan(vm);
  for (const char* k : {"student", "data", "out"}) require(vm, k, usage);
  if (!from_scratch && !vm.count("teacher") && !vm.count("teacher-cache"))
    throw InputError("give --teacher, --teacher-cache or both");
  if (vm.count("eval-data") && vm.count("val-data")) throw InputError("give --eval-data or --val-data, not both");

  DistillOptions o = options_from(vm, from_scratch);
  if (!o.teacher.empty() && !o.teacher_cache.empty()) {  // the trainer checks them against the cache
    const CheckpointFingerprint fp = checkpoint_fingerprint(o.teacher);
    o.teacher_config_hash = fp.config_hash;
    o.teacher_weights_hash = fp.weights_hash;
  }

  const int64_t hold = hold_after_step();

  // Before anything loads: a job that cannot run here is refused in seconds.
  if (!from_scratch) check_distill_plan(vm);
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  DistillSummary s;
  {
    Progress progress(from_scratch ? "train" : "distill", static_cast<uint64_t>(o.schedule.total_steps), "step");
    s = run_distillation(o, [&](const DistillStatus& st) {
      progress.update(static_cast<uint64_t>(st.step));
      if (st.step == hold) wait_for_stop_signal();
    });
  }
  if (s.interrupted) {
    std::cerr << fmt::format("minipuzzle {}: stopped after step {}; checkpoint {}; rerun with --resume\n",
                             from_scratch ? "train" : "distill", s.steps_done, s.last_checkpoint.string());
    return 130;
  }
  std::cout << fmt::format("{} {} steps; eval loss {:.4f}{}; model in {}; report {}\n",
                           from_scratch ? "trained" : "distilled", s.steps_done, s.final_eval_loss,
                           std::isnan(s.final_eval_kl) ? "" : fmt::format(" (KL to teacher {:.4f})", s.final_eval_kl),
                           s.final_dir.string(), (o.out / "report.md").string());
  return 0;
}

void check_distill_args(const Args& args) {
  po::options_description opts = training_options(/*from_scratch=*/false);
  po::variables_map vm;
  if (!parse_args(training_usage(false), args, opts, po::positional_options_description(), vm))
    throw std::logic_error("check_distill_args: --help");
  validate_distill_options(options_from(vm, /*from_scratch=*/false));
}

}  // namespace minipuzzle::cli
