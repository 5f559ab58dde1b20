// Offline teacher: the teacher's top-k next-token distributions over the
// windows a distillation run will read, computed once (`minipuzzle
// teacher-logits`) and read back during training instead of running the
// teacher (kd_loss_topk with k + 1 buckets: the k largest logits and the
// rest).
//
// Which windows: exactly the training order of the trainer with the same
// dataset, seq_len and seed: cached window j is WindowOrder(total_tokens,
// seq_len, seed).start(j / n, j % n) with n = WindowOrder::windows(), i.e.
// what `take` hands out from Position{0, 0} (epoch 0 first, then on into
// epoch 1, ...). A run reading micro-batches of m windows in order reads
// cached windows [s*m, s*m + m) at its s-th micro-batch.
//
// CACHE_DIR layout:
//   cache.json                 written LAST: a directory without it is an
//                              incomplete cache (rerunning the command resumes)
//   shard-00000.safetensors    windows [0, P), then [P, 2P), ... (P = windows_per_shard;
//   shard-00001.safetensors    the last shard may hold fewer); each file atomic
//
// Shard tensors (w = windows in the shard, L = seq_len):
//   window_starts  I64 [w]        flat start token of each window (inputs = tokens
//                                 [start, start+L), targets shifted by one)
//   values         F32 [w, L, k]  teacher logits / temperature, descending per row
//   indices        I32 [w, L, k]  their vocabulary ids
//   rest_lse       F32 [w, L]     logsumexp of the other logits / temperature
//                                 (-inf when k = vocab)
// exactly what teacher_topk() returns. F32 and not BF16: bf16 rounds a logit of
// ~10 by ~0.03, a 3% error in each bucket's probability, which biases the KL
// more than the k cut-off does at useful k. Size per token: k*(4+4) + 4 bytes
// (+ 8 per window).
// Shard metadata: "format": "minipuzzle-teacher-cache", "version": "1",
// "identity": the JSON of cache.json's "identity" object (compact dump),
// "shard", "first_window", "windows" (decimal strings).
//
// cache.json:
//   {"format": "minipuzzle-teacher-cache", "version": 1,
//    "identity": {                       every shard must carry the same
//      "teacher": {"config_hash", "weights_hash", "vocab_size", "dtype"},
//      "data": {"total_tokens", "fingerprint"},
//      "seq_len", "seed", "k", "temperature", "windows", "windows_per_shard",
//      "values_dtype": "F32", "indices_dtype": "I32"},
//    "teacher_path", "data_prefix"       as given (information only),
//    "order": {"kind": "window_order", "epoch_windows": n, "definition": "..."},
//    "tokens": windows * seq_len,
//    "shards": [{"file": "shard-00000.safetensors", "first_window": 0, "windows": P}, ...]}
// The config/weights hashes are importance_scores.h's config_fingerprint /
// checkpoint_fingerprint, computed by the caller (the CLI), so that distill/
// does not depend on pruning/. The data fingerprint is FNV-1a over the sizes
// of PREFIX.idx/.bin and the first and last 64 KiB of each (an identity
// check, not a checksum of every token).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/streamed_model.h"
#include "minipuzzle/kd_loss.h"
#include "minipuzzle/model_config.h"
#include "minipuzzle/safetensors.h"

