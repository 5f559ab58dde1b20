// Runs one `minipuzzle` command as N data-parallel processes on this machine
// (what `torchrun --standalone --nproc-per-node N --no-python minipuzzle ...`
// does, without needing torchrun): children of this process with RANK,
// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT.
//
// The children die with this process (PR_SET_PDEATHSIG), so a killed
// compress never leaves ranks writing behind a rerun. SIGINT/SIGTERM sent to
// this process are passed on (each rank checkpoints and exits 130). When a
// rank fails, the others are killed at once instead of waiting for their
// collectives to time out.
#pragma once

#include <string>
#include <vector>

namespace minipuzzle::cli {

// Exit code: 0 when every rank succeeded; else the first failing rank's code
// (2 for its input errors, whose line it printed itself), 130 when the ranks
// stopped on a signal. On CPU each rank gets OMP_NUM_THREADS = cores / N
// unless the environment sets it.
int run_local_processes(const std::vector<std::string>& argv, int processes);

// The command line a user would type for the same run.
std::string local_processes_command(const std::vector<std::string>& argv, int processes);

}  // namespace minipuzzle::cli
