#include "minipuzzle/teacher_cache.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/background_job.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/host_to_device.h"
#include "minipuzzle/model_config.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/token_batches.h"
#include "minipuzzle/window_order.h"

namespace minipuzzle {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kCacheJson = "cache.json";

// 64-bit FNV-1a (the same function importance_scores.cpp uses).
struct Fnv64 {
  uint64_t h = 1469598103934665603ULL;
  void add(const void* data, std::size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ULL;
  }
  std::string hex() const { return fmt::format("{:016x}", h); }
};

std::string shard_name(uint64_t i) { return fmt::format("shard-{:05d}.safetensors", i); }

uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }  // no wrap near 2^64

// More windows than any dataset or run uses (2^40 windows of 2^24 tokens
// still count in 64 bits); a larger number in a file or on the command
// line is a mistake, not a request.
constexpr uint64_t kMaxWindows = uint64_t{1} << 40;

// Window j of the training order (what WindowOrder::take hands out as its
// j-th window from Position{0, 0}).
uint64_t window_start(const WindowOrder& order, uint64_t j) {
  return order.start(j / order.windows(), j % order.windows());
}

const json& need(const json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key))
    throw InputError(fmt::format("{}: missing key \"{}\" (not a teacher cache, or a damaged one)", where, key));
  return j.at(key);
}
uint64_t need_u64(const json& j, const char* key, const std::string& where) {
  const json& v = need(j, key, where);
  if (!v.is_number_unsigned())
    throw InputError(fmt::format("{}: \"{}\" must be a non-negative integer", where, key));
  return v.get<uint64_t>();
}
std::string need_str(const json& j, const char* key, const std::string& where) {
  const json& v = need(j, key, where);
  if (!v.is_string()) throw InputError(fmt::format("{}: \"{}\" must be a string", where, key));
  return v.get<std::string>();
}
double need_num(const json& j, const char* key, const std::string& where) {
  const json& v = need(j, key, where);
  if (!v.is_number()) throw InputError(fmt::format("{}: \"{}\" must be a number", where, key));
  return v.get<double>();
}

// The keys of `a` and `b` whose values differ (recursing into objects).
std::string identity_diff(const json& a, const json& b, const std::string& prefix = "") {
  std::string out;
  auto add = [&](const std::string& k) { out += (out.empty() ? "" : ", ") + k; };
  for (const auto& [k, v] : a.items()) {
    if (!b.contains(k)) {
      add(prefix + k);
    } else if (v.is_object() && b[k].is_object()) {
      const std::string sub = identity_diff(v, b[k], prefix + k + ".");
      if (!sub.empty()) add(sub);
    } else if (v != b[k]) {
      add(prefix + k);
    }
  }
  for (const auto& [k, v] : b.items())
    if (!a.contains(k)) add(prefix + k);
  return out;
}

