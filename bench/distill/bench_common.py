"""What the distillation benchmarks share: a one-document Megatron MMIDIDX
v1 dataset (what `minipuzzle data build` writes) for their random tokens;
for a PyTorch baseline, the windows and the optimizer settings of the
`minipuzzle distill` run it is compared with; and printing a result with
the run's metadata."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run_metadata import parse_notes, run_metadata  # noqa: E402,F401


def write_dataset(prefix: Path, tokens: np.ndarray) -> None:
    """PREFIX.bin / PREFIX.idx holding `tokens` as one sequence: uint16 when
    every id fits (dtype code 8), int32 otherwise (code 4)."""
    small = int(tokens.max()) < 2**16
    dtype, code = ("<u2", 8) if small else ("<i4", 4)
    Path(str(prefix) + ".bin").write_bytes(tokens.astype(dtype).tobytes())
    idx = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code) + struct.pack("<QQ", 1, 2)
    idx += np.array([len(tokens)], "<i4").tobytes() + np.array([0], "<i8").tobytes()
    idx += np.array([0, 1], "<i8").tobytes()
    Path(str(prefix) + ".idx").write_bytes(idx)


def trainer_windows(binary: str, teacher: Path, data: Path, seq_len: int, seed: int, count: int,
                    out: Path) -> list[int]:
    """The first `count` window starts that `minipuzzle distill --data DATA
    --seq-len L --seed S` trains on, in its order: a teacher cache records
    exactly that order (top-1, the smallest cache), so the baseline reads
    the windows ours does without a second implementation of the order."""
    from safetensors import safe_open

    subprocess.run([binary, "teacher-logits", teacher, "--data", data, "--top-k", "1", "--out", out,
                    "--seq-len", str(seq_len), "--seed", str(seed), "--windows", str(count)],
                   check=True, capture_output=True)
    starts: list[int] = []
    for shard in sorted(out.glob("shard-*.safetensors")):
        with safe_open(str(shard), "np") as f:
            starts += [int(s) for s in f.get_tensor("window_starts")]
    assert len(starts) == count, (len(starts), count)
    return starts


def decays(name: str, p) -> bool:
    """Our AdamW's rule (distill/adamw.cpp): matrices decay, except conv1d;
    norms, biases, A_log, D and dt_bias do not."""
    return p.dim() >= 2 and "conv1d" not in name


def adamw_like_ours(model, run: dict):
    """torch AdamW with the settings `minipuzzle distill` recorded in its
    run.json. Only a constant schedule without warmup has the same learning
    rate at every step as a plain optimizer."""
    import torch

    if run["schedule"] != "constant" or run["warmup"] != 0:
        raise ValueError(f"run with schedule {run['schedule']}, warmup {run['warmup']}: run ours with "
                         "--schedule constant --warmup 0 to compare with a plain optimizer")
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if decays(n, p)], "weight_decay": run["weight_decay"]},
              {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=run["lr"], betas=(run["beta1"], run["beta2"]), eps=run["eps"])


def print_result(out: dict, notes: dict) -> None:
    """`out`, the run's metadata (date, commit, machine) and the --meta
    notes, as one JSON object on stdout."""
    print(json.dumps({**out, **run_metadata(), **notes}, indent=2))
