#!/usr/bin/env python3
"""Regenerates tests/search/transformers_param_counts.json: transformers'
own parameter count of each published config in tests/search/configs/ (and
of the few derived configs the search tests need), per module group, so the
memory-model tests check our count against an implementation we did not
write. The models are built on the meta device: no weights, seconds each.

    ~/.cache/minipuzzle/venv-py311/bin/python tests/search/make_transformers_counts.py

Needs the repo's venv (torch, transformers). For MoE configs (Nemotron 3
Nano 30B-A3B) it also records the routed experts' parameters and the active
parameters per token: the total less the (E - k)/E of the routed experts a
token does not use (from transformers' own expert tensor shapes). The
router's e_score_correction_bias is a buffer in transformers, not counted."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import transformers
from transformers import NemotronHConfig, NemotronHForCausalLM

HERE = Path(__file__).resolve().parent
OUT = HERE / "transformers_param_counts.json"
PUBLISHED = ["nemotron-h-4b", "nemotron-h-8b", "nemotron-h-47b", "nemotron-h-56b", "nemotron-nano-9b-v2",
             "nemotron-nano-12b-v2", "nemotron-3-nano-30b-a3b"]
# name: (published config, key overrides). The smallest point of the paper's
# grid on the 56B: one MLP layer at 3/4 of its FFN (architecture_search_test).
DERIVED = {"nemotron-h-56b-one-mlp-ffn24576": ("nemotron-h-56b", {"hybrid_override_pattern": "-",
                                                                   "num_hidden_layers": 1,
                                                                   "intermediate_size": 24576})}
# transformers' block names -> ours.
GROUP = {"mamba": "mamba", "linear_attention": "mamba", "attention": "attention", "full_attention": "attention",
         "mlp": "mlp", "moe": "moe"}


def counts(config: dict) -> dict:
    cfg = NemotronHConfig(**config)
    with torch.device("meta"):
        model = NemotronHForCausalLM(cfg)
    kinds = [GROUP[k] for k in cfg.layers_block_type]
    out = {"embeddings": 0, "lm_head": 0, "final_norm": 0, "mamba": 0, "attention": 0, "mlp": 0}
    has_moe = "moe" in kinds
    if has_moe:
        out["moe"] = 0
        routed = 0
    per_layer: dict[int, int] = {}
    for name, p in model.named_parameters():
        m = re.match(r"(?:model|backbone)\.layers\.(\d+)\.", name)
        if m:
            i = int(m.group(1))
            out[kinds[i]] += p.numel()
            if re.search(r"\.mixer\.experts\.(up|down)_proj$", name):
                routed += p.numel()
            per_layer[i] = per_layer.get(i, 0) + p.numel()
        elif "embeddings" in name:
            out["embeddings"] += p.numel()
        elif name.startswith("lm_head"):
            out["lm_head"] += p.numel()
        elif "norm_f" in name:
            out["final_norm"] += p.numel()
        else:
            raise SystemExit(f"make_transformers_counts: parameter {name} fits no group")
    for kind in ("mamba", "attention", "mlp") + (("moe",) if has_moe else ()):
        sizes = {per_layer[i] for i, k in enumerate(kinds) if k == kind}
        if len(sizes) > 1:
            raise SystemExit(f"make_transformers_counts: {kind} layers of different sizes {sorted(sizes)}")
        out[f"per_{kind}_layer"] = sizes.pop() if sizes else 0
    out["total"] = sum(p.numel() for p in model.parameters())
    assert out["total"] == sum(out[k] for k in ("embeddings", "lm_head", "final_norm", "mamba", "attention", "mlp")
                               + (("moe",) if has_moe else ()))
    if has_moe:
        e, k = cfg.n_routed_experts, cfg.num_experts_per_tok
        assert routed % e == 0
        out["moe_routed_experts"] = routed
        out["active"] = out["total"] - routed // e * (e - k)
    return out


def main() -> None:
    result = {"generated_by": "tests/search/make_transformers_counts.py",
              "transformers": transformers.__version__, "torch": torch.__version__, "configs": {}}
    for name in PUBLISHED:
        config = json.loads((HERE / "configs" / f"{name}.config.json").read_text())
        result["configs"][name] = counts(config)
    for name, (base, overrides) in DERIVED.items():
        config = json.loads((HERE / "configs" / f"{base}.config.json").read_text())
        config.pop("layers_block_type", None)
        config.update(overrides)
        result["configs"][name] = {"base": base, "overrides": overrides, **counts(config)}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