namespace minipuzzle {

inline constexpr const char* kTeacherCacheFormat = "minipuzzle-teacher-cache";
inline constexpr int kTeacherCacheVersion = 1;

struct TeacherCacheOptions {
  std::filesystem::path teacher;  // checkpoint directory
  std::string data;               // dataset prefix
  std::filesystem::path out;      // CACHE_DIR
  int64_t seq_len = 2048;
  uint64_t windows = 0;  // > 0: this many windows
  uint64_t tokens = 0;   // > 0 (and windows == 0): ceil(tokens / seq_len) windows
                         // both 0: one epoch (WindowOrder::windows())
  uint64_t seed = 1234;
  int64_t k = 64;
  double temperature = 1.0;
  int64_t batch = 1;                 // windows per teacher forward
  std::string dtype = "fp32";        // teacher compute dtype (logits are fp32 either way)
  std::string device = "cpu";
  uint64_t shard_tokens = 1 << 18;   // tokens per shard (rounded down to whole windows, at least one)
  std::string teacher_config_hash;   // config_fingerprint / checkpoint_fingerprint of `teacher`
  std::string teacher_weights_hash;
  uint64_t stop_after_shards = 0;    // > 0: stop after writing that many shards, as if killed (tests)
  // Where the teacher's weights live (streamed_model.h); unset: resident,
  // or streamed when the teacher does not fit the device.
  std::optional<ResidencyPlan> residency;
};

struct TeacherCacheSummary {
  bool already_complete = false;  // cache.json was there with the same identity: nothing done
  bool interrupted = false;       // stop_after_shards hit: no cache.json yet
  uint64_t windows = 0, tokens = 0;
  uint64_t shards = 0, shards_reused = 0, shards_written = 0;
  uint64_t bytes = 0;  // of all shards
};

// Progress: (windows done, windows total), reused shards included.
using TeacherCacheProgress = std::function<void(uint64_t, uint64_t)>;

// Writes (or completes) CACHE_DIR. InputError on bad options, datasets, a
// teacher whose vocabulary is < k or smaller than a token id, a directory
// holding a cache (complete or not) made with other options.
TeacherCacheSummary write_teacher_cache(const TeacherCacheOptions& options, const TeacherCacheProgress& progress = {});

// FNV-1a identity of a dataset (see above); InputError when unreadable.
std::string dataset_fingerprint(const std::string& prefix);

class TeacherCache {
 public:
  // Opens and validates everything: cache.json (format, version, every key
  // and type), the shard list, each shard's tensors (names, dtypes, shapes),
  // metadata (identity equal to cache.json's) and window starts (equal to
  // WindowOrder's). InputError naming the file and key otherwise.
  static TeacherCache open(const std::filesystem::path& dir);

  struct Batch {
    uint64_t first_window = 0;
    std::vector<uint64_t> starts;  // [n] flat start tokens
    torch::Tensor values;          // [n, L, k] fp32, logits / temperature
    torch::Tensor indices;         // [n, L, k] int64
    torch::Tensor rest_lse;        // [n, L] fp32
    double temperature = 1.0;      // of the cache
    int64_t vocab_size = 0;        // of the teacher
  };

  const std::filesystem::path& dir() const { return dir_; }
  const nlohmann::json& manifest() const { return json_; }  // cache.json
  uint64_t windows() const { return windows_; }
  int64_t seq_len() const { return seq_len_; }
  int64_t k() const { return k_; }
  double temperature() const { return temperature_; }
  uint64_t seed() const { return seed_; }
  int64_t vocab_size() const { return vocab_size_; }
  uint64_t data_tokens() const { return data_tokens_; }

  bool covers(uint64_t window_index) const { return window_index < windows_; }
  // Windows [first, first + count) on the CPU. InputError when not covered
  // or when an index is outside [0, vocab).
  Batch batch(uint64_t first_window, int64_t count) const;

  // InputError (naming cache.json and the key) unless the cache was made
  // for a model of `model`'s vocabulary, this dataset (fingerprint and token
  // count), seq_len and seed, i.e. unless a run with these settings reads
  // exactly the cached windows.
  void check_matches(const ModelConfig& model, const std::string& data_prefix, uint64_t data_tokens,
                     int64_t seq_len, uint64_t seed) const;
  // InputError unless the teacher hashes match (empty arguments are skipped).
  void check_teacher(const std::string& config_hash, const std::string& weights_hash) const;

 private:
  std::filesystem::path dir_;
  nlohmann::json json_;
  uint64_t windows_ = 0, windows_per_shard_ = 0, seed_ = 0, data_tokens_ = 0;
  int64_t seq_len_ = 0, k_ = 0, vocab_size_ = 0;
  double temperature_ = 1.0;
  std::vector<std::shared_ptr<SafetensorsFile>> shards_;
};

// The loss from a cached batch: kd_loss_topk with the batch's tensors moved
// to student_normed's device. student_normed [n, L, D] for the batch's n
// windows; targets [n, L] or undefined. InputError when the cache
// temperature differs from opts.temperature, the vocabularies differ, or the
// shapes do not match.
KdResult cached_kd_loss(HybridLM& student, const torch::Tensor& student_normed, const TeacherCache::Batch& b,
                        const torch::Tensor& targets, const KdOptions& opts);

}  // namespace minipuzzle
