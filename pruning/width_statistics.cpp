#include "minipuzzle/width_statistics.h"

#include <fmt/format.h>

#include <sstream>

#include "minipuzzle/errors.h"

namespace minipuzzle {

Aggregation Aggregation::parse(const std::string& text) {
  Aggregation a;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ',')) {
    const auto eq = part.find('=');
    const std::string key = part.substr(0, eq), value = eq == std::string::npos ? "" : part.substr(eq + 1);
    if (key == "seq" && value == "mean") a.seq = SeqAggregation::Mean;
    else if (key == "seq" && value == "l2") a.seq = SeqAggregation::L2;
    else if (key == "seq" && value == "max") a.seq = SeqAggregation::Max;
    else if (key == "batch" && value == "mean") a.batch = BatchAggregation::Mean;
    else if (key == "batch" && value == "l2") a.batch = BatchAggregation::L2;
    else if (key == "batch" && value == "var") a.batch = BatchAggregation::Var;
    else
      throw InputError(fmt::format("--aggregation: '{}' is not one of seq=mean|l2|max, batch=mean|l2|var", part));
  }
  return a;
}

std::string Aggregation::to_string() const {
  const char* s[] = {"mean", "l2", "max"};
  const char* b[] = {"mean", "l2", "var"};
  return fmt::format("seq={},batch={}", s[static_cast<int>(seq)], b[static_cast<int>(batch)]);
}

torch::Tensor aggregate_sequence(const torch::Tensor& values, SeqAggregation a) {
  auto v = values.to(torch::kFloat64);
  switch (a) {
    case SeqAggregation::Mean: return v.abs().mean(1);
    case SeqAggregation::L2: return v.square().sum(1).sqrt();
    case SeqAggregation::Max: return v.abs().amax(1);
  }
  return {};
}

void BatchAccumulator::add(const torch::Tensor& per_sample) {
  auto s = per_sample.to(torch::kFloat64);
  if (!sum_.defined()) {
    sum_ = torch::zeros({s.size(1)}, s.options());
    sum_sq_ = torch::zeros({s.size(1)}, s.options());
  }
  sum_ += s.sum(0);
  sum_sq_ += s.square().sum(0);
  samples_ += s.size(0);
}

torch::Tensor BatchAccumulator::result(BatchAggregation a) const {
  if (samples_ == 0) return {};
  const double n = static_cast<double>(samples_);
  switch (a) {
    case BatchAggregation::Mean: return (sum_ / n).cpu();
    case BatchAggregation::L2: return sum_sq_.sqrt().cpu();
    case BatchAggregation::Var: {
      auto mean = sum_ / n;
      return (sum_sq_ / n - mean.square()).clamp_min(0.0).cpu();
    }
  }
  return {};
}

WidthStatistics::WidthStatistics(HybridLM& model, Aggregation aggregation)
    : cfg_(model->config()), agg_(aggregation) {
  const auto params = model->named_parameters();
  for (int64_t i = 0; i < cfg_.num_layers(); ++i) {
    if (cfg_.layer_type(i) != LayerType::Attention) continue;
    const auto* w = params.find(fmt::format("backbone.layers.{}.mixer.o_proj.weight", i));
    if (!w) throw std::logic_error(fmt::format("model has no o_proj in attention layer {}", i));
    // The parameter itself, not its values: a streamed model's weights
    // exist only while their block runs, which is when it is observed.
    o_proj_[i] = *w;
  }
}

const torch::Tensor& WidthStatistics::o_proj_gram(int64_t layer) {
  auto it = o_proj_gram_.find(layer);
  if (it != o_proj_gram_.end()) return it->second;
  // [D, heads*hd] -> per head W_h [D, hd]; G_h = W_h^T W_h, so that
  // ||W_h o||^2 = o^T G_h o costs hd^2 per head and token instead of D*hd.
  auto wh = o_proj_.at(layer).to(torch::kFloat64).reshape({cfg_.hidden_size, cfg_.num_attention_heads, cfg_.head_dim});
  return o_proj_gram_[layer] = torch::einsum("dhk,dhj->hkj", {wh, wh});  // on the model's device, as w
}

void WidthStatistics::observe(ObservePoint point, int64_t layer, const torch::Tensor& value) {
  torch::NoGradGuard no_grad;
  torch::Tensor per_token;  // [b, L, C]
  switch (point) {
    case ObservePoint::MixerInput:
    case ObservePoint::FinalNorm:
    case ObservePoint::MlpActivation:
    case ObservePoint::MambaX: per_token = value; break;
    case ObservePoint::AttentionHeads: {
      auto o = value.to(torch::kFloat64);
      const auto& g = o_proj_gram(layer);
      per_token = torch::einsum("blhk,hkj,blhj->blh", {o, g, o}).clamp_min(0.0).sqrt();
      break;
    }
    default: return;  // block input / mixer output: not a width axis
  }
  // Kept per layer; fill() sums the norm outputs of all layers into `hidden`.
  acc_[{static_cast<int>(point), layer}].add(aggregate_sequence(per_token, agg_.seq));
}

void WidthStatistics::fill(ImportanceScores& s) const {
  const int64_t n = cfg_.num_layers();
  for (auto* v : {&s.ffn, &s.attention_heads, &s.mamba_channels, &s.mamba_heads, &s.mamba_head_channels})
    v->assign(n, {});
  auto to_vec = [](const torch::Tensor& t) {
    auto c = t.to(torch::kFloat32).contiguous();
    return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  };
  torch::Tensor hidden;
  for (const auto& [key, acc] : acc_) {
    const auto point = static_cast<ObservePoint>(key.first);
    const int64_t layer = key.second;
    torch::Tensor r = acc.result(agg_.batch);
    switch (point) {
      case ObservePoint::MixerInput:
      case ObservePoint::FinalNorm: hidden = hidden.defined() ? hidden + r : r; break;
      case ObservePoint::MlpActivation: s.ffn[layer] = to_vec(r); break;
      case ObservePoint::AttentionHeads: s.attention_heads[layer] = to_vec(r); break;
      case ObservePoint::MambaX: {
        s.mamba_channels[layer] = to_vec(r);
        auto hp = r.reshape({cfg_.mamba_num_heads, cfg_.mamba_head_dim});
        s.mamba_heads[layer] = to_vec(hp.square().sum(1).sqrt());
        s.mamba_head_channels[layer] = to_vec(hp.square().sum(0).sqrt());
        break;
      }
      default: break;
    }
  }
  s.hidden = hidden.defined() ? to_vec(hidden) : std::vector<float>(cfg_.hidden_size, 0.0f);
}

}  // namespace minipuzzle
