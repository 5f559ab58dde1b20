#include "minipuzzle/kernel_dispatch.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels_build.h"

namespace minipuzzle {
namespace {

// An environment switch: set to anything but "" or "0".
bool env_set(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}

std::atomic<bool>& enabled_flag() {
  static std::atomic<bool> flag{!env_set("MINIPUZZLE_REFERENCE_OPS")};
  return flag;
}

std::atomic<bool>& ssd_flag() {
  static std::atomic<bool> flag{env_set("MINIPUZZLE_SSD_KERNEL")};
  return flag;
}

std::atomic<bool>& ssd_tensor_cores_flag() {
  const char* v = std::getenv("MINIPUZZLE_SSD_TENSOR_CORES");
  static std::atomic<bool> flag{!(v && std::strcmp(v, "0") == 0)};
  return flag;
}

}  // namespace

bool cuda_kernels_compiled() {
  return MINIPUZZLE_HAVE_CUDA_KERNELS != 0;
}

bool cuda_kernels_enabled() { return enabled_flag().load(); }
void set_cuda_kernels_enabled(bool enabled) { enabled_flag().store(enabled); }

bool ssd_scan_kernel_enabled() { return ssd_flag().load(); }
void set_ssd_scan_kernel_enabled(bool enabled) { ssd_flag().store(enabled); }

bool ssd_tensor_cores_enabled() { return ssd_tensor_cores_flag().load(); }
void set_ssd_tensor_cores_enabled(bool enabled) { ssd_tensor_cores_flag().store(enabled); }

bool use_cuda_kernels(const torch::Tensor& t) {
  return cuda_kernels_compiled() && t.defined() && t.is_cuda() && cuda_kernels_enabled();
}

bool cuda_kernel_dtype(torch::ScalarType t) {
  return t == torch::kFloat32 || t == torch::kFloat16 || t == torch::kBFloat16;
}

}  // namespace minipuzzle
