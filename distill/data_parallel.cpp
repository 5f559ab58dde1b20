// Data-parallel collectives over c10d; see data_parallel.h for the contract.
//
// The torch wheel exports ProcessGroupGloo (libtorch_cpu.so) and
// ProcessGroupNCCL (libtorch_cuda.so) with their headers, but the Gloo
// headers ProcessGroupGloo.hpp includes are not shipped: distill/gloo_stub/
// declares the few names it needs (see the README there).
#include "minipuzzle/data_parallel.h"

#include "gradient_buckets.h"

#define USE_C10D_GLOO 1
#ifdef MINIPUZZLE_HAVE_NCCL
#define USE_C10D_NCCL 1
#endif

#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#ifdef MINIPUZZLE_HAVE_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <utility>

#include "minipuzzle/errors.h"

namespace minipuzzle {

bool data_parallel_has_nccl() {
#ifdef MINIPUZZLE_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

// --- environment -------------------------------------------------------------

namespace {

bool parse_int(const char* text, int& out) {
  if (!text || !*text) return false;
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (errno || *end != '\0' || v < INT_MIN || v > INT_MAX) return false;
  out = static_cast<int>(v);
  return true;
}

}  // namespace

DistEnv DistEnv::from_lookup(const std::function<const char*(const char*)>& get) {
  auto set = [&](const char* name) {
    const char* v = get(name);
    return v != nullptr && *v != '\0';
  };
  auto read_int = [&](const char* name, int& out) {
    if (!parse_int(get(name), out))
      throw InputError(fmt::format("data-parallel: {}='{}' is not an integer", name, get(name)));
  };
  DistEnv env;
  const char* source;
  if (set("RANK") || set("WORLD_SIZE")) {
    source = "torchrun";
    if (!set("RANK") || !set("WORLD_SIZE"))
      throw InputError("data-parallel: RANK and WORLD_SIZE must be set together (torchrun sets both)");
    read_int("RANK", env.rank);
    read_int("WORLD_SIZE", env.world_size);
    env.local_rank = env.rank;
    if (set("LOCAL_RANK")) read_int("LOCAL_RANK", env.local_rank);
  } else if (set("SLURM_PROCID") || set("SLURM_NTASKS")) {
    source = "SLURM";
    if (!set("SLURM_PROCID") || !set("SLURM_NTASKS"))
      throw InputError("data-parallel: SLURM_PROCID and SLURM_NTASKS must be set together (run under srun)");
    read_int("SLURM_PROCID", env.rank);
    read_int("SLURM_NTASKS", env.world_size);
    env.local_rank = env.rank;
    if (set("SLURM_LOCALID")) read_int("SLURM_LOCALID", env.local_rank);
  } else {
    return env;  // a single process
  }
  if (env.world_size < 1)
    throw InputError(fmt::format("data-parallel: world size {} must be at least 1 ({})", env.world_size, source));
  if (env.rank < 0 || env.rank >= env.world_size)
    throw InputError(fmt::format("data-parallel: rank {} is outside world size {} ({})", env.rank, env.world_size,
                                 source));
  if (env.local_rank < 0 || env.local_rank >= env.world_size)
    throw InputError(fmt::format("data-parallel: local rank {} is outside world size {} ({})", env.local_rank,
                                 env.world_size, source));
  if (set("TORCHELASTIC_USE_AGENT_STORE")) {
    const std::string v = get("TORCHELASTIC_USE_AGENT_STORE");
    env.agent_store = v == "True" || v == "true" || v == "1";
    if (env.agent_store && set("TORCHELASTIC_RESTART_COUNT")) read_int("TORCHELASTIC_RESTART_COUNT", env.restart_count);
  }
  if (set("MASTER_ADDR")) env.master_addr = get("MASTER_ADDR");
  if (set("MASTER_PORT")) {
    read_int("MASTER_PORT", env.master_port);
    if (env.master_port < 1 || env.master_port > 65535)
      throw InputError(fmt::format("data-parallel: MASTER_PORT={} is not a TCP port (1..65535)", env.master_port));
  }
  if (env.world_size > 1 && (env.master_addr.empty() || env.master_port == 0))
    throw InputError(fmt::format("data-parallel: world size {} needs MASTER_ADDR and MASTER_PORT (rank 0's host "
                                 "and a free port){}",
                                 env.world_size,
                                 std::string(source) == "SLURM" ? "; export them in the job script" : ""));
  return env;
}

DistEnv DistEnv::from_environment() {
  return from_lookup([](const char* name) -> const char* { return std::getenv(name); });
}

// --- data split --------------------------------------------------------------

std::vector<uint64_t> data_parallel_slice(const std::vector<uint64_t>& global, int rank, int world_size) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw InputError(fmt::format("data-parallel: rank {} outside world size {}", rank, world_size));
  const auto n = global.size();
  if (n % static_cast<std::size_t>(world_size) != 0)
    throw InputError(fmt::format("data-parallel: {} windows per step do not split evenly over {} ranks; choose a "
                                 "--global-batch that is a multiple of the number of processes",
                                 n, world_size));
  const std::size_t per = n / world_size;
  return {global.begin() + rank * per, global.begin() + (rank + 1) * per};
}

int64_t data_parallel_local_batch(int64_t global_batch, int64_t micro_batch, int world_size) {
  if (world_size < 1) throw InputError("data-parallel: world size must be at least 1");
  if (micro_batch < 1 || global_batch % (static_cast<int64_t>(world_size) * micro_batch) != 0)
    throw InputError(fmt::format("--global-batch {} must be a multiple of --micro-batch {} x {} processes",
                                 global_batch, micro_batch, world_size));
  return global_batch / world_size;
}

// --- the process group ---------------------------------------------------------

struct DataParallel::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::string name;
};

