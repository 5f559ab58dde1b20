#include "distill_plan.h"

#include <c10/core/CachingDeviceAllocator.h>
#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <iostream>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/data_parallel.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/kernel_dispatch.h"
#include "minipuzzle/memory_model.h"
#include "minipuzzle/training_plan_report.h"

namespace minipuzzle::cli {

namespace fs = std::filesystem;

void add_plan_options(po::options_description& options) {
  options.add_options()
      ("plan", po::bool_switch(), "print each rank's memory by kind from the configs alone and exit (no --data or --out needed)")
      ("json", po::bool_switch(), "--plan: print JSON")
      ("world-size", po::value<int>(), "ranks to plan for (default: the launcher's WORLD_SIZE, else 1); a run checks it against the launcher's")
      ("shard", po::value<std::string>()->default_value("none"),
       "none | optimizer | gradients | parameters (ZeRO 1-3): what each data-parallel rank keeps: the whole state, "
       "1/N of the fp32 master and moments, also 1/N of the gradients, also 1/N of the student's and the teacher's "
       "weights (gathered block by block while they run)")
      ("device-memory", po::value<std::string>(),
       "bytes per device, e.g. 80GB: --plan says whether the job fits; a run that does not fit is refused (on CUDA "
       "the device's total memory by default)");
}

bool plan_requested(const po::variables_map& vm) { return vm["plan"].as<bool>(); }

namespace {

// The launcher's world size without its rendezvous address, which a plan
// made ahead of the job (on a login node, say) does not need.
int launcher_world_size() {
  return DistEnv::from_lookup([](const char* name) -> const char* {
           const char* v = std::getenv(name);
           if (v && *v) return v;
           if (std::strcmp(name, "MASTER_ADDR") == 0) return "localhost";
           if (std::strcmp(name, "MASTER_PORT") == 0) return "1";
           return v;
         })
      .world_size;
}

int world_size_of(const po::variables_map& vm) {
  if (!vm.count("world-size")) return launcher_world_size();
  const int n = vm["world-size"].as<int>();
  if (n < 1) throw InputError(fmt::format("--world-size must be at least 1, got {}", n));
  return n;
}

// k of a teacher cache, from its cache.json alone (the shards are not needed
// to plan), checked against the student's vocabulary as the trainer will.
int64_t cache_top_k(const std::string& dir, int64_t student_vocab) {
  const fs::path file = fs::path(dir) / "cache.json";
  const nlohmann::json j = parse_json_lenient(read_file(file), file.string());
  auto integer = [](const nlohmann::json& o, const char* key) {
    return o.is_object() && o.contains(key) && o[key].is_number_integer() ? o[key].get<int64_t>() : int64_t{0};
  };
  const nlohmann::json none;
  const nlohmann::json& id = j.is_object() && j.contains("identity") ? j["identity"] : none;
  const int64_t k = integer(id, "k");
  const int64_t vocab = integer(id.is_object() && id.contains("teacher") ? id["teacher"] : none, "vocab_size");
  if (!j.is_object() || j.value("format", "") != "minipuzzle-teacher-cache" || k < 1 || vocab < 1)
    throw InputError(fmt::format("--teacher-cache {}: cache.json is not a teacher cache (identity.k, "
                                 "identity.teacher.vocab_size)",
                                 dir));
  if (vocab != student_vocab)
    throw InputError(fmt::format("--teacher-cache {}: teacher vocab {} != student vocab {}", dir, vocab, student_vocab));
  return k;
}

// The ops the trainer will run, as kernel_dispatch.h chooses them.
TrainingOps ops_for(const std::string& device) {
  if (device.rfind("cuda", 0) != 0 || !cuda_kernels_compiled() || !cuda_kernels_enabled())
    return TrainingOps::Reference;
  return ssd_scan_kernel_enabled() ? TrainingOps::CudaKernelsSsd : TrainingOps::CudaKernels;
}

TrainingJob job_of(const po::variables_map& vm) {
  if (!vm.count("student")) throw InputError("missing --student (a checkpoint directory or its config.json)");
  if (!vm.count("teacher") && !vm.count("teacher-cache")) throw InputError("give --teacher, --teacher-cache or both");
  TrainingJob job;
  job.student = ModelConfig::load(vm["student"].as<std::string>());
  if (vm.count("teacher")) job.teacher = ModelConfig::load(vm["teacher"].as<std::string>());
  if (vm.count("teacher-cache"))
    job.cache_top_k = cache_top_k(vm["teacher-cache"].as<std::string>(), job.student.vocab_size);
  job.seq_len = vm["seq-len"].as<int64_t>();
  job.micro_batch = vm["micro-batch"].as<int64_t>();
  job.activation_checkpointing = vm["activation-checkpointing"].as<bool>();
  if (vm.count("bucket-size")) job.bucket_bytes = static_cast<int64_t>(parse_bytes(vm["bucket-size"].as<std::string>(), "--bucket-size"));
  const std::string dtype = vm["dtype"].as<std::string>();
  if (dtype == "fp16" || dtype == "float16")
    throw InputError("--dtype fp16: fp16 gradients underflow without loss scaling; train in bf16 (or fp32)");
  job.dtype = parse_model_dtype(dtype) == torch::kFloat32 ? Precision::Fp32 : Precision::Bf16;
  job.ops = ops_for(vm["device"].as<std::string>());
  job.kd_chunk_tokens = vm["chunk-tokens"].as<int64_t>();
  job.overlap_all_reduce = !vm["no-overlap-all-reduce"].as<bool>();
  job.validate();
  return job;
}

std::optional<double> device_memory_flag(const po::variables_map& vm) {
  if (!vm.count("device-memory")) return std::nullopt;
  const double bytes = parse_bytes(vm["device-memory"].as<std::string>(), "--device-memory");
  if (!(bytes > 0)) throw InputError("--device-memory must be positive");
  return bytes;
}

}  // namespace

int print_distill_plan(const po::variables_map& vm) {
  const TrainingJob job = job_of(vm);
  const ShardLevel shard = parse_shard_level(vm["shard"].as<std::string>());
  const TrainingMemoryPlan plan = plan_training_memory(job, world_size_of(vm), shard);
  PlanSources src;
  if (vm.count("teacher")) src.teacher = vm["teacher"].as<std::string>();
  if (vm.count("teacher-cache")) src.teacher_cache = vm["teacher-cache"].as<std::string>();
  src.student = vm["student"].as<std::string>();
  src.device_bytes = device_memory_flag(vm);
  if (vm["json"].as<bool>())
    std::cout << training_plan_json(job, plan, src).dump(2) << "\n";
  else
    std::cout << training_plan_text(job, plan, src);
  return 0;
}

void check_distill_plan(const po::variables_map& vm) {
  if (vm["json"].as<bool>()) throw InputError("--json prints a plan: use it with --plan");
  const ShardLevel shard = parse_shard_level(vm["shard"].as<std::string>());  // an unknown level: one line, now
  const int world = launcher_world_size();
  if (vm.count("world-size") && vm["world-size"].as<int>() != world)
    throw InputError(fmt::format("--world-size {} but the launcher started {} rank{}", vm["world-size"].as<int>(),
                                 world, world == 1 ? "" : "s"));
  std::optional<double> device = device_memory_flag(vm);
  std::string label = "--device-memory";
  const std::string dev = vm["device"].as<std::string>();
  if (!device && dev.rfind("cuda", 0) == 0) {
    const torch::Device d = parse_device(dev);
    const auto index = d.has_index() ? d.index() : static_cast<c10::DeviceIndex>(DistEnv::from_environment().local_rank);
    device = static_cast<double>(c10::getDeviceAllocator(torch::kCUDA)->getMemoryInfo(index).second);
    label = fmt::format("cuda:{}", index);
  }
  if (!device) return;  // the CPU: host memory is not planned
  const TrainingJob job = job_of(vm);
  const TrainingMemoryPlan plan = plan_training_memory(job, world, shard);
  if (!plan.fits(*device)) throw InputError(plan_refusal(job, plan, *device, label));
}

std::string distill_plan_line(const ModelConfig& teacher, const ModelConfig& student, int world_size,
                              int64_t seq_len, int64_t micro_batch, bool activation_checkpointing,
                              const std::string& dtype, const std::string& device, const std::string& shard) {
  TrainingJob job;
  job.teacher = teacher;
  job.student = student;
  job.seq_len = seq_len;
  job.micro_batch = micro_batch;
  job.activation_checkpointing = activation_checkpointing;
  job.dtype = parse_model_dtype(dtype) == torch::kFloat32 ? Precision::Fp32 : Precision::Bf16;
  job.ops = ops_for(device);
  const RankBytes b = plan_training_memory(job, world_size, parse_shard_level(shard, "distill.shard")).bytes;
  return fmt::format("peak {} = teacher {} + student weights, gradients, master and moments {} + the largest of: "
                     "activations and KD loss {}, all-reduce buckets {}, optimizer scratch {}",
                     format_bytes(b.peak()), format_bytes(b.teacher_weights),
                     format_bytes(b.persistent() - b.teacher_weights), format_bytes(b.step_peak),
                     format_bytes(b.buckets + b.bucket_scratch), format_bytes(b.optimizer_scratch));
}

}  // namespace minipuzzle::cli
