// Shared by `minipuzzle distill` and `minipuzzle train`: the same options and
// loop; train has no teacher and uses plain next-token cross-entropy.
#pragma once

#include "commands.h"

namespace minipuzzle::cli {

int run_training_command(const Args& args, bool from_scratch);

}  // namespace minipuzzle::cli
