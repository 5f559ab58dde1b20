// The job file of `minipuzzle compress`: every setting of the whole chain
// (score -> search -> rank -> short distill -> pick -> long distill -> export)
// in one YAML document, each key also settable with `--set key=value`.
//
// Plain C++ (yaml-cpp, nlohmann-json; no LibTorch) so the parser is fuzzed
// and unit-tested on its own. Every problem is an InputError that names the
// key path and what was expected, e.g.
//   "job.yaml: search.top_k: expected an integer, got 'ten'".
//
// Paths written in the job file are relative to the file's directory; paths
// given with --set are relative to the current directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace minipuzzle {

struct CompressJob {
  std::string teacher;           // parent checkpoint dir (or config.json only, for --dry-run)
  std::string out;               // job directory: every stage's outputs
  std::string train_data;        // data.train: dataset prefix for scoring, ranking and distillation
  std::string validation_data;   // data.validation: held-out prefix (default: data.train)

  std::string device = "cpu";    // compute.device: cpu | cuda | cuda:N
  std::string dtype = "fp32";    // compute.dtype: fp32 | bf16
  // compute.max_device_memory: score's --max-device-memory (a size or a
  // percentage); empty: the command's default (the GPU's memory, or
  // everything resident on the CPU).
  std::string max_device_memory;

  struct Score {
    int64_t samples = 256, seq_len = 2048, batch = 1;
    uint64_t seed = 1234;
    std::string aggregation = "seq=mean,batch=l2";
    std::string layer_metrics = "mse,kl,loss,bi";
  } score;

  struct Search {
    std::string budget;  // required, e.g. 31.7GiB
    std::string precision = "bf16", kv_precision = "bf16", state_precision = "bf16";
    int64_t context = 8192, batch = 1;
    std::string workspace = "0";
    std::string space = "paper";               // paper | depth | full
    std::map<std::string, std::string> axes;  // axis name -> "min:max[:step]" or a value
    double max_depth_reduction = 1.0, max_width_reduction = 1.0, min_budget_use = 0.0;
    bool maximal_only = false;
    int64_t top_k = 10;
    // search --max-active-params: parameters used per token (MoE layers count
    // num_experts_per_tok routed experts); 0 = no limit.
    uint64_t max_active_params = 0;
  } search;

  struct Rank {
    uint64_t tokens = 1 << 20;
    int64_t seq_len = 2048, batch = 1;
    std::string by = "agreement";  // agreement | accuracy | loss | kl
  } rank;

  // Settings both distillations share.
  struct Distill {
    int64_t seq_len = 2048, micro_batch = 1, global_batch = 8;
    std::string loss = "forward_kl", schedule = "cosine";
    double temperature = 1.0, ce_weight = 0.0, weight_decay = 0.1, clip_grad = 1.0;
    uint64_t eval_tokens = 1 << 16;
    uint64_t seed = 1234;
    int64_t keep_last = 2;
    bool activation_checkpointing = false;
    // Data-parallel processes per distillation, started by compress on this
    // machine (one per GPU on CUDA: cuda:0..N-1; Gloo on CPU).
    int64_t processes = 1;
    // What each process keeps of the optimizer state: none | optimizer |
    // gradients | parameters (distill --shard).
    std::string shard = "none";
  } distill;

  struct DistillRun {
    uint64_t tokens = 0;  // required; steps = ceil(tokens / (global_batch * seq_len))
    double lr = 1e-4, min_lr = 1e-5;
    int64_t warmup_steps = 0;
    int64_t eval_every = 0;  // steps; 0 = at the start and the end only
    int64_t save_every = 0;  // steps; 0 = about every tenth of the run
  } short_distill, long_distill;
  int64_t short_candidates = 3;  // short_distill.candidates: the top ranked ones distilled briefly

  struct Export {
    std::string dtype = "bf16";  // bf16 | fp16 | fp32 | fp8
    std::string max_shard_size = "5GB";
  } export_;

  struct Evaluate {
    uint64_t tokens = 1 << 16;  // held-out tokens of the before/after table
    int64_t seq_len = 0;        // 0 = distill.seq_len
    int64_t batch = 1;
  } evaluate;

  double estimate_tflops = 0;  // estimate.tflops: sustained FLOP/s of the machine for --dry-run (0 = a default per device)

  // Steps of a distillation run of `tokens` tokens.
  int64_t steps_for(uint64_t tokens) const;
  // Every setting, by key path ("search.budget": "0.8MiB", ...): what the job
  // directory records and what a rerun is compared against.
  nlohmann::json to_json() const;
};

// The stages of a job in the order they run; every prune and short
// distillation together is one (ShortDistill).
enum class CompressStage { Score, Search, ShortDistill, Pick, LongDistill, Export, Compare, Report };
constexpr int kCompressStages = 8;
const char* compress_stage_name(CompressStage stage);  // "score", "short distill", ...

// The first stage whose output depends on a job key ("long_distill.lr" ->
// LongDistill; "distill.seq_len" -> ShortDistill, since the long run comes
// after it). A rerun with a changed key redoes that stage and every one after
// it. nullopt: a key no output depends on (estimate.*; out, which names the
// directory itself). A key this table does not know maps to Score.
std::optional<CompressStage> first_stage_reading(const std::string& key);

// Parses a job: `yaml_text` read from `source` (its directory anchors the
// relative paths in it), then each "key.path=value" of `sets` applied in
// order (relative paths against `set_base`). Checks names, types, ranges and
// required keys (teacher, out, search.budget, short_distill.tokens,
// long_distill.tokens; data.train unless `dry_run`).
CompressJob parse_compress_job(const std::string& yaml_text, const std::string& source,
                               const std::vector<std::string>& sets = {},
                               const std::filesystem::path& set_base = std::filesystem::current_path(),
                               bool dry_run = false);

// Reads the file and parses it (InputError when it cannot be read).
CompressJob load_compress_job(const std::filesystem::path& file, const std::vector<std::string>& sets = {},
                              bool dry_run = false);

// The key paths a job accepts, with the expected type ("search.top_k":
// "an integer"): for `compress --help` and error messages.
std::vector<std::pair<std::string, std::string>> compress_job_keys();

}  // namespace minipuzzle
