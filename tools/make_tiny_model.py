#!/usr/bin/env python3
"""Make a small random Nemotron-H checkpoint with transformers itself.

The directory is what `NemotronHForCausalLM.save_pretrained` writes
(transformers-5 layout: `model.*` names, `layers_block_type`), i.e. the kind
of checkpoint a user brings. Every parameter is drawn from a seeded
generator (transformers' init leaves some at constants)."""
import argparse
import math

import torch
from transformers import NemotronHConfig, NemotronHForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=259)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--pattern", default="M-M*-M-")
    ap.add_argument("--ffn", type=int, default=0, help="MLP width (default 3 x hidden)")
    ap.add_argument("--mamba-heads", type=int, default=8)
    ap.add_argument("--mamba-head-dim", type=int, default=16)
    ap.add_argument("--state", type=int, default=16)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--attn-heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of the saved weights")
    a = ap.parse_args()

    cfg = NemotronHConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, hybrid_override_pattern=a.pattern,
        num_hidden_layers=len(a.pattern), intermediate_size=a.ffn or 3 * a.hidden,
        num_attention_heads=a.attn_heads, num_key_value_heads=a.kv_heads, head_dim=a.head_dim,
        mamba_num_heads=a.mamba_heads, mamba_head_dim=a.mamba_head_dim, ssm_state_size=a.state,
        n_groups=a.groups, conv_kernel=4, chunk_size=a.chunk, use_mamba_kernels=False)
    model = NemotronHForCausalLM(cfg).float().eval()
    gen = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=gen) * math.log(16.0))
            elif name.endswith("dt_bias"):
                dt = torch.exp(torch.rand(p.shape, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif name.endswith(".D"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif "norm" in name:
                p.copy_(torch.rand(p.shape, generator=gen) * 0.4 + 0.8)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if "conv1d" in name else 0.02))
    if a.dtype == "bf16":
        model.to(torch.bfloat16)
    model.save_pretrained(a.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {a.out}: pattern {a.pattern}, {n:,} parameters (transformers {__import__('transformers').__version__})")


if __name__ == "__main__":
    main()
