// Data-parallel training: one process per device, launched by
// `torchrun --no-python` or SLURM, talking through c10d (LibTorch's own
// collectives): a TCPStore for the rendezvous (rank 0 serves it), then
// ProcessGroupGloo on CPU or ProcessGroupNCCL on CUDA.
//
// THE CONTRACT THE TRAINER FOLLOWS (every rank runs the same calls in the
// same order; a collective that one rank skips blocks the others until the
// timeout, then throws):
//   1. DistEnv env = DistEnv::from_environment();
//      DataParallel dp(env, device);            // world_size 1: no group, every call a no-op
//      Pin the device first on CUDA: device = cuda:env.local_rank.
//   2. Load/initialise the student identically on every rank (same seed or
//      the same checkpoint), then dp.broadcast_parameters(params) so all
//      replicas start bit-identical (also after a resume).
//   3. Validate: data_parallel_local_batch(global_batch, micro_batch, world)
//      (InputError when global_batch is not a multiple of world*micro_batch).
//   4. Each optimizer step:
//      a. every rank takes the SAME global_batch window starts from the
//         WindowOrder (order.take(pos, global_batch): the position advances
//         identically everywhere, so checkpoints/resume stay as today);
//      b. mine = data_parallel_slice(starts, dp.rank(), dp.world_size());
//      c. forward/backward over `mine` in micro-batches, scaling each
//         micro-batch loss by 1/local_accum (local_accum = mine.size()/micro);
//      d. dp.all_reduce_gradients(params)  -- BEFORE clip_grad_norm/step
//         (or OverlappedAllReduce, overlapped_all_reduce.h: the same sums,
//         started during the last backward):
//         it averages over ranks, so the result is the single-process
//         gradient up to float summation order; every rank then computes the
//         same norm, clips and steps the same way and the replicas stay equal;
//      e. metrics: per-rank sums (loss, kd_sum, ce_sum, tokens) through
//         dp.all_reduce_sum_in_place(...) (one collective for a tensor); the loss
//         scaled by 1/local_accum summed over ranks is world * the global
//         mean: divide it by world_size.
//   5. Only dp.is_root() writes files (run.json, metrics.jsonl, checkpoints,
//      final/, report). Evaluation: simplest is that every rank runs the same
//      evaluation (identical replicas, identical result) and only rank 0
//      logs it. If rank 0 alone evaluated, the others would sit in their next
//      collective, which throws after `timeout` when evaluation (or a
//      checkpoint write) takes longer than that.
//   6. dp.barrier() after rank 0 has written a checkpoint (before anyone may
//      read it or exit), and before the final return, so no rank exits while
//      another still needs the group. A stop signal must be agreed on by all
//      ranks: all_reduce_sum(flag) > 0 at the end of each step.
// Failure: a dead rank makes the others' next collective throw
// (std::runtime_error / c10::Error) within `timeout`; let it propagate and
// exit non-zero (the launcher then stops the job).
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace minipuzzle {

// Where this process sits in the job, from the launcher's environment:
// RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (torchrun), else
// SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID with MASTER_ADDR/MASTER_PORT
// set by the job script. Nothing set: a single process (rank 0 of 1).
struct DistEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  // Under torchrun (TORCHELASTIC_USE_AGENT_STORE=True) the launcher already
  // serves the TCPStore on MASTER_PORT: every rank joins it as a client,
  // under the prefix "/worker/attempt_<TORCHELASTIC_RESTART_COUNT>".
  bool agent_store = false;
  int restart_count = 0;
  // InputError (one line) on inconsistent values: rank >= world size, a
  // non-number, a missing MASTER_ADDR/MASTER_PORT when world size > 1.
  static DistEnv from_environment();
  // Same, from an explicit lookup (tests): returns nullptr for unset names.
  static DistEnv from_lookup(const std::function<const char*(const char*)>& getenv_fn);
};

