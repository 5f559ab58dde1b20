#!/usr/bin/env python3
"""Peak host memory and time of each weight-loading `minipuzzle` command,
as a multiple of the checkpoint's bytes (TARGETS.md "Memory").

A random-weight bf16 checkpoint of the TARGETS.md teacher (0.93B; or
`--scale small` for a quick run) is made with transformers, plus a copy with
twice the layers at the same largest tensor (prune and export must stay flat
as the model grows). Each command runs as a child process; its peak RSS
comes from wait4 (the kernel's high-water mark) and its peak anonymous
memory (RssAnon: what the process allocated, not the mapped file pages) from
sampling /proc/PID/status every 2 ms. "Above the binary's own" subtracts the
same command's peak on a tiny model (LibTorch and the binary themselves).

Prints one JSON object; --out writes it too. Run it on an otherwise idle
machine: the figures are ratios, the seconds are this machine's."""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCALES = {
    # TARGETS.md teacher: hidden 2048, FFN 8192, 64 Mamba heads x 64, 16/8 attention heads, vocab 131072.
    "targets": dict(hidden=2048, pattern="M-M-M-M*-M-M-", ffn=8192, mamba_heads=64, mamba_head_dim=64, state=128,
                    groups=8, attn_heads=16, kv_heads=8, head_dim=128, vocab=131072),
    "small": dict(hidden=512, pattern="M-M*-M-", ffn=2048, mamba_heads=16, mamba_head_dim=64, state=64,
                  groups=4, attn_heads=8, kv_heads=4, head_dim=64, vocab=32768),
}


def anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anon_kib(proc.pid))
            time.sleep(0.002)

    th = threading.Thread(target=sample)
    th.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    th.join()
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()[-500:]}")
    return {"seconds": time.perf_counter() - t0, "peak_rss": usage.ru_maxrss * 1024, "peak_anon": peak[0] * 1024,
            "stdout": out.strip().splitlines()[-1] if out.strip() else ""}


def make_model(python: str, out: Path, arch: dict, pattern: str) -> int:
    args = [python, str(ROOT / "tools/make_tiny_model.py"), "--out", str(out), "--dtype", "bf16", "--chunk", "128"]
    for k, v in arch.items():
        args += [f"--{k.replace('_', '-')}", str(pattern if k == "pattern" else v)]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return sum(p.stat().st_size for p in out.glob("*.safetensors"))


def score_result(work: Path, key: str, tag: str) -> dict:
    """A score run's residency and weights held (importance.json), and for the
    streamed run whether its scores equal the resident run's byte for byte."""
    out = work / (f"s-{tag}-streamed" if key.endswith("_streamed") else f"s-{tag}")
    prov = json.loads((out / "importance.json").read_text()).get("measured", {})
    r = {"residency": prov.get("residency"), "weight_bytes_peak": prov.get("weight_bytes_peak")}
    if key.endswith("_streamed"):
        from safetensors.numpy import load_file
        want, got = load_file(work / f"s-{tag}" / "importance.safetensors"), load_file(out / "importance.safetensors")
        r["scores_identical_to_resident"] = sorted(want) == sorted(got) and all(
            want[n].tobytes() == got[n].tobytes() for n in want)
    return r


