#!/usr/bin/env python3
"""Distillation throughput: `minipuzzle distill` against the hand-written
PyTorch loop a user would otherwise write (HF NemotronHForCausalLM teacher and
student, full-vocabulary forward KL via F.kl_div, torch.optim.AdamW, gradient
clipping), on the same model, windows, batch and step count, in the same run.

  python bench/distill/bench_distill_vs_pytorch.py --bin build/bin/minipuzzle [--steps 6] [--hidden 256]
      [--seq-len 256] [--micro-batch 4] [--global-batch 8] [--device cpu|cuda] [--meta key=value ...]

Both read the same windows in the same order: the baseline takes the window
starts ours trains on from `minipuzzle teacher-logits` with the same data,
sequence length and seed (a teacher cache records that order). Both use the
same AdamW settings (the baseline's are read from ours' run.json: constant
learning rate, betas, eps, weight decay on matrices but not conv1d) and the
same clipping.

Prints one JSON object: tokens/s of both (steps after the first, which
warms up), ours / pytorch, and the run's date, commit and machine.
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
from bench_common import adamw_like_ours, parse_notes, print_result, trainer_windows, write_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def pytorch_loop(teacher_dir, student_dir, tokens, starts, run, a) -> tuple[float, float]:
    """(tokens/s after the first step, the first step's loss)."""
    dev = torch.device(a.device)
    teacher = NemotronHForCausalLM.from_pretrained(teacher_dir, torch_dtype=torch.float32).to(dev).eval()
    student = NemotronHForCausalLM.from_pretrained(student_dir, torch_dtype=torch.float32).to(dev).train()
    opt = adamw_like_ours(student, run)
    L, accum = a.seq_len, a.global_batch // a.micro_batch
    t_start, done, first_loss = None, 0, 0.0
    for step in range(a.steps):
        if step == 1:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_start = time.perf_counter()
        for m in range(accum):
            first = step * a.global_batch + m * a.micro_batch  # ours' micro-batch m of this step
            rows = np.stack([tokens[s:s + L + 1] for s in starts[first:first + a.micro_batch]])
            ids = torch.tensor(rows, dtype=torch.long, device=dev)[:, :L]
            with torch.no_grad():
                t_logits = teacher(input_ids=ids, use_cache=False).logits.float()
            s_logits = student(input_ids=ids, use_cache=False).logits.float()
            loss = F.kl_div(F.log_softmax(s_logits, -1).flatten(0, 1), F.log_softmax(t_logits, -1).flatten(0, 1),
                            log_target=True, reduction="batchmean")
            (loss / accum).backward()
            if step >= 1:
                done += ids.numel()
            else:
                first_loss += loss.item() / accum
        if run["clip_grad"] > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), run["clip_grad"])
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t_start), first_loss


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
    ap.add_argument("--seed", type=int, default=1234, help="data order of both")
    a = ap.parse_args()
    notes = parse_notes(a.meta, "bench_distill_vs_pytorch")
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
                        "--schedule", "constant", "--warmup", "0", "--seed", str(a.seed),
                        "--eval-tokens", str(a.seq_len), "--device", a.device], check=True, capture_output=True)
        steps = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' not in l]
        # Same accounting as the PyTorch loop: steps after the first.
        ours = (steps[-1]["tokens"] - steps[0]["tokens"]) / (steps[-1]["seconds"] - steps[0]["seconds"])
        starts = trainer_windows(a.bin, tmp / "teacher", tmp / "data", a.seq_len, a.seed,
                                 a.steps * a.global_batch, tmp / "order")
        run_json = json.loads((run / "run.json").read_text())
        theirs, theirs_first_loss = pytorch_loop(tmp / "teacher", tmp / "student", tokens, starts, run_json, a)
    out = {"benchmark": "distill_vs_pytorch", "device": a.device, "threads": torch.get_num_threads(),
           "model": {"hidden": a.hidden, "teacher_pattern": "M-M*-M-M-", "student_pattern": "M-*-MM-", "vocab": 1024},
           "run": {"steps_timed": a.steps - 1, "seq_len": a.seq_len, "micro_batch": a.micro_batch,
                   "global_batch": a.global_batch, "seed": a.seed,
                   "windows": "the same for both: ours' order, read from `minipuzzle teacher-logits`",
                   "optimizer": {k: run_json[k] for k in ("lr", "schedule", "weight_decay", "beta1", "beta2",
                                                          "eps", "clip_grad")}},
           # Equal up to float summation order when both saw the same windows.
           "first_step_loss": {"ours": steps[0]["loss"], "pytorch": theirs_first_loss},
           "ours_tokens_per_second": ours, "pytorch_tokens_per_second": theirs, "ours_over_pytorch": ours / theirs}
    print_result(out, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
