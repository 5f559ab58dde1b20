// Shared by `minipuzzle distill` and `minipuzzle train`: the same options and
// loop; train has no teacher and uses plain next-token cross-entropy.
#pragma once

#include "commands.h"

namespace minipuzzle::cli {

int run_training_command(const Args& args, bool from_scratch);

// The checks `minipuzzle distill ARGS` makes of its flags before it opens any
// file (InputError, e.g. "--warmup 4 must be in [0, --steps 1]"): what
// `compress` runs for each distillation stage before any stage runs.
void check_distill_args(const Args& args);

}  // namespace minipuzzle::cli
