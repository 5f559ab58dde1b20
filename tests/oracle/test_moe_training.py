"""MoE (`E`) models in teacher-logits, distill and train, against transformers.

The teacher is moe_tiny's e6_g3 (6 experts in 3 groups, group-limited), the
student e10_latent (10 experts, latent projections): both random models
made by transformers. Checked: the teacher cache holds transformers' top-k
(resident and streamed byte for byte); the first distill step moves every
student parameter as AdamW moves it on transformers' own gradient of the KD
loss (router weight through the routing weights, experts, shared expert);
the correction bias never changes; more steps lower the KD loss; `final/`
loads in transformers and gives our logits; `train` runs on an MoE student.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import moe_tiny as mt
import nemotron_tiny as nt
from test_score_search import write_dataset
from test_teacher_cache import read_cache

TEACHER = mt.SPECS_BY_NAME["e6_g3"]
STUDENT = dataclasses.replace(mt.SPECS_BY_NAME["e10_latent"], seed=31)
SEQ_LEN = 16


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_training")
    teacher = mt.build_model(TEACHER)
    student = mt.build_model(STUDENT)
    rng = np.random.default_rng(7)
    docs = [rng.integers(0, TEACHER.vocab, 150) for _ in range(3)]
    return {"root": root, "teacher_model": teacher, "student_model": student,
            "teacher": mt.save_checkpoint(teacher, TEACHER, root / "teacher", "hub"),
            "student": mt.save_checkpoint(student, STUDENT, root / "student", "hub"),
            "data": write_dataset(root / "train", docs), "tokens": np.concatenate(docs).astype(np.int64)}


def weights(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def hub_gradients(model) -> dict[str, torch.Tensor]:
    """transformers' .grad of every parameter under its Hub name (fused experts split)."""
    out = {}
    for k, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        k = "backbone." + k[len("model."):] if k.startswith("model.") else k
        if k.endswith("mixer.experts.up_proj") or k.endswith("mixer.experts.down_proj"):
            base, proj = k.rsplit(".", 1)
            for e in range(g.shape[0]):
                out[f"{base}.{e}.{proj}.weight"] = g[e]
        else:
            out[k] = g
    return out


# ----------------------------------------------------------------------------
# raw gradients
# ----------------------------------------------------------------------------

def moe_gradients_bin() -> str:
    """tests/model/moe_gradients (ctest passes its path; by hand: next to the build's bin/)."""
    b = os.environ.get("MOE_GRADIENTS") or str(Path(nt.minipuzzle_bin()).parents[1] / "tests" / "model" /
                                               "moe_gradients")
    assert Path(b).is_file(), f"moe_gradients not found at {b} (build the moe_gradients target)"
    return b


GRAD_RTOL = 1e-4


