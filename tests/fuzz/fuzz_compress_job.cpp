// The `compress` job file (src/cli/compress/compress_job.cpp, plain C++ with
// yaml-cpp): the input is the YAML text, then optionally a NUL byte and
// NUL-separated `--set key.path=value` strings (a job file cannot hold a raw
// NUL). parse_compress_job() runs as `compress JOB.yaml --set ...` does; an
// accepted job is then recorded (to_json) and its step counts computed.
#include <algorithm>

#include "compress/compress_job.h"
#include "fuzz_common.h"

namespace minipuzzle::fuzz {

void compress_job(const uint8_t* data, std::size_t size) {
  const auto* begin = reinterpret_cast<const char*>(data);
  const char* end = begin + size;
  const char* nul = std::find(begin, end, '\0');
  const std::string yaml(begin, nul);
  std::vector<std::string> sets;
  for (const char* p = nul; p < end;) {
    const char* next = std::find(p + 1, end, '\0');
    sets.emplace_back(p + 1, next);
    p = next;
  }
  const CompressJob job = parse_compress_job(yaml, "/jobs/fuzz/job.yaml", sets, "/home/fuzz");
  (void)job.to_json().dump();
  if (job.steps_for(job.short_distill.tokens) <= 0 || job.steps_for(job.long_distill.tokens) <= 0)
    finding("accepted job has a distillation of no steps");
}

}  // namespace minipuzzle::fuzz

MINIPUZZLE_FUZZ_TARGET(minipuzzle::fuzz::compress_job)
