// The before/after table of `minipuzzle compress`: the teacher, the winning
// candidate as pruned, after its short distillation, and the exported model,
// measured on the same held-out windows (loss, next-token accuracy,
// agreement and KL with the teacher) with their parameters and their memory
// at the job's deployment (search.* precisions and context).
#pragma once

#include "compress_job.h"
#include "compress_stages.h"

namespace minipuzzle::cli {

// Writes OUT/compare.json (atomically); returns 0.
int compare_stage(const CompressJob& job, const CompressPaths& paths);

}  // namespace minipuzzle::cli
