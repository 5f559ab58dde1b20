// The stages of `minipuzzle compress` and the loop that runs them: each stage
// is one `minipuzzle` command line (or an in-process step: pick, compare,
// report) whose outputs live under the job directory and are written
// atomically, so "its output exists" means "it is complete" and a killed job
// resumes at the first stage without one.
//
// OUT/
//   job.json                    the job's settings, also grouped by the first stage reading each
//                               (a rerun with changes redoes that stage and those after it)
//   compress.log.jsonl          stage start / done / skipped records with seconds
//   scores/                     minipuzzle score
//   search/candidates.json      minipuzzle search (ranked on data.validation)
//   short/rank-N/student/       minipuzzle prune --candidate candidates.json#N
//   short/rank-N/distill/       minipuzzle distill (short_distill.tokens)
//   pick.json                   the winner: lowest validation loss after the short run
//   long/                       minipuzzle distill of the winner (long_distill.tokens)
//   export/                     minipuzzle export (Hub layout, export.dtype)
//   compare.json                teacher vs pruned vs distilled vs export on validation
//   report.md, *.png            the report
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "compress_job.h"

namespace minipuzzle::cli {

struct CompressPaths {
  explicit CompressPaths(const std::filesystem::path& out);
  std::filesystem::path out, job_json, log, scores, search_dir, candidates, pick, long_run, export_dir, compare, report;
  std::filesystem::path short_dir(int64_t rank) const;
  std::filesystem::path short_student(int64_t rank) const { return short_dir(rank) / "student"; }
  std::filesystem::path short_run(int64_t rank) const { return short_dir(rank) / "distill"; }
  // Everything a stage writes (whole or in part): what a rerun that redoes
  // the stage removes first.
  std::vector<std::filesystem::path> outputs_of(CompressStage stage) const;
};

struct Stage {
  CompressStage stage;            // its place in the run order
  std::string name;               // "score", "prune rank-2", "short distill rank-2", "pick", ...
  std::vector<std::string> argv;  // the equivalent `minipuzzle ...` arguments; empty for in-process steps
  bool done = false;              // its outputs are complete
  bool pending_input = false;     // argv names an input an earlier stage has not produced yet
  int processes = 1;              // > 1: argv runs as that many data-parallel processes
  std::function<int()> run;       // exit code
};

// The stages, given what the job directory holds now: how many candidates
// are short-distilled and which one is long-distilled come from earlier
// stages' outputs (before those exist, the plan shows the upper bound and
// "rank-?").
std::vector<Stage> plan_stages(const CompressJob& job);

// The winner in pick.json (0 when there is none yet).
int64_t picked_rank(const CompressPaths& paths);

// Runs every stage that is not done, in order; returns the process exit
// code (130 when interrupted by SIGINT/SIGTERM: rerun to resume).
int run_compress(const CompressJob& job);

}  // namespace minipuzzle::cli
