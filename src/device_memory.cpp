#include "minipuzzle/device_memory.h"

#include <c10/core/CachingDeviceAllocator.h>

namespace minipuzzle {
namespace {

// The device-generic allocator interface: no CUDA headers needed, and it
// answers for any accelerator torch was built with.
c10::DeviceIndex index_of(const torch::Device& device) {
  return device.has_index() ? device.index() : c10::DeviceIndex{0};
}

}  // namespace

std::optional<uint64_t> device_peak_allocated_bytes(const torch::Device& device) {
  if (device.is_cpu()) return std::nullopt;
  const auto stats = c10::getDeviceAllocator(device.type())->getDeviceStats(index_of(device));
  const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  return static_cast<uint64_t>(stats.allocated_bytes[aggregate].peak);
}

std::optional<uint64_t> device_total_bytes(const torch::Device& device) {
  if (device.is_cpu()) return std::nullopt;
  return static_cast<uint64_t>(c10::getDeviceAllocator(device.type())->getMemoryInfo(index_of(device)).second);
}

void reset_device_peak(const torch::Device& device) {
  if (device.is_cpu()) return;
  c10::getDeviceAllocator(device.type())->resetPeakStats(index_of(device));
}

}  // namespace minipuzzle
