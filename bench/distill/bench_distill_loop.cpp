// bench_distill_loop [--steps N] [--hidden D] [--seq-len L] [--micro-batch B] [--global-batch G] [--meta k=v ...]
//
// The distillation loop's overhead: run_distillation() (data order, window
// gathering, metrics, JSONL, progress, checkpoint bookkeeping) against the
// bare work of the same steps in the same run: teacher forward, student
// forward, chunked KD loss, backward, clip, AdamW step on pre-gathered
// batches. Both exclude the first step (warm-up). Prints one JSON object.
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/distill_trainer.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/token_batches.h"
#include "minipuzzle/window_order.h"
#include "run_metadata.h"

using namespace minipuzzle;
using nlohmann::json;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  int64_t steps = 6, hidden = 256, seq_len = 256, micro = 4, global = 8;
  json out = {{"benchmark", "distill_loop_overhead"}};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--steps") steps = std::stoll(v);
    else if (a == "--hidden") hidden = std::stoll(v);
    else if (a == "--seq-len") seq_len = std::stoll(v);
    else if (a == "--micro-batch") micro = std::stoll(v);
    else if (a == "--global-batch") global = std::stoll(v);
    else if (a == "--meta") {
      if (!bench::add_meta_note(out, v, "bench_distill_loop")) return 2;
    } else {
      std::cerr << "bench_distill_loop: unknown argument " << a << "\n";
      return 2;
    }
  }
  const fs::path dir = fs::temp_directory_path() / ("mp_bench_distill_" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  auto config = [&](const std::string& pattern) {
    return ModelConfig::from_json({{"vocab_size", 1024}, {"hidden_size", hidden}, {"hybrid_override_pattern", pattern},
                                   {"intermediate_size", 4 * hidden}, {"num_attention_heads", 8},
                                   {"num_key_value_heads", 2}, {"head_dim", hidden / 8},
                                   {"mamba_num_heads", hidden / 16}, {"mamba_head_dim", 32}, {"ssm_state_size", 64},
                                   {"n_groups", 2}, {"chunk_size", 64}},
                                  "bench");
  };
  {
    HybridLM t(config("M-M*-M-M-"));
    t->init_random(1);
    save_model(t, dir / "teacher", torch::kFloat32);
    HybridLM s(config("M-*-MM-"));
    s->init_random(2);
    save_model(s, dir / "student", torch::kFloat32);
    IndexedDatasetBuilder b((dir / "data").string(), TokenDType::U16);
    auto tok = torch::randint(0, 1024, {200000}, at::make_generator<at::CPUGeneratorImpl>(3), torch::kInt64);
    b.add_document(std::vector<int64_t>(tok.data_ptr<int64_t>(), tok.data_ptr<int64_t>() + tok.numel()));
    b.finish();
  }

  DistillOptions o;
  o.teacher = (dir / "teacher").string();
  o.student = (dir / "student").string();
  o.data = (dir / "data").string();
  o.out = dir / "run";
  o.seq_len = seq_len;
  o.micro_batch = micro;
  o.global_batch = global;
  o.schedule.total_steps = steps;
  o.schedule.lr = 1e-3;
  o.schedule.min_lr = 1e-4;
  o.eval_tokens = static_cast<uint64_t>(seq_len);
  run_distillation(o);
  std::vector<json> lines;
  {
    std::ifstream in(o.out / "metrics.jsonl");
    for (std::string l; std::getline(in, l);) {
      auto j = json::parse(l);
      if (!j.value("eval", false)) lines.push_back(j);
    }
  }
  const double loop_tps = (lines.back()["tokens"].get<double>() - lines.front()["tokens"].get<double>()) /
                          (lines.back()["seconds"].get<double>() - lines.front()["seconds"].get<double>());

  // The bare work of the same steps.
  HybridLM teacher = load_model(dir / "teacher"), student = load_model(dir / "student");
  teacher->eval();
  student->train();
  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (auto& p : student->named_parameters()) named.emplace_back(p.key(), p.value());
  AdamW opt(named, {});
  auto data = IndexedDataset::open(o.data);
  WindowOrder order(data->total_tokens(), seq_len, o.seed);
  WindowOrder::Position pos;
  std::vector<torch::Tensor> batches;
  for (int64_t i = 0; i < steps * (global / micro); ++i)
    batches.push_back(gather_windows(*data, order.take(pos, micro), seq_len, 1024));
  std::chrono::steady_clock::time_point t1;
  std::size_t b = 0;
  for (int64_t step = 0; step < steps; ++step) {
    if (step == 1) t1 = std::chrono::steady_clock::now();
    for (int64_t m = 0; m < global / micro; ++m, ++b) {
      auto in = batches[b].narrow(1, 0, seq_len), tg = batches[b].narrow(1, 1, seq_len);
      torch::Tensor th;
      {
        torch::NoGradGuard ng;
        th = teacher->forward_hidden(in);
      }
      auto r = kd_loss_online(student, student->forward_hidden(in), teacher, th, tg, {});
      (r.loss / static_cast<double>(global / micro)).backward();
    }
    opt.clip_grad_norm(1.0);
    opt.step(1e-3);
    opt.zero_grad();
  }
  const double bare_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  const double bare_tps = static_cast<double>((steps - 1) * global * seq_len) / bare_s;
  remove_tree(dir);
  out["run"] = {{"steps_timed", steps - 1}, {"hidden", hidden}, {"seq_len", seq_len}, {"micro_batch", micro},
                {"global_batch", global}, {"threads", torch::get_num_threads()}};
  out["loop_tokens_per_second"] = loop_tps;
  out["bare_tokens_per_second"] = bare_tps;
  out["loop_overhead"] = bare_tps / loop_tps - 1.0;
  bench::add_run_metadata(out);
  std::cout << out.dump(2) << "\n";
  return 0;
}
