#include "compress_job.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <set>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/memory_model.h"
#include "minipuzzle/safetensors.h"

namespace minipuzzle {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// One accepted key: its path, the type named in errors, how a scalar text
// sets it (relative paths against `base`) and how it reads back.
struct Field {
  std::string path;
  std::string expected;
  std::function<void(CompressJob&, const std::string&, const fs::path& base)> set;
  std::function<json(const CompressJob&)> get;
};

[[noreturn]] void bad_value(const std::string& key, const std::string& expected, const std::string& text) {
  throw InputError(fmt::format("{}: expected {}, got '{}'", key, expected, text));
}

int64_t to_int(const std::string& key, const std::string& text, int64_t lo, int64_t hi) {
  const std::string expected = fmt::format("an integer in [{}, {}]", lo, hi);
  if (text.empty() || text.size() > 20) bad_value(key, expected, text);
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi) bad_value(key, expected, text);
  return v;
}

// Token (or parameter) counts: 65536, 1e6, 7B, 63B, 1.5M (K/M/B/T = powers of 1000).
uint64_t to_count(const std::string& key, const std::string& text, uint64_t lo,
                  const std::string& expected = "a token count such as 65536, 1e6, 7B or 1.5M") {
  if (text.empty() || text.size() > 32) bad_value(key, expected, text);
  std::string digits = text;
  double scale = 1;
  const char last = static_cast<char>(std::toupper(static_cast<unsigned char>(text.back())));
  if (last == 'K' || last == 'M' || last == 'B' || last == 'T') {
    scale = last == 'K' ? 1e3 : last == 'M' ? 1e6 : last == 'B' ? 1e9 : 1e12;
    digits.pop_back();
  }
  if (digits.empty() || digits.find_first_not_of("0123456789.eE+") != std::string::npos) bad_value(key, expected, text);
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(digits.c_str(), &end) * scale;
  if (errno != 0 || *end != '\0' || !std::isfinite(v) || v != std::floor(v) || v < static_cast<double>(lo) ||
      v > 1e15)
    bad_value(key, fmt::format("{} (at least {}, at most 1e15)", expected, lo), text);
  return static_cast<uint64_t>(v);
}

double to_number(const std::string& key, const std::string& text, double lo, double hi, bool lo_open = false) {
  const std::string expected =
      fmt::format("a number in {}{}, {}]", lo_open ? "(" : "[", lo, std::isinf(hi) ? std::string("inf") : fmt::format("{}", hi));
  if (text.empty() || text.size() > 32) bad_value(key, expected, text);
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (errno != 0 || *end != '\0' || !std::isfinite(v) || v < lo || (lo_open && v == lo) || v > hi)
    bad_value(key, expected, text);
  return v;
}

bool to_bool(const std::string& key, const std::string& text) {
  static const std::set<std::string> yes{"true", "True", "TRUE", "yes", "Yes", "on", "On"};
  static const std::set<std::string> no{"false", "False", "FALSE", "no", "No", "off", "Off"};
  if (yes.count(text)) return true;
  if (no.count(text)) return false;
  bad_value(key, "true or false", text);
}

std::string one_of(const std::string& key, const std::string& text, const std::vector<std::string>& allowed) {
  for (const auto& a : allowed)
    if (text == a) return text;
  std::string list;
  for (std::size_t i = 0; i < allowed.size(); ++i)
    list += (i == 0 ? "" : i + 1 == allowed.size() ? " or " : ", ") + allowed[i];
  bad_value(key, "one of " + list, text);
}

std::string to_device(const std::string& key, const std::string& text) {
  if (text == "cpu" || text == "cuda") return text;
  if (text.rfind("cuda:", 0) == 0) {
    to_int(key, text.substr(5), 0, 1023);
    return text;
  }
  bad_value(key, "cpu, cuda or cuda:N", text);
}

