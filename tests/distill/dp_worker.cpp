// One data-parallel rank for test_data_parallel.py: a tiny HybridLM, one
// optimizer step over a fixed global batch following the contract in
// data_parallel.h. Run without RANK/WORLD_SIZE it is the single-process
// reference over the whole batch.
//
//   dp_worker OUT_PREFIX [--batch N] [--seq L] [--timeout-s S] [--stall-rank R] [--overlap 1]
//
// Writes OUT_PREFIX.rank<r>.grad (the averaged gradients after
// all_reduce_gradients, fp32, parameters in named_parameters order, each
// flattened), OUT_PREFIX.rank<r>.param (the parameters after one clipped
// AdamW step) and OUT_PREFIX.rank<r>.json (loss, backend, world size).
// Prints "joined" once the group is up. --stall-rank R: that rank sleeps
// before the gradient allreduce (so the others must time out or see it die).
// --overlap 1: the all-reduce overlapped with the last backward
// (OverlappedAllReduce) instead of all_reduce_gradients after it; --overlap
// early: armed before the first backward, so every gradient accumulates
// again after its bucket started (the redo path).
// Exit 0 on success, 1 on a failed collective (message on stderr).
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "../model/tiny_config.h"
#include "minipuzzle/adamw.h"
#include "minipuzzle/data_parallel.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/overlapped_all_reduce.h"

using namespace minipuzzle;

namespace {

void write_flat(const std::string& path, const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> parts;
  for (const auto& t : tensors) parts.push_back(t.detach().reshape({-1}).to(torch::kFloat32).contiguous());
  auto flat = torch::cat(parts).contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(flat.data_ptr<float>()), flat.numel() * sizeof(float));
}

int run(int argc, char** argv) {
  if (argc < 2) throw InputError("usage: dp_worker OUT_PREFIX [--batch N] [--seq L] [--timeout-s S] [--stall-rank R]");
  const std::string prefix = argv[1];
  int64_t batch = 4, seq = 16;
  double timeout_s = 600;
  int stall_rank = -1;
  std::string overlap = "0";
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--batch") batch = std::stoll(v);
    else if (k == "--seq") seq = std::stoll(v);
    else if (k == "--timeout-s") timeout_s = std::stod(v);
    else if (k == "--stall-rank") stall_rank = std::stoi(v);
    else if (k == "--overlap") overlap = v;
    else throw InputError("dp_worker: unknown option " + k);
  }

  const DistEnv env = DistEnv::from_environment();
  DataParallelOptions dpo;
  dpo.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  dpo.bucket_bytes = 4096;  // several buckets even for the tiny model
  DataParallel dp(env, torch::kCPU, dpo);
  std::cout << "joined rank " << dp.rank() << " of " << dp.world_size() << " (" << dp.backend_name() << ")"
            << std::endl;

  torch::manual_seed(0);
  HybridLM model(testing::tiny_config());
  // Different weights per rank: the broadcast must make them equal.
  model->init_random(1234 + 17 * static_cast<uint64_t>(dp.rank()));
  std::vector<std::pair<std::string, torch::Tensor>> named;
  std::vector<torch::Tensor> params;
  for (auto& p : model->named_parameters()) {
    named.emplace_back(p.key(), p.value());
    params.push_back(p.value());
  }
  dp.broadcast_parameters(params);
  model->train();

  // The step's global batch: window w is tokens (w*seq .. w*seq+seq) of a
  // fixed stream; every rank knows the whole list and takes its slice.
  const int64_t vocab = model->config().vocab_size;
  std::vector<uint64_t> starts;
  for (int64_t w = 0; w < batch; ++w) starts.push_back(static_cast<uint64_t>(w * seq));
  const int64_t local = data_parallel_local_batch(batch, 1, dp.world_size());
  const auto mine = data_parallel_slice(starts, dp.rank(), dp.world_size());
  double loss_sum = 0;
  OverlappedAllReduce sync(dp, params);
  for (uint64_t s : mine) {  // micro-batch 1
    auto idx = torch::arange(static_cast<int64_t>(s), static_cast<int64_t>(s) + seq + 1, torch::kInt64);
    auto tokens = ((idx * 7919 + idx * idx * 31) % vocab).unsqueeze(0);
    auto in = tokens.narrow(1, 0, seq), tg = tokens.narrow(1, 1, seq);
    auto logits = model->forward(in);
    auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, vocab}), tg.reshape({-1}));
    if ((overlap == "1" && s == mine.back()) || (overlap == "early" && s == mine.front())) sync.arm();
    (loss / static_cast<double>(local)).backward();
    loss_sum += loss.item<double>() / local;
  }
  if (dp.rank() == stall_rank) std::this_thread::sleep_for(std::chrono::seconds(600));
  if (overlap != "0")
    sync.finish();
  else
    dp.all_reduce_gradients(params);
  const double loss = dp.all_reduce_sum(loss_sum) / dp.world_size();

  std::vector<torch::Tensor> grads;
  for (auto& p : params) grads.push_back(p.grad());
  const std::string me = prefix + ".rank" + std::to_string(dp.rank());
  write_flat(me + ".grad", grads);
  AdamW opt(named, AdamWOptions{});
  const double norm = opt.clip_grad_norm(1.0);
  opt.step(1e-3);
  write_flat(me + ".param", params);
  nlohmann::json j = {{"loss", loss}, {"grad_norm", norm}, {"backend", dp.backend_name()},
                      {"world_size", dp.world_size()}, {"rank", dp.rank()}};
  std::ofstream(me + ".json") << j.dump() << "\n";
  dp.barrier();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "dp_worker: " << e.what() << std::endl;
    return 1;
  }
}
