// Activation checkpointing per block: the forward keeps only each block's
// input; backward runs the block again (with grad) to get what it needs.
// Saves the activations inside every block (the Mamba scan's chunk states,
// attention scores, the MLP's 4x-wide hidden) at the price of one more
// forward per block. Gradients are those of the plain forward.
#pragma once

#include <torch/torch.h>

#include "minipuzzle/hybrid_lm.h"

namespace minipuzzle {

// model->forward_hidden(tokens) with every block checkpointed (observers are
// not called: this is for training).
torch::Tensor forward_hidden_checkpointed(HybridLM& model, const torch::Tensor& tokens);

}  // namespace minipuzzle