std::string to_path(const std::string& key, const std::string& text, const fs::path& base) {
  if (text.empty()) bad_value(key, "a path", text);
  if (text.find('\0') != std::string::npos) bad_value(key, "a path", "<contains NUL>");
  fs::path p(text);
  return (p.is_absolute() ? p : base / p).lexically_normal().string();
}

const std::vector<Field>& fields() {
  static const std::vector<Field> table = [] {
    std::vector<Field> f;
    auto path = [&](std::string key, std::string CompressJob::*m, std::string what) {
      f.push_back({key, "a path (" + what + ")",
                   [key, m](CompressJob& j, const std::string& t, const fs::path& b) { j.*m = to_path(key, t, b); },
                   [m](const CompressJob& j) { return json(j.*m); }});
    };
    // Generic accessors: `ref` returns the member inside the job.
    auto integer = [&](std::string key, std::function<int64_t&(CompressJob&)> ref, int64_t lo, int64_t hi) {
      f.push_back({key, fmt::format("an integer in [{}, {}]", lo, hi),
                   [=](CompressJob& j, const std::string& t, const fs::path&) { ref(j) = to_int(key, t, lo, hi); },
                   [=](const CompressJob& j) { return json(ref(const_cast<CompressJob&>(j))); }});
    };
    auto count = [&](std::string key, std::function<uint64_t&(CompressJob&)> ref, uint64_t lo) {
      f.push_back({key, "a token count (65536, 1e6, 7B)",
                   [=](CompressJob& j, const std::string& t, const fs::path&) { ref(j) = to_count(key, t, lo); },
                   [=](const CompressJob& j) { return json(ref(const_cast<CompressJob&>(j))); }});
    };
    auto seed = [&](std::string key, std::function<uint64_t&(CompressJob&)> ref) {
      f.push_back({key, "a non-negative integer",
                   [=](CompressJob& j, const std::string& t, const fs::path&) {
                     ref(j) = static_cast<uint64_t>(to_int(key, t, 0, std::numeric_limits<int64_t>::max()));
                   },
                   [=](const CompressJob& j) { return json(ref(const_cast<CompressJob&>(j))); }});
    };
    auto number = [&](std::string key, std::function<double&(CompressJob&)> ref, double lo, double hi, bool open) {
      f.push_back({key, "a number",
                   [=](CompressJob& j, const std::string& t, const fs::path&) { ref(j) = to_number(key, t, lo, hi, open); },
                   [=](const CompressJob& j) { return json(ref(const_cast<CompressJob&>(j))); }});
    };
    auto boolean = [&](std::string key, std::function<bool&(CompressJob&)> ref) {
      f.push_back({key, "true or false",
                   [=](CompressJob& j, const std::string& t, const fs::path&) { ref(j) = to_bool(key, t); },
                   [=](const CompressJob& j) { return json(ref(const_cast<CompressJob&>(j))); }});
    };
    // Strings checked by `check` (which returns the stored form).
    auto text = [&](std::string key, std::string expected, std::function<std::string&(CompressJob&)> ref,
                    std::function<std::string(const std::string&, const std::string&)> check) {
      f.push_back({key, expected,
                   [=](CompressJob& j, const std::string& t, const fs::path&) { ref(j) = check(key, t); },
                   [=](const CompressJob& j) { return json(ref(const_cast<CompressJob&>(j))); }});
    };
    auto choice = [&](std::string key, std::function<std::string&(CompressJob&)> ref, std::vector<std::string> allowed) {
      std::string expected = "one of";
      for (const auto& a : allowed) expected += " " + a;
      text(key, expected, ref, [allowed](const std::string& k, const std::string& t) { return one_of(k, t, allowed); });
    };
    auto precision = [&](std::string key, std::function<std::string&(CompressJob&)> ref) {
      text(key, "a precision (fp32, bf16, fp16, fp8, nvfp4, int4, fp4)", ref, [](const std::string& k, const std::string& t) {
        return std::string(precision_name(parse_precision(t, k)));
      });
    };
    auto bytes = [&](std::string key, std::function<std::string&(CompressJob&)> ref) {
      text(key, "a size such as 31.7GiB or 500MiB", ref, [](const std::string& k, const std::string& t) {
        const double b = parse_bytes(t, k);
        if (!(b > 0)) bad_value(k, "a positive size", t);
        if (!(b < 1e18)) bad_value(k, "a size below 1e18 bytes", t);
        return t;
      });
    };
    constexpr int64_t kMaxSeq = 1 << 20, kMaxBatch = 1 << 16;

    path("teacher", &CompressJob::teacher, "the parent checkpoint directory");
    path("out", &CompressJob::out, "the job directory");
    path("data.train", &CompressJob::train_data, "dataset prefix");
    path("data.validation", &CompressJob::validation_data, "held-out dataset prefix");
    text("compute.device", "cpu, cuda or cuda:N", [](CompressJob& j) -> std::string& { return j.device; }, to_device);
    choice("compute.dtype", [](CompressJob& j) -> std::string& { return j.dtype; }, {"fp32", "bf16"});
    text("compute.max_device_memory", "a size such as 40GiB or a percentage such as 50%",
         [](CompressJob& j) -> std::string& { return j.max_device_memory; },
         [](const std::string& k, const std::string& t) {
           if (!t.empty() && t.back() == '%') {
             char* end = nullptr;
             const std::string number = t.substr(0, t.size() - 1);
             const double pct = std::strtod(number.c_str(), &end);
             if (number.empty() || end != number.c_str() + number.size() || !(pct > 0) || pct > 100)
               bad_value(k, "a percentage in (0, 100]", t);
             return t;
           }
           const double b = parse_bytes(t, k);
           if (!(b > 0) || !(b < 1e18)) bad_value(k, "a positive size below 1e18 bytes", t);
           return t;
         });

    integer("score.samples", [](CompressJob& j) -> int64_t& { return j.score.samples; }, 1, 1 << 24);
    integer("score.seq_len", [](CompressJob& j) -> int64_t& { return j.score.seq_len; }, 1, kMaxSeq);
    integer("score.batch", [](CompressJob& j) -> int64_t& { return j.score.batch; }, 1, kMaxBatch);
    seed("score.seed", [](CompressJob& j) -> uint64_t& { return j.score.seed; });
    text("score.aggregation", "seq=mean|l2|max,batch=mean|l2|var",
         [](CompressJob& j) -> std::string& { return j.score.aggregation; },
         [](const std::string&, const std::string& t) { return t; });
    text("score.layer_metrics", "a list from mse,kl,loss,bi",
         [](CompressJob& j) -> std::string& { return j.score.layer_metrics; },
         [](const std::string&, const std::string& t) { return t; });

    bytes("search.budget", [](CompressJob& j) -> std::string& { return j.search.budget; });
    precision("search.precision", [](CompressJob& j) -> std::string& { return j.search.precision; });
    precision("search.kv_precision", [](CompressJob& j) -> std::string& { return j.search.kv_precision; });
    precision("search.state_precision", [](CompressJob& j) -> std::string& { return j.search.state_precision; });
    integer("search.context", [](CompressJob& j) -> int64_t& { return j.search.context; }, 1, int64_t(1) << 32);
    integer("search.batch", [](CompressJob& j) -> int64_t& { return j.search.batch; }, 1, kMaxBatch);
    bytes("search.workspace", [](CompressJob& j) -> std::string& { return j.search.workspace; });
    choice("search.space", [](CompressJob& j) -> std::string& { return j.search.space; }, {"paper", "depth", "full"});
    // search.axes is a mapping; handled beside the table (see set_key).
    number("search.max_depth_reduction", [](CompressJob& j) -> double& { return j.search.max_depth_reduction; }, 0, 1, false);
    number("search.max_width_reduction", [](CompressJob& j) -> double& { return j.search.max_width_reduction; }, 0, 1, false);
    number("search.min_budget_use", [](CompressJob& j) -> double& { return j.search.min_budget_use; }, 0, 1, false);
    boolean("search.maximal_only", [](CompressJob& j) -> bool& { return j.search.maximal_only; });
    integer("search.top_k", [](CompressJob& j) -> int64_t& { return j.search.top_k; }, 1, 100000);
    f.push_back({"search.max_active_params", "a parameter count (800M, 3.2B, 1.5e9; 0 = no limit)",
                 [](CompressJob& j, const std::string& t, const fs::path&) {
                   j.search.max_active_params = to_count("search.max_active_params", t, 0,
                                                         "a parameter count such as 800M, 3.2B or 1.5e9");
                 },
                 [](const CompressJob& j) { return json(j.search.max_active_params); }});

    count("rank.tokens", [](CompressJob& j) -> uint64_t& { return j.rank.tokens; }, 1);
    integer("rank.seq_len", [](CompressJob& j) -> int64_t& { return j.rank.seq_len; }, 1, kMaxSeq);
    integer("rank.batch", [](CompressJob& j) -> int64_t& { return j.rank.batch; }, 1, kMaxBatch);
    choice("rank.by", [](CompressJob& j) -> std::string& { return j.rank.by; }, {"agreement", "accuracy", "loss", "kl"});

    integer("distill.seq_len", [](CompressJob& j) -> int64_t& { return j.distill.seq_len; }, 1, kMaxSeq);
    integer("distill.micro_batch", [](CompressJob& j) -> int64_t& { return j.distill.micro_batch; }, 1, kMaxBatch);
    integer("distill.global_batch", [](CompressJob& j) -> int64_t& { return j.distill.global_batch; }, 1, kMaxBatch);
    choice("distill.loss", [](CompressJob& j) -> std::string& { return j.distill.loss; },
           {"forward_kl", "fkl", "reverse_kl", "rkl", "jsd"});
    choice("distill.schedule", [](CompressJob& j) -> std::string& { return j.distill.schedule; }, {"cosine", "wsd", "constant"});
    number("distill.temperature", [](CompressJob& j) -> double& { return j.distill.temperature; }, 0, 100, true);
    number("distill.ce_weight", [](CompressJob& j) -> double& { return j.distill.ce_weight; }, 0, 1e6, false);
    number("distill.weight_decay", [](CompressJob& j) -> double& { return j.distill.weight_decay; }, 0, 10, false);
    number("distill.clip_grad", [](CompressJob& j) -> double& { return j.distill.clip_grad; }, 0, 1e9, false);
    count("distill.eval_tokens", [](CompressJob& j) -> uint64_t& { return j.distill.eval_tokens; }, 1);
    seed("distill.seed", [](CompressJob& j) -> uint64_t& { return j.distill.seed; });
    integer("distill.keep_last", [](CompressJob& j) -> int64_t& { return j.distill.keep_last; }, 1, 1000);
    boolean("distill.activation_checkpointing", [](CompressJob& j) -> bool& { return j.distill.activation_checkpointing; });
    integer("distill.processes", [](CompressJob& j) -> int64_t& { return j.distill.processes; }, 1, 1024);
    choice("distill.shard", [](CompressJob& j) -> std::string& { return j.distill.shard; },
           {"none", "optimizer", "gradients", "parameters"});

    for (auto [name, run] : {std::pair{std::string("short_distill"), &CompressJob::short_distill},
                             std::pair{std::string("long_distill"), &CompressJob::long_distill}}) {
      const auto r = run;
      count(name + ".tokens", [r](CompressJob& j) -> uint64_t& { return (j.*r).tokens; }, 1);
      number(name + ".lr", [r](CompressJob& j) -> double& { return (j.*r).lr; }, 0, 10, true);
      number(name + ".min_lr", [r](CompressJob& j) -> double& { return (j.*r).min_lr; }, 0, 10, false);
      integer(name + ".warmup_steps", [r](CompressJob& j) -> int64_t& { return (j.*r).warmup_steps; }, 0, int64_t(1) << 40);
      integer(name + ".eval_every", [r](CompressJob& j) -> int64_t& { return (j.*r).eval_every; }, 0, int64_t(1) << 40);
      integer(name + ".save_every", [r](CompressJob& j) -> int64_t& { return (j.*r).save_every; }, 0, int64_t(1) << 40);
    }
    integer("short_distill.candidates", [](CompressJob& j) -> int64_t& { return j.short_candidates; }, 1, 1000);

    choice("export.dtype", [](CompressJob& j) -> std::string& { return j.export_.dtype; }, {"bf16", "fp16", "fp32", "fp8", "nvfp4", "int4"});
    text("export.max_shard_size", "a size such as 5GB or 2GiB",
         [](CompressJob& j) -> std::string& { return j.export_.max_shard_size; },
         [](const std::string& k, const std::string& t) {
           try {
             parse_byte_size(t);
           } catch (const std::exception&) {
             bad_value(k, "a size such as 5GB or 2GiB", t);
           }
           return t;
         });

    count("evaluate.tokens", [](CompressJob& j) -> uint64_t& { return j.evaluate.tokens; }, 1);
    integer("evaluate.seq_len", [](CompressJob& j) -> int64_t& { return j.evaluate.seq_len; }, 0, kMaxSeq);
    integer("evaluate.batch", [](CompressJob& j) -> int64_t& { return j.evaluate.batch; }, 1, kMaxBatch);
    number("estimate.tflops", [](CompressJob& j) -> double& { return j.estimate_tflops; }, 0, 1e9, false);
    return f;
  }();
  return table;
}

