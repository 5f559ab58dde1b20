// The raw parameter gradients of our model for test_moe_training.py, which
// compares them with transformers' autograd on the same checkpoint:
//
//   moe_gradients CHECKPOINT INPUTS OUT
//
// INPUTS (safetensors): `input_ids` [B, L] int64 and `probe` [B, L, V] fp32;
// the loss is sum(logits * probe), fp32. OUT (safetensors): `loss` [1] and
// the gradient of every trained parameter under its Hub name, fp32; a
// parameter autograd gave no gradient (an expert no token chose) is written
// as zeros. Exit 0, or 2 with one line on bad input.
#include <torch/torch.h>

#include <iostream>
#include <string>
#include <vector>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/safetensors.h"
#include "minipuzzle/tensor_bridge.h"

using namespace minipuzzle;

namespace {

torch::Tensor read(const std::string& path, const std::string& name) {
  auto file = SafetensorsFile::open(path);
  const TensorInfo* info = file->find(name);
  if (!info) throw InputError(path + ": no tensor named " + name);
  return tensor_view(file, *info).clone();
}

int run(int argc, char** argv) {
  if (argc != 4) throw InputError("usage: moe_gradients CHECKPOINT INPUTS OUT");
  HybridLM model = load_model(argv[1], torch::kFloat32);
  model->train();
  const auto ids = read(argv[2], "input_ids").to(torch::kInt64);
  const auto probe = read(argv[2], "probe").to(torch::kFloat32);
  auto loss = (model->forward(ids) * probe).sum();
  loss.backward();

  std::vector<std::pair<std::string, torch::Tensor>> keep = {{"loss", loss.detach().reshape({1})}};
  for (const auto& p : model->named_parameters()) {
    if (!p.value().requires_grad()) continue;
    const auto& g = p.value().grad();
    keep.emplace_back(p.key(), (g.defined() ? g : torch::zeros_like(p.value())).to(torch::kFloat32).contiguous());
  }
  std::vector<TensorView> views;
  for (const auto& [name, t] : keep)
    views.push_back({name, DType::F32, t.sizes().vec(), t.data_ptr(), static_cast<size_t>(t.nbytes())});
  write_safetensors(argv[3], views);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const InputError& e) {
    std::cerr << "moe_gradients: " << e.what() << "\n";
    return 2;
  }
}