// The windows this rank processes out of one optimizer step's global list:
// the contiguous slice [rank*n/world, (rank+1)*n/world). InputError when
// n is not a multiple of world_size. The slices of all ranks, concatenated
// in rank order, are the global list.
std::vector<uint64_t> data_parallel_slice(const std::vector<uint64_t>& global_starts, int rank, int world_size);
// global_batch / world_size, checked: InputError unless global_batch is a
// multiple of world_size * micro_batch.
int64_t data_parallel_local_batch(int64_t global_batch, int64_t micro_batch, int world_size);

struct DataParallelOptions {
  // How long a collective (and the rendezvous) may wait for the other ranks
  // before it throws instead of hanging.
  std::chrono::milliseconds timeout = std::chrono::minutes(10);
  // Gradients are flattened into buckets of about this many bytes (fp32),
  // one allreduce per bucket.
  int64_t bucket_bytes = 25 << 20;
  // Build a process group even for world_size 1 (tests of the collective
  // path on one device). Normally world_size 1 creates nothing.
  bool force_group = false;
};

class DataParallel {
 public:
  // Blocks until all world_size ranks have joined (or timeout: throws).
  // device: where the tensors live; cpu -> Gloo, cuda -> NCCL (when this
  // build has it; otherwise InputError). world_size 1 creates no group.
  DataParallel(const DistEnv& env, torch::Device device, DataParallelOptions options = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  int local_rank() const { return env_.local_rank; }
  bool is_root() const { return env_.rank == 0; }
  // True when collectives actually run (world_size > 1 or force_group).
  bool active() const { return impl_ != nullptr; }
  std::string backend_name() const;  // "none", "gloo" or "nccl"

  // Copies rank 0's parameter values into every rank's parameters (in place,
  // in their own dtype).
  void broadcast_parameters(std::vector<torch::Tensor>& params);
  // Replaces each parameter's .grad() by its mean over ranks. Parameters
  // that require grad but have no grad get a zero grad first (so every rank
  // reduces the same layout). Buckets of ~bucket_bytes, reduced in fp32 even
  // for bf16/fp16 grads (then rounded back once).
  void all_reduce_gradients(std::vector<torch::Tensor>& params);
  // Bytes of the largest fp32 bucket buffer the last all_reduce_gradients
  // held (one at a time): what the planner's `buckets` counts without overlap.
  int64_t last_bucket_buffer_bytes() const { return last_bucket_buffer_bytes_; }
  // Starts summing `flat` (one tensor, in place) over ranks and returns
  // what waits for it (throws as the blocking collectives do). Every rank
  // must start the same sums in the same order.
  std::function<void()> start_sum(torch::Tensor flat);
  // Starts summing `flat` over ranks into rank `root`'s `flat` (the others'
  // are left as they were): the reduce of the sharded levels, where each
  // bucket of the flat layout has one owner (sharded_adamw.h).
  std::function<void()> start_reduce(torch::Tensor flat, int root);
  // Starts copying rank `root`'s `flat` into every rank's `flat` (one
  // tensor, in place): the parameter-sharded level's gather of a unit, one
  // broadcast per rank whose range it crosses (sharded_parameters.h).
  std::function<void()> start_broadcast(torch::Tensor flat, int root);
  // Every rank's `mine` (the same numel everywhere) concatenated in rank
  // order into `all` (world_size x that numel), on every rank.
  void all_gather(torch::Tensor all, torch::Tensor mine);
  int64_t bucket_bytes() const { return options_.bucket_bytes; }
  // Sum over ranks (fp64). The vector form is one collective.
  double all_reduce_sum(double value);
  void all_reduce_sum(std::vector<double>& values);
  // Sums `t` (on this rank's device, any dtype the backend reduces) over
  // ranks, in place: one collective. On CUDA the host does not wait for it;
  // reading `t` then does.
  void all_reduce_sum_in_place(torch::Tensor t);
  void barrier();

 private:
  struct Impl;
  DistEnv env_;
  DataParallelOptions options_;
  torch::Device device_;
  std::unique_ptr<Impl> impl_;
  int64_t last_bucket_buffer_bytes_ = 0;
};

// Whether this build can use NCCL for CUDA tensors.
bool data_parallel_has_nccl();

}  // namespace minipuzzle
