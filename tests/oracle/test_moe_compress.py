"""`minipuzzle compress` on a tiny transformers-made MoE teacher (issue 25):
the whole chain runs with the search's expert axes under
`search.max_active_params`, the export loads in transformers with our
logits, and the report's active-parameter figure is the export's real one
(transformers' parameter count less the routed experts a token is not sent
to). An active limit no candidate meets is refused by --dry-run, one line,
exit 2, nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import moe_tiny as mt
import nemotron_tiny as nt
from test_moe_score_prune import _active_params, _eager
from test_score_search import write_dataset

# 8 experts in 2 router groups, 2 per token: the search may keep 2..8 per
# layer (a multiple of n_group, at least num_experts_per_tok).
SPEC = mt.MoeSpec("e8_compress", seed=41, pattern="ME*E-", experts=8, k=2, n_group=2, topk_group=1,
                  expert_ffn=16, shared_ffn=24, scaling=2.0)

JOB = """\
teacher: teacher
out: {out}
data: {{train: train, validation: val}}
score: {{samples: 4, seq_len: 32, batch: 4}}
search:
  budget: {budget}
  max_active_params: {active}
  precision: bf16
  context: 32
  space: depth
  axes: {{moe_experts: "4:8:2", moe_expert_ffn: "8:16:8", moe_shared_ffn: "12:24:12"}}
  max_depth_reduction: 0
  top_k: 2
rank: {{tokens: 128, seq_len: 32, batch: 4}}
distill: {{seq_len: 32, micro_batch: 4, global_batch: 4, eval_tokens: 128}}
short_distill: {{candidates: 1, tokens: 256, lr: 3e-3, min_lr: 3e-4}}
long_distill: {{tokens: 256, lr: 3e-3, min_lr: 3e-4}}
evaluate: {{tokens: 128, seq_len: 32, batch: 4}}
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_compress")
    teacher = mt.save_checkpoint(_eager(mt.build_model(SPEC)), SPEC, root / "teacher", "hub")
    rng = np.random.default_rng(41)
    write_dataset(root / "train", [rng.integers(0, SPEC.vocab, 500) for _ in range(4)])
    write_dataset(root / "val", [rng.integers(0, SPEC.vocab, 400)])
    info = json.loads(nt.run_cli("inspect", teacher, "--json", "--precision", "bf16", "--context", 32).stdout)
    active = _active_params(json.loads((teacher / "config.json").read_text()))
    return {"root": root, "budget": int(0.85 * info["memory"]["total_bytes"]), "active": active}


def write_job(work, name: str, active: int) -> Path:
    job = work["root"] / f"{name}.yaml"
    job.write_text(JOB.format(out=f"runs/{name}", budget=work["budget"], active=active))
    return job


def test_compress_moe_teacher_end_to_end(work, tmp_path):
    # No layer may go: the memory budget (85% of the teacher's) cuts experts
    # or their width, the active limit (90%) the widths a token meets (a
    # token's count holds num_experts_per_tok experts however many are kept).
    limit = int(0.9 * work["active"])
    nt.run_cli("compress", write_job(work, "full", limit), timeout=600)
    out = work["root"] / "runs" / "full"
    export = out / "export"
    cfg = json.loads((export / "config.json").read_text())
    actual = _active_params(cfg)
    assert actual <= limit < work["active"]
    assert cfg["hybrid_override_pattern"] == SPEC.pattern
    assert cfg["moe_intermediate_size"] < SPEC.expert_ffn and cfg["moe_shared_expert_intermediate_size"] < SPEC.shared_ffn
    assert cfg["n_routed_experts"] % SPEC.n_group == 0 and cfg["n_routed_experts"] >= SPEC.k

    # The export runs in transformers as in our binary.
    hf = _eager(nt.load_hf(export))
    ids = nt.random_tokens(SPEC.vocab, 2, 24, seed=5)
    torch.testing.assert_close(nt.cli_logits(export, ids, tmp_path), nt.hf_logits(hf, ids), rtol=0, atol=1e-4)

    # The report's exact active count of the final model is the export's.
    final = json.loads((out / "compare.json").read_text())["models"][-1]
    assert final["name"] == "final (export, bf16)" and final["active_params"] == actual
    report = (out / "report.md").read_text()
    m = re.search(r"^- final \(export, bf16\): (\d+) active of (\d+) parameters$", report, re.M)
    assert m, report
    assert int(m.group(1)) == actual and int(m.group(2)) == final["params"]
    assert "| active params |" in report and "layers M/*/-/E" in report
    assert f"at most {limit} active parameters per token" in report

    # A job directory from before a key existed (job.json without it): the
    # key at its default changes nothing, set to anything else it reruns
    # from the first stage that reads it.
    recorded = json.loads((out / "job.json").read_text())
    for key in ("distill.shard", "search.max_active_params"):
        del recorded[key]
    (out / "job.json").write_text(json.dumps(recorded))
    plan = nt.run_cli("compress", write_job(work, "full", limit), "--dry-run").stdout
    assert "search.max_active_params (was unset" in plan and "distill.shard" not in plan.split("stages (")[0], plan


def _expect_user_error(job, *args, needles):
    r = nt.run_cli("compress", job, *args, check=False)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().split("\n")
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_compress_moe_bad_settings_are_refused_before_any_stage(work):
    job = write_job(work, "unreachable", 1000)
    _expect_user_error(job, "--dry-run", needles=["search.max_active_params", "smallest active count reachable"])
    # distill --shard parameters takes E layers (the frozen correction bias is
    # gathered, never stepped): the dry run plans it like any other level.
    job = write_job(work, "sharded", int(0.9 * work["active"]))
    r = nt.run_cli("compress", job, "--dry-run", "--set", "distill.shard=parameters", check=False)
    assert r.returncode == 0, r.stderr
    assert "--shard parameters" in r.stdout
    assert not (work["root"] / "runs" / "unreachable").exists() and not (work["root"] / "runs" / "sharded").exists()