void check_tensor(const SafetensorsFile& f, const char* name, DType dtype, const std::vector<int64_t>& shape) {
  const TensorInfo* t = f.find(name);
  if (t == nullptr) throw InputError(fmt::format("{}: missing tensor {}", f.path().string(), name));
  if (t->dtype != dtype || t->shape != shape) {
    std::string want, got;
    for (int64_t d : shape) want += (want.empty() ? "" : ", ") + std::to_string(d);
    for (int64_t d : t->shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
    throw InputError(fmt::format("{}: tensor {} is {} [{}], the cache needs {} [{}]", f.path().string(), name,
                                 dtype_name(t->dtype), got, dtype_name(dtype), want));
  }
}

json shard_identity(const SafetensorsFile& f) {
  const auto& md = f.metadata();
  auto fmt_it = md.find("format");
  if (fmt_it == md.end() || fmt_it->second != kTeacherCacheFormat)
    throw InputError(fmt::format("{}: metadata \"format\" is not \"{}\"", f.path().string(), kTeacherCacheFormat));
  auto ver = md.find("version");
  if (ver == md.end() || ver->second != std::to_string(kTeacherCacheVersion))
    throw InputError(fmt::format("{}: metadata \"version\" is not {}", f.path().string(), kTeacherCacheVersion));
  auto id = md.find("identity");
  // Depth-limited parse: a hostile header cannot exhaust the stack (nlohmann destroys recursively).
  json j = id == md.end() ? json() : parse_json_lenient(id->second, f.path().string() + ": metadata \"identity\"");
  if (!j.is_object())
    throw InputError(fmt::format("{}: metadata \"identity\" is missing or not JSON", f.path().string()));
  return j;
}

// Everything about one shard except its identity: metadata numbers, tensor
// shapes, window starts.
void validate_shard(const SafetensorsFile& f, uint64_t shard, uint64_t first, uint64_t count, int64_t seq_len,
                    int64_t k, const WindowOrder& order) {
  const auto& md = f.metadata();
  auto expect_md = [&](const char* key, uint64_t want) {
    auto it = md.find(key);
    if (it == md.end() || it->second != std::to_string(want))
      throw InputError(fmt::format("{}: metadata \"{}\" is {}, expected {}", f.path().string(), key,
                                   it == md.end() ? "missing" : "\"" + it->second + "\"", want));
  };
  expect_md("shard", shard);
  expect_md("first_window", first);
  expect_md("windows", count);
  const auto w = static_cast<int64_t>(count);
  check_tensor(f, "window_starts", DType::I64, {w});
  check_tensor(f, "values", DType::F32, {w, seq_len, k});
  check_tensor(f, "indices", DType::I32, {w, seq_len, k});
  check_tensor(f, "rest_lse", DType::F32, {w, seq_len});
  if (f.tensors().size() != 4)
    throw InputError(fmt::format("{}: holds {} tensors; a cache shard has exactly window_starts, values, indices, "
                                 "rest_lse",
                                 f.path().string(), f.tensors().size()));
  const uint8_t* p = f.data(*f.find("window_starts"));
  for (uint64_t i = 0; i < count; ++i) {
    int64_t s;
    std::memcpy(&s, p + i * sizeof s, sizeof s);
    const uint64_t want = window_start(order, first + i);
    if (s < 0 || static_cast<uint64_t>(s) != want)
      throw InputError(fmt::format("{}: window_starts[{}] = {}, but window {} of the training order (seq_len {}, "
                                   "seed) starts at {}",
                                   f.path().string(), i, s, first + i, seq_len, want));
  }
}

std::vector<uint8_t> read_span(std::ifstream& in, uint64_t offset, uint64_t n) {
  std::vector<uint8_t> buf(n);
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(n));
  buf.resize(static_cast<std::size_t>(in.gcount()));
  return buf;
}

}  // namespace

std::string dataset_fingerprint(const std::string& prefix) {
  constexpr uint64_t kSpan = 64 * 1024;
  Fnv64 h;
  for (const char* ext : {".idx", ".bin"}) {
    const fs::path p = prefix + ext;
    std::error_code ec;
    const uint64_t size = fs::file_size(p, ec);
    if (ec) throw InputError(fmt::format("cannot read {}: {}", p.string(), ec.message()));
    std::ifstream in(p, std::ios::binary);
    if (!in) throw InputError(fmt::format("cannot open {}", p.string()));
    h.add(&size, sizeof size);
    auto head = read_span(in, 0, std::min(size, kSpan));
    h.add(head.data(), head.size());
    if (size > kSpan) {
      const uint64_t tail_n = std::min(size - kSpan, kSpan);
      auto tail = read_span(in, size - tail_n, tail_n);
      h.add(tail.data(), tail.size());
    }
  }
  return h.hex();
}

// ---------------------------------------------------------------- writer

namespace {
TeacherCacheSummary write_teacher_cache_in(const TeacherCacheOptions& o, const TeacherCacheProgress& progress);
}  // namespace

