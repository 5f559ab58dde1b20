// The weights of a parameter-sharded model (sharded_parameters.h) written
// as a Hub checkpoint (config.json + model.safetensors or shards + index,
// the files save_model writes) without any rank holding the whole model:
// rank 0's writer asks for one tensor at a time, every rank takes part in
// gathering that tensor, and rank 0 converts and writes it.
#pragma once

#include <torch/torch.h>

#include <filesystem>

#include "minipuzzle/data_parallel.h"
#include "minipuzzle/sharded_parameters.h"

namespace minipuzzle {

// A collective: every rank calls it. Rank 0 writes into `dir` (which must
// exist there; the caller makes it atomic); the other ranks write nothing.
// dtype: kFloat32 or kBFloat16 (kFloat16). A write error on rank 0 is
// rethrown there and reported on the others as a runtime error.
void write_sharded_model(ShardedParameters& units, DataParallel& dp, const std::filesystem::path& dir,
                         torch::ScalarType dtype);

}  // namespace minipuzzle
