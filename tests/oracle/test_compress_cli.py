"""`minipuzzle compress JOB.yaml` end to end on a tiny HF-made teacher: the
whole chain runs, the export loads in transformers with our logits, a job
killed (SIGKILL) at random points and rerun ends with the same bytes as an
uninterrupted run, --dry-run writes nothing, and bad jobs exit 2 with the key
path."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import nemotron_tiny as nt
from test_score_search import write_dataset

SPEC = nt.SPECS_BY_NAME["g2_state32"]
REPO = Path(__file__).resolve().parents[2]

JOB = """\
# A tiny job: every stage runs in seconds on two cores.
teacher: teacher
out: {out}
data:
  train: train
  validation: val
score: {{samples: 8, seq_len: 32, batch: 4}}
search:
  budget: {budget}
  precision: bf16
  context: 32
  space: full
  max_width_reduction: 0.5
  max_depth_reduction: 0.5
  top_k: 4
rank: {{tokens: 256, seq_len: 32, batch: 4}}
distill: {{seq_len: 32, micro_batch: 2, global_batch: 4, eval_tokens: 128}}
short_distill: {{candidates: 2, tokens: 768, lr: 3e-3, min_lr: 3e-4, warmup_steps: 1, save_every: 2}}
long_distill: {{tokens: 1536, lr: 3e-3, min_lr: 3e-4, warmup_steps: 1, eval_every: 6, save_every: 3}}
evaluate: {{tokens: 256, seq_len: 32, batch: 4}}
"""


def teacher_memory(teacher: Path) -> float:
    r = nt.run_cli("inspect", teacher, "--json", "--precision", "bf16", "--context", 32)
    return float(json.loads(r.stdout)["memory"]["total_bytes"])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    nt.save_checkpoint(nt.build_model(SPEC), SPEC, root / "teacher", "hub")
    rng = np.random.default_rng(11)
    write_dataset(root / "train", [rng.integers(0, SPEC.vocab, 700) for _ in range(6)])
    write_dataset(root / "val", [rng.integers(0, SPEC.vocab, 600) for _ in range(2)])
    budget = f"{int(teacher_memory(root / 'teacher') * 0.75)}"
    return {"root": root, "budget": budget}


def write_job(work, name: str, out: str, budget=None) -> Path:
    job = work["root"] / f"{name}.yaml"
    job.write_text(JOB.format(out=out, budget=budget or work["budget"]))
    return job


def compress(job, *extra, check=True):
    return nt.run_cli("compress", job, *extra, check=check, timeout=600)


@pytest.fixture(scope="module")
def full_run(work):
    job = write_job(work, "full", "runs/full")
    t0 = time.time()
    r = compress(job)
    return {"job": job, "out": work["root"] / "runs" / "full", "stdout": r.stdout, "seconds": time.time() - t0}


def test_the_chain_writes_every_stage_and_a_before_after_table(full_run):
    out = full_run["out"]
    for f in ("job.json", "scores/importance.json", "search/candidates.json", "short/rank-1/student/config.json",
              "short/rank-2/distill/final/config.json", "pick.json", "long/final/config.json",
              "export/config.json", "compare.json", "report.md", "candidates.png", "short_distill.png",
              "long_distill.png"):
        assert (out / f).exists(), f
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cmp = json.loads((out / "compare.json").read_text())
    names = [m["name"] for m in cmp["models"]]
    assert names[0] == "teacher" and names[-1].startswith("final (export")
    teacher, pruned, final = cmp["models"][0], cmp["models"][1], cmp["models"][-1]
    assert teacher["agreement"] == 1.0 and teacher["kl"] == pytest.approx(0, abs=1e-9)
    assert final["params"] < teacher["params"]
    assert final["memory_bytes"] <= float(json.loads((out / "job.json").read_text())["search.budget"])
    # Distillation moved the student towards the teacher.
    assert final["kl"] < pruned["kl"]
    assert "before / after" in full_run["stdout"] and "final (export, bf16)" in full_run["stdout"]
    report = (out / "report.md").read_text()
    for section in ("## Before / after", "## Stages", "## Candidates", "## Short distillation", "## Long distillation"):
        assert section in report
    pick = json.loads((out / "pick.json").read_text())
    losses = {c["rank"]: c["loss"] for c in pick["candidates"]}
    assert len(losses) == 2 and losses[pick["winner_rank"]] == min(losses.values())


def tensor_bytes(folder: Path) -> int:
    """The bytes of every tensor in a folder's safetensors files (headers aside)."""
    total = 0
    for f in folder.glob("*.safetensors"):
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        total += sum(t["data_offsets"][1] - t["data_offsets"][0] for k, t in header.items() if k != "__metadata__")
    return total


