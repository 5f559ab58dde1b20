// The bytes LibTorch's CPU allocator holds, now and at their peak, while a
// CpuAllocationTracker::Scope is alive: the allocator reports every
// allocation and free to the thread's profiler state when that state asks
// for memory reports, and autograd carries the state into backward. Only
// tensors allocated inside the scope are counted (their frees too). Run with
// one intra-op thread (at::set_num_threads(1)) so every allocation happens
// on a thread that carries the scope.
#pragma once

#include <c10/util/ThreadLocalDebugInfo.h>
#include <torch/csrc/profiler/orchestration/observer.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

namespace minipuzzle::testing {

class CpuAllocationTracker : public torch::profiler::impl::ProfilerStateBase {
 public:
  // A disabled profiler (nothing records events) that asks for memory reports.
  CpuAllocationTracker()
      : ProfilerStateBase(torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::Disabled,
                                                                /*report_input_shapes=*/false,
                                                                /*profile_memory=*/true)) {}

  void reportMemoryUsage(void*, int64_t bytes, size_t, size_t, c10::Device device) override {
    if (device.type() != c10::DeviceType::CPU) return;
    const int64_t now = current_.fetch_add(bytes) + bytes;
    int64_t p = peak_.load();
    while (now > p && !peak_.compare_exchange_weak(p, now)) {
    }
  }
  torch::profiler::impl::ActiveProfilerType profilerType() override {
    return torch::profiler::impl::ActiveProfilerType::NONE;
  }

  int64_t current() const { return current_.load(); }
  int64_t peak() const { return peak_.load(); }
  void restart_peak() { peak_.store(current_.load()); }

  // Tracks this thread (and the autograd work it starts) while alive.
  class Scope {
   public:
    Scope() : tracker_(std::make_shared<CpuAllocationTracker>()), guard_(c10::DebugInfoKind::PROFILER_STATE, tracker_) {}
    CpuAllocationTracker& operator*() const { return *tracker_; }
    CpuAllocationTracker* operator->() const { return tracker_.get(); }

   private:
    std::shared_ptr<CpuAllocationTracker> tracker_;
    c10::DebugInfoGuard guard_;
  };

 private:
  std::atomic<int64_t> current_{0}, peak_{0};
};

}  // namespace minipuzzle::testing