namespace {

// c10::Error's what() carries a C++ backtrace; users need the message.
[[noreturn]] void rethrow(const char* op, int rank) {
  try {
    throw;
  } catch (const c10::Error& e) {
    throw std::runtime_error(fmt::format("data-parallel {} failed on rank {}: {}", op, rank,
                                         e.what_without_backtrace()));
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("data-parallel {} failed on rank {}: {}", op, rank, e.what()));
  }
}

}  // namespace

DataParallel::DataParallel(const DistEnv& env, torch::Device device, DataParallelOptions options)
    : env_(env), options_(options), device_(device) {
  if (env_.world_size < 1 || env_.rank < 0 || env_.rank >= env_.world_size)
    throw InputError(fmt::format("data-parallel: rank {} outside world size {}", env_.rank, env_.world_size));
  if (options_.bucket_bytes < 1) throw InputError("data-parallel: bucket_bytes must be positive");
  if (env_.world_size == 1 && !options_.force_group) return;  // the cheap single-process path
  if (device_.is_cuda() && !data_parallel_has_nccl())
    throw InputError("data-parallel on CUDA needs NCCL, which this build was compiled without (nccl.h not found)");
  auto impl = std::make_unique<Impl>();
  try {
    if (env_.world_size == 1) {
      impl->store = c10::make_intrusive<c10d::HashStore>();
    } else {
      if (env_.master_addr.empty() || env_.master_port <= 0)
        throw InputError("data-parallel: MASTER_ADDR and MASTER_PORT are needed for more than one process");
      c10d::TCPStoreOptions so;
      so.port = static_cast<std::uint16_t>(env_.master_port);
      so.isServer = env_.rank == 0 && !env_.agent_store;
      so.numWorkers = static_cast<std::size_t>(env_.world_size);
      so.waitWorkers = true;
      so.timeout = options_.timeout;
      impl->store = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, so);
      if (env_.agent_store)  // as torch.distributed does under torchrun
        impl->store = c10::make_intrusive<c10d::PrefixStore>(fmt::format("/worker/attempt_{}", env_.restart_count),
                                                             impl->store);
    }
    impl->store->setTimeout(options_.timeout);
    if (device_.is_cuda()) {
#ifdef MINIPUZZLE_HAVE_NCCL
      if (device_.has_index()) c10::cuda::set_device(device_.index());
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = options_.timeout;
      impl->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl->store, env_.rank, env_.world_size, opts);
      impl->name = "nccl";
#endif
    } else {
      // Binds to this host's address (GLOO_SOCKET_IFNAME picks an interface).
      auto opts = c10d::ProcessGroupGloo::Options::create_default(options_.timeout);
      opts->timeout = options_.timeout;
      impl->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, env_.rank, env_.world_size, opts);
      impl->name = "gloo";
    }
  } catch (const InputError&) {
    throw;
  } catch (...) {
    rethrow("setup", env_.rank);
  }
  impl_ = std::move(impl);
}

DataParallel::~DataParallel() = default;

std::string DataParallel::backend_name() const { return impl_ ? impl_->name : "none"; }

void DataParallel::broadcast_parameters(std::vector<torch::Tensor>& params) {
  if (!impl_) return;
  torch::NoGradGuard no_grad;
  try {
    for (const auto& b : make_buckets(params, options_.bucket_bytes)) {
      std::vector<torch::Tensor> flat{flatten(b, b.tensors.front().device())};
      c10d::BroadcastOptions o;
      o.rootRank = 0;
      o.timeout = options_.timeout;
      impl_->backend->broadcast(flat, o)->wait();
      if (!is_root()) unflatten(b, flat[0]);
    }
  } catch (...) {
    rethrow("broadcast_parameters", env_.rank);
  }
}