@pytest.mark.parametrize("who", ["student", "teacher"])
def test_raw_gradients_equal_transformers_autograd(work, tmp_path, who):
    """fp32 gradients of one fixed loss, sum(logits * probe), of every trained
    parameter against transformers' autograd of NemotronHForCausalLM on the
    same checkpoint: per tensor max |ours - HF| <= 1e-4 max |HF|. The student
    has latent projections and unnormalised weights, the teacher normalised
    weights times 2.5 and group-limited routing; both send the gradient into
    the router only through the chosen experts' weights."""
    spec = STUDENT if who == "student" else TEACHER
    ids = nt.random_tokens(spec.vocab, 2, SEQ_LEN, seed=11)
    probe = torch.randn(2, SEQ_LEN, spec.vocab, generator=torch.Generator().manual_seed(12))
    inputs, out = tmp_path / "inputs.safetensors", tmp_path / "grads.safetensors"
    save_file({"input_ids": ids, "probe": probe}, str(inputs))
    r = subprocess.run([moe_gradients_bin(), str(work[who]), str(inputs), str(out)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    ours = load_file(str(out))

    model = nt.load_hf(work[who]).train()
    loss = (model(input_ids=ids).logits.float() * probe).sum()
    loss.backward()
    ref = hub_gradients(model)
    assert abs(ours.pop("loss").item() - loss.item()) <= 1e-5 * abs(loss.item())
    assert set(ours) == set(ref)
    for name, g in ref.items():
        scale = g.abs().max().item()
        err = (ours[name] - g).abs().max().item()
        assert err <= GRAD_RTOL * scale, f"{name}: max |ours - HF| {err:.3g}, max |HF| {scale:.3g}"
    # Each kind of MoE weight was checked on a real gradient, not on zeros.
    for i, c in enumerate(spec.pattern):
        if c != "E":
            continue
        m = f"backbone.layers.{i}.mixer."
        kinds = ["gate.weight", "shared_experts.up_proj.weight", "shared_experts.down_proj.weight"]
        if spec.latent:
            kinds += ["fc1_latent_proj.weight", "fc2_latent_proj.weight"]
        for k in kinds:
            assert ref[m + k].abs().max() > 0, m + k
        used = [e for e in range(spec.experts) if ref[f"{m}experts.{e}.down_proj.weight"].abs().max() > 0]
        assert len(used) >= spec.k, (i, used)


# ----------------------------------------------------------------------------
# teacher-logits
# ----------------------------------------------------------------------------

def cache_args(work, out, *extra):
    return ["teacher-logits", work["teacher"], "--data", work["data"], "--out", out, "--top-k", 6,
            "--seq-len", SEQ_LEN, "--windows", 12, "--seed", 3, "--batch", 2, "--shard-tokens", 4 * SEQ_LEN, *extra]


def test_teacher_cache_of_an_moe_teacher_holds_transformers_topk(work, tmp_path):
    out = tmp_path / "cache"
    nt.run_cli(*cache_args(work, out))
    _, t = read_cache(out)
    starts = t["window_starts"].numpy()
    ids = torch.from_numpy(np.stack([work["tokens"][s:s + SEQ_LEN] for s in starts]))
    logits = nt.hf_logits(work["teacher_model"], ids)
    ref_v, ref_i = torch.topk(logits, 6, dim=-1)
    torch.testing.assert_close(t["values"], ref_v, rtol=0, atol=1e-4)
    assert torch.equal(t["indices"].long(), ref_i)
    rest = logits.scatter(-1, ref_i, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(t["rest_lse"], rest, rtol=0, atol=1e-4)


def test_streamed_moe_teacher_writes_the_resident_bytes(work, tmp_path):
    # The largest cap whose plan streams, by bisection in log space (the
    # plans are resident above it): a dozen dry runs, not a 5% walk down.
    lo, hi, cap = 1024, 64 << 20, None
    for _ in range(12):
        mid = int((lo * hi) ** 0.5)
        r = nt.run_cli(*cache_args(work, tmp_path / "dry", "--dry-run", "--max-device-memory", mid), check=False)
        if r.returncode == 0 and "weights streamed" not in r.stdout:
            hi = mid
        else:  # streams, or too small to run at all
            lo = mid
            if r.returncode == 0:
                cap = mid
    assert cap is not None
    nt.run_cli(*cache_args(work, tmp_path / "resident"))
    r = nt.run_cli(*cache_args(work, tmp_path / "streamed", "--max-device-memory", cap))
    assert r.stdout.splitlines()[0].startswith("weights streamed"), r.stdout
    names = sorted(p.name for p in (tmp_path / "resident").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "streamed").iterdir())
    for n in names:
        assert (tmp_path / "resident" / n).read_bytes() == (tmp_path / "streamed" / n).read_bytes(), n


# ----------------------------------------------------------------------------
# distill / train
# ----------------------------------------------------------------------------

def distill_args(work, out, steps, *extra, micro=2, glob=2):
    return ["distill", "--teacher", work["teacher"], "--student", work["student"], "--data", work["data"],
            "--out", out, "--steps", steps, "--seq-len", SEQ_LEN, "--micro-batch", micro, "--global-batch", glob,
            "--seed", 3, "--eval-tokens", 2 * SEQ_LEN, "--weight-decay", 0, "--clip-grad", 0, *extra]


def test_first_step_follows_transformers_gradient(work, tmp_path):
    """AdamW's first step moves each parameter by -lr * g / (|g| + eps): with
    weight decay and clipping off, its sign is the gradient's and its size lr
    wherever |g| >> eps, and 0 where g = 0 (experts no token chose). g is
    transformers' autograd of the KD loss on the same two windows (found
    through the teacher cache, which is in distill's order)."""
    lr = 1e-3
    run = tmp_path / "run"
    nt.run_cli(*distill_args(work, run, 1, "--lr", lr, "--schedule", "constant"))
    cache = tmp_path / "cache"
    nt.run_cli(*cache_args(work, cache))
    _, t = read_cache(cache)
    starts = t["window_starts"].numpy()[:2]
    ids = torch.from_numpy(np.stack([work["tokens"][s:s + SEQ_LEN] for s in starts]))

    model = nt.load_hf(work["student"]).train()
    with torch.no_grad():
        pt = torch.log_softmax(nt.hf_logits(work["teacher_model"], ids), -1)
    ps = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    loss = (pt.exp() * (pt - ps)).sum(-1).mean()  # forward KL; any positive scale gives the same step
    loss.backward()
    grads = hub_gradients(model)

    before, after = weights(work["student"]), weights(run / "final")
    assert set(before) == set(after)
    checked = 0
    for name, g in grads.items():
        delta = after[name] - before[name]
        if name.endswith("e_score_correction_bias"):
            continue
        big = g.abs() > 1e-6  # below, fp32 noise of either side's gradient could flip the sign
        assert torch.equal(torch.sign(delta[big]), -torch.sign(g[big])), name
        want = -lr * g[big] / (g[big].abs() + 1e-8)
        torch.testing.assert_close(delta[big], want, rtol=2e-3, atol=0, msg=lambda m: f"{name}: {m}")
        zero = g == 0
        assert torch.all(delta[zero] == 0), name
        checked += int(big.sum())
    # the router weight and every chosen expert were moved: they had gradients
    for i, typ in enumerate(STUDENT.layer_types):
        if typ != "moe":
            continue
        gate = f"backbone.layers.{i}.mixer.gate.weight"
        assert grads[gate].abs().sum() > 0 and (after[gate] != before[gate]).any(), gate
        moved = [e for e in range(STUDENT.experts)
                 if (after[f"backbone.layers.{i}.mixer.experts.{e}.up_proj.weight"] !=
                     before[f"backbone.layers.{i}.mixer.experts.{e}.up_proj.weight"]).any()]
        assert len(moved) >= STUDENT.k, (i, moved)
    assert checked > 0.5 * sum(g.numel() for n, g in grads.items() if "e_score" not in n)


def kd_losses(run: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()
            if not json.loads(l).get("eval")]


def test_distill_lowers_kd_loss_keeps_the_bias_and_loads_in_transformers(work, tmp_path):
    run = tmp_path / "run"
    nt.run_cli(*distill_args(work, run, 8, "--lr", 5e-3, "--schedule", "constant", glob=4))
    losses = kd_losses(run)
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert evals[-1]["loss"] < evals[0]["loss"], evals
    before, after = weights(work["student"]), weights(run / "final")
    biases = [k for k in before if k.endswith("e_score_correction_bias")]
    assert len(biases) == 2
    for k in biases:
        assert after[k].dtype == torch.float32 and torch.equal(after[k], before[k]), k
    # final/ loads in transformers and its logits are ours
    ids = nt.random_tokens(STUDENT.vocab, 2, 12, seed=5)
    hf = nt.hf_logits(nt.load_hf(run / "final"), ids)
    ours = nt.cli_logits(run / "final", ids, tmp_path / "logits")
    assert (ours - hf).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_train_from_scratch_on_an_moe_model(work, tmp_path, dtype):
    run = tmp_path / "run"
    nt.run_cli("train", "--student", work["student"], "--data", work["data"], "--out", run, "--steps", 6,
               "--seq-len", SEQ_LEN, "--micro-batch", 2, "--global-batch", 2, "--lr", 5e-3, "--schedule",
               "constant", "--eval-tokens", 2 * SEQ_LEN, "--dtype", dtype)
    losses = kd_losses(run)
    assert len(losses) == 6 and all(np.isfinite(losses)), losses
    before, after = weights(work["student"]), weights(run / "final")
    for k in before:
        if k.endswith("e_score_correction_bias"):  # fp32 also in a bf16 run
            assert after[k].dtype == torch.float32 and torch.equal(after[k], before[k]), k
        elif k.endswith("mixer.gate.weight"):
            assert not torch.equal(after[k], before[k]), k


DP_LR = 1e-3


def dp_args(work, out, *extra):
    return distill_args(work, out, 2, "--lr", DP_LR, "--schedule", "constant", "--bucket-size", "4KiB", *extra,
                        micro=1)


@pytest.fixture(scope="module")
def two_ranks(work):
    """Runs over two Gloo ranks (one window each) by --shard level, made once."""
    import os
    import socket
    import subprocess
    cache = {}

    def get(shard, *extra):
        if (shard, *extra) in cache:
            return cache[(shard, *extra)]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = work["root"] / "-".join(["two", shard, *extra]).replace("--", "")
        procs = []
        for r in range(2):
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "SLURM_", "TORCHELASTIC"))}
            env.update(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), OMP_NUM_THREADS="1")
            procs.append(subprocess.Popen([nt.minipuzzle_bin(), *map(str, dp_args(work, out, "--shard", shard, *extra))],
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
        cache[(shard, *extra)] = out
        return out
    return get


@pytest.mark.parametrize("shard", ["none", "gradients"])
def test_data_parallel_two_ranks_equal_one_process(work, two_ranks, tmp_path, shard):
    """--shard none (and gradients) over two Gloo ranks (one window each)
    against one process over both: the same steps up to float summation
    order; the bias unchanged."""
    one = tmp_path / "one"
    nt.run_cli(*dp_args(work, one))
    two = two_ranks(shard)
    a, b, start = weights(one / "final"), weights(two / "final"), weights(work["student"])
    assert set(a) == set(b)
    moved = 0
    for k in a:
        if k.endswith("e_score_correction_bias"):
            assert torch.equal(b[k], start[k]), k
            continue
        d = (a[k] - b[k]).abs()
        # Adam's first steps are about lr x sign(g): summation order can flip
        # only the elements whose gradient is about 0.
        assert d.max() <= 2 * 2 * DP_LR + 1e-6, k
        assert (d > 1e-5).float().mean() < 0.02, k
        moved += int((b[k] != start[k]).sum())
    assert moved > 0
    la, lb = kd_losses(one), kd_losses(two)
    assert np.allclose(la, lb, rtol=1e-4), (la, lb)


def test_shard_parameters_equals_none_on_moe_models(work, two_ranks):
    """--shard parameters with MoE teacher and student: the routers' frozen
    correction biases are sharded and gathered like every weight but take no
    gradient and are never stepped. Two ranks (4 KiB gradient buckets: many
    per unit) give --shard none's losses within 1e-6 and its weights within
    1e-6 relative over the model; every bias is the student's own. (Per
    element: the gradients agree to a few ulps, and Adam's first steps, about
    lr x g / (|g| + eps), turn that into up to a few % of lr where |g| is near
    eps (an expert few tokens chose): a handful of elements, measured.)"""
    # parameters recomputes every block: the baseline does too (checkpointed
    # blocks skip the frozen bias and hand unused experts no gradient).
    none, sharded = two_ranks("none", "--activation-checkpointing"), two_ranks("parameters")
    a, b, start = weights(none / "final"), weights(sharded / "final"), weights(work["student"])
    assert set(a) == set(b)
    biases = [k for k in b if k.endswith("e_score_correction_bias")]
    assert biases
    for k in biases:
        assert torch.equal(b[k], start[k]), k
    rest = sorted(set(a) - set(biases))
    x = torch.cat([a[k].double().flatten() for k in rest])
    y = torch.cat([b[k].double().flatten() for k in rest])
    assert (x - y).norm() <= 1e-6 * x.norm(), float((x - y).norm() / x.norm())
    d = (x - y).abs()
    assert d.max() <= 0.1 * DP_LR and (d > 1e-7).double().mean() < 1e-3, (float(d.max()), int((d > 1e-7).sum()))
    assert np.allclose(kd_losses(none), kd_losses(sharded), rtol=1e-6, atol=0)
    assert json.loads((sharded / "checkpoints" / "step-00000002" / "optimizer_manifest.json").read_text())[
        "shard"] == "parameters"


def test_plan_counts_moe_blocks(work):
    r = nt.run_cli("distill", "--plan", "--teacher", work["teacher"], "--student", work["student"],
                   "--seq-len", SEQ_LEN, "--json")
    blocks = {b["type"]: b for b in json.loads(r.stdout)["activations"]["blocks"]}
    assert blocks["moe"]["count"] == STUDENT.pattern.count("E"), blocks
    assert blocks["moe"]["saved"] > blocks["moe"]["checkpointed"] > 0, blocks
