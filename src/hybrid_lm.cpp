#include "minipuzzle/hybrid_lm.h"

#include <algorithm>
#include <cmath>

#include "minipuzzle/errors.h"
#include "minipuzzle/moe_mixer.h"
#include "minipuzzle/rms_norm.h"

namespace minipuzzle {

torch::Tensor ParameterInit::make(const std::vector<int64_t>& shape) const {
  if (!placeholders) return torch::empty(shape, options);
  return torch::empty_strided(shape, std::vector<int64_t>(shape.size(), 0), options);
}

WeightsImpl::WeightsImpl(std::vector<int64_t> weight_shape, std::vector<int64_t> bias_shape,
                         const ParameterInit& init) {
  // Uninitialised: a checkpoint load or init_random() fills them; skipping a
  // random init keeps loading a large model cheap.
  weight = register_parameter("weight", init.make(weight_shape));
  if (!bias_shape.empty()) bias = register_parameter("bias", init.make(bias_shape));
}

BlockImpl::BlockImpl(const ModelConfig& c, int64_t layer, const ParameterInit& init)
    : type_(c.layer_type(layer)), layer_(layer), eps_(c.layer_norm_epsilon) {
  norm = register_module("norm", weights({c.hidden_size}, init));
  switch (type_) {
    case LayerType::Mamba: mamba_ = register_module("mixer", Mamba2Mixer(c, init)); break;
    case LayerType::Attention: attention_ = register_module("mixer", Attention(c, init)); break;
    case LayerType::Mlp: mlp_ = register_module("mixer", Mlp(c, init)); break;
    case LayerType::Moe: moe_ = register_module("mixer", std::make_shared<MoeMixerImpl>(c, init)); break;
  }
}

torch::Tensor BlockImpl::mixer_output(const torch::Tensor& h, const ObserverList& obs) {
  auto x = rms_norm(h.to(norm->weight.scalar_type()), norm->weight, eps_);
  if (!obs.empty()) obs.notify(ObservePoint::MixerInput, layer_, x);
  torch::Tensor y;
  switch (type_) {
    case LayerType::Mamba: y = mamba_->forward(x, layer_, obs); break;
    case LayerType::Attention: y = attention_->forward(x, layer_, obs); break;
    case LayerType::Mlp: y = mlp_->forward(x, layer_, obs); break;
    case LayerType::Moe: y = moe_->forward(x, layer_, obs); break;
  }
  if (!obs.empty()) obs.notify(ObservePoint::MixerOutput, layer_, y);
  return y;
}

torch::Tensor BlockImpl::forward(const torch::Tensor& h, const ObserverList& obs) {
  if (!obs.empty()) obs.notify(ObservePoint::BlockInput, layer_, h);
  return h + mixer_output(h, obs);
}

BackboneImpl::BackboneImpl(const ModelConfig& c, const ParameterInit& init) {
  embeddings =
      register_module("embeddings", weights({c.vocab_size, c.hidden_size}, init));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers(); ++i) layers->push_back(Block(c, i, init));
  norm_f = register_module("norm_f", weights({c.hidden_size}, init));
}

HybridLMImpl::HybridLMImpl(const ModelConfig& c, const torch::TensorOptions& options, bool placeholders)
    : cfg_(c) {
  c.validate();
  const ParameterInit init{options, placeholders};
  backbone_ = register_module("backbone", Backbone(c, init));
  for (const auto& m : *backbone_->layers) layers_.push_back(Block(std::dynamic_pointer_cast<BlockImpl>(m)));
  lm_head_weights =
      register_module("lm_head", weights({c.vocab_size, c.hidden_size}, init));
}

torch::Tensor HybridLMImpl::embed(const torch::Tensor& tokens) {
  return torch::embedding(backbone_->embeddings->weight, tokens);
}

torch::Tensor HybridLMImpl::run_layers(torch::Tensor h, int64_t from, int64_t to, const std::vector<bool>& skip) {
  for (int64_t i = from; i < to; ++i) {
    if (!skip.empty() && skip[i]) continue;
    h = layers_[i]->forward(h, observers_);
  }
  return h;
}

torch::Tensor HybridLMImpl::final_norm(const torch::Tensor& h) {
  auto y = rms_norm(h, backbone_->norm_f->weight, cfg_.layer_norm_epsilon);
  if (!observers_.empty()) observers_.notify(ObservePoint::FinalNorm, cfg_.num_layers(), y);
  return y;
}

