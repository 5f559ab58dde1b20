// minipuzzle distill (--teacher DIR | --teacher-cache DIR) --student DIR --data PREFIX --out RUN_DIR [...]
#include "commands.h"
#include "training_command.h"

namespace minipuzzle::cli {

int cmd_distill(const Args& args) { return run_training_command(args, /*from_scratch=*/false); }

}  // namespace minipuzzle::cli