TeacherCacheSummary write_teacher_cache(const TeacherCacheOptions& o, const TeacherCacheProgress& progress) {
  // Bad input found after --out was made (no such device, a token id beyond
  // the vocabulary) leaves no empty directory behind; one that holds shards
  // stays, for the rerun to resume.
  std::error_code ec;
  const bool out_existed = o.out.empty() || fs::exists(o.out, ec);
  try {
    return write_teacher_cache_in(o, progress);
  } catch (const InputError&) {
    if (!out_existed && fs::is_directory(o.out, ec) && fs::is_empty(o.out, ec)) fs::remove(o.out, ec);
    throw;
  }
}

namespace {

TeacherCacheSummary write_teacher_cache_in(const TeacherCacheOptions& o, const TeacherCacheProgress& progress) {
  if (o.out.empty()) throw InputError("missing --out");
  if (o.seq_len <= 0) throw InputError("--seq-len must be positive");
  if (o.k <= 0) throw InputError("--top-k must be positive");
  if (!(o.temperature > 0) || !std::isfinite(o.temperature)) throw InputError("--temperature must be positive");
  if (o.batch <= 0) throw InputError("--batch must be positive");
  if (o.windows > 0 && o.tokens > 0) throw InputError("give --windows or --tokens, not both");
  const ModelConfig tcfg = ModelConfig::load(o.teacher);
  if (o.k > tcfg.vocab_size)
    throw InputError(fmt::format("--top-k {} exceeds the teacher's vocabulary of {}", o.k, tcfg.vocab_size));
  (void)parse_model_dtype(o.dtype);  // InputError on a bad name or a missing device before any work
  (void)parse_device(o.device);

  const auto data = IndexedDataset::open(o.data);
  const WindowOrder order(data->total_tokens(), o.seq_len, o.seed);
  const uint64_t L = static_cast<uint64_t>(o.seq_len);
  const uint64_t n_windows = o.windows > 0 ? o.windows : o.tokens > 0 ? ceil_div(o.tokens, L) : order.windows();
  if (n_windows > kMaxWindows)
    throw InputError(fmt::format("{} {} is too large: at most {} windows", o.windows > 0 ? "--windows" : "--tokens",
                                 o.windows > 0 ? o.windows : o.tokens, kMaxWindows));
  const uint64_t per_shard = std::max<uint64_t>(1, o.shard_tokens / L);
  const uint64_t n_shards = ceil_div(n_windows, per_shard);

  const json identity = {
      {"teacher",
       {{"config_hash", o.teacher_config_hash},
        {"weights_hash", o.teacher_weights_hash},
        {"vocab_size", tcfg.vocab_size},
        {"dtype", o.dtype}}},
      {"data", {{"total_tokens", data->total_tokens()}, {"fingerprint", dataset_fingerprint(o.data)}}},
      {"seq_len", o.seq_len},
      {"seed", o.seed},
      {"k", o.k},
      {"temperature", o.temperature},
      {"windows", n_windows},
      {"windows_per_shard", per_shard},
      {"values_dtype", "F32"},
      {"indices_dtype", "I32"}};
  const std::string identity_text = identity.dump();

  TeacherCacheSummary summary;
  summary.windows = n_windows;
  summary.tokens = n_windows * L;
  summary.shards = n_shards;

  std::error_code ec;
  if (fs::exists(o.out / kCacheJson)) {
    const TeacherCache existing = TeacherCache::open(o.out);
    const std::string diff = identity_diff(existing.manifest().at("identity"), identity);
    if (!diff.empty())
      throw InputError(fmt::format("{} already holds a complete teacher cache made with other settings ({}); "
                                   "choose another --out",
                                   o.out.string(), diff));
    summary.already_complete = true;
    for (uint64_t i = 0; i < n_shards; ++i) summary.bytes += fs::file_size(o.out / shard_name(i), ec);
    if (progress) progress(n_windows, n_windows);
    return summary;
  }
  fs::create_directories(o.out, ec);
  if (ec || !fs::is_directory(o.out))
    throw InputError(fmt::format("cannot create {}: {}", o.out.string(), ec ? ec.message() : "not a directory"));

  // Resume: keep the shards a previous run completed (they carry our
  // identity); one from other settings means the wrong directory.
  std::vector<bool> have(n_shards, false);
  for (const auto& e : fs::directory_iterator(o.out, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("shard-", 0) == 0 && n.find(".tmp.") != std::string::npos) remove_tree(e.path());  // a killed write
  }
  for (const auto& e : fs::directory_iterator(o.out, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("shard-", 0) != 0 || e.path().extension() != ".safetensors") continue;
    std::shared_ptr<SafetensorsFile> f;
    json id;
    try {
      f = SafetensorsFile::open(e.path());
      id = shard_identity(*f);
    } catch (const InputError&) {
      continue;  // unreadable: rewritten below if it is one of ours
    }
    const std::string diff = identity_diff(id, identity);
    if (!diff.empty())
      throw InputError(fmt::format("{} holds an incomplete teacher cache made with other settings ({} differ in "
                                   "{}); choose another --out or delete it",
                                   o.out.string(), diff, n));
    for (uint64_t i = 0; i < n_shards; ++i) {
      if (n != shard_name(i)) continue;
      const uint64_t first = i * per_shard, count = std::min(per_shard, n_windows - first);
      try {
        validate_shard(*f, i, first, count, o.seq_len, o.k, order);
        have[i] = true;
      } catch (const InputError&) {
      }
    }
  }

  uint64_t done = 0;
  for (uint64_t i = 0; i < n_shards; ++i)
    if (have[i]) {
      done += std::min(per_shard, n_windows - i * per_shard);
      ++summary.shards_reused;
    }
  if (progress) progress(done, n_windows);

  std::optional<ForwardModel> teacher;
  int64_t group = 1;  // batches per teacher pass (a layer-major group when the weights stream)
  if (summary.shards_reused < n_shards) {
    const torch::ScalarType dtype = parse_model_dtype(o.dtype);
    const torch::Device device = parse_device(o.device);
    ResidencyPlan plan;
    if (o.residency) {
      plan = *o.residency;
    } else {
      ResidencyOptions ro;
      ro.batch = o.batch;
      ro.seq_len = o.seq_len;
      ro.batches = static_cast<int64_t>((per_shard + o.batch - 1) / o.batch);
      plan = plan_residency(tcfg, dtype, ro, device);
    }
    teacher.emplace(o.teacher, dtype, device, plan);
    group = std::max<int64_t>(plan.group_batches, 1);
  }
  const int64_t vocab = tcfg.vocab_size;
  const int64_t D = tcfg.hidden_size;
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 24) / vocab);  // ~64 MiB of fp32 logits per chunk

  // The next shard is computed while the last one is written: the GPU does
  // not wait for the disk, nor the disk for the GPU.
  BackgroundJob writer;
  for (uint64_t i = 0; i < n_shards; ++i) {
    if (have[i]) continue;
    if (o.stop_after_shards > 0 && summary.shards_written + writer.in_flight() >= o.stop_after_shards) {
      summary.shards_written += writer.finish();
      summary.interrupted = true;
      return summary;
    }
    const uint64_t first = i * per_shard, count = std::min(per_shard, n_windows - first);
    const auto w = static_cast<int64_t>(count);
    auto starts = std::make_shared<std::vector<int64_t>>(count);
    for (uint64_t j = 0; j < count; ++j) (*starts)[j] = static_cast<int64_t>(window_start(order, first + j));
    // Filled by copies the host does not wait for, one wait per shard.
    const torch::Device dev = teacher->model()->device();
    torch::Tensor values = host_buffer({w * o.seq_len, o.k}, torch::kFloat32, dev);
    torch::Tensor indices = host_buffer({w * o.seq_len, o.k}, torch::kInt32, dev);
    torch::Tensor rest = host_buffer({w * o.seq_len}, torch::kFloat32, dev);
    {
      torch::NoGradGuard no_grad;
      for (int64_t g = 0; g < w; g += o.batch * group) {
        std::vector<torch::Tensor> batches;
        std::vector<int64_t> first_window;
        for (int64_t b = g; b < std::min(w, g + o.batch * group); b += o.batch) {
          const int64_t nb = std::min(o.batch, w - b);
          std::vector<uint64_t> part(starts->begin() + b, starts->begin() + b + nb);
          batches.push_back(to_device_async(gather_windows(*data, part, o.seq_len, vocab), dev).narrow(1, 0, o.seq_len));
          first_window.push_back(b);
        }
        teacher->forward_hidden(batches, [&](size_t j, const torch::Tensor& h) {
          auto hidden = h.reshape({-1, D});
          const int64_t row0 = first_window[j] * o.seq_len, nrows = hidden.size(0);
          for (int64_t s = 0; s < nrows; s += chunk) {
            const int64_t len = std::min(chunk, nrows - s);
            const TeacherTopK tk = teacher_topk(teacher->head_logits(hidden.narrow(0, s, len)), o.k, o.temperature);
            values.narrow(0, row0 + s, len).copy_(tk.values, /*non_blocking=*/true);
            indices.narrow(0, row0 + s, len).copy_(tk.indices, /*non_blocking=*/true);
            rest.narrow(0, row0 + s, len).copy_(tk.rest_lse, /*non_blocking=*/true);
          }
          if (progress) progress(done + static_cast<uint64_t>(first_window[j] + batches[j].size(0)), n_windows);
        });
      }
    }
    wait_for_device(dev);
    summary.shards_written += writer.finish();  // the previous shard (its error, if any, stops the run here)
    const std::map<std::string, std::string> meta = {{"format", kTeacherCacheFormat},
                       {"version", std::to_string(kTeacherCacheVersion)},
                       {"identity", identity_text},
                       {"shard", std::to_string(i)},
                       {"first_window", std::to_string(first)},
                       {"windows", std::to_string(count)}};
    writer.start([path = o.out / shard_name(i), starts, values, indices, rest, w, seq_len = o.seq_len, k = o.k,
                  meta] {
      const std::vector<TensorView> views = {
          {"window_starts", DType::I64, {w}, starts->data(), starts->size() * sizeof(int64_t)},
          {"values", DType::F32, {w, seq_len, k}, values.data_ptr(), values.nbytes()},
          {"indices", DType::I32, {w, seq_len, k}, indices.data_ptr(), indices.nbytes()},
          {"rest_lse", DType::F32, {w, seq_len}, rest.data_ptr(), rest.nbytes()}};
      write_safetensors(path, views, meta);
    });
    done += count;
  }
  summary.shards_written += writer.finish();

  json shards = json::array();
  for (uint64_t i = 0; i < n_shards; ++i) {
    const uint64_t first = i * per_shard;
    shards.push_back({{"file", shard_name(i)}, {"first_window", first},
                      {"windows", std::min(per_shard, n_windows - first)}});
    summary.bytes += fs::file_size(o.out / shard_name(i), ec);
  }
  // Paths as given: informational (the identity decides what matches).
  const json cache = {
      {"format", kTeacherCacheFormat},
      {"version", kTeacherCacheVersion},
      {"identity", identity},
      {"teacher_path", o.teacher.string()},
      {"data_prefix", o.data},
      {"order",
       {{"kind", "window_order"},
        {"epoch_windows", order.windows()},
        {"definition",
         "window j starts at WindowOrder(total_tokens, seq_len, seed).start(j / epoch_windows, j % epoch_windows): "
         "the windows WindowOrder::take hands out from Position{0, 0}"}}},
      {"tokens", n_windows * L},
      {"shards", shards}};
  write_file_atomic(o.out / kCacheJson, cache.dump(2) + "\n");
  // Validate what we wrote the way a reader will.
  (void)TeacherCache::open(o.out);
  return summary;
}

}  // namespace

