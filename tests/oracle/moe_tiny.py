"""Tiny random Nemotron-H MoE models made with HF transformers (the `E` layer).

Like nemotron_tiny.py (whose attention/Mamba sizes and CLI helpers it
reuses) and like it independent of our code: transformers builds each model,
every parameter and the router's `e_score_correction_bias` buffer are
randomised from the spec's seed, and the checkpoints are written in the
layouts a user can hold: `hub` (per-expert tensors
`backbone.layers.N.mixer.experts.K.up_proj.weight`, hybrid_override_pattern
config), `fused` (transformers-5 in-memory names: `model.*`, 3-D
`mixer.experts.up_proj` [E, F, Din]) and `tf5` (save_pretrained).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from transformers import NemotronHConfig, NemotronHForCausalLM

import nemotron_tiny as nt


@dataclasses.dataclass(frozen=True)
class MoeSpec:
    name: str
    seed: int
    pattern: str
    experts: int
    k: int
    n_group: int
    topk_group: int
    expert_ffn: int
    shared_ffn: int
    latent: int | None = None
    norm_topk_prob: bool = True
    scaling: float = 1.0
    # Router rows (and correction bias entries) equal in pairs 2j, 2j+1:
    # exact ties in the scores that top-k must break as transformers does.
    ties: bool = False
    vocab: int = 260
    hidden: int = 40

    @property
    def layer_types(self) -> list[str]:
        return [nt.PATTERN_TO_TYPE[c] for c in self.pattern]


SPECS = [
    # 6 experts in 3 groups, 2 groups kept, 3 per token, scaling 2.5, shared
    # expert wider than the routed ones
    MoeSpec("e6_g3", seed=21, pattern="ME*E-", experts=6, k=3, n_group=3, topk_group=2,
            expert_ffn=24, shared_ffn=56, scaling=2.5),
    # 10 experts in 5 groups, latent projections, no normalisation, narrow shared expert
    MoeSpec("e10_latent", seed=22, pattern="EM*E", experts=10, k=2, n_group=5, topk_group=2,
            expert_ffn=20, shared_ffn=12, latent=24, norm_topk_prob=False, scaling=1.5),
    # exact ties in the router scores (first layer: the router sees the embeddings' norm)
    MoeSpec("e8_ties", seed=23, pattern="E*ME", experts=8, k=3, n_group=2, topk_group=1,
            expert_ffn=16, shared_ffn=32, ties=True),
]
SPECS_BY_NAME = {s.name: s for s in SPECS}

# Attention / Mamba sizes shared by every MoE spec.
_BASE = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12, intermediate_size=36,
             mamba_num_heads=4, mamba_head_dim=8, ssm_state_size=8, n_groups=2, chunk_size=8)


def moe_config_keys(spec: MoeSpec) -> dict:
    return {
        "n_routed_experts": spec.experts,
        "n_shared_experts": 1,
        "moe_intermediate_size": spec.expert_ffn,
        "moe_shared_expert_intermediate_size": spec.shared_ffn,
        "moe_latent_size": spec.latent,
        "num_experts_per_tok": spec.k,
        "n_group": spec.n_group,
        "topk_group": spec.topk_group,
        "norm_topk_prob": spec.norm_topk_prob,
        "routed_scaling_factor": spec.scaling,
    }


def make_config(spec: MoeSpec) -> NemotronHConfig:
    return NemotronHConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, layers_block_type=spec.layer_types,
                           layer_norm_epsilon=1e-5, max_position_embeddings=4096, tie_word_embeddings=False,
                           use_cache=False, **_BASE, **moe_config_keys(spec))


@torch.no_grad()
def build_model(spec: MoeSpec) -> NemotronHForCausalLM:
    torch.manual_seed(spec.seed)
    model = NemotronHForCausalLM(make_config(spec)).to(torch.float32).eval()
    g = torch.Generator().manual_seed(spec.seed + 1000)
    experts = {n for n, p in model.named_parameters() if p.ndim == 3}  # fused [E, out, in]
    for name, p in sorted(model.named_parameters()):
        if name in experts:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    _randomize_rest(model, spec.seed, skip=experts)
    for layer in model.model.layers:
        if layer.block_type != "moe":
            continue
        gate = layer.mixer.gate
        # Biases comparable to the score spread, so they change the choice.
        gate.e_score_correction_bias.copy_((torch.rand(spec.experts, generator=g) - 0.5) * 0.2)
        if spec.ties:
            gate.weight[1::2] = gate.weight[0::2]
            gate.e_score_correction_bias[1::2] = gate.e_score_correction_bias[0::2]
    return model


def _randomize_rest(model, seed, skip):
    """nemotron_tiny.randomize_ on every parameter but the fused experts."""
    class _View(torch.nn.Module):
        def __init__(self, params):
            super().__init__()
            self._p = params

        def named_parameters(self, *a, **k):
            return iter(self._p)

    nt.randomize_(_View([(n, p) for n, p in model.named_parameters() if n not in skip]), seed)


def hub_state_dict(model: NemotronHForCausalLM) -> dict[str, torch.Tensor]:
    """Hub names, one tensor per routed expert."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("model."):
            k = "backbone." + k[len("model."):]
        if k.endswith("mixer.experts.up_proj") or k.endswith("mixer.experts.down_proj"):
            base, proj = k.rsplit(".", 1)
            for e in range(v.shape[0]):
                out[f"{base}.{e}.{proj}.weight"] = v[e].detach().contiguous().clone()
            continue
        out[k] = v.detach().contiguous().clone()
    return out


def hub_config_dict(spec: MoeSpec) -> dict:
    return {
        "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
        "vocab_size": spec.vocab, "hidden_size": spec.hidden, "num_hidden_layers": len(spec.pattern),
        "hybrid_override_pattern": spec.pattern, "mlp_hidden_act": "relu2", "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": False, "torch_dtype": "float32", "max_position_embeddings": 4096,
        **_BASE, **moe_config_keys(spec),
    }


def save_checkpoint(model: NemotronHForCausalLM, spec: MoeSpec, out_dir, style: str) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if style == "tf5":
        model.save_pretrained(out_dir)
    elif style == "hub":
        save_file(hub_state_dict(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        (out_dir / "config.json").write_text(json.dumps(hub_config_dict(spec), indent=2))
    elif style == "fused":
        sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(sd, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        cfg = hub_config_dict(spec)
        del cfg["hybrid_override_pattern"], cfg["num_hidden_layers"]
        cfg["layers_block_type"] = spec.layer_types
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    else:
        raise ValueError(style)
    return out_dir
