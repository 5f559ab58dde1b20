#include <cmath>

#include "minipuzzle/hybrid_lm.h"

namespace minipuzzle {

AttentionImpl::AttentionImpl(const ModelConfig& c, const ParameterInit& o) : cfg_(c) {
  const int64_t D = c.hidden_size;
  q_proj = register_module("q_proj", weights({c.attention_q_dim(), D}, o));
  k_proj = register_module("k_proj", weights({c.attention_kv_dim(), D}, o));
  v_proj = register_module("v_proj", weights({c.attention_kv_dim(), D}, o));
  o_proj = register_module("o_proj", weights({D, c.attention_q_dim()}, o));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& h, int64_t layer, const ObserverList& obs) {
  const int64_t b = h.size(0), L = h.size(1);
  const int64_t nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, hd = cfg_.head_dim;
  auto q = torch::linear(h, q_proj->weight).view({b, L, nh, hd}).transpose(1, 2);
  auto k = torch::linear(h, k_proj->weight).view({b, L, nkv, hd}).transpose(1, 2);
  auto v = torch::linear(h, v_proj->weight).view({b, L, nkv, hd}).transpose(1, 2);
  if (nkv != nh) {  // GQA: each kv head serves nh/nkv consecutive query heads
    k = k.repeat_interleave(nh / nkv, 1);
    v = v.repeat_interleave(nh / nkv, 1);
  }
  // NoPE: no positional embedding at all; causal; scale head_dim^-0.5.
  auto o = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true,
                                            /*scale=*/1.0 / std::sqrt(static_cast<double>(hd)));
  o = o.transpose(1, 2).contiguous();  // [b, L, nh, hd]
  if (!obs.empty()) obs.notify(ObservePoint::AttentionHeads, layer, o);
  return torch::linear(o.view({b, L, nh * hd}), o_proj->weight);
}

}  // namespace minipuzzle