// ---------------------------------------------------------------- reader

TeacherCache TeacherCache::open(const fs::path& dir) {
  const fs::path path = dir / kCacheJson;
  const std::string where = path.string();
  if (!fs::exists(path)) {
    if (fs::is_directory(dir))
      throw InputError(fmt::format("{}: no cache.json: not a teacher cache, or an incomplete one (rerun "
                                   "`minipuzzle teacher-logits` to finish it)",
                                   dir.string()));
    throw InputError(fmt::format("teacher cache {} does not exist", dir.string()));
  }
  json j = parse_json_lenient(read_file(path), where);  // invalid or too deeply nested: InputError
  if (!j.is_object()) throw InputError(fmt::format("{}: not a JSON object", where));
  if (need_str(j, "format", where) != kTeacherCacheFormat)
    throw InputError(fmt::format("{}: \"format\" is not \"{}\"", where, kTeacherCacheFormat));
  if (need_u64(j, "version", where) != static_cast<uint64_t>(kTeacherCacheVersion))
    throw InputError(fmt::format("{}: \"version\" {} is not supported (this build reads {})", where,
                                 j["version"].dump(), kTeacherCacheVersion));
  const json& id = need(j, "identity", where);
  const std::string idw = where + " identity";
  const json& teacher = need(id, "teacher", idw);
  const json& data = need(id, "data", idw);
  TeacherCache c;
  c.dir_ = dir;
  c.vocab_size_ = static_cast<int64_t>(need_u64(teacher, "vocab_size", idw + ".teacher"));
  (void)need_str(teacher, "config_hash", idw + ".teacher");
  (void)need_str(teacher, "weights_hash", idw + ".teacher");
  (void)need_str(teacher, "dtype", idw + ".teacher");
  c.data_tokens_ = need_u64(data, "total_tokens", idw + ".data");
  (void)need_str(data, "fingerprint", idw + ".data");
  c.seq_len_ = static_cast<int64_t>(need_u64(id, "seq_len", idw));
  c.seed_ = need_u64(id, "seed", idw);
  c.k_ = static_cast<int64_t>(need_u64(id, "k", idw));
  c.temperature_ = need_num(id, "temperature", idw);
  c.windows_ = need_u64(id, "windows", idw);
  c.windows_per_shard_ = need_u64(id, "windows_per_shard", idw);
  if (need_str(id, "values_dtype", idw) != "F32" || need_str(id, "indices_dtype", idw) != "I32")
    throw InputError(fmt::format("{}: values_dtype/indices_dtype must be F32/I32", idw));
  if (c.seq_len_ < 1 || c.seq_len_ > (int64_t{1} << 24)) throw InputError(fmt::format("{}: bad \"seq_len\"", idw));
  if (c.vocab_size_ < 1 || c.vocab_size_ > (int64_t{1} << 24))
    throw InputError(fmt::format("{}: bad \"teacher.vocab_size\"", idw));
  if (c.k_ < 1 || c.k_ > c.vocab_size_)
    throw InputError(fmt::format("{}: \"k\" = {} must be in [1, vocab_size {}]", idw, c.k_, c.vocab_size_));
  if (!(c.temperature_ > 0) || !std::isfinite(c.temperature_))
    throw InputError(fmt::format("{}: \"temperature\" must be positive", idw));
  if (c.windows_ < 1 || c.windows_per_shard_ < 1 || c.windows_ > kMaxWindows || c.windows_per_shard_ > kMaxWindows)
    throw InputError(fmt::format("{}: \"windows\" and \"windows_per_shard\" must be in [1, {}]", idw, kMaxWindows));
  const uint64_t n_shards = ceil_div(c.windows_, c.windows_per_shard_);
  const json& shards = need(j, "shards", where);
  if (!shards.is_array() || shards.size() != n_shards)
    throw InputError(fmt::format("{}: \"shards\" must list {} shards ({} windows, {} per shard)", where, n_shards,
                                 c.windows_, c.windows_per_shard_));
  const WindowOrder order(c.data_tokens_, c.seq_len_, c.seed_);
  for (uint64_t i = 0; i < n_shards; ++i) {
    const std::string sw = fmt::format("{} shards[{}]", where, i);
    const uint64_t first = i * c.windows_per_shard_, count = std::min(c.windows_per_shard_, c.windows_ - first);
    // Only the names we write: no paths from the file are ever opened.
    if (need_str(shards[i], "file", sw) != shard_name(i) || need_u64(shards[i], "first_window", sw) != first ||
        need_u64(shards[i], "windows", sw) != count)
      throw InputError(fmt::format("{}: expected {{\"file\": \"{}\", \"first_window\": {}, \"windows\": {}}}", sw,
                                   shard_name(i), first, count));
    const fs::path sp = dir / shard_name(i);
    if (!fs::exists(sp)) throw InputError(fmt::format("{}: missing (listed in cache.json)", sp.string()));
    auto f = SafetensorsFile::open(sp);
    const std::string diff = identity_diff(shard_identity(*f), id);
    if (!diff.empty())
      throw InputError(fmt::format("{}: identity differs from cache.json in {}", sp.string(), diff));
    validate_shard(*f, i, first, count, c.seq_len_, c.k_, order);
    c.shards_.push_back(std::move(f));
  }
  c.json_ = std::move(j);
  return c;
}

