#include "compress_compare.h"

#include <fmt/format.h>

#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>

#include "compress_preflight.h"
#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/host_to_device.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/logit_comparison.h"
#include "minipuzzle/memory_model.h"
#include "minipuzzle/memory_report.h"
#include "minipuzzle/streamed_model.h"
#include "minipuzzle/token_batches.h"
#include "minipuzzle/token_windows.h"

namespace minipuzzle::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

int64_t compare_seq_len(const CompressJob& j) { return j.evaluate.seq_len > 0 ? j.evaluate.seq_len : j.distill.seq_len; }

// The held-out windows the table is measured on.
std::vector<uint64_t> compare_windows(const CompressJob& j, const IndexedDataset& data) {
  const int64_t seq_len = compare_seq_len(j);
  if (data.total_tokens() < static_cast<uint64_t>(seq_len) + 1)
    throw InputError(fmt::format("data.validation {} has fewer than one window of {} + 1 tokens", j.validation_data, seq_len));
  return sequential_windows(data.total_tokens(), seq_len, std::max<uint64_t>(1, j.evaluate.tokens / seq_len));
}

ResidencyPlan plan_compare(const CompressJob& j, size_t windows) {
  // Planned on the teacher, the largest model (every other one is cut or
  // distilled from it); streamed, the teacher's final states of every
  // window stay for every model's comparison.
  const int64_t seq_len = compare_seq_len(j);
  const auto dtype = parse_model_dtype(j.dtype);
  const auto device = parse_device(j.device);
  const ModelConfig teacher = ModelConfig::load(j.teacher);
  ResidencyOptions ro;
  ro.batch = j.evaluate.batch;
  ro.seq_len = seq_len;
  ro.batches = static_cast<int64_t>((windows + j.evaluate.batch - 1) / j.evaluate.batch);
  ro.extra_working_bytes = static_cast<uint64_t>(windows * seq_len * teacher.hidden_size) * c10::elementSize(dtype) +
                           comparison_working_bytes(teacher, dtype, j.evaluate.batch * seq_len);
  try {
    if (!j.max_device_memory.empty())
      ro.max_device_memory = parse_max_device_memory(j.max_device_memory, teacher, dtype, device);
    return plan_residency(teacher, dtype, ro, device);
  } catch (const InputError& e) {
    throw InputError(fmt::format("compute.max_device_memory (compare stage): {}", e.what()));
  }
}

}  // namespace

ResidencyPlan plan_compare(const CompressJob& j) {
  auto data = IndexedDataset::open(j.validation_data);
  return plan_compare(j, compare_windows(j, *data).size());
}

