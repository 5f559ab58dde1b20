// What `minipuzzle compress` checks before any stage runs, and `--dry-run`:
// the teacher and datasets open, the budget is reachable in the job's search
// space (a memory-only search, seconds, so an infeasible budget fails before
// hours of scoring), and a job directory that already exists was started by
// the same job (or says which stages a changed job redoes). The dry run prints the stages as `minipuzzle` command lines,
// the candidates that fit with their memory, the token budgets and an
// estimated time from a FLOP count at estimate.tflops.
#pragma once

#include "compress_job.h"
#include "minipuzzle/architecture_search.h"
#include "minipuzzle/model_config.h"

namespace minipuzzle::cli {

// The job's search: deployment, budget, top_k; and its candidate space.
SearchOptions search_options_of(const CompressJob& job);
CandidateSpace search_space_of(const CompressJob& job, const ModelConfig& parent);

// The search with every layer and channel counting the same (memory only):
// InputError naming the smallest reachable memory when nothing fits.
SearchResult feasibility_search(const CompressJob& job, const ModelConfig& parent);

// Every stage's settings through the checks that stage makes of them (the
// score options, each distillation's flags: steps against warmup, tokens
// against the global batch, ...): InputError naming the job key. Run by
// --dry-run and before any stage.
void check_stage_settings(const CompressJob& job);

// Checks inputs (and that the data holds a window of each stage's length)
// and the job directory, then creates it with job.json; a job directory
// started with other settings continues as compress_rerun.h says.
void prepare_job_directory(const CompressJob& job);

// Prints the plan; returns 0.
int print_dry_run(const CompressJob& job);

}  // namespace minipuzzle::cli
