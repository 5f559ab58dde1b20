#!/usr/bin/env python3
"""Make a small random Nemotron-H checkpoint with transformers itself.

The directory is what `NemotronHForCausalLM.save_pretrained` writes
(transformers-5 layout: `model.*` names, `layers_block_type`), i.e. the kind
of checkpoint a user brings. Every parameter is drawn from a seeded
generator (transformers' init leaves some at constants).

--tokenizer also writes our byte-level tokenizer (src/byte_tokenizer.cpp:
id = byte + 3, 0 pad, 1 bos, 2 eos; vocab 259) as Hub tokenizer files that
transformers' AutoTokenizer reads; --tokenizer-only DIR adds them to an
existing model folder (how examples/demo/teacher got them)."""
import argparse
import json
import math
from pathlib import Path

import torch
from transformers import NemotronHConfig, NemotronHForCausalLM


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}")


def write_byte_tokenizer(out: Path) -> None:
    """tokenizer.json (byte-level BPE with no merges: one token per byte),
    tokenizer_config.json, special_tokens_map.json, generation_config.json,
    chat_template.jinja. Ids equal ByteTokenizer's: a document encodes to
    bos + (byte + 3)...; decoding drops the special ids."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    byte_to_char = pre_tokenizers.ByteLevel.alphabet()  # the 256 stand-in characters
    # ByteLevel maps byte b to a fixed printable character; rebuild that map in byte order
    # (GPT-2's bytes_to_unicode) so id = b + 3 for every byte.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    char_of = {b: chr(c) for b, c in zip(bs, cs)}
    assert set(char_of.values()) == set(byte_to_char)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({char_of[b]: b + 3 for b in range(256)})
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<pad>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1024, "clean_up_tokenization_spaces": False,
         **special}, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_new_tokens": 128}, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def init_parameters(model, seed: int) -> None:
    """Every parameter drawn from one seeded generator, in named_parameters()
    order, within the ranges Mamba2's own init uses (A in [1, 16], dt in
    [1e-3, 0.1] through the inverse softplus, D near 1, norms near 1); the
    rest small normal. Buffers (an MoE router's correction bias) are left."""
    gen = torch.Generator().manual_seed(seed)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out")
    ap.add_argument("--tokenizer", action="store_true", help="also write the byte-level tokenizer files")
    ap.add_argument("--tokenizer-only", metavar="DIR", help="only add the byte-level tokenizer files to DIR")
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
    if a.tokenizer_only:
        write_byte_tokenizer(Path(a.tokenizer_only))
        print(f"wrote the byte-level tokenizer files to {a.tokenizer_only}")
        return
    if not a.out:
        ap.error("--out is required")

    cfg = NemotronHConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, hybrid_override_pattern=a.pattern,
        num_hidden_layers=len(a.pattern), intermediate_size=a.ffn or 3 * a.hidden,
        num_attention_heads=a.attn_heads, num_key_value_heads=a.kv_heads, head_dim=a.head_dim,
        mamba_num_heads=a.mamba_heads, mamba_head_dim=a.mamba_head_dim, ssm_state_size=a.state,
        n_groups=a.groups, conv_kernel=4, chunk_size=a.chunk, use_mamba_kernels=False)
    model = NemotronHForCausalLM(cfg).float().eval()
    init_parameters(model, a.seed)
    if a.dtype == "bf16":
        model.to(torch.bfloat16)
    model.save_pretrained(a.out)
    if a.tokenizer:
        write_byte_tokenizer(Path(a.out))
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {a.out}: pattern {a.pattern}, {n:,} parameters (transformers {__import__('transformers').__version__})")


if __name__ == "__main__":
    main()