torch::Tensor lm_head_logits(const torch::Tensor& normed, const torch::Tensor& weight) {
  const int64_t V = weight.size(0);
  if (V <= kLmHeadSliceRows) return torch::linear(normed, weight).to(torch::kFloat32);
  auto slice = [&](int64_t v0) {
    return torch::linear(normed, weight.narrow(0, v0, std::min(kLmHeadSliceRows, V - v0))).to(torch::kFloat32);
  };
  if (!torch::GradMode::is_enabled()) {
    // Straight into the output: no second logits-sized buffer (eval, scoring).
    std::vector<int64_t> shape = normed.sizes().vec();
    shape.back() = V;
    torch::Tensor out = torch::empty(shape, normed.options().dtype(torch::kFloat32));
    for (int64_t v0 = 0; v0 < V; v0 += kLmHeadSliceRows) {
      const auto part = slice(v0);
      out.narrow(-1, v0, part.size(-1)).copy_(part);
    }
    return out;
  }
  std::vector<torch::Tensor> parts;
  for (int64_t v0 = 0; v0 < V; v0 += kLmHeadSliceRows) parts.push_back(slice(v0));
  return torch::cat(parts, -1);
}

torch::Tensor HybridLMImpl::lm_head(const torch::Tensor& normed) { return lm_head_logits(normed, lm_head_weights->weight); }

torch::Tensor HybridLMImpl::forward_hidden(const torch::Tensor& tokens) {
  return final_norm(run_layers(embed(tokens), 0, cfg_.num_layers()));
}

torch::Tensor HybridLMImpl::forward(const torch::Tensor& tokens) { return lm_head(forward_hidden(tokens)); }

torch::ScalarType HybridLMImpl::dtype() const { return lm_head_weights->weight.scalar_type(); }
torch::Device HybridLMImpl::device() const { return lm_head_weights->weight.device(); }

void HybridLMImpl::init_random(uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& p : named_parameters()) {
    const std::string& name = p.key();
    torch::Tensor t = torch::empty(p.value().sizes(), torch::kFloat32);
    auto ends_with = [&](const std::string& s) {
      return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    if (ends_with("A_log")) {
      // A = -exp(A_log) in [-16, -1): decays of realistic strength.
      t.uniform_(0.0, std::log(16.0), gen);
    } else if (ends_with("dt_bias")) {
      // softplus^-1 of dt drawn log-uniformly in [1e-3, 1e-1], as transformers.
      t.uniform_(std::log(1e-3), std::log(1e-1), gen);
      t = t.exp();
      t = t + torch::log(-torch::expm1(-t));
    } else if (ends_with(".D")) {
      t.uniform_(0.5, 1.5, gen);
    } else if (ends_with("norm.weight") || ends_with("norm_f.weight")) {
      t.uniform_(0.8, 1.2, gen);
    } else if (ends_with("conv1d.bias")) {
      t.normal_(0.0, 0.1, gen);
    } else if (ends_with("conv1d.weight")) {
      t.normal_(0.0, 0.3, gen);
    } else {
      t.normal_(0.0, 0.02, gen);
    }
    p.value().copy_(t);
  }
}

torch::ScalarType parse_model_dtype(const std::string& name) {
  if (name == "fp32" || name == "float32") return torch::kFloat32;
  if (name == "bf16" || name == "bfloat16") return torch::kBFloat16;
  if (name == "fp16" || name == "float16") return torch::kFloat16;
  throw InputError("unknown dtype '" + name + "'; expected fp32, bf16 or fp16");
}

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) throw InputError("--device " + name + ": no CUDA device is available");
    try {
      torch::Device d(name);
      if (d.has_index() && d.index() >= static_cast<int>(torch::cuda::device_count()))
        throw InputError("--device " + name + ": only " + std::to_string(torch::cuda::device_count()) +
                         " CUDA devices");
      return d;
    } catch (const c10::Error&) {
      throw InputError("--device " + name + ": not a device name (cpu, cuda, cuda:N)");
    }
  }
  throw InputError("--device " + name + ": not a device name (cpu, cuda, cuda:N)");
}

}  // namespace minipuzzle