int compare_stage(const CompressJob& j, const CompressPaths& p) {
  const int64_t w = picked_rank(p);
  if (w == 0) throw InputError(p.pick.string() + " is missing; the pick stage has not run");
  const int64_t seq_len = compare_seq_len(j);
  auto data = IndexedDataset::open(j.validation_data);
  const auto starts = compare_windows(j, *data);
  const Deployment dep = search_options_of(j).deployment;
  const auto dtype = parse_model_dtype(j.dtype);
  const auto device = parse_device(j.device);

  torch::NoGradGuard no_grad;
  std::vector<std::pair<std::string, fs::path>> models = {
      {"teacher", j.teacher},
      {fmt::format("pruned (rank {})", w), p.short_student(w)},
      {"after short distill", p.short_run(w) / "final"},
  };
  // A quantized export gets the unquantized model it came from beside it,
  // so the table shows what the format cost.
  const bool quantized = j.export_.dtype == "fp8" || j.export_.dtype == "nvfp4" || j.export_.dtype == "int4";
  if (quantized) models.emplace_back("after long distill", p.long_run / "final");
  models.emplace_back(fmt::format("final (export, {})", j.export_.dtype), p.export_dir);

  const ModelConfig teacher_config = ModelConfig::load(j.teacher);
  const ResidencyPlan plan = plan_compare(j, starts.size());
  std::cout << "compare: " << plan.describe() << std::endl;

  struct Row {
    LogitComparison sum;
    ModelConfig config;
  };
  std::vector<Row> measured;
  if (!plan.streamed) {
    HybridLM teacher = load_model(j.teacher, dtype, device);
    teacher->eval();
    const int64_t vocab = teacher->config().vocab_size;
    for (const auto& [name, dir] : models) {
      HybridLM m = name == "teacher" ? teacher : load_model(dir, dtype, device);
      m->eval();
      LogitComparison sum;
      for (std::size_t i = 0; i < starts.size(); i += static_cast<std::size_t>(j.evaluate.batch)) {
        std::vector<uint64_t> part(starts.begin() + i,
                                   starts.begin() + std::min(starts.size(), i + static_cast<std::size_t>(j.evaluate.batch)));
        auto rows_t = to_device_async(gather_windows(*data, part, seq_len, vocab), device);
        auto inputs = rows_t.narrow(1, 0, seq_len), targets = rows_t.narrow(1, 1, seq_len);
        auto th = teacher->forward_hidden(inputs);
        sum += compare_logits(teacher, th, m, name == "teacher" ? th : m->forward_hidden(inputs), targets);
      }
      measured.push_back({sum, m->config()});
      std::cout << fmt::format("compared {}: loss {:.4f}\n", name, sum.ce_other_sum / static_cast<double>(sum.tokens))
                << std::flush;
    }
  } else {
    // Layer-major: the teacher's states once, then each model a group of
    // batches at a time, compared in passes over the two heads.
    std::vector<torch::Tensor> inputs, targets;
    for (std::size_t i = 0; i < starts.size(); i += static_cast<std::size_t>(j.evaluate.batch)) {
      std::vector<uint64_t> part(starts.begin() + i,
                                 starts.begin() + std::min(starts.size(), i + static_cast<std::size_t>(j.evaluate.batch)));
      auto rows_t = to_device_async(gather_windows(*data, part, seq_len, teacher_config.vocab_size), device);
      inputs.push_back(rows_t.narrow(1, 0, seq_len));
      targets.push_back(rows_t.narrow(1, 1, seq_len));
    }
    ForwardModel teacher(j.teacher, dtype, device, plan);
    std::vector<torch::Tensor> teacher_hidden(inputs.size());
    teacher.forward_hidden(inputs, [&](size_t b, const torch::Tensor& h) { teacher_hidden[b] = h; });
    const uint64_t pass = comparison_head_pass_bytes(teacher_config, dtype);
    for (const auto& [name, dir] : models) {
      std::optional<ForwardModel> own;
      if (name != "teacher") own.emplace(dir, dtype, device, plan);
      ForwardModel& m = own ? *own : teacher;
      const LogitComparison sum = compare_with_head_passes(&teacher, teacher_hidden, m, inputs, targets, pass);
      measured.push_back({sum, m.model()->config()});
      std::cout << fmt::format("compared {}: loss {:.4f}\n", name, sum.ce_other_sum / static_cast<double>(sum.tokens))
                << std::flush;
    }
  }

  // The shipped model's memory is at the format it was exported in; the
  // models before it at the precision the search planned for.
  Deployment export_dep = dep;
  export_dep.weights = parse_precision(j.export_.dtype, "export.dtype");
  json rows = json::array();
  for (size_t k = 0; k < models.size(); ++k) {
    const LogitComparison& sum = measured[k].sum;
    const double n = static_cast<double>(sum.tokens);
    const ModelConfig& c = measured[k].config;
    const Deployment& row_dep = k + 1 == models.size() ? export_dep : dep;
    rows.push_back({{"name", models[k].first},
                    {"dir", models[k].second.string()},
                    {"params", count_parameters(c).total},
                    {"active_params", count_parameters(c).active},
                    {"memory_bytes", memory_breakdown(c, row_dep).total},
                    {"weights", precision_name(row_dep.weights)},
                    {"loss", sum.ce_other_sum / n},
                    {"accuracy", static_cast<double>(sum.other_correct) / n},
                    {"agreement", static_cast<double>(sum.agree) / n},
                    {"kl", sum.kl_sum / n},
                    {"pattern", c.pattern}});
  }
  json out = {{"data", j.validation_data},
              {"tokens", static_cast<uint64_t>(starts.size()) * static_cast<uint64_t>(seq_len)},
              {"seq_len", seq_len},
              {"deployment", deployment_to_json(dep)},
              {"budget_bytes", parse_bytes(j.search.budget, "search.budget")},
              {"models", rows}};
  write_file_atomic(p.compare, out.dump(2) + "\n");
  return 0;
}

}  // namespace minipuzzle::cli