void DataParallel::all_reduce_gradients(std::vector<torch::Tensor>& params) {
  if (!impl_) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (auto& p : params) {
    if (!p.requires_grad()) continue;
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.grad());
  }
  const double scale = 1.0 / env_.world_size;
  last_bucket_buffer_bytes_ = 0;
  for (const auto& b : make_buckets(grads, options_.bucket_bytes)) {
    torch::Tensor flat = flatten(b, b.tensors.front().device());
    last_bucket_buffer_bytes_ = std::max(last_bucket_buffer_bytes_, static_cast<int64_t>(flat.nbytes()));
    start_sum(flat)();
    flat.mul_(scale);
    unflatten(b, flat);
  }
}

std::function<void()> DataParallel::start_sum(torch::Tensor flat) {
  if (!impl_) return [] {};
  try {
    std::vector<torch::Tensor> bufs{std::move(flat)};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = options_.timeout;
    auto work = impl_->backend->allreduce(bufs, o);
    const int rank = env_.rank;
    return [work, rank] {
      try {
        work->wait();
      } catch (...) {
        rethrow("all_reduce_gradients", rank);
      }
    };
  } catch (...) {
    rethrow("all_reduce_gradients", env_.rank);
  }
}

std::function<void()> DataParallel::start_reduce(torch::Tensor flat, int root) {
  if (!impl_) return [] {};
  try {
    std::vector<torch::Tensor> bufs{std::move(flat)};
    c10d::ReduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.rootRank = root;
    o.timeout = options_.timeout;
    auto work = impl_->backend->reduce(bufs, o);
    const int rank = env_.rank;
    return [work, rank] {
      try {
        work->wait();
      } catch (...) {
        rethrow("reduce_gradients", rank);
      }
    };
  } catch (...) {
    rethrow("reduce_gradients", env_.rank);
  }
}

std::function<void()> DataParallel::start_broadcast(torch::Tensor flat, int root) {
  if (!impl_) return [] {};
  try {
    std::vector<torch::Tensor> bufs{std::move(flat)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = options_.timeout;
    auto work = impl_->backend->broadcast(bufs, o);
    const int rank = env_.rank;
    return [work, rank] {
      try {
        work->wait();
      } catch (...) {
        rethrow("gather_parameters", rank);
      }
    };
  } catch (...) {
    rethrow("gather_parameters", env_.rank);
  }
}

void DataParallel::all_gather(torch::Tensor all, torch::Tensor mine) {
  if (!impl_) {
    all.copy_(mine.reshape(all.sizes()));
    return;
  }
  try {
    c10d::AllgatherOptions o;
    o.timeout = options_.timeout;
    impl_->backend->_allgather_base(all, mine, o)->wait();
  } catch (...) {
    rethrow("all_gather_parameters", env_.rank);
  }
}

void DataParallel::all_reduce_sum_in_place(torch::Tensor t) {
  if (!impl_) return;
  try {
    std::vector<torch::Tensor> bufs{std::move(t)};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = options_.timeout;
    impl_->backend->allreduce(bufs, o)->wait();
  } catch (...) {
    rethrow("all_reduce_sum", env_.rank);
  }
}

void DataParallel::all_reduce_sum(std::vector<double>& values) {
  if (!impl_ || values.empty()) return;
  torch::Tensor t;
  try {
    t = torch::tensor(values, torch::TensorOptions().dtype(torch::kFloat64)).to(device_);
  } catch (...) {
    rethrow("all_reduce_sum", env_.rank);
  }
  all_reduce_sum_in_place(t);
  const auto cpu = t.cpu();
  const auto a = cpu.accessor<double, 1>();
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = a[static_cast<int64_t>(i)];
}

double DataParallel::all_reduce_sum(double value) {
  std::vector<double> v{value};
  all_reduce_sum(v);
  return v[0];
}

// An allreduce of one number: works the same on Gloo and NCCL (NCCL's own
// barrier needs to guess the device).
void DataParallel::barrier() {
  if (!impl_) return;
  try {
    std::vector<torch::Tensor> t{torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat32)).to(device_)};
    c10d::AllreduceOptions o;
    o.timeout = options_.timeout;
    impl_->backend->allreduce(t, o)->wait();
    if (device_.is_cuda()) t[0].cpu();  // wait for the stream
  } catch (...) {
    rethrow("barrier", env_.rank);
  }
}

}  // namespace minipuzzle
