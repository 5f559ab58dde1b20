// The report of `minipuzzle compress`: report.md with the before/after table,
// stage times, the candidates (table + memory-vs-proxy scatter), the short
// and long distillations' loss curves and links to each stage's own report.
// Reads only the job directory's files, so it can be redrawn at any time.
#pragma once

#include "compress_job.h"
#include "compress_stages.h"

namespace minipuzzle::cli {

// Writes report.md, candidates.png, short_distill.png, long_distill.png.
int report_stage(const CompressJob& job, const CompressPaths& paths);

// Prints the before/after table of compare.json to stdout.
void print_before_after(const CompressJob& job, const CompressPaths& paths);

}  // namespace minipuzzle::cli
