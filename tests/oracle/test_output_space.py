"""Output that does not fit: a full disk, simulated by a file-size limit
(RLIMIT_FSIZE, no root or small filesystem needed; the binary treats EFBIG
as it treats ENOSPC). Each command must fail with one line and exit 1
(a runtime I/O failure), leave nothing at its output path and no partial
directory beside it."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

import nemotron_tiny as nt

ROOT = Path(__file__).resolve().parents[2]
ARCH = ["--hidden", "128", "--pattern", "M-*", "--ffn", "256", "--mamba-heads", "4", "--mamba-head-dim", "32",
        "--state", "16", "--groups", "2", "--attn-heads", "2", "--kv-heads", "1", "--head-dim", "64", "--vocab", "4096"]
LIMIT = 256 * 1024  # bytes: below one shard of this ~4.9 MB model, above any small file


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("output_space")
    subprocess.run([sys.executable, str(ROOT / "tools/make_tiny_model.py"), "--out", str(root / "m"), *ARCH],
                   check=True, capture_output=True)
    (root / "corpus.txt").write_text((ROOT / "README.md").read_text())
    nt.run_cli("data", "build", root / "corpus.txt", "--out", root / "data")
    return root


def run_limited(args, limit=LIMIT):
    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([nt.minipuzzle_bin(), *[str(a) for a in args]], capture_output=True, text=True,
                          preexec_fn=cap, timeout=300)


def check_failed_cleanly(proc, out: Path):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # not a signal, not a crash
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0], proc.stderr
    assert not out.exists(), f"{out} left behind"
    assert not list(out.parent.glob(f".{out.name}*")), "a partial directory was left behind"


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_export_that_does_not_fit(model, dtype):
    out = model / f"x-{dtype}"
    check_failed_cleanly(run_limited(["export", model / "m", "--out", out, "--dtype", dtype]), out)


def test_sharded_export_that_does_not_fit_leaves_no_shard(model):
    # Small shards: the first ones fit, a later one does not.
    out = model / "x-sharded"
    proc = run_limited(["export", model / "m", "--out", out, "--dtype", "fp32", "--max-shard-size", "200KB"],
                       limit=2 * 1024 * 1024)
    check_failed_cleanly(proc, out)


def test_prune_that_does_not_fit(model):
    out = model / "p"
    check_failed_cleanly(run_limited(["prune", model / "m", "--set", "drop_layers=1", "--out", out]), out)


def test_the_same_commands_pass_without_the_limit(model):
    # The limit is what fails them, not the arguments.
    nt.run_cli("export", model / "m", "--out", model / "x-ok", "--dtype", "bf16")
    nt.run_cli("prune", model / "m", "--set", "drop_layers=1", "--out", model / "p-ok")
    assert (model / "x-ok" / "config.json").exists() and (model / "p-ok" / "config.json").exists()
