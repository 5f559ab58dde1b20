#include "minipuzzle/sharded_model_writer.h"

#include <fmt/format.h>

#include <exception>
#include <map>
#include <stdexcept>

#include "minipuzzle/checkpoint_rewrite.h"
#include "minipuzzle/safetensors.h"
#include "minipuzzle/tensor_bridge.h"

namespace minipuzzle {

namespace fs = std::filesystem;

void write_sharded_model(ShardedParameters& units, DataParallel& dp, const fs::path& dir, torch::ScalarType dtype) {
  torch::NoGradGuard no_grad;
  const auto& entries = units.layout().entries;
  // Rank 0 tells the others which tensor comes next (the writer's file
  // order), -1 when it is done; a failed write still ends the exchange.
  auto next = torch::zeros({1}, torch::TensorOptions().dtype(torch::kInt64).device(units.shard().device()));
  auto announce = [&](int64_t index) {
    if (dp.is_root()) next.fill_(index);
    dp.start_broadcast(next, 0)();
    return next.item<int64_t>();
  };
  std::exception_ptr error;
  if (dp.is_root()) {
    std::map<std::string, std::size_t> index;
    std::vector<TensorSpec> specs;
    for (std::size_t i = 0; i < entries.size(); ++i) {
      index[entries[i].name] = i;
      const torch::Tensor& p = units.named()[i].second;
      specs.push_back({entries[i].name, from_torch_dtype(stored_dtype(entries[i].name, dtype)), p.sizes().vec()});
    }
    try {
      write_checkpoint_weights_streamed(dir, specs, [&](const TensorSpec& spec, const WriteBytes& write) {
        const std::size_t i = index.at(spec.name);
        announce(static_cast<int64_t>(i));
        torch::Tensor t = units.gather_tensor(i).to(torch::kCPU, to_torch_dtype(spec.dtype)).contiguous();
        write(t.data_ptr(), static_cast<std::size_t>(t.nbytes()));
      });
      saved_config(units.model()->config(), dtype, 0).save(dir);
    } catch (...) {
      error = std::current_exception();
    }
    announce(-1);
  } else {
    for (int64_t i; (i = announce(0)) >= 0;) units.gather_tensor(static_cast<std::size_t>(i));
  }
  const double failed = dp.all_reduce_sum(error ? 1.0 : 0.0);
  if (error) std::rethrow_exception(error);
  if (failed > 0) throw std::runtime_error(fmt::format("rank 0 failed to write the model into {}", dir.string()));
}

}  // namespace minipuzzle
