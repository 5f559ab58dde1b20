// Peak accelerator memory of this process, as the caching allocator counts
// it (what torch.cuda.max_memory_allocated reports).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>

namespace minipuzzle {

// Peak bytes allocated on `device` since the process started or the last
// reset; nullopt for the CPU (use the process's peak RSS there).
std::optional<uint64_t> device_peak_allocated_bytes(const torch::Device& device);

// Total memory of an accelerator (what a run on it may plan with); nullopt
// for the CPU.
std::optional<uint64_t> device_total_bytes(const torch::Device& device);

// Starts a new peak for `device`; no-op for the CPU.
void reset_device_peak(const torch::Device& device);

}  // namespace minipuzzle
