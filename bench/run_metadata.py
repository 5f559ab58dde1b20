"""What every benchmark result says about its run, found by the bench itself
rather than typed in: the date (UTC), the commit, and the machine (CPU
model, the CPUs this process may use, the GPU if any). The C++ benches do
the same in run_metadata.h.

--meta KEY=VALUE stays for free notes; the keys filled here are refused."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILLED = ("date", "commit", "machine")


def _run(*cmd: str) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def commit() -> str:
    """Short hash, "-dirty" when tracked files differ from it. A copy with no
    .git (the GPU machine gets the working tree) names it in MINIPUZZLE_COMMIT."""
    head = _run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    if head is None:
        return os.environ.get("MINIPUZZLE_COMMIT") or "unknown"
    dirty = _run("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def gpu_name() -> str | None:
    torch = sys.modules.get("torch")  # asked only if the bench already uses torch
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    out = _run("nvidia-smi", "--query-gpu=name", "--format=csv,noheader")
    return out.splitlines()[0].strip() if out else None


def run_metadata() -> dict:
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "commit": commit(),
            "machine": {"cpu": cpu_model(), "cpus": len(os.sched_getaffinity(0)), "gpu": gpu_name()}}


def parse_notes(meta: list[str], bench: str) -> dict:
    """--meta KEY=VALUE pairs; exits 2 with one line on a malformed pair or a
    key the bench fills itself."""
    notes = {}
    for kv in meta:
        key, eq, value = kv.partition("=")
        if not eq or not key:
            _usage(bench, f"--meta '{kv}': expected KEY=VALUE")
        if key in FILLED:
            _usage(bench, f"--meta {key}=...: the bench records {key} itself; --meta is for other notes")
        notes[key] = value
    return notes


def _usage(bench: str, message: str) -> None:
    print(f"{bench}: {message}", file=sys.stderr)
    sys.exit(2)
