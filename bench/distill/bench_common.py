"""What the distillation benchmarks share: a one-document Megatron MMIDIDX
v1 dataset (what `minipuzzle data build` writes) for their random tokens,
and printing a result with the --meta key=value pairs."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


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


def print_result(out: dict, meta: list[str]) -> None:
    """`out` plus each key=value of --meta, as one JSON object on stdout."""
    for kv in meta:
        k, _, v = kv.partition("=")
        out[k] = v
    print(json.dumps(out, indent=2))