def assert_reported_memory_is_the_export(out: Path, precision: str) -> float:
    """The final row's memory (at the export's format, the job's KV and state
    precisions) against the export's weight bytes plus the KV cache and Mamba
    state terms; returns the ratio."""
    final = json.loads((out / "compare.json").read_text())["models"][-1]
    job = json.loads((out / "job.json").read_text())
    assert job["export.dtype"] == precision and final["weights"] == precision
    r = nt.run_cli("inspect", out / "export", "--json", "--precision", precision, "--kv-precision",
                   job["search.kv_precision"], "--state-precision", job["search.state_precision"],
                   "--context", job["search.context"], "--batch", job["search.batch"])
    m = json.loads(r.stdout)["memory"]
    state = m["kv_cache_bytes"] + m["mamba_ssm_bytes"] + m["mamba_conv_bytes"]
    written = tensor_bytes(out / "export")
    ratio = final["memory_bytes"] / (written + state)
    assert abs(ratio - 1) <= 0.01, (precision, final["memory_bytes"], written, state)
    assert abs(m["weights_bytes"] / written - 1) <= 0.01, (precision, m["weights_bytes"], written)
    return ratio


def test_the_reported_memory_of_a_bf16_export_is_its_weight_files(full_run):
    assert_reported_memory_is_the_export(full_run["out"], "bf16")