const Field* find_field(const std::string& key) {
  for (const auto& f : fields())
    if (f.path == key) return &f;
  return nullptr;
}

const std::set<std::string> kAxisNames{"mamba_layers",   "attention_layers", "mlp_layers",  "ffn",
                                       "hidden",         "mamba_heads",      "mamba_head_dim", "attention_heads",
                                       "moe_layers",     "moe_experts",      "moe_expert_ffn", "moe_shared_ffn"};

// The known keys directly under `prefix` ("" = top level), for "did you mean".
std::string known_under(const std::string& prefix) {
  std::set<std::string> names;
  for (const auto& f : fields()) {
    if (f.path.rfind(prefix, 0) != 0) continue;
    const std::string rest = f.path.substr(prefix.size());
    names.insert(rest.substr(0, rest.find('.')));
  }
  if (prefix == "search.") names.insert("axes");
  if (prefix == "search.axes.") names = kAxisNames;
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// Job values end up in job.json and in command lines: text must be UTF-8
// (no overlong forms, surrogates or code points past U+10FFFF).
bool valid_utf8(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xE ? 2 : (c >> 3) == 0x1E ? 3 : 4;
    if (n == 4 || i + n >= s.size() || (n == 1 && c < 0xC2) || (n == 3 && c > 0xF4)) return false;
    for (std::size_t k = 1; k <= n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    const auto c1 = n > 0 ? static_cast<unsigned char>(s[i + 1]) : 0;
    if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0) || (c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 >= 0x90))
      return false;
    i += n + 1;
  }
  return true;
}