TeacherCache::Batch TeacherCache::batch(uint64_t first, int64_t count) const {
  if (count < 1) throw InputError("teacher cache: batch of fewer than one window");
  if (first >= windows_ || static_cast<uint64_t>(count) > windows_ - first)
    throw InputError(fmt::format("teacher cache {} holds {} windows; windows [{}, {}) are not covered (train fewer "
                                 "steps, or rerun teacher-logits with --windows {} or more)",
                                 dir_.string(), windows_, first, first + static_cast<uint64_t>(count),
                                 first + static_cast<uint64_t>(count)));
  Batch b;
  b.first_window = first;
  b.temperature = temperature_;
  b.vocab_size = vocab_size_;
  b.values = torch::empty({count, seq_len_, k_}, torch::kFloat32);
  torch::Tensor idx32 = torch::empty({count, seq_len_, k_}, torch::kInt32);
  b.rest_lse = torch::empty({count, seq_len_}, torch::kFloat32);
  const std::size_t row_vk = static_cast<std::size_t>(seq_len_ * k_) * 4, row_r = static_cast<std::size_t>(seq_len_) * 4;
  for (int64_t n = 0; n < count; ++n) {
    const uint64_t wi = first + static_cast<uint64_t>(n);
    const SafetensorsFile& f = *shards_[wi / windows_per_shard_];
    const uint64_t local = wi % windows_per_shard_;
    int64_t s;
    std::memcpy(&s, f.data(*f.find("window_starts")) + local * 8, 8);
    b.starts.push_back(static_cast<uint64_t>(s));
    std::memcpy(static_cast<uint8_t*>(b.values.data_ptr()) + n * row_vk, f.data(*f.find("values")) + local * row_vk,
                row_vk);
    std::memcpy(static_cast<uint8_t*>(idx32.data_ptr()) + n * row_vk, f.data(*f.find("indices")) + local * row_vk,
                row_vk);
    std::memcpy(static_cast<uint8_t*>(b.rest_lse.data_ptr()) + n * row_r, f.data(*f.find("rest_lse")) + local * row_r,
                row_r);
  }
  if (idx32.min().item<int32_t>() < 0 || idx32.max().item<int32_t>() >= vocab_size_)
    throw InputError(fmt::format("teacher cache {}: windows [{}, {}) hold vocabulary ids outside [0, {})",
                                 dir_.string(), first, first + static_cast<uint64_t>(count), vocab_size_));
  b.indices = idx32.to(torch::kLong);
  return b;
}

