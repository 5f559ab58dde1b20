// --max-device-memory on the forward-only commands: the residency plan,
// made from the config alone before any weight is read.
#pragma once

#include <torch/torch.h>

#include <string>

#include "cli_common.h"
#include "minipuzzle/streamed_model.h"

namespace minipuzzle::cli {

// The option's description, shared by every command that takes it.
po::options_description residency_options();

// The plan for DIR at `dtype` on `device`, running `batches` batches of
// `batch` windows of `seq_len` tokens. InputError (exit 2) for a bad value
// or a cap too small to stream, naming the smallest cap that works.
// `extra` carries a command's own needs (states per batch, working bytes);
// its batch, seq_len and batches fields are taken from the arguments.
ResidencyPlan plan_forward(const po::variables_map& vm, const std::string& dir, torch::ScalarType dtype,
                           const torch::Device& device, int64_t batch, int64_t seq_len, int64_t batches,
                           ResidencyOptions extra = {});

}  // namespace minipuzzle::cli
