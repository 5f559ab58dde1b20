// One job at a time on a helper thread, so that the caller can go on with
// the next piece of work (e.g. compute shard i+1 while shard i is written).
#pragma once

#include <functional>
#include <future>
#include <utility>

namespace minipuzzle {

class BackgroundJob {
 public:
  BackgroundJob() = default;
  BackgroundJob(const BackgroundJob&) = delete;
  BackgroundJob& operator=(const BackgroundJob&) = delete;
  // Never leaves a job running behind: an exception that unwinds past this
  // waits for it (and drops its error, the first one is on its way).
  ~BackgroundJob() {
    if (job_.valid()) job_.wait();
  }

  // Finishes the job in flight (rethrowing its error), then starts `job`.
  void start(std::function<void()> job) {
    finish();
    job_ = std::async(std::launch::async, std::move(job));
  }

  // 1 while a job is in flight (finished or not, until finish()), else 0.
  int in_flight() const { return job_.valid() ? 1 : 0; }

  // Waits for the job in flight; rethrows what it threw. Returns how many
  // jobs it finished: 1, or 0 when none was in flight.
  int finish() {
    if (!job_.valid()) return 0;
    job_.get();  // invalidates job_, also when it throws
    return 1;
  }

 private:
  std::future<void> job_;
};

}  // namespace minipuzzle