void set_key(CompressJob& job, const std::string& key, const std::string& value, const fs::path& base) {
  if (!valid_utf8(key)) throw InputError("a key is not valid UTF-8");
  if (!valid_utf8(value)) throw InputError(fmt::format("{}: the value is not valid UTF-8", key));
  if (key.rfind("search.axes.", 0) == 0) {
    const std::string axis = key.substr(12);
    if (!kAxisNames.count(axis))
      throw InputError(fmt::format("{}: unknown axis (known: {})", key, known_under("search.axes.")));
    if (value.empty() || value.size() > 64 || value.find_first_not_of("0123456789:") != std::string::npos)
      bad_value(key, "min:max[:step] or a value", value);
    job.search.axes[axis] = value;
    return;
  }
  const Field* f = find_field(key);
  if (!f && !known_under(key + ".").empty())
    throw InputError(fmt::format("{}: a section, not a key: set one of its keys ({})", key, known_under(key + ".")));
  if (!f) {
    const auto dot = key.rfind('.');
    std::string prefix = dot == std::string::npos ? "" : key.substr(0, dot + 1);
    if (known_under(prefix).empty()) prefix.clear();  // "foo.bar" under no known section: list the sections
    throw InputError(fmt::format("{}: unknown key (known{}: {})", key,
                                 prefix.empty() ? "" : " under " + prefix.substr(0, prefix.size() - 1),
                                 known_under(prefix)));
  }
  f->set(job, value, base);
}

