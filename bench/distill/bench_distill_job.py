#!/usr/bin/env python3
"""The whole-job rows of ../shared/TARGETS.md: a distillation step (teacher
forward + student forward/backward + AdamW) and a teacher forward, in tokens
per second, peak accelerator memory and MFU, `minipuzzle` against HF
transformers' NemotronHForCausalLM with a plain PyTorch KL loss and AdamW,
on the same models and random tokens, in the same run.

  python bench/distill/bench_distill_job.py [--scale targets|tiny] [--steps N]
      [--bin build/bin/minipuzzle] [--ssd-kernel both|on|off] [--meta key=value ...]

--scale targets (the default; needs a GPU): the TARGETS.md teacher (hidden
2048, pattern M-M-M-M*-M-M-, FFN 8192, 64 Mamba heads x 64, 16 attention
heads / 8 KV, vocab 131072, 0.93B parameters) and student (hidden 1536, FFN
6144, 48 Mamba heads, 0.63B), b=1, L=2048, bf16 compute on cuda. --scale
tiny: a small pair on the CPU in fp32 (what the CPU test runs). Random
weights: throughput does not depend on them.

Ours runs `minipuzzle distill` (fp32 master weights, bf16 compute) and
`minipuzzle eval` (teacher forward); on CUDA with --ssd-kernel both, the
distillation runs twice, with our SSD kernels off (the default) and on
(MINIPUZZLE_SSD_KERNEL=1); the switch acts on CUDA only, so the CPU scale
runs one row (and refuses --ssd-kernel on). The baseline: teacher in bf16,
student fp32 weights under bf16 autocast, F.kl_div on fp32 log-softmaxes,
torch.optim.AdamW with the settings ours recorded in its run.json
(constant learning rate, betas, eps, weight decay on matrices but not
conv1d, as our trainer), the same gradient clipping; it reads random
windows of the same random tokens (ours: its own order; throughput does not
depend on which). Steps after the first are timed. On CUDA: peak
accelerator memory, and MFU = tokens/s x (6 x student + 2 x teacher
non-embedding parameters) / the GPU's bf16 dense peak (989 TFLOP/s for an
H100 SXM or H200, as TARGETS.md counts it; PEAK_BF16 lists the GPUs known;
none for others). On the CPU neither is reported: only tokens/s.

Prints one JSON object. On SIGTERM (a time-boxed run under `timeout`) it
still prints it, with what was measured so far and "cut" naming what is
missing, and exits 124; the parts run most useful first (ours, then the
baseline, then the teacher forwards, then ours with the SSD kernels on).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import adamw_like_ours, parse_notes, print_result, write_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# bf16 dense tensor-core peaks (NVIDIA data sheets), matched in order on the GPU's name.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
             ("A100", 312e12)]

TEACHER = {"hidden": 2048, "pattern": "M-M-M-M*-M-M-", "ffn": 8192, "mamba-heads": 64, "mamba-head-dim": 64,
           "state": 128, "groups": 8, "attn-heads": 16, "kv-heads": 8, "head-dim": 128, "vocab": 131072,
           "chunk": 128}
SCALES = {
    "targets": {"teacher": TEACHER, "student": {**TEACHER, "hidden": 1536, "ffn": 6144, "mamba-heads": 48},
                "seq_len": 2048, "device": "cuda", "dtype": "bf16", "eval_windows": 24},
    "tiny": {"teacher": {"hidden": 64, "pattern": "M-M*-", "ffn": 128, "mamba-heads": 4, "mamba-head-dim": 16,
                         "state": 16, "groups": 2, "attn-heads": 4, "kv-heads": 2, "head-dim": 16, "vocab": 512,
                         "chunk": 32},
             "student": {"hidden": 48, "pattern": "M-M*-", "ffn": 96, "mamba-heads": 3, "mamba-head-dim": 16,
                         "state": 16, "groups": 1, "attn-heads": 4, "kv-heads": 2, "head-dim": 16, "vocab": 512,
                         "chunk": 32},
             "seq_len": 64, "device": "cpu", "dtype": "fp32", "eval_windows": 4},
}


def make_model(out: Path, cfg: dict, seed: int) -> None:
    args = [sys.executable, str(ROOT / "tools" / "make_tiny_model.py"), "--out", str(out), "--seed", str(seed)]
    for k, v in cfg.items():
        args += [f"--{k}", str(v)]
    subprocess.run(args, check=True, capture_output=True)


def non_embedding_parameters(model_dir: Path) -> int:
    """Parameters outside the embedding and the LM head, read from the files."""
    n = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                if "embed" in name or "lm_head" in name:
                    continue
                n += int(np.prod(st.get_slice(name).get_shape()))
    return n


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def peak_bf16(gpu: str | None) -> float | None:
    for name, flops in PEAK_BF16:
        if gpu and name in gpu:
            return flops
    return None


def ours_distill(a, s, tmp: Path, ssd_kernel: bool) -> tuple[dict, dict]:
    """(its row, its run.json)."""
    run = tmp / ("run-ssd-kernel" if ssd_kernel else "run")
    env = dict(os.environ, MINIPUZZLE_SSD_KERNEL="1" if ssd_kernel else "0")
    subprocess.run([a.bin, "distill", "--teacher", tmp / "teacher", "--student", tmp / "student", "--data",
                    tmp / "data", "--out", run, "--steps", str(a.steps), "--seq-len", str(s["seq_len"]),
                    "--micro-batch", "1", "--global-batch", "1", "--lr", "1e-4", "--schedule", "constant",
                    "--warmup", "0", "--eval-tokens", str(s["seq_len"]), "--dtype", s["dtype"],
                    "--device", s["device"]],
                   check=True, capture_output=True, env=env)
    steps = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' not in l]
    steps = [r for r in steps if "step" in r]
    row = {"tokens_per_second": (steps[-1]["tokens"] - steps[0]["tokens"]) /
                                (steps[-1]["seconds"] - steps[0]["seconds"])}
    if s["device"] == "cuda":
        peak = max((r["device_peak_bytes"] for r in steps if "device_peak_bytes" in r), default=None)
        row["peak_gib"] = peak / 2**30 if peak is not None else None
        row["ssd_kernel"] = ssd_kernel
    return row, json.loads((run / "run.json").read_text())


def ours_teacher_forward(a, s, tmp: Path) -> dict:
    out = subprocess.run([a.bin, "eval", tmp / "teacher", "--data", tmp / "data", "--seq-len", str(s["seq_len"]),
                          "--batch", "1", "--max-tokens", str(s["eval_windows"] * s["seq_len"]),
                          "--warmup-batches", "1", "--dtype", s["dtype"], "--device", s["device"], "--json"],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    return {"tokens_per_second": r["tokens_per_second"], "note": "one untimed warm-up window, then all timed"}


def hf_distill(a, s, tmp: Path, tokens: np.ndarray, run: dict) -> dict:
    from transformers import NemotronHForCausalLM

    dev = torch.device(s["device"])
    half = s["dtype"] == "bf16"
    teacher = NemotronHForCausalLM.from_pretrained(tmp / "teacher", dtype=torch.bfloat16 if half else torch.float32)
    teacher = teacher.to(dev).eval()
    student = NemotronHForCausalLM.from_pretrained(tmp / "student", dtype=torch.float32).to(dev).train()
    opt = adamw_like_ours(student, run)
    L = s["seq_len"]
    windows = (len(tokens) - 1) // L
    rng = np.random.default_rng(0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0, done = None, 0
    for step in range(a.steps):
        if step == 1:
            sync(dev)
            t0 = time.perf_counter()
        start = int(rng.integers(0, windows)) * L
        ids = torch.tensor(tokens[start:start + L], dtype=torch.long, device=dev)[None]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=half):
            with torch.no_grad():
                t_logits = teacher(input_ids=ids, use_cache=False).logits
            s_logits = student(input_ids=ids, use_cache=False).logits
        loss = F.kl_div(F.log_softmax(s_logits.float(), -1).flatten(0, 1),
                        F.log_softmax(t_logits.float(), -1).flatten(0, 1), log_target=True, reduction="batchmean")
        loss.backward()
        if run["clip_grad"] > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), run["clip_grad"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 1:
            done += ids.numel()
    sync(dev)
    row = {"tokens_per_second": done / (time.perf_counter() - t0)}
    if dev.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return row


def hf_teacher_forward(a, s, tmp: Path, tokens: np.ndarray) -> dict:
    from transformers import NemotronHForCausalLM

    dev = torch.device(s["device"])
    dtype = torch.bfloat16 if s["dtype"] == "bf16" else torch.float32
    teacher = NemotronHForCausalLM.from_pretrained(tmp / "teacher", dtype=dtype).to(dev).eval()
    L, n = s["seq_len"], s["eval_windows"]
    with torch.no_grad():
        teacher(input_ids=torch.tensor(tokens[:L], dtype=torch.long, device=dev)[None], use_cache=False)  # warm-up
        sync(dev)
        t0 = time.perf_counter()
        for w in range(n):
            ids = torch.tensor(tokens[w * L:(w + 1) * L], dtype=torch.long, device=dev)[None]
            teacher(input_ids=ids, use_cache=False).logits.float().argmax(-1).sum().item()
    sync(dev)
    return {"tokens_per_second": n * L / (time.perf_counter() - t0), "note": "one untimed warm-up window, then all timed"}


class Cut(BaseException):
    """SIGTERM. A BaseException, like KeyboardInterrupt: libraries that wrap
    an Exception (transformers' lazy imports do) must not swallow it."""


def _on_sigterm(signum, frame):
    raise Cut()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="targets")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--bin", default=str(ROOT / "build" / "bin" / "minipuzzle"))
    ap.add_argument("--ssd-kernel", choices=["both", "on", "off"], default="both")
    ap.add_argument("--meta", action="append", default=[])
    a = ap.parse_args()
    s = SCALES[a.scale]
    notes = parse_notes(a.meta, "bench_distill_job")
    if a.steps < 2:
        print("bench_distill_job: --steps must be at least 2 (the first is not timed)", file=sys.stderr)
        return 2
    if s["device"] == "cpu" and a.ssd_kernel == "on":
        print(f"bench_distill_job: --ssd-kernel on: the SSD kernels run on CUDA only, and --scale {a.scale} runs "
              "on the CPU", file=sys.stderr)
        return 2
    if s["device"] == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"benchmark": "distill_job", "skipped": "no CUDA device"}))
        return 0
    # A time-boxed caller (tools/gpu_check.sh runs this under `timeout`) gets
    # the parts measured so far: SIGTERM ends the run and the JSON still comes
    # out, with "cut" naming what is missing. The parts run most useful first.
    signal.signal(signal.SIGTERM, _on_sigterm)
    kernels = {"both": [False, True], "on": [True], "off": [False]}[a.ssd_kernel]
    if s["device"] == "cpu":
        kernels = [False]  # the switch does nothing there: a second row would time the same code
    ours, parts, cut = [], {}, None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            make_model(tmp / "teacher", s["teacher"], 0)
            make_model(tmp / "student", s["student"], 1)
            parts["n_student"] = non_embedding_parameters(tmp / "student")
            parts["n_teacher"] = non_embedding_parameters(tmp / "teacher")
            vocab = s["teacher"]["vocab"]
            tokens = np.random.default_rng(1).integers(0, vocab, s["seq_len"] * max(64, s["eval_windows"] + 1) + 1)
            write_dataset(tmp / "data", tokens)
            row, run = ours_distill(a, s, tmp, kernels[0])
            ours.append(row)
            parts["hf"] = hf_distill(a, s, tmp, tokens, run)
            parts["ours_fwd"] = ours_teacher_forward(a, s, tmp)
            parts["hf_fwd"] = hf_teacher_forward(a, s, tmp, tokens)
            for k in kernels[1:]:
                ours.append(ours_distill(a, s, tmp, k)[0])
        except Cut:
            cut = "stopped by SIGTERM; missing: " + ", ".join(
                name for name, have in (("models", "n_teacher" in parts), ("ours distill", bool(ours)),
                                        ("hf distill", "hf" in parts), ("ours teacher forward", "ours_fwd" in parts),
                                        ("hf teacher forward", "hf_fwd" in parts),
                                        ("ours distill, SSD kernels on", len(ours) == len(kernels))) if not have)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # from here on the JSON comes out whole
    n_student, n_teacher = parts.get("n_student", 0), parts.get("n_teacher", 0)
    flops_per_token = 6 * n_student + 2 * n_teacher
    hf, ours_fwd, hf_fwd = parts.get("hf"), parts.get("ours_fwd"), parts.get("hf_fwd")
    gpu = torch.cuda.get_device_name(0) if s["device"] == "cuda" else None
    peak = peak_bf16(gpu)
    if peak:
        for r in ours + ([hf] if hf else []):
            r["mfu"] = r["tokens_per_second"] * flops_per_token / peak
    best = max(ours, key=lambda r: r["tokens_per_second"]) if ours else None
    out = {"benchmark": "distill_job", "scale": a.scale, "device": s["device"], "dtype": s["dtype"],
           "models": {"teacher": s["teacher"], "student": s["student"], "teacher_non_embedding": n_teacher,
                      "student_non_embedding": n_student},
           "run": {"batch": 1, "seq_len": s["seq_len"], "steps_timed": a.steps - 1,
                   "teacher_forward_windows": s["eval_windows"]},
           **({"mfu_peak_flops": peak, "mfu_flops_per_token": flops_per_token} if peak else {}),
           "distill_step": {"ours": ours, "hf_pytorch": hf,
                            "speedup": best["tokens_per_second"] / hf["tokens_per_second"] if best and hf else None},
           "teacher_forward": {"ours": ours_fwd, "hf_pytorch": hf_fwd,
                               "speedup": ours_fwd["tokens_per_second"] / hf_fwd["tokens_per_second"]
                               if ours_fwd and hf_fwd else None}}
    if cut:
        out["cut"] = cut
    if gpu and not peak:
        out["mfu_note"] = f"not reported: no bf16 peak known for {gpu} (PEAK_BF16)"
    print_result(out, notes)
    return 124 if cut else 0


if __name__ == "__main__":
    sys.exit(main())
