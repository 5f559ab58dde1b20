// The before/after table of `minipuzzle compress`: the teacher, the winning
// candidate as pruned, after its short distillation, and the exported model,
// measured on the same held-out windows (loss, next-token accuracy,
// agreement and KL with the teacher) with their parameters and their memory
// at the job's deployment (search.* precisions and context).
#pragma once

#include "compress_job.h"
#include "compress_stages.h"
#include "minipuzzle/streamed_model.h"

namespace minipuzzle::cli {

// The compare stage's residency under compute.max_device_memory (planned on
// the teacher from its config and the held-out windows alone). InputError
// naming compute.max_device_memory when the cap cannot hold even a streamed
// run: a preflight can call it before any stage spends time.
ResidencyPlan plan_compare(const CompressJob& job);

// Writes OUT/compare.json (atomically); returns 0. Its first line of output
// is the plan ("compare: weights resident ..." / "... streamed ...").
int compare_stage(const CompressJob& job, const CompressPaths& paths);

}  // namespace minipuzzle::cli
