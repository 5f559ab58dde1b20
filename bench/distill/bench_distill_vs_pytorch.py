#!/usr/bin/env python3
"""Distillation throughput: `minipuzzle distill` against the hand-written
PyTorch loop a user would otherwise write (HF NemotronHForCausalLM teacher and
student, full-vocabulary forward KL via F.kl_div, torch.optim.AdamW, gradient
clipping), on the same model, windows, batch and step count, in the same run.

  python bench/distill/bench_distill_vs_pytorch.py --bin build/bin/minipuzzle [--steps 6] [--hidden 256]
      [--seq-len 256] [--micro-batch 4] [--global-batch 8] [--device cpu|cuda] [--meta key=value ...]

Prints one JSON object: tokens/s of both (steps after the first, which
warms up), and ours / pytorch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import NemotronHForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import print_result, write_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def pytorch_loop(teacher_dir, student_dir, tokens, a) -> float:
    dev = torch.device(a.device)
    teacher = NemotronHForCausalLM.from_pretrained(teacher_dir, torch_dtype=torch.float32).to(dev).eval()
    student = NemotronHForCausalLM.from_pretrained(student_dir, torch_dtype=torch.float32).to(dev).train()
    decay = [p for n, p in student.named_parameters() if p.dim() >= 2 and "conv1d" not in n]
    other = [p for n, p in student.named_parameters() if not (p.dim() >= 2 and "conv1d" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    L, accum = a.seq_len, a.global_batch // a.micro_batch
    windows = (len(tokens) - 1) // L
    rng = np.random.default_rng(0)
    t_start, done = None, 0
    for step in range(a.steps):
        if step == 1:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_start = time.perf_counter()
        for _ in range(accum):
            starts = rng.integers(0, windows, a.micro_batch) * L
            rows = torch.tensor(np.stack([tokens[s:s + L + 1] for s in starts]), dtype=torch.long, device=dev)
            ids = rows[:, :L]
            with torch.no_grad():
                t_logits = teacher(input_ids=ids, use_cache=False).logits.float()
            s_logits = student(input_ids=ids, use_cache=False).logits.float()
            loss = F.kl_div(F.log_softmax(s_logits, -1).flatten(0, 1), F.log_softmax(t_logits, -1).flatten(0, 1),
                            log_target=True, reduction="batchmean")
            (loss / accum).backward()
            if step >= 1:
                done += ids.numel()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t_start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "build" / "bin" / "minipuzzle"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--meta", action="append", default=[])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny_model.py"), "--out", str(tmp / "teacher"),
                        "--vocab", "1024", "--hidden", str(a.hidden), "--pattern", "M-M*-M-M-", "--seed", "0"],
                       check=True, capture_output=True)
        subprocess.run([a.bin, "prune", tmp / "teacher", "--set", "drop_layers=2,6", "--out", tmp / "student"],
                       check=True, capture_output=True)
        tokens = np.random.default_rng(1).integers(0, 1024, 200_000)
        write_dataset(tmp / "data", tokens)
        run = tmp / "run"
        subprocess.run([a.bin, "distill", "--teacher", tmp / "teacher", "--student", tmp / "student", "--data",
                        tmp / "data", "--out", run, "--steps", str(a.steps), "--seq-len", str(a.seq_len),
                        "--micro-batch", str(a.micro_batch), "--global-batch", str(a.global_batch), "--lr", "1e-3",
                        "--eval-tokens", str(a.seq_len), "--device", a.device], check=True, capture_output=True)
        steps = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' not in l]
        # Same accounting as the PyTorch loop: steps after the first.
        ours = (steps[-1]["tokens"] - steps[0]["tokens"]) / (steps[-1]["seconds"] - steps[0]["seconds"])
        theirs = pytorch_loop(tmp / "teacher", tmp / "student", tokens, a)
    out = {"benchmark": "distill_vs_pytorch", "device": a.device, "threads": torch.get_num_threads(),
           "model": {"hidden": a.hidden, "teacher_pattern": "M-M*-M-M-", "student_pattern": "M-*-MM-", "vocab": 1024},
           "run": {"steps_timed": a.steps - 1, "seq_len": a.seq_len, "micro_batch": a.micro_batch,
                   "global_batch": a.global_batch},
           "ours_tokens_per_second": ours, "pytorch_tokens_per_second": theirs, "ours_over_pytorch": ours / theirs}
    print_result(out, a.meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
