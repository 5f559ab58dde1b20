// A rerun of `minipuzzle compress` with a job file that changed after the job
// directory was started (a late stage failed on a setting, the user fixed it).
// Each job key belongs to the first stage that reads it
// (first_stage_reading): the stages before the first changed one are kept,
// that stage and every one after it are redone from nothing, their outputs
// removed first, so no output made with the old settings is reused and no
// half-run distillation is resumed with options it was not started with.
//
// Removal happens before job.json records the new settings: a rerun killed
// in between sees the same change again and removes the rest.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "compress_job.h"

namespace minipuzzle::cli {

struct JobChange {
  std::vector<std::string> changed;    // "long_distill.tokens (was 4000, now 65536)"
  std::optional<CompressStage> first;  // the first stage to redo; nullopt: none
};

// The job against OUT/job.json (no change when the directory is new). Keys
// no output depends on (estimate.*) are not changes.
JobChange job_change(const CompressJob& job);

// What OUT/job.json holds: every setting by key path, and under "stages" the
// same settings grouped by the first stage that reads each.
nlohmann::json recorded_job(const CompressJob& job);

// Prints the change, the finished stages kept and the stages that will run.
// With `apply` (not for --dry-run): removes the outputs of every stage from
// change.first on, logs it in compress.log.jsonl and records the new
// job.json.
void continue_changed_job(const CompressJob& job, const JobChange& change, bool apply);

}  // namespace minipuzzle::cli
