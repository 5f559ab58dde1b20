// minipuzzle train --student DIR --data PREFIX --out RUN_DIR [...]: the
// distillation loop without a teacher (plain cross-entropy), to train a
// teacher or a from-scratch baseline.
#include "commands.h"
#include "training_command.h"

namespace minipuzzle::cli {

int cmd_train(const Args& args) { return run_training_command(args, /*from_scratch=*/true); }

}  // namespace minipuzzle::cli
