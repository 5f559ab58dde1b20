// The distillation memory planner inside `minipuzzle distill`: `--plan`
// prints each rank's bytes by kind from the configs alone; a run checks the
// same plan before it loads anything and refuses (exit 2) a shard level the
// trainer does not implement yet or a job that does not fit the device.
#pragma once

#include <string>

#include "cli_common.h"
#include "minipuzzle/model_config.h"

namespace minipuzzle::cli {

// --plan, --json, --world-size, --shard, --device-memory.
void add_plan_options(po::options_description& options);

bool plan_requested(const po::variables_map& vm);

// `distill --plan ...`: the table (or --json) on stdout; 0.
int print_distill_plan(const po::variables_map& vm);

// Before a run: InputError for --plan-only flags, a --shard level other than
// none, a --world-size other than the launcher's, and a plan that does not
// fit --device-memory (or, on CUDA without it, the device's total memory).
void check_distill_plan(const po::variables_map& vm);

// For `compress --dry-run`: one line with a distillation stage's plan per
// rank (at distill.shard, as it runs), e.g. "peak 1.2 GiB = teacher ... ".
std::string distill_plan_line(const ModelConfig& teacher, const ModelConfig& student, int world_size,
                              int64_t seq_len, int64_t micro_batch, bool activation_checkpointing,
                              const std::string& dtype, const std::string& device, const std::string& shard);

}  // namespace minipuzzle::cli