const char* node_kind(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Null: return "nothing";
    default: return "a value";
  }
}

bool is_section(const std::string& key) {
  for (const auto& f : fields())
    if (f.path.rfind(key + ".", 0) == 0) return true;
  return key == "search.axes";
}

void walk(CompressJob& job, const YAML::Node& node, const std::string& prefix, const fs::path& base, int depth,
          std::set<std::string>& seen) {
  if (depth > 3) throw InputError(fmt::format("{}: nested too deeply", prefix));
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) throw InputError(fmt::format("{}: keys must be plain names", prefix.empty() ? "top level" : prefix));
    const std::string key = prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
    if (!seen.insert(key).second) throw InputError(fmt::format("{}: given twice", key));
    const YAML::Node& v = kv.second;
    if (is_section(key)) {
      if (!v.IsMap()) throw InputError(fmt::format("{}: expected a mapping of keys ({}), got {}", key,
                                                   known_under(key + "."), node_kind(v)));
      walk(job, v, key, base, depth + 1, seen);
      continue;
    }
    if (!find_field(key) && key.rfind("search.axes.", 0) != 0) set_key(job, key, "", base);  // unknown key error
    if (!v.IsScalar()) {
      const Field* f = find_field(key);
      throw InputError(fmt::format("{}: expected {}, got {}", key, f ? f->expected : "min:max[:step] or a value",
                                   node_kind(v)));
    }
    set_key(job, key, v.Scalar(), base);
  }
}