def run_metadata() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()}",
            "commit": commit}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", default=str(ROOT / "build/bin/minipuzzle"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--scale", choices=SCALES, default="targets")
    ap.add_argument("--work", help="keep the checkpoints here (default: a temporary directory)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--stream-cap", default="25%", help="--max-device-memory of the streamed eval")
    ap.add_argument("--only", help="comma-separated command names to run (default: all)")
    a = ap.parse_args()
    arch = SCALES[a.scale]
    work = Path(a.work or tempfile.mkdtemp(prefix="mp-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        models = {}
        for name, pattern in [("model", arch["pattern"]), ("double", arch["pattern"] * 2)]:
            d = work / name
            models[name] = (d, make_model(a.python, d, arch, pattern) if not d.exists() else
                            sum(p.stat().st_size for p in d.glob("*.safetensors")))
        tiny = work / "tiny"
        if not tiny.exists():
            make_model(a.python, tiny, dict(hidden=64, pattern="M-*", ffn=128, mamba_heads=4, mamba_head_dim=16,
                                             state=16, groups=2, attn_heads=2, kv_heads=1, head_dim=32, vocab=256),
                       "M-*")
        corpus = work / "corpus.txt"
        corpus.write_text((ROOT / "README.md").read_text() * 4)
        data = work / "data"
        subprocess.run([a.bin, "data", "build", str(corpus), "--out", str(data)], check=True,
                       stdout=subprocess.DEVNULL)

        def commands(d: Path, tag: str):
            ev = [a.bin, "eval", str(d), "--data", str(data), "--seq-len", "256", "--max-tokens", "512", "--json"]
            sc = [a.bin, "score", str(d), "--data", str(data), "--samples", "2", "--seq-len", "64", "--batch", "1",
                  "--dtype", "fp32"]
            all_commands = {
                "eval_bf16": ev + ["--dtype", "bf16"],
                "eval_fp32": ev + ["--dtype", "fp32"],
                "eval_bf16_streamed": ev + ["--dtype", "bf16", "--max-device-memory", a.stream_cap],
                "export_bf16": [a.bin, "export", str(d), "--out", str(work / f"x-bf16-{tag}"), "--dtype", "bf16"],
                "export_fp8": [a.bin, "export", str(d), "--out", str(work / f"x-fp8-{tag}"), "--dtype", "fp8"],
                "prune": [a.bin, "prune", str(d), "--set", "drop_layers=1", "--out", str(work / f"p-{tag}")],
                # fp32: bf16 products are slow on this CPU (eval_bf16 180 s vs 36 s at fp32).
                "score_fp32": sc + ["--out", str(work / f"s-{tag}")],
                "score_fp32_streamed": sc + ["--out", str(work / f"s-{tag}-streamed"), "--max-device-memory",
                                             a.stream_cap],
            }
            only = set(a.only.split(",")) if a.only else set(all_commands)
            return {k: v for k, v in all_commands.items()
                    if k in only or (k in ("eval_bf16", "score_fp32") and tag == "tiny")}

        def clean():
            for p in work.glob("[xps]-*"):
                shutil.rmtree(p)

        clean()
        # The binary's own memory: the same command on a tiny model (the
        # streamed eval's is the resident one's: a tiny model cannot stream).
        own = {k: measure(c) for k, c in commands(tiny, "tiny").items() if not k.endswith("_streamed")}
        own["eval_bf16_streamed"] = own.get("eval_bf16")
        own["score_fp32_streamed"] = own.get("score_fp32")
        rows = {}
        clean()
        for name, (d, nbytes) in models.items():
            for k, c in commands(d, name).items():
                if (name == "double" and not k.startswith(("export", "prune"))) or (a.only and k not in a.only.split(",")):
                    continue
                m = measure(c)
                rows[f"{k}@{name}"] = {
                    "checkpoint_bytes": nbytes,
                    "seconds": round(m["seconds"], 2),
                    "peak_rss_x": round(m["peak_rss"] / nbytes, 3),
                    "peak_anon_above_own_x": round((m["peak_anon"] - own[k]["peak_anon"]) / nbytes, 3),
                    "peak_rss_bytes": m["peak_rss"], "peak_anon_bytes": m["peak_anon"],
                    "own_anon_bytes": own[k]["peak_anon"],
                    **({"result": m["stdout"]} if k.startswith("eval") else {}),
                    **(score_result(work, k, name) if k.startswith("score") else {}),
                }
            clean()
        result = {"bench": "command_memory", "scale": a.scale, "stream_cap": a.stream_cap, **run_metadata(),
                  "commands": rows}
        text = json.dumps(result, indent=2)
        print(text)
        if a.out:
            Path(a.out).write_text(text + "\n")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
