// minipuzzle teacher-logits TEACHER --data PREFIX --top-k K --out CACHE_DIR [options]
#include <fmt/format.h>

#include <iostream>

#include "cli_common.h"
#include "commands.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/importance_scores.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/teacher_cache.h"
#include "residency_option.h"

namespace minipuzzle::cli {

int cmd_teacher_logits(const Args& args) {
  const std::string usage =
      "minipuzzle teacher-logits TEACHER --data PREFIX --top-k K --out CACHE_DIR [--seq-len N] "
      "[--windows N | --tokens N] [--seed S] [--temperature T] [--batch N] [--dtype fp32|bf16] "
      "[--device cpu|cuda] [--shard-tokens N] [--max-device-memory SIZE|PCT] [--dry-run]";  // one line: it ends the one-line "missing X" error
  po::options_description opts("options");
  opts.add_options()
      ("teacher", po::value<std::string>(), "teacher checkpoint directory")
      ("data", po::value<std::string>(), "training dataset prefix (the one distill will read)")
      ("top-k", po::value<int64_t>(), "logits kept per token (the rest becomes one bucket)")
      ("out", po::value<std::string>(), "cache directory (rerun on an incomplete one to resume)")
      ("seq-len", po::value<int64_t>()->default_value(2048), "tokens per window (as distill --seq-len)")
      ("windows", po::value<uint64_t>(), "windows to cache, in training order (default: one epoch)")
      ("tokens", po::value<uint64_t>(), "or: tokens to cache (rounded up to whole windows)")
      ("seed", po::value<uint64_t>()->default_value(1234), "data order (as distill --seed)")
      ("temperature", po::value<double>()->default_value(1.0), "KD temperature the cache serves")
      ("batch", po::value<int64_t>()->default_value(1), "windows per teacher forward")
      ("dtype", po::value<std::string>()->default_value("fp32"), "teacher compute dtype: fp32 | bf16 | fp16")
      ("device", po::value<std::string>()->default_value("cpu"), "cpu | cuda | cuda:N")
      ("shard-tokens", po::value<uint64_t>()->default_value(1 << 18), "tokens per shard file (whole windows)")
      ("stop-after-shards", po::value<uint64_t>()->default_value(0), "stop after writing N shards as if killed (tests)");
  opts.add(residency_options());
  po::positional_options_description pos;
  pos.add("teacher", 1);
  po::variables_map vm;
  if (!parse_args(usage, args, opts, pos, vm)) return 0;
  for (const char* k : {"teacher", "data", "top-k", "out"}) require(vm, k, usage);

  TeacherCacheOptions o;
  o.teacher = vm["teacher"].as<std::string>();
  o.data = vm["data"].as<std::string>();
  o.k = vm["top-k"].as<int64_t>();
  o.out = vm["out"].as<std::string>();
  o.seq_len = vm["seq-len"].as<int64_t>();
  if (vm.count("windows") && vm.count("tokens")) throw InputError("give --windows or --tokens, not both");
  if (vm.count("windows")) {
    o.windows = vm["windows"].as<uint64_t>();
    if (o.windows == 0) throw InputError("--windows must be positive");
  }
  if (vm.count("tokens")) {
    o.tokens = vm["tokens"].as<uint64_t>();
    if (o.tokens == 0) throw InputError("--tokens must be positive");
  }
  o.seed = vm["seed"].as<uint64_t>();
  o.temperature = vm["temperature"].as<double>();
  o.batch = vm["batch"].as<int64_t>();
  o.dtype = vm["dtype"].as<std::string>();
  o.device = vm["device"].as<std::string>();
  o.shard_tokens = vm["shard-tokens"].as<uint64_t>();
  o.stop_after_shards = vm["stop-after-shards"].as<uint64_t>();
  if (o.k <= 0) throw InputError("--top-k must be positive");
  if (!(o.temperature > 0)) throw InputError("--temperature must be positive");
  if (o.batch <= 0) throw InputError("--batch must be positive");
  if (o.shard_tokens == 0) throw InputError("--shard-tokens must be positive");
  const CheckpointFingerprint fp = checkpoint_fingerprint(o.teacher);
  if (fp.weights_hash.empty())
    throw InputError(fmt::format("{}: no *.safetensors weights (teacher-logits needs the teacher's weights)",
                                 o.teacher.string()));
  o.teacher_config_hash = fp.config_hash;
  o.teacher_weights_hash = fp.weights_hash;
  if (o.seq_len <= 0) throw InputError("--seq-len must be positive");
  // A shard's windows are one pass's work: the plan groups batches within it.
  const int64_t shard_windows = std::max<int64_t>(1, static_cast<int64_t>(o.shard_tokens) / o.seq_len);
  o.residency = plan_forward(vm, o.teacher.string(), parse_model_dtype(o.dtype), parse_device(o.device), o.batch,
                             o.seq_len, (shard_windows + o.batch - 1) / o.batch);
  std::cout << o.residency->describe() << std::endl;
  if (vm["dry-run"].as<bool>()) return 0;

  TeacherCacheSummary s;
  {
    std::unique_ptr<Progress> progress;
    s = write_teacher_cache(o, [&](uint64_t done, uint64_t total) {
      if (!progress) progress = std::make_unique<Progress>("teacher-logits", total, "win");
      progress->update(done);
    });
  }
  if (s.already_complete) {
    std::cout << fmt::format("{} already holds this teacher cache ({} windows, {} tokens, {} shards); nothing to do\n",
                             o.out.string(), s.windows, s.tokens, s.shards);
    return 0;
  }
  if (s.interrupted) {
    std::cerr << fmt::format("minipuzzle teacher-logits: stopped after {} new shards; rerun the same command to "
                             "resume\n",
                             s.shards_written);
    return 130;
  }
  std::cout << fmt::format("cached top-{} teacher logits for {} windows ({} tokens) in {} shards ({} reused), "
                           "{:.1f} MB, in {}\n",
                           o.k, s.windows, s.tokens, s.shards, s.shards_reused, s.bytes / 1e6, o.out.string());
  return 0;
}

}  // namespace minipuzzle::cli