void check_job(const CompressJob& j, bool dry_run) {
  auto need = [](const std::string& v, const char* key, const char* what) {
    if (v.empty()) throw InputError(fmt::format("{}: required ({})", key, what));
  };
  need(j.teacher, "teacher", "the parent checkpoint directory");
  need(j.out, "out", "the job directory, where every stage writes");
  need(j.search.budget, "search.budget", "memory per inference instance, e.g. 31.7GiB");
  if (!dry_run) need(j.train_data, "data.train", "the dataset prefix, PREFIX.bin / PREFIX.idx");
  if (j.short_distill.tokens == 0) throw InputError("short_distill.tokens: required (tokens per candidate, e.g. 7B)");
  if (j.long_distill.tokens == 0) throw InputError("long_distill.tokens: required (tokens of the final run, e.g. 63B)");
  if (j.distill.global_batch % (j.distill.micro_batch * j.distill.processes) != 0)
    throw InputError(fmt::format(
        "distill.global_batch {} must be a multiple of distill.micro_batch {} x distill.processes {}",
        j.distill.global_batch, j.distill.micro_batch, j.distill.processes));
  for (const auto* r : {&j.short_distill, &j.long_distill})
    if (r->min_lr > r->lr)
      throw InputError(fmt::format("{}.min_lr {} is above its lr {}", r == &j.short_distill ? "short_distill" : "long_distill",
                                   r->min_lr, r->lr));
  if (j.short_candidates > j.search.top_k)
    throw InputError(fmt::format("short_distill.candidates {} is more than search.top_k {}", j.short_candidates,
                                 j.search.top_k));
  const fs::path out(j.out);
  if (out == fs::path(j.teacher)) throw InputError("out: must not be the teacher's directory");
}

}  // namespace

int64_t CompressJob::steps_for(uint64_t tokens) const {
  const uint64_t per_step = static_cast<uint64_t>(distill.global_batch) * static_cast<uint64_t>(distill.seq_len);
  return static_cast<int64_t>((tokens + per_step - 1) / per_step);
}

