#!/usr/bin/env python3
"""Check an export with the outside oracles: the Python `safetensors` package
reads every file, and transformers' NemotronHForCausalLM loads the export and
gives the same logits as our model on the same tokens."""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import NemotronHForCausalLM


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ours", required=True, help="path of the minipuzzle binary")
    ap.add_argument("--original", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--tokens", type=int, default=200)
    a = ap.parse_args()

    files = sorted(glob.glob(os.path.join(a.export, "*.safetensors")))
    for f in files:
        with safe_open(f, framework="pt") as h:
            assert h.metadata() == {"format": "pt"}, f"{f}: metadata {h.metadata()}"
    cfg = json.load(open(os.path.join(a.export, "config.json")))
    vocab = cfg["vocab_size"]
    torch.manual_seed(0)
    ids = torch.randint(3, vocab, (2, a.tokens))

    hf = NemotronHForCausalLM.from_pretrained(a.export, dtype=torch.float32).eval()
    with torch.no_grad():
        # use_cache=False: transformers 5.17 fails to build a cache for a
        # model without attention layers (pruning may drop them all).
        hf_logits = hf(ids, use_cache=False).logits.float()
    with tempfile.TemporaryDirectory() as tmp:
        save_file({"input_ids": ids}, os.path.join(tmp, "ids.safetensors"))
        out = os.path.join(tmp, "logits.safetensors")
        subprocess.run([a.ours, "logits", a.export, "--tokens", os.path.join(tmp, "ids.safetensors"),
                        "--out", out], check=True)
        ours = load_file(out)["logits"]
    diff = (ours - hf_logits).abs().max().item()
    print(f"safetensors package read {len(files)} file(s); transformers loaded the export "
          f"({cfg['hybrid_override_pattern']}); max |our logits - HF logits| = {diff:.2e}")
    if diff > 1e-4:
        print("MISMATCH", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