void TeacherCache::check_matches(const ModelConfig& model, const std::string& data_prefix, uint64_t data_tokens,
                                 int64_t seq_len, uint64_t seed) const {
  const std::string where = (dir_ / kCacheJson).string();
  if (model.vocab_size != vocab_size_)
    throw InputError(fmt::format("{}: teacher.vocab_size {} != the model's {}", where, vocab_size_, model.vocab_size));
  if (seq_len != seq_len_)
    throw InputError(fmt::format("{}: seq_len {} != --seq-len {}", where, seq_len_, seq_len));
  if (seed != seed_) throw InputError(fmt::format("{}: seed {} != --seed {}", where, seed_, seed));
  if (data_tokens != data_tokens_)
    throw InputError(fmt::format("{}: data.total_tokens {} != {} tokens in {}", where, data_tokens_, data_tokens,
                                 data_prefix));
  const std::string fp = dataset_fingerprint(data_prefix);
  const std::string want = json_["identity"]["data"]["fingerprint"].get<std::string>();
  if (fp != want)
    throw InputError(fmt::format("{}: data.fingerprint {} != {} of {} (a cache of another dataset)", where, want, fp,
                                 data_prefix));
}

void TeacherCache::check_teacher(const std::string& config_hash, const std::string& weights_hash) const {
  const std::string where = (dir_ / kCacheJson).string();
  const json& t = json_["identity"]["teacher"];
  if (!config_hash.empty() && t["config_hash"].get<std::string>() != config_hash)
    throw InputError(fmt::format("{}: teacher.config_hash {} != {} (a cache of another teacher)", where,
                                 t["config_hash"].get<std::string>(), config_hash));
  if (!weights_hash.empty() && t["weights_hash"].get<std::string>() != weights_hash)
    throw InputError(fmt::format("{}: teacher.weights_hash {} != {} (a cache of other teacher weights)", where,
                                 t["weights_hash"].get<std::string>(), weights_hash));
}

