// report.md for a distillation run directory, from its metrics.jsonl:
// start/end evaluation table and PNG curves (loss.png: training loss and KD
// term per step; eval.png: evaluation loss and KL to the teacher).
#pragma once

#include <filesystem>

namespace minipuzzle {

void write_distill_report(const std::filesystem::path& run_dir);

}  // namespace minipuzzle