json CompressJob::to_json() const {
  json j = json::object();
  for (const auto& f : fields()) j[f.path] = f.get(*this);
  json axes = json::object();
  for (const auto& [k, v] : search.axes) axes[k] = v;
  j["search.axes"] = axes;
  return j;
}

const char* compress_stage_name(CompressStage stage) {
  static const char* const names[kCompressStages] = {"score",  "search", "short distill", "pick",
                                                     "long distill", "export", "compare", "report"};
  return names[static_cast<int>(stage)];
}

std::optional<CompressStage> first_stage_reading(const std::string& key) {
  auto under = [&](const char* prefix) { return key.rfind(prefix, 0) == 0; };
  if (under("estimate.") || key == "out") return std::nullopt;
  // The validation data ranks the candidates in search (first) and scores
  // every later evaluation.
  if (key == "data.validation" || under("search.") || under("rank.")) return CompressStage::Search;
  // More or fewer candidates: those already distilled stay valid, the pick
  // among them does not.
  if (key == "short_distill.candidates") return CompressStage::Pick;
  if (under("distill.") || under("short_distill.")) return CompressStage::ShortDistill;
  if (under("long_distill.")) return CompressStage::LongDistill;
  if (under("export.")) return CompressStage::Export;
  if (under("evaluate.")) return CompressStage::Compare;
  // teacher, data.train, compute.*, score.*, and anything not listed above.
  return CompressStage::Score;
}

std::vector<std::pair<std::string, std::string>> compress_job_keys() {
  std::vector<std::pair<std::string, std::string>> keys;
  for (const auto& f : fields()) keys.emplace_back(f.path, f.expected);
  keys.emplace_back("search.axes.NAME", "min:max[:step] or a value; NAME: " + known_under("search.axes."));
  return keys;
}

CompressJob parse_compress_job(const std::string& yaml_text, const std::string& source,
                               const std::vector<std::string>& sets, const fs::path& set_base, bool dry_run) {
  CompressJob job;
  const fs::path base = fs::path(source).parent_path().empty() ? fs::path(".") : fs::path(source).parent_path();
  try {
    YAML::Node root;
    try {
      root = YAML::Load(yaml_text);
    } catch (const YAML::Exception& e) {
      throw InputError(fmt::format("line {}, column {}: not valid YAML ({})", e.mark.line + 1, e.mark.column + 1, e.msg));
    }
    if (!root.IsNull()) {
      if (!root.IsMap()) throw InputError(fmt::format("expected a mapping of keys at the top, got {}", node_kind(root)));
      std::set<std::string> seen;
      walk(job, root, "", base, 0, seen);
    }
  } catch (const InputError& e) {
    throw InputError(fmt::format("{}: {}", source, e.what()));
  } catch (const YAML::Exception& e) {
    throw InputError(fmt::format("{}: line {}: {}", source, e.mark.line + 1, e.msg));
  }
  for (const auto& s : sets) {
    const auto eq = s.find('=');
    if (eq == std::string::npos || eq == 0) throw InputError(fmt::format("--set {}: expected key.path=value", s));
    try {
      set_key(job, s.substr(0, eq), s.substr(eq + 1), set_base);
    } catch (const InputError& e) {
      throw InputError(fmt::format("--set: {}", e.what()));
    }
  }
  if (job.validation_data.empty()) job.validation_data = job.train_data;
  try {
    check_job(job, dry_run);
  } catch (const InputError& e) {
    throw InputError(fmt::format("{}: {}", source, e.what()));
  }
  return job;
}

CompressJob load_compress_job(const fs::path& file, const std::vector<std::string>& sets, bool dry_run) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) throw InputError(fmt::format("job file {} not found", file.string()));
  if (fs::file_size(file, ec) > (1u << 20)) throw InputError(fmt::format("{}: larger than 1 MiB; not a job file", file.string()));
  return parse_compress_job(read_file(file), file.string(), sets, fs::current_path(), dry_run);
}

}  // namespace minipuzzle