KdResult cached_kd_loss(HybridLM& student, const torch::Tensor& student_normed, const TeacherCache::Batch& b,
                        const torch::Tensor& targets, const KdOptions& opts) {
  if (std::abs(opts.temperature - b.temperature) > 1e-12 * std::max(1.0, std::abs(b.temperature)))
    throw InputError(fmt::format("the teacher cache was written at temperature {} but the run uses --temperature {}; "
                                 "regenerate it with --temperature {}",
                                 b.temperature, opts.temperature, opts.temperature));
  const int64_t vocab = student->config().vocab_size;
  if (vocab != b.vocab_size)
    throw InputError(fmt::format("teacher cache vocab {} != student vocab {}", b.vocab_size, vocab));
  if (!b.values.defined() || student_normed.dim() != 3 || student_normed.size(0) != b.values.size(0) ||
      student_normed.size(1) != b.values.size(1))
    throw InputError(fmt::format("teacher cache batch of {} windows x {} tokens does not match the student's hidden "
                                 "states of {} dims",
                                 b.values.defined() ? b.values.size(0) : 0, b.values.defined() ? b.values.size(1) : 0,
                                 student_normed.dim()));
  const auto dev = student_normed.device();
  return kd_loss_topk(student, student_normed, to_device_async(b.values, dev), to_device_async(b.indices, dev),
                      to_device_async(b.rest_lse, dev), targets, opts);
}

}  // namespace minipuzzle
