// minipuzzle score DIR --data PREFIX [--samples N] [--seq-len N] [--batch N]
//   [--aggregation seq=mean,batch=l2] [--layer-metrics mse,kl,loss,bi] --out SCORES_DIR
//   [--max-device-memory SIZE|PCT] [--dry-run]
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "cli_common.h"
#include "commands.h"
#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/importance_report.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/score_importance.h"
#include "minipuzzle/streamed_model.h"
#include "residency_option.h"

namespace minipuzzle::cli {

int cmd_score(const Args& args) {
  const std::string usage =
      "minipuzzle score DIR --data PREFIX --out SCORES_DIR [--samples N] [--seq-len N] [--batch N]\n"
      "       [--aggregation seq=mean|l2|max,batch=mean|l2|var] [--layer-metrics mse,kl,loss,bi]\n"
      "       [--max-device-memory SIZE|PCT] [--dry-run]";
  po::options_description opts("options");
  opts.add_options()
      ("dir", po::value<std::string>(), "checkpoint directory (config.json + *.safetensors)")
      ("data", po::value<std::string>(), "calibration dataset prefix (PREFIX.bin / PREFIX.idx)")
      ("out", po::value<std::string>(), "scores directory to create (must not exist or be empty)")
      ("samples", po::value<int64_t>()->default_value(1024), "calibration windows")
      ("seq-len", po::value<int64_t>()->default_value(2048), "tokens per window")
      ("batch", po::value<int64_t>()->default_value(1), "windows per forward pass")
      ("seed", po::value<uint64_t>()->default_value(1234), "which windows are drawn")
      ("aggregation", po::value<std::string>()->default_value("seq=mean,batch=l2"),
       "width statistics: over the sequence (mean|l2|max), then the samples (mean|l2|var)")
      ("layer-metrics", po::value<std::string>()->default_value("mse,kl,loss,bi"),
       "drop-one layer metrics to measure (kl and loss need the LM head per dropped layer)")
      ("dtype", po::value<std::string>()->default_value("fp32"), "compute dtype: fp32 | bf16 | fp16")
      ("device", po::value<std::string>()->default_value("cpu"), "cpu | cuda | cuda:N");
  opts.add(residency_options());
  po::positional_options_description pos;
  pos.add("dir", 1);
  po::variables_map vm;
  if (!parse_args(usage, args, opts, pos, vm)) return 0;
  require(vm, "dir", usage);
  // --dry-run plans from the config alone: no dataset or output needed.
  const bool dry_run = vm["dry-run"].as<bool>();
  if (!dry_run) {
    require(vm, "data", usage);
    require(vm, "out", usage);
  }

  ScoreOptions so;
  so.samples = vm["samples"].as<int64_t>();
  so.seq_len = vm["seq-len"].as<int64_t>();
  so.batch = vm["batch"].as<int64_t>();
  so.seed = vm["seed"].as<uint64_t>();
  so.aggregation = Aggregation::parse(vm["aggregation"].as<std::string>());
  so.layer_metrics = LayerMetrics::parse(vm["layer-metrics"].as<std::string>());
  const std::string dir = vm["dir"].as<std::string>();
  auto dtype = parse_model_dtype(vm["dtype"].as<std::string>());
  auto device = parse_device(vm["device"].as<std::string>());
  const ResidencyPlan plan = plan_forward(vm, dir, dtype, device, so.batch, so.seq_len,
                                          (so.samples + so.batch - 1) / std::max<int64_t>(so.batch, 1),
                                          score_residency_needs(ModelConfig::load(dir), so, dtype));
  if (dry_run) {
    std::cout << plan.describe() << "\n";
    return 0;
  }
  std::cout << plan.describe() << std::endl;
  auto data = IndexedDataset::open(vm["data"].as<std::string>());
  calibration_windows(*data, so);  // the length check, before loading a large model
  const CheckpointFingerprint fp = checkpoint_fingerprint(dir);
  ForwardModel model(dir, dtype, device, plan);

  // Everything goes into a hidden partial directory renamed at the end, so a
  // killed run never leaves a scores dir that looks complete.
  AtomicDirectory out(vm["out"].as<std::string>());
  std::ofstream log(out.path() / "score.log.jsonl");
  const uint64_t total_tokens = static_cast<uint64_t>(so.samples) * static_cast<uint64_t>(so.seq_len);
  ImportanceScores scores;
  {
    Progress progress("score", total_tokens);
    scores = score_importance(model, *data, so, [&](const ScoreProgress& p) {
      progress.update(p.tokens);
      nlohmann::json rec = {{"batch", p.batch},     {"batches", p.batches}, {"tokens", p.tokens},
                            {"seconds", p.seconds}, {"tokens_per_second", p.tokens / std::max(p.seconds, 1e-9)}};
      log << rec.dump() << "\n" << std::flush;
    });
  }
  log.close();
  // An ofstream fails quietly (a full disk included): check it, the scores dir must be whole.
  if (log.fail()) throw std::runtime_error("write failed for " + (out.target() / "score.log.jsonl").string());
  scores.config_hash = fp.config_hash;
  scores.weights_hash = fp.weights_hash;
  {
    auto prov = nlohmann::json::parse(scores.provenance_json);
    prov["checkpoint"] = dir;
    prov["weight_bytes_peak"] = model.peak_bytes_held();
    scores.provenance_json = prov.dump();
  }
  save_importance(scores, model.model()->config(), out.path());
  write_importance_report(scores, model.model()->config(), out.path());
  out.commit();

  const auto prov = nlohmann::json::parse(scores.provenance_json);
  std::cout << fmt::format("scored {} layers on {} tokens in {:.1f} s ({:.0f} tok/s); wrote {}\n",
                           model.model()->config().num_layers(), prov["tokens"].get<uint64_t>(),
                           prov["seconds"].get<double>(),
                           prov["tokens"].get<double>() / std::max(prov["seconds"].get<double>(), 1e-9),
                           out.target().string());
  return 0;
}

}  // namespace minipuzzle::cli