def test_a_quantized_export_is_compared_beside_the_model_it_came_from(work):
    job = write_job(work, "nvfp4", "runs/nvfp4")
    # Planned at bf16, shipped at nvfp4: the export's row is at the format it
    # was written in, the rows before it at the search's precision.
    r = compress(job, "--set", "export.dtype=nvfp4")
    out = work["root"] / "runs" / "nvfp4"
    ratio = assert_reported_memory_is_the_export(out, "nvfp4")
    print(f"nvfp4: reported memory / (weight files + KV + state) = {ratio:.6f}")
    assert json.loads((out / "job.json").read_text())["search.precision"] == "bf16"
    assert json.loads((out / "compare.json").read_text())["models"][-2]["weights"] == "bf16"
    assert "(nvfp4)" in (out / "report.md").read_text()
    cfg = json.loads((out / "export" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "compressed-tensors"
    models = json.loads((out / "compare.json").read_text())["models"]
    assert [m["name"] for m in models[-2:]] == ["after long distill", "final (export, nvfp4)"]
    unquantized, quantized = models[-2], models[-1]
    # The rows are two different models: the format's cost is what separates them.
    assert quantized["loss"] != unquantized["loss"] and quantized["kl"] != unquantized["kl"]
    assert "after long distill" in r.stdout and "final (export, nvfp4)" in r.stdout


def test_a_job_under_max_device_memory_streams_and_compares_as_the_resident_job(work, full_run):
    """compute.max_device_memory below the teacher's weights plus one batch's
    working memory: score and compare stream (compare's plan is its first
    line), and every number of the before/after table is the resident job's."""
    job = write_job(work, "streamed", "runs/streamed")
    # 2.5 MB: the tiny teacher's 0.6 MB of fp32 weights plus its logit
    # buffers do not fit (so both stream), two blocks and one batch do.
    r = compress(job, "--set", "compute.max_device_memory=2500000")
    assert "compare: weights streamed" in r.stdout, r.stdout
    want = json.loads((full_run["out"] / "compare.json").read_text())["models"]
    got = json.loads((work["root"] / "runs" / "streamed" / "compare.json").read_text())["models"]
    assert [m["name"] for m in got] == [m["name"] for m in want]
    for a, b in zip(want, got):
        for k in ("loss", "accuracy", "agreement", "kl", "params", "memory_bytes", "pattern"):
            assert a[k] == b[k], (a["name"], k, a[k], b[k])


def test_a_cap_too_small_to_stream_is_refused_before_any_stage_runs(work):
    """compute.max_device_memory below what streaming needs (two blocks and
    one batch): refused at the start, dry run or not, naming the key; nothing
    is written."""
    job = write_job(work, "tiny-cap", "runs/tiny-cap")
    for extra in (["--dry-run"], []):
        expect_user_error(["compress", job, *extra, "--set", "compute.max_device_memory=100000"],
                          "compute.max_device_memory")
    assert not (work["root"] / "runs" / "tiny-cap").exists()


def test_the_export_loads_in_transformers_with_our_logits(full_run, tmp_path):
    export = full_run["out"] / "export"
    model = nt.load_hf(export)
    ids = nt.random_tokens(SPEC.vocab, 2, 24, seed=3)
    ours = nt.cli_logits(export, ids, tmp_path)
    torch.testing.assert_close(ours, nt.hf_logits(model, ids), rtol=0, atol=1e-4)


def test_a_finished_job_reruns_as_a_no_op_and_dry_run_shows_it_done(full_run):
    before = (full_run["out"] / "export" / "model.safetensors").stat().st_mtime_ns
    r = compress(full_run["job"])
    assert "== compress:" not in r.stdout and "before / after" in r.stdout
    assert (full_run["out"] / "export" / "model.safetensors").stat().st_mtime_ns == before
    d = compress(full_run["job"], "--dry-run")
    assert d.stdout.count(" done ") >= 10 and "to do" not in d.stdout


def test_sigkill_at_random_points_then_rerun_gives_the_same_model(work, full_run):
    """Kill -9 anywhere (inside any stage) and rerun until it finishes: the
    exported weights and the measured table equal the uninterrupted run's."""
    seed = int(os.environ.get("MINIPUZZLE_CRASH_SEED", "20261123"))
    kills = int(os.environ.get("MINIPUZZLE_COMPRESS_KILLS", "8"))
    rng = random.Random(seed)
    job = write_job(work, "killed", "runs/killed")
    out = work["root"] / "runs" / "killed"
    t0 = time.time()
    compress(work["root"] / "full.yaml", "--dry-run")  # start-up (LibTorch load) without the stages
    startup = time.time() - t0
    work_s = max(0.2, full_run["seconds"] - startup)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    # On a machine whose load changes under the test, the start-up measured
    # above can be far off and a run may finish before two kills land: then
    # the whole sequence starts over from nothing with shorter delays.
    for attempt in range(4):
        shutil.rmtree(out, ignore_errors=True)
        killed_at = []
        for _ in range(kills):
            proc = subprocess.Popen([nt.minipuzzle_bin(), "compress", str(job)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=env)
            # After start-up, about `kills` kills span the stages' work: each rerun
            # resumes, so the kill points walk through every stage (fast or slow machine).
            delay = 0.5**attempt * (0.9 * startup + rng.uniform(0.0, 2.0 * work_s / kills))
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stderr = proc.stderr.read().decode()
            proc.stderr.close()
            if proc.returncode == 0:
                break
            assert proc.returncode == -9, f"seed {seed}: failed (rc {proc.returncode}) after {killed_at}: {stderr}"
            log = out / "compress.log.jsonl"
            stage = json.loads(log.read_text().splitlines()[-1])["stage"] if log.exists() else "(before any stage)"
            killed_at.append((round(delay, 2), stage))
        if len(killed_at) >= 2:
            break
    compress(job)
    print(f"seed {seed}: killed at {killed_at} in {time.time() - t0:.0f} s")
    assert len(killed_at) >= 2, f"seed {seed}: too few kills landed ({killed_at})"
    a = (full_run["out"] / "export" / "model.safetensors").read_bytes()
    b = (out / "export" / "model.safetensors").read_bytes()
    assert a == b, f"seed {seed}: export differs after kills at {killed_at}"
    ma = json.loads((full_run["out"] / "compare.json").read_text())["models"]
    mb = json.loads((out / "compare.json").read_text())["models"]
    assert [(m["loss"], m["kl"], m["params"]) for m in ma] == [(m["loss"], m["kl"], m["params"]) for m in mb]


def test_dry_run_writes_nothing_and_prints_the_plan(work):
    job = write_job(work, "dry", "runs/dry")
    r = compress(job, "--dry-run")
    assert not (work["root"] / "runs" / "dry").exists()
    for text in ("candidates fit", "estimated compute", "minipuzzle score", "minipuzzle search", "minipuzzle prune",
                 "minipuzzle distill", "minipuzzle export", "short distill rank-2", "long distill"):
        assert text in r.stdout, text


def test_the_paper_shaped_job_dry_runs_on_the_published_config():
    r = nt.run_cli("compress", REPO / "examples" / "paper-56b" / "job.yaml", "--dry-run")
    assert "31.70 GiB" in r.stdout  # the budget
    assert "candidates fit" in r.stdout and "long distill" in r.stdout
    assert "63B" in r.stdout and "7B x 3 runs" in r.stdout
    assert "312 of 19305 candidates fit" in r.stdout  # the paper kept about 400


def test_the_paper_search_space_holds_the_published_47b(tmp_path):
    # The oracle: NVIDIA's Nemotron-H-47B (tests/search/configs, the published config) is one of
    # the architectures the paper-shaped job's search keeps under its 31.7 GiB budget.
    out = tmp_path / "candidates.json"
    configs = REPO / "tests" / "search" / "configs"
    nt.run_cli("search", configs / "nemotron-h-56b.config.json", "--uniform-scores", "--budget", "31.7GiB",
               "--precision", "fp4", "--kv-precision", "fp8", "--state-precision", "bf16", "--context", "1000000",
               "--space", "paper", "--max-depth-reduction", "0.2", "--min-budget-use", "0.99", "--top-k", "400",
               "--out", out)
    published = json.loads((configs / "nemotron-h-47b.config.json").read_text())
    def shape(c):
        p = c["hybrid_override_pattern"]
        return (p.count("M"), p.count("*"), p.count("-"), c["intermediate_size"], c["hidden_size"],
                c["mamba_num_heads"], c["mamba_head_dim"], c["num_attention_heads"])
    cands = json.loads(out.read_text())["candidates"]
    assert len(cands) == 312
    hits = [c for c in cands if shape(c["config"]) == shape(published)]
    assert len(hits) == 1, shape(published)
    assert 31.6 < hits[0]["memory"]["total_gib"] <= 31.7


def expect_user_error(args, *must_contain):
    r = nt.run_cli(*args, check=False)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for m in must_contain:
        assert m in r.stderr, (m, r.stderr)
    return r


def test_bad_jobs_exit_2_with_the_key_path(work):
    root = work["root"]
    bad = root / "bad.yaml"
    bad.write_text(JOB.format(out="runs/bad", budget=work["budget"]) + "search_space: full\n")
    expect_user_error(["compress", bad], "search_space: unknown key")
    bad.write_text(JOB.format(out="runs/bad", budget=work["budget"]).replace("top_k: 4", "top_k: four"))
    expect_user_error(["compress", bad], "search.top_k: expected an integer")
    expect_user_error(["compress", root / "missing.yaml"], "not found")
    job = write_job(work, "tiny_budget", "runs/tiny", budget="1KiB")
    expect_user_error(["compress", job], "smallest memory reachable")
    assert not (root / "runs" / "tiny").exists()
    expect_user_error(["compress", job, "--set", "score.samples=-1"], "--set: score.samples")
    expect_user_error(["compress", job, "--set", "data.train=nowhere"], "nowhere")
    expect_user_error(["compress", job, "--set", "foo.bar=1"], "foo.bar: unknown key (known: ", "compute")
    expect_user_error(["compress", job, "--set", "search=5"], "search: a section")
    expect_user_error(["compress", job, "--set", "search.budget=0"], "search.budget")
    # Settings only the score stage reads, and the data it needs, are checked before job.json exists.
    for setting, key in (("score.aggregation=seq=foo", "score.aggregation"),
                         ("score.layer_metrics=foo", "score.layer_metrics"),
                         ("score.samples=100000", "score.samples")):
        checked = write_job(work, "score_check", "runs/score_check")
        expect_user_error(["compress", checked, "--set", setting], key)
        assert not (root / "runs" / "score_check").exists(), setting
        if key != "score.samples":  # a dry run may plan before the data exists
            expect_user_error(["compress", checked, "--set", setting, "--dry-run"], key)
    # A device this machine lacks is found before job.json records it: the corrected rerun is not refused.
    if not torch.cuda.is_available():
        dev = write_job(work, "no_gpu", "runs/no_gpu")
        expect_user_error(["compress", dev, "--set", "compute.device=cuda"], "compute.device")
        assert not (root / "runs" / "no_gpu").exists()


def test_dry_run_shows_what_a_changed_setting_would_rerun(full_run):
    before = {f: (full_run["out"] / f).stat().st_mtime_ns for f in ("long/final/model.safetensors", "job.json")}
    r = compress(full_run["job"], "--set", "long_distill.tokens=3072", "--dry-run")
    assert "long_distill.tokens (was 1536, now 3072)" in r.stdout
    assert "kept (finished, settings unchanged): score, search, prune rank-1, short distill rank-1, prune rank-2, " \
           "short distill rank-2, pick" in r.stdout
    assert "would run: long distill, export, compare, report" in r.stdout
    assert r.stdout.count(" rerun ") == 4 and r.stdout.count(" done ") == 7
    assert {f: (full_run["out"] / f).stat().st_mtime_ns for f in before} == before  # the dry run touched nothing
    # Settings that change no result may differ: nothing reruns.
    r = compress(full_run["job"], "--set", "estimate.tflops=5")
    assert "== compress:" not in r.stdout and "started with other settings" not in r.stdout


def test_every_stage_setting_is_checked_before_anything_runs(work):
    """The reported failure: long_distill.tokens too few for its warmup was found
    at the long distillation, after every earlier stage had run."""
    job = write_job(work, "late_bad", "runs/late_bad")
    bad = ("--set", "long_distill.tokens=256", "--set", "long_distill.warmup_steps=4")
    for extra in ((), ("--dry-run",)):
        r = expect_user_error(["compress", job, *bad, *extra], "long_distill: --warmup 4 must be in [0, --steps 2]",
                              "long_distill.tokens 256 / (distill.global_batch 4 x distill.seq_len 32) = 2 steps")
        assert not (work["root"] / "runs" / "late_bad").exists(), extra
    expect_user_error(["compress", job, "--set", "short_distill.warmup_steps=7"],
                      "short_distill: --warmup 7 must be in [0, --steps 6]")
    # Data against the stages' window lengths (the dry run too, when the data exists).
    expect_user_error(["compress", job, "--set", "distill.global_batch=256"], "fewer than one distill.global_batch of 256")
    expect_user_error(["compress", job, "--set", "evaluate.seq_len=5000", "--dry-run"], "evaluate.seq_len 5000")
    assert not (work["root"] / "runs" / "late_bad").exists()


def _metrics_steps(run: Path) -> set[int]:
    steps = set()
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            try:
                steps.add(json.loads(line)["step"])
            except (ValueError, KeyError):
                pass
    return steps


def _stage_starts(out: Path, after: int = 0) -> list[str]:
    lines = (out / "compress.log.jsonl").read_text().splitlines()[after:]
    return [json.loads(l)["stage"] for l in lines if json.loads(l)["status"] == "start"]


def test_a_stopped_late_stage_with_a_changed_setting_reruns_only_from_it(work, full_run):
    """The issue's target: a job stops in a late stage (the long distillation,
    here by a signal: a bad setting is now refused before any stage runs), the
    job file is corrected, the rerun redoes only that stage and those after it,
    and ends with the bytes of an uninterrupted run of the corrected job."""
    job = write_job(work, "fixed", "runs/fixed")
    out = work["root"] / "runs" / "fixed"
    env = dict(os.environ, OMP_NUM_THREADS="2", MINIPUZZLE_TEST_HOLD_AFTER_STEP="9")  # the short runs have 6 steps
    proc = subprocess.Popen([nt.minipuzzle_bin(), "compress", str(job), "--set", "long_distill.lr=1e-3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 600
    while 9 not in _metrics_steps(out / "long") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert (out / "long" / "checkpoints").exists() and not (out / "long" / "final").exists()
    kept = ("scores/importance.json", "search/candidates.json", "short/rank-1/distill/final/model.safetensors",
            "short/rank-2/distill/final/model.safetensors", "pick.json")
    mtimes = {f: (out / f).stat().st_mtime_ns for f in kept}
    log_lines = len((out / "compress.log.jsonl").read_text().splitlines())

    r = compress(job)  # the corrected job file: long_distill.lr back to 3e-3
    assert "long_distill.lr (was 0.001, now 0.003)" in r.stdout
    assert "will run: long distill, export, compare, report" in r.stdout
    assert "removing outputs made with the old settings: long" in r.stdout
    assert _stage_starts(out, log_lines) == ["long distill", "export", "compare", "report"]
    assert {f: (out / f).stat().st_mtime_ns for f in kept} == mtimes
    assert json.loads((out / "job.json").read_text())["stages"]["long distill"]["long_distill.lr"] == 0.003
    # The half-run distillation with the old learning rate was not resumed.
    assert json.loads((out / "long" / "run.json").read_text())["lr"] == pytest.approx(3e-3)
    assert (out / "export" / "model.safetensors").read_bytes() == \
        (full_run["out"] / "export" / "model.safetensors").read_bytes()
    ma = json.loads((full_run["out"] / "compare.json").read_text())["models"]
    mb = json.loads((out / "compare.json").read_text())["models"]
    assert [(m["loss"], m["kl"], m["params"]) for m in ma] == [(m["loss"], m["kl"], m["params"]) for m in mb]

    # A finished stage's setting: that stage and every one after it run again, never its old output.
    log_lines = len((out / "compress.log.jsonl").read_text().splitlines())
    long_mtime = (out / "long" / "final" / "model.safetensors").stat().st_mtime_ns
    r = compress(job, "--set", "export.dtype=nvfp4")
    assert _stage_starts(out, log_lines) == ["export", "compare", "report"]
    assert (out / "long" / "final" / "model.safetensors").stat().st_mtime_ns == long_mtime
    cfg = json.loads((out / "export" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "compressed-tensors"
    assert "final (export, nvfp4)" in r.stdout
    compress(job)  # and back: the bf16 export again, equal to the uninterrupted run's
    assert "quantization_config" not in json.loads((out / "export" / "config.json").read_text())
    assert (out / "export" / "model.safetensors").read_bytes() == \
        (full_run["out"] / "export" / "model.safetensors").read_bytes()


# ----------------------------------------------------------------------------
# distill.processes: compress runs the distillations as local data-parallel
# ranks (Gloo on CPU)
# ----------------------------------------------------------------------------

def _st_load(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


def _rank_processes(out: Path) -> list[int]:
    """pids of live `minipuzzle distill` processes writing under `out`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            state = next(l for l in (proc / "status").read_text().splitlines() if l.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if b"distill" in cmd and any(str(out).encode() in c for c in cmd) and "Z" not in state:
            pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def dp_run(work):
    job = write_job(work, "dp2", "runs/dp2")
    r = compress(job, "--set", "distill.processes=2")
    return {"job": job, "out": work["root"] / "runs" / "dp2", "stdout": r.stdout}


def test_two_processes_reproduce_the_single_process_job(full_run, dp_run):
    out = dp_run["out"]
    run = json.loads((out / "long" / "run.json").read_text())
    assert run["world_size"] == 2
    assert json.loads((out / "pick.json").read_text())["winner_rank"] == \
        json.loads((full_run["out"] / "pick.json").read_text())["winner_rank"]
    # The same student up to float summation order (the all-reduce adds the
    # two ranks' halves of each global batch).
    one = _st_load(full_run["out"] / "long" / "final" / "model.safetensors")
    two = _st_load(out / "long" / "final" / "model.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    assert (out / "export" / "config.json").exists() and "before / after" in dp_run["stdout"]


def test_dry_run_shows_the_launch_of_each_distillation(work):
    d = compress(write_job(work, "dp_dry", "runs/dp_dry"), "--dry-run", "--set", "distill.processes=2")
    launches = [l for l in d.stdout.splitlines() if "torchrun --standalone --nproc-per-node 2 --no-python" in l]
    assert len(launches) == 3 and all(" distill " in l for l in launches)  # 2 short + long
    assert not (work["root"] / "runs" / "dp_dry").exists()


def test_dry_run_passes_shard_parameters_through(work):
    """distill.shard: parameters (ZeRO-3) reaches each distillation's command
    and the preflight's memory plan; the preflight does not refuse it."""
    d = compress(write_job(work, "dp_zero3", "runs/dp_zero3"), "--dry-run", "--set", "distill.processes=2",
                 "--set", "distill.shard=parameters")
    launches = [l for l in d.stdout.splitlines() if "torchrun --standalone --nproc-per-node 2 --no-python" in l]
    assert len(launches) == 3 and all("--shard parameters" in l for l in launches), d.stdout
    assert "not implemented" not in d.stdout
    assert not (work["root"] / "runs" / "dp_zero3").exists()


def test_processes_that_do_not_divide_the_global_batch_exit_2(work):
    job = write_job(work, "dp3", "runs/dp3")
    expect_user_error(["compress", job, "--set", "distill.processes=3"], "distill.processes 3")
    expect_user_error(["compress", job, "--set", "distill.processes=0"], "distill.processes")
    assert not (work["root"] / "runs" / "dp3").exists()


def test_sigkill_during_a_two_process_distillation_leaves_no_rank_behind(work, dp_run):
    job = write_job(work, "dp_killed", "runs/dp_killed")
    out = work["root"] / "runs" / "dp_killed"
    proc = subprocess.Popen([nt.minipuzzle_bin(), "compress", str(job), "--set", "distill.processes=2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    # Until both ranks run (the launcher starts them one after the other: seeing one is not enough).
    while len(_rank_processes(out)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    ranks = _rank_processes(out)
    assert len(ranks) == 2, f"no distill ranks seen (rc {proc.poll()}): {proc.stderr.read().decode()[-2000:]}"
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    proc.stderr.close()
    # The ranks die with compress (PR_SET_PDEATHSIG): nothing writes behind a rerun.
    deadline = time.time() + 10
    while _rank_processes(out) and time.time() < deadline:
        time.sleep(0.05)
    assert not _rank_processes(out)
    compress(job, "--set", "distill.processes=2")
    a = (dp_run["out"] / "export" / "model.safetensors").read_bytes()
    b = (out / "export" / "model.safetensors").read_bytes()
    assert a == b, "a killed and resumed two-process job differs from an uninterrupted one"
