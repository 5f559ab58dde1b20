// HybridLM: the Nemotron-H model in LibTorch, matching transformers'
// NemotronHForCausalLM. Parameters are registered under their Hub names
// (`backbone.layers.3.mixer.in_proj.weight`, `lm_head.weight`, ...), so
// named_parameters() *is* the checkpoint name table.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "minipuzzle/model_config.h"
#include "minipuzzle/observers.h"

namespace minipuzzle {

// Calls the subscribed observers; cheap no-op when there are none.
class ObserverList {
 public:
  void add(Observer* o) { observers_.push_back(o); }
  void remove(Observer* o);
  void clear() { observers_.clear(); }
  bool empty() const { return observers_.empty(); }
  void notify(ObservePoint p, int64_t layer, const torch::Tensor& v) const {
    for (auto* o : observers_) o->observe(p, layer, v);
  }
  void notify_moe(int64_t layer, const MoeRouting& r) const {
    for (auto* o : observers_) o->observe_moe(layer, r);
  }

 private:
  std::vector<Observer*> observers_;
};

// How the model's constructors make parameters: uninitialised tensors with
// `options`, or placeholders (`placeholders`): the right shape, dtype and
// device over a single element (all strides 0), for weights that a
// residency (weight_residency.h) materialises only while their block runs.
struct ParameterInit {
  torch::TensorOptions options;
  bool placeholders = false;
  torch::Tensor make(const std::vector<int64_t>& shape) const;
};

// A named group of parameters, so names come out as "<module>.weight" /
// "<module>.bias" like PyTorch's nn.Linear, nn.Conv1d and norms.
class WeightsImpl : public torch::nn::Module {
 public:
  WeightsImpl(std::vector<int64_t> weight_shape, std::vector<int64_t> bias_shape = {},
              const ParameterInit& init = {});
  torch::Tensor weight, bias;  // bias undefined when bias_shape is empty
};
TORCH_MODULE(Weights);
// A bias-free group (braced shapes cannot pass through TORCH_MODULE's forwarding).
inline Weights weights(std::vector<int64_t> shape, const ParameterInit& init) {
  return Weights(std::move(shape), std::vector<int64_t>{}, init);
}

class Mamba2MixerImpl : public torch::nn::Module {
 public:
  Mamba2MixerImpl(const ModelConfig& c, const ParameterInit& init);
  torch::Tensor forward(const torch::Tensor& h, int64_t layer, const ObserverList& obs);
  Weights in_proj{nullptr}, conv1d{nullptr}, norm{nullptr}, out_proj{nullptr};
  torch::Tensor A_log, D, dt_bias;

 private:
  ModelConfig cfg_;
};
TORCH_MODULE(Mamba2Mixer);

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const ModelConfig& c, const ParameterInit& init);
  torch::Tensor forward(const torch::Tensor& h, int64_t layer, const ObserverList& obs);
  Weights q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  ModelConfig cfg_;
};
TORCH_MODULE(Attention);

class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(const ModelConfig& c, const ParameterInit& init);
  torch::Tensor forward(const torch::Tensor& h, int64_t layer, const ObserverList& obs);
  Weights up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

class MoeMixerImpl;  // moe_mixer.h

// One residual block: h + mixer(RMSNorm(h)).
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const ModelConfig& c, int64_t layer, const ParameterInit& init);
  torch::Tensor forward(const torch::Tensor& h, const ObserverList& obs);
  // The mixer's contribution alone (no residual): used for layer scoring.
  torch::Tensor mixer_output(const torch::Tensor& h, const ObserverList& obs);
  LayerType type() const { return type_; }
  Weights norm{nullptr};

 private:
  LayerType type_;
  int64_t layer_;
  double eps_;
  Mamba2Mixer mamba_{nullptr};
  Attention attention_{nullptr};
  Mlp mlp_{nullptr};
  std::shared_ptr<MoeMixerImpl> moe_;
};
TORCH_MODULE(Block);

class BackboneImpl : public torch::nn::Module {
 public:
  BackboneImpl(const ModelConfig& c, const ParameterInit& init);
  Weights embeddings{nullptr}, norm_f{nullptr};
  torch::nn::ModuleList layers;
};
TORCH_MODULE(Backbone);

class HybridLMImpl : public torch::nn::Module {
 public:
  // Parameters are allocated with `options` (default fp32 on the CPU) and
  // left uninitialised: load_model()/load_weights() or init_random() give
  // them values. A loader builds the model in its final dtype and device
  // (or on the meta device, allocating nothing, for weights that stream),
  // so no full-size staging copy of the model ever exists.
  explicit HybridLMImpl(const ModelConfig& c, const torch::TensorOptions& options = torch::kFloat32,
                        bool placeholders = false);

  const ModelConfig& config() const { return cfg_; }
  ObserverList& observers() { return observers_; }

  // Full forward: tokens [b, L] (int64) -> logits [b, L, V] in fp32.
  torch::Tensor forward(const torch::Tensor& tokens);
  // Final hidden state after norm_f, [b, L, D], in the model dtype.
  torch::Tensor forward_hidden(const torch::Tensor& tokens);

  // Pieces, for layer scoring and distillation:
  torch::Tensor embed(const torch::Tensor& tokens);
  // Runs layers [from, to), skipping those with skip[i] true (skip may be empty).
  torch::Tensor run_layers(torch::Tensor h, int64_t from, int64_t to, const std::vector<bool>& skip = {});
  Block layer(int64_t i) { return layers_[i]; }
  torch::Tensor final_norm(const torch::Tensor& h);  // norm_f
  torch::Tensor lm_head(const torch::Tensor& normed);  // -> fp32 logits

  // Deterministic random weights (tests, demos): matrices N(0, 0.02), norms
  // near 1, A_log/dt_bias/D like transformers' init.
  void init_random(uint64_t seed);
  torch::ScalarType dtype() const;
  torch::Device device() const;

  Weights lm_head_weights{nullptr};

 private:
  ModelConfig cfg_;
  Backbone backbone_{nullptr};
  std::vector<Block> layers_;
  ObserverList observers_;
};
TORCH_MODULE(HybridLM);

// The LM head multiplies in fixed vocabulary slices of this many rows: a run
// that streams the head (streamed_model.h) holds a few slices at a time and
// must get the same bits as the resident model, and a matrix product's bits
// may depend on its width (they do on the CPU for narrow ones).
constexpr int64_t kLmHeadSliceRows = 8192;
// normed [.., D] x weight rows [n, D]^T -> fp32 logits [.., n], slice by
// slice from the first row of `weight` (so rows [k*S, ...) of the head give
// the bits of those columns of the whole product).
torch::Tensor lm_head_logits(const torch::Tensor& normed, const torch::Tensor& weight);

// The dtype names users pass: fp32 | bf16 | fp16.
torch::ScalarType parse_model_dtype(const std::string& name);
// "cpu" | "cuda" | "cuda:N"; InputError when CUDA is asked for but absent.
torch::Device parse_device(const std::string& name);

}  // namespace minipuzzle
