#include "minipuzzle/activation_checkpointing.h"

#include <cstdint>
#include <vector>

namespace minipuzzle {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const ObserverList& no_observers() {
  static const ObserverList none;
  return none;
}

// The parameters that take a gradient: a frozen one (an MoE router's
// e_score_correction_bias) is no input of the recompute's autograd::grad,
// which refuses a tensor that does not require grad.
std::vector<Tensor> trained_parameters(BlockImpl& block) {
  std::vector<Tensor> out;
  for (auto& p : block.parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}

class CheckpointedBlock : public torch::autograd::Function<CheckpointedBlock> {
 public:
  // `params` are the block's parameters, passed so autograd routes their
  // gradients; `block` outlives the backward (it belongs to the model).
  static Tensor forward(AutogradContext* ctx, const Tensor& h, at::TensorList params, BlockImpl* block) {
    (void)params;
    ctx->saved_data["block"] = reinterpret_cast<int64_t>(block);
    ctx->saved_data["n_params"] = static_cast<int64_t>(params.size());
    ctx->save_for_backward({h});
    torch::NoGradGuard no_grad;
    return block->forward(h, no_observers());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto* block = reinterpret_cast<BlockImpl*>(ctx->saved_data["block"].toInt());
    const int64_t n_params = ctx->saved_data["n_params"].toInt();
    Tensor h = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    variable_list inputs = {h};
    for (auto& p : trained_parameters(*block)) inputs.push_back(p);
    TORCH_CHECK(static_cast<int64_t>(inputs.size()) == n_params + 1, "block parameters changed during the step");
    Tensor out;
    {
      torch::AutoGradMode grad(true);
      out = block->forward(h, no_observers());
    }
    variable_list grads = torch::autograd::grad({out}, inputs, {grad_outputs[0]}, /*retain_graph=*/false,
                                                /*create_graph=*/false, /*allow_unused=*/true);
    grads.push_back(Tensor());  // for `block`
    return grads;
  }
};

}  // namespace

torch::Tensor forward_hidden_checkpointed(HybridLM& model, const torch::Tensor& tokens) {
  Tensor h = model->embed(tokens);
  for (int64_t i = 0; i < model->config().num_layers(); ++i) {
    Block block = model->layer(i);
    const std::vector<Tensor> params = trained_parameters(*block);
    h = CheckpointedBlock::apply(h, at::TensorList(params), block.get());
  }
  return model->final_norm(h);
}

}  // namespace minipuzzle
