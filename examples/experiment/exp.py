#!/usr/bin/env python3
"""Helpers of examples/experiment/run.sh (the venv's python: safetensors, numpy, matplotlib).

  exp.py valsample SITE OUT_SRC_DIR [LETTERS]
                                        one 512-byte slice from the middle of every file of
                                        transformers/models/[LETTERS]* (default xyz: the test sample)
  exp.py final-loss RUN_DIR             the last evaluation's loss in RUN_DIR/metrics.jsonl
  exp.py randomize SCORES_IN SCORES_OUT SEED
                                        same scores files, every tensor replaced by uniform noise
                                        (hashes kept, so `prune` accepts them for the same parent)
  exp.py random-set CANDIDATES TEACHER_CONFIG SEED
                                        prune --set arguments: the candidate's widths and per-type
                                        layer counts, the dropped layers drawn at random
  exp.py init-args CONFIG               tools/make_tiny_model.py arguments for this architecture
  exp.py unigram TRAIN_BIN VAL_BIN N    unigram (add-one) cross-entropy of the first N val targets
  exp.py summarize WORK RESULTS_DIR     results.json, results.md, PNG curves
  exp.py aggregate OUT RESULTS_DIR...   mean and spread over seeds (results.md, results.json, seeds_loss.png)
"""
import glob
import json
import math
import os
import sys
import textwrap

import numpy as np

SLICE = 512


def valsample(site: str, out: str, letters: str = "xyz") -> None:
    files = sorted(p for d in letters for p in glob.glob(os.path.join(site, "models", d + "*", "**", "*.py"), recursive=True))
    os.makedirs(out, exist_ok=True)
    n = 0
    for i, p in enumerate(files):
        data = open(p, "rb").read()
        start = len(data) // 2
        nl = data.find(b"\n", start)
        start = nl + 1 if 0 <= nl < len(data) - 1 else max(0, len(data) - SLICE)
        chunk = data[start:start + SLICE]
        rel = os.path.relpath(p, os.path.join(site, "models")).replace(os.sep, "__")
        with open(os.path.join(out, f"{i:03d}_{rel}.txt"), "wb") as f:
            f.write(chunk)
        n += len(chunk)
    print(f"valsample: {len(files)} files, {n} bytes -> {out}")


def randomize(src: str, dst: str, seed: int) -> None:
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open
    import shutil
    os.makedirs(dst, exist_ok=True)
    path = os.path.join(src, "importance.safetensors")
    with safe_open(path, "np") as f:
        meta = f.metadata()
    tensors = load_file(path)
    rng = np.random.default_rng(seed)
    out = {k: rng.random(v.shape).astype(np.float32) for k, v in sorted(tensors.items())}
    save_file(out, os.path.join(dst, "importance.safetensors"), metadata=meta)
    shutil.copy(os.path.join(src, "importance.json"), os.path.join(dst, "importance.json"))
    print(f"randomized {len(out)} tensors -> {dst}")


def _candidate(spec: str) -> dict:
    path, _, rank = spec.partition("#")
    c = json.load(open(path))["candidates"]
    return c[int(rank or 1) - 1]


def _pattern(cfg: dict) -> str:
    if "hybrid_override_pattern" in cfg:
        return cfg["hybrid_override_pattern"]
    m = {"mamba": "M", "attention": "*", "full_attention": "*", "mlp": "-"}
    return "".join(m[t] for t in cfg["layers_block_type"])


def random_set(spec: str, teacher_config: str, seed: int) -> None:
    cand = _candidate(spec)
    c = cand["config"]
    parent = _pattern(json.load(open(teacher_config)))
    rng = np.random.default_rng(seed)
    guided = sorted(cand["dropped_layers"])
    # draw the same number of layers per type at random; redraw (up to 100 times) while the draw
    # equals the importance-guided choice, so the arm tests another choice of layers
    for _ in range(100):
        drop = []
        for t in "M*-":
            idx = [i for i, x in enumerate(parent) if x == t]
            n_drop = len(idx) - _pattern(c).count(t)
            drop += [int(i) for i in rng.choice(idx, size=n_drop, replace=False)]
        if sorted(drop) != guided:
            break
    args = [f"hidden_size={c['hidden_size']}", f"intermediate_size={c['intermediate_size']}",
            f"num_attention_heads={c['num_attention_heads']}", f"mamba_num_heads={c['mamba_num_heads']}",
            f"mamba_head_dim={c['mamba_head_dim']}"]
    if drop:
        args.append("drop_layers=" + ",".join(str(i) for i in sorted(drop)))
    print(" ".join("--set " + a for a in args))


def init_args(config: str) -> None:
    c = json.load(open(config))
    print(" ".join([f"--vocab {c['vocab_size']}", f"--hidden {c['hidden_size']}", f"--pattern={_pattern(c)}",
                    f"--ffn {c['intermediate_size']}", f"--mamba-heads {c['mamba_num_heads']}",
                    f"--mamba-head-dim {c['mamba_head_dim']}", f"--state {c['ssm_state_size']}",
                    f"--groups {c['n_groups']}", f"--attn-heads {c['num_attention_heads']}",
                    f"--kv-heads {c['num_key_value_heads']}", f"--head-dim {c['head_dim']}",
                    f"--chunk {c['chunk_size']}"]))


def _tokens(prefix_bin: str) -> np.ndarray:
    return np.fromfile(prefix_bin, dtype=np.uint16)


def unigram(train_bin: str, val_bin: str, n: int) -> None:
    tr = _tokens(train_bin)
    va = _tokens(val_bin)[1:n + 1]
    counts = np.bincount(tr, minlength=259).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    ce = float(-logp[va].mean())
    acc = float((va == int(np.argmax(counts))).mean())
    print(json.dumps({"loss": ce, "accuracy": acc, "tokens": int(len(va))}))


# ---------------------------------------------------------------- summary
def _jsonl(path):
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []


def summarize(work: str, res: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(res, exist_ok=True)
    meta = json.load(open(os.path.join(work, "meta.json")))
    teacher_eval = json.load(open(os.path.join(work, "teacher.eval.json")))
    uni = json.load(open(os.path.join(work, "unigram.json")))
    inspect = lambda name: json.load(open(os.path.join(work, f"{name}.inspect.json")))
    t_ins = inspect("teacher")
    t_params = t_ins["parameters"]["total"]
    arms = meta["arms"]
    rows = [{"arm": "teacher", "label": "(d) teacher", "params": t_params,
             "pattern": t_ins["architecture"]["pattern"], "memory_bytes": t_ins["memory"]["total_bytes"],
             "before": None, "after": {"loss": teacher_eval["loss"], "accuracy": teacher_eval["accuracy"],
                                          "kl": 0.0, "agreement": 1.0}, "train_tokens": meta["teacher_tokens"]}]
    curves = {}
    for a in arms:
        ins = inspect(a["name"])
        m = _jsonl(os.path.join(work, "runs", a["name"], "metrics.jsonl"))
        ev = [r for r in m if r.get("eval")]
        st = [r for r in m if not r.get("eval")]
        pick = lambda r: None if r is None else {k: r.get(k) for k in ("loss", "accuracy", "kl", "agreement")}
        rows.append({"arm": a["name"], "label": a["label"], "params": ins["parameters"]["total"],
                     "pattern": ins["architecture"]["pattern"], "memory_bytes": ins["memory"]["total_bytes"],
                     "widths": {k: ins["architecture"][k] for k in ("hidden_size", "intermediate_size", "mamba_num_heads",
                                                                    "mamba_head_dim", "num_attention_heads")},
                     "before": pick(ev[0]) if ev else None, "after": pick(ev[-1]) if ev else None,
                     "train_tokens": st[-1]["tokens"] if st else 0,
                     "seconds": st[-1]["seconds"] if st else None, "mode": a["mode"]})
        curves[a["name"]] = (a, st, ev)
    tl = teacher_eval["loss"]
    for r in rows:
        r["params_share"] = r["params"] / t_params
        if r["after"]:
            r["loss_gap_vs_teacher"] = r["after"]["loss"] / tl - 1.0
    by = {r["arm"]: r for r in rows}
    main = by.get("importance")
    verdict = {}
    if main and main["after"]:
        verdict = {"within_3pct_of_teacher": main["loss_gap_vs_teacher"] <= 0.03,
                   "better_than_scratch": "scratch" in by and main["after"]["loss"] < by["scratch"]["after"]["loss"],
                   "better_than_random": "random" in by and main["after"]["loss"] < by["random"]["after"]["loss"]}
    out = {"date": meta["date"], "machine": meta["machine"], "commit": meta["commit"], "minipuzzle": meta["minipuzzle"],
           "teacher": meta["teacher"], "teacher_tokens_T": meta["teacher_tokens"], "kd_tokens": meta["kd_tokens"],
           "eval": meta["eval"], "unigram": uni, "rows": rows, "success_test": verdict, "timings_s": meta.get("timings", {})}
    json.dump(out, open(os.path.join(res, "results.json"), "w"), indent=1)

    # --- plots
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, (a, st, ev) in curves.items():
        if a["mode"] == "distill":
            ax.plot([r["tokens"] for r in st], [r["kd"] for r in st], marker=".", label=a["label"])
    ax.set_xlabel("distillation tokens"); ax.set_ylabel("forward KL to the teacher (train windows, nats)")
    ax.set_title("Distillation curves (same tokens for every arm)"); ax.grid(alpha=.3); ax.legend(fontsize=8)
    fig.tight_layout(); fig.savefig(os.path.join(res, "distill_kd.png"), dpi=110); plt.close(fig)

    # held-out loss before/after per arm (bars; an arm far above the others is drawn clipped, labelled)
    fig, ax = plt.subplots(figsize=(8, 4.4))
    arms_ev = [(a, ev) for a, st, ev in curves.values() if ev]
    top = max([tl * 1.2] + [ev[-1]["loss"] for a, ev in arms_ev if ev[-1]["loss"] < tl * 1.5]) * 1.05
    xs = np.arange(len(arms_ev))
    for off, idx, lab, col in ((-0.2, 0, "before training", "#bbbbbb"), (0.2, -1, "after training", "#3b75af")):
        vals = [ev[idx]["loss"] for a, ev in arms_ev]
        ax.bar(xs + off, [min(v, top) for v in vals], width=0.4, color=col, label=lab)
        for x, v in zip(xs + off, vals):
            ax.text(x, min(v, top) + 0.005, f"{v:.3f}", ha="center", va="bottom", fontsize=7, rotation=90 if v > top else 0)
    ax.axhline(tl, color="k", ls="--", lw=1, label=f"(d) teacher {tl:.3f}")
    ax.axhline(tl * 1.03, color="k", ls=":", lw=1, label="teacher + 3%")
    ax.set_xticks(xs, [textwrap.fill(a["label"], 18) for a, ev in arms_ev], fontsize=7)
    ax.set_ylim(tl * 0.9, top * 1.08); ax.set_ylabel("held-out LM loss (nats/byte)")
    ax.set_title(f"Held-out loss before / after {meta['kd_tokens']:,} training tokens (bars clipped at the top)")
    ax.legend(fontsize=7, loc="upper left"); ax.grid(axis="y", alpha=.3)
    fig.tight_layout(); fig.savefig(os.path.join(res, "val_loss.png"), dpi=110); plt.close(fig)

    tcurve = _jsonl(os.path.join(work, "teacher_metrics.jsonl"))
    if tcurve:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        st = [r for r in tcurve if not r.get("eval")]
        ev = [r for r in tcurve if r.get("eval")]
        ax.plot([r["tokens"] for r in st], [r["ce"] for r in st], lw=1, label="train CE")
        tps = st[0]["tokens"] / max(1, st[0]["step"]) if st else 1
        ax.plot([r["step"] * tps for r in ev], [r["loss"] for r in ev], marker="o", label="held-out loss (first 16,384 tokens of val)")
        ax.axhline(uni["loss"], color="gray", ls="--", lw=1, label="unigram (eval sample)")
        ax.set_xlabel("tokens"); ax.set_ylabel("nats/byte"); ax.set_title("Teacher training (examples/demo/teacher)")
        ax.grid(alpha=.3); ax.legend(fontsize=8)
        fig.tight_layout(); fig.savefig(os.path.join(res, "teacher_training.png"), dpi=110); plt.close(fig)

    # --- markdown
    L = []
    w = L.append
    w(f"# Compression experiment (CPU, small scale)\n")
    w(f"Date {meta['date']}, machine: {meta['machine']}, commit `{meta['commit']}`. "
      f"Reproduce: `examples/experiment/run.sh` (total {meta.get('timings', {}).get('total', 0)/60:.0f} min here).\n")
    w(f"Teacher: `examples/demo/teacher` ({t_params:,} parameters, `{t_ins['architecture']['pattern']}`), trained by "
      f"`minipuzzle train` on T = {meta['teacher_tokens']:,} byte tokens of transformers' model sources "
      f"(`examples/demo/make_teacher.sh`). Every student below is trained on the same "
      f"{meta['kd_tokens']:,} tokens = {100*meta['kd_tokens']/meta['teacher_tokens']:.1f}% of T "
      f"({meta['steps']} steps x {meta['tokens_per_step']} tokens, same data order"
      + (f", seed {meta['seed']}; distillation LR peak {meta['kd_lr']:g}, cosine to {meta['kd_min_lr']:g}, "
         f"from-scratch arm LR 3e-3 to 3e-4" if "kd_lr" in meta else "") + ").\n")
    w(f"Evaluation: {meta['eval']['description']}. Unigram baseline on the same tokens: "
      f"loss {uni['loss']:.3f}, accuracy {uni['accuracy']:.3f}.\n")
    w("| arm | params (share) | layers | memory* | loss before | acc before | loss after | vs teacher | acc after | agreement | KL |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    f3 = lambda v: "—" if v is None else f"{v:.3f}"
    for r in rows:
        b, a = r["before"] or {}, r["after"] or {}
        gap = r.get("loss_gap_vs_teacher")
        w(f"| {r['label']} | {r['params']:,} ({100*r['params_share']:.0f}%) | `{r['pattern']}` | "
          f"{r['memory_bytes']/1024:.0f} KiB | {f3(b.get('loss'))} | {f3(b.get('accuracy'))} | {f3(a.get('loss'))} | "
          f"{'—' if gap is None or r['arm']=='teacher' else f'{100*gap:+.1f}%'} | {f3(a.get('accuracy'))} | "
          f"{f3(a.get('agreement'))} | {f3(a.get('kl'))} |")
    w(f"\n*memory: {meta['memory_note']}. Widths of each student: hidden / FFN / Mamba heads x dim / attention heads:\n")
    for r in rows[1:]:
        x = r["widths"]
        w(f"- {r['label']}: {x['hidden_size']} / {x['intermediate_size']} / {x['mamba_num_heads']}x{x['mamba_head_dim']} / "
          f"{x['num_attention_heads']}" + (f" — {r['seconds']:.0f} s of training" if r.get("seconds") else ""))
    w("")
    for line in meta.get("arm_notes", []):
        w(line)
    w("\n![held-out loss](val_loss.png)\n\n![distillation](distill_kd.png)\n")
    if tcurve:
        w("![teacher](teacher_training.png)\n")
    w("## Success test (issue 7)\n")
    if verdict:
        w(f"- importance-guided student within 3% of the teacher's loss: **{'yes' if verdict['within_3pct_of_teacher'] else 'no'}** "
          f"({100*main['loss_gap_vs_teacher']:+.1f}%)")
        w(f"- better than (a) the same architecture from scratch: **{'yes' if verdict['better_than_scratch'] else 'no'}**")
        w(f"- better than (b) random layers/channels + the same distillation: **{'yes' if verdict['better_than_random'] else 'no'}**\n")
    notes = os.environ.get("EXPERIMENT_NOTES", "")  # a Markdown commentary to append, if any
    if notes and notes != "none" and os.path.exists(notes):
        w(open(notes).read())
    open(os.path.join(res, "results.md"), "w").write("\n".join(L) + "\n")
    print(f"wrote {res}/results.md, results.json, *.png")


def aggregate(out: str, runs: list) -> None:
    """Mean and spread over seeds of per-seed results.json files (run.sh with SEED=...)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    per = [json.load(open(os.path.join(r, "results.json"))) for r in runs]
    metas = [json.load(open(os.path.join(r, "meta.json"))) for r in runs]
    arms = [r["arm"] for r in per[0]["rows"]]
    labels = {r["arm"]: r["label"] for r in per[0]["rows"]}
    def col(arm, key):
        vals = []
        for p in per:
            row = next(r for r in p["rows"] if r["arm"] == arm)
            v = (row.get("after") or {}).get(key) if key != "gap" else row.get("loss_gap_vs_teacher")
            if v is not None:
                vals.append(v)
        return vals
    ms = lambda v: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
    summary = {"seeds": [m["seed"] for m in metas], "arms": {}}
    for a in arms:
        summary["arms"][a] = {k: col(a, k) for k in ("loss", "gap", "accuracy", "agreement", "kl")}
        row = next(r for r in per[0]["rows"] if r["arm"] == a)
        patterns = []  # the random arm draws other layers per seed
        for p in per:
            pat = next(r for r in p["rows"] if r["arm"] == a)["pattern"]
            if pat not in patterns:
                patterns.append(pat)
        summary["arms"][a].update(label=labels[a], params=row["params"], params_share=row["params_share"],
                                  pattern="`, `".join(patterns), memory_bytes=row["memory_bytes"])
    imp, rnd, scr = (summary["arms"].get(k, {}).get("loss", []) for k in ("importance", "random", "scratch"))
    tl = summary["arms"]["teacher"]["loss"][0]
    verdict = {"within_3pct_of_teacher_mean": ms(imp)[0] / tl - 1 <= 0.03,
               "seeds_within_3pct": sum(v / tl - 1 <= 0.03 for v in imp),
               "seeds_better_than_random": sum(a < b for a, b in zip(imp, rnd)),
               "seeds_better_than_scratch": sum(a < b for a, b in zip(imp, scr)), "n": len(imp)}
    summary["success_test"] = verdict
    summary["lr_selection"] = {m["seed"]: m.get("lr_selection", []) for m in metas}
    summary["chosen"] = {m["seed"]: {"distill": m.get("kd_lr"), "scratch": m.get("scratch_lr")} for m in metas}
    json.dump(summary, open(os.path.join(out, "results.json"), "w"), indent=1)

    fig, ax = plt.subplots(figsize=(8, 4.2))
    shown = [a for a in arms if a not in ("teacher", "scratch")]
    for i, a in enumerate(shown):
        v = summary["arms"][a]["loss"]
        ax.scatter([i] * len(v), v, s=18, color="#3b75af", zorder=3)
        ax.hlines(np.mean(v), i - 0.25, i + 0.25, color="k", lw=1.5)
    ax.axhline(tl, color="k", ls="--", lw=1, label=f"(d) teacher {tl:.3f}")
    ax.axhline(tl * 1.03, color="k", ls=":", lw=1, label="teacher + 3%")
    ax.set_xticks(range(len(shown)), [textwrap.fill(labels[a], 18) for a in shown], fontsize=7)
    ax.set_ylabel("held-out LM loss after training (nats/byte)")
    ax.set_title(f"{len(per)} seeds per arm (dots), mean (bar); (a) from scratch is off the chart "
                 f"({ms(scr)[0]:.2f})" if scr else f"{len(per)} seeds per arm")
    ax.grid(axis="y", alpha=.3); ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout(); fig.savefig(os.path.join(out, "seeds_loss.png"), dpi=110); plt.close(fig)

    L = []
    w = L.append
    m0 = metas[0]
    w("# Compression experiment (CPU, small scale): every arm over several seeds\n")
    w(f"Date {m0['date']}, machine: {m0['machine']}, commit `{m0['commit']}`. Reproduce: "
      f"`examples/experiment/seeds.sh {' '.join(str(m['seed']) for m in metas)}` "
      f"(each seed: `SEED=N examples/experiment/run.sh`; per-seed tables and curves in "
      + ", ".join(f"[`{os.path.basename(r)}/`]({os.path.basename(r)}/results.md)" for r in runs) + ").\n")
    w(f"Teacher: `examples/demo/teacher` (1.08M parameters, `{summary['arms']['teacher']['pattern']}`), trained on "
      f"T = {m0['teacher_tokens']:,} byte tokens. Every student trains on {m0['kd_tokens']:,} tokens = "
      f"{100 * m0['kd_tokens'] / m0['teacher_tokens']:.1f}% of T. A seed sets the data order of every run and the "
      f"random arm's draw of layers and channels. Learning rates are chosen per seed on a dev sample (held-out "
      f"files of transformers/models/[o-q]*), never on the evaluation sample: {m0['eval']['description']}.\n")
    w(f"| arm | params (share) | layers | memory* | loss after, mean ± sd | vs teacher | acc | agreement | KL |")
    w("|---|---|---|---|---|---|---|---|---|")
    for a in arms:
        x = summary["arms"][a]
        l_, g_, ac, ag, kl = (ms(x[k]) if x[k] else None for k in ("loss", "gap", "accuracy", "agreement", "kl"))
        gap = "—" if a == "teacher" or g_ is None else f"{100 * g_[0]:+.1f}% ± {100 * g_[1]:.1f}"
        f = lambda t: "—" if t is None else f"{t[0]:.3f}"
        w(f"| {x['label']} | {x['params']:,} ({100 * x['params_share']:.0f}%) | `{x['pattern']}` | "
          f"{x['memory_bytes'] / 1024:.0f} KiB | {l_[0]:.4f} ± {l_[1]:.4f} | {gap} | {f(ac)} | {f(ag)} | {f(kl)} |")
    w(f"\n*memory: {m0['memory_note']}. Per seed (loss after):\n")
    w("| seed | chosen LR (distill / scratch) | " + " | ".join(labels[a] for a in arms if a != "teacher") + " |")
    w("|---|---|" + "---|" * (len(arms) - 1))
    for i, m in enumerate(metas):
        vals = []
        for a in arms:
            if a == "teacher":
                continue
            v = col(a, "loss")
            vals.append(f"{v[i]:.4f}" if i < len(v) else "—")
        w(f"| {m['seed']} | {m.get('kd_lr', 0):g} / {m.get('scratch_lr', 0):g} | " + " | ".join(vals) + " |")
    w("\nDev-sample losses behind each choice (arm, LR: dev loss):\n")
    for m in metas:
        sel = m.get("lr_selection", [])
        w(f"- seed {m['seed']}: " + "; ".join(f"{r['arm']} {r['lr']:g}: {r['dev_loss']:.4f}" for r in sel))
    w("\n![loss per seed](seeds_loss.png)\n")
    w("## Success test (issue 7)\n")
    n = verdict["n"]
    w(f"- importance-guided student within 3% of the teacher: mean {100 * (ms(imp)[0] / tl - 1):+.2f}% "
      f"(**{'yes' if verdict['within_3pct_of_teacher_mean'] else 'no'}**); {verdict['seeds_within_3pct']} of {n} seeds")
    w(f"- better than (a) from scratch: {verdict['seeds_better_than_scratch']} of {n} seeds")
    w(f"- better than (b) random layers/channels + the same distillation: {verdict['seeds_better_than_random']} of {n} seeds\n")
    notes = os.environ.get("EXPERIMENT_NOTES", "")
    if notes and notes != "none" and os.path.exists(notes):
        w(open(notes).read())
    open(os.path.join(out, "results.md"), "w").write("\n".join(L) + "\n")
    print(f"wrote {out}/results.md, results.json, seeds_loss.png")


def main() -> None:
    cmd, *a = sys.argv[1:]
    if cmd == "valsample":
        valsample(*a)
    elif cmd == "final-loss":
        evals = [r for r in _jsonl(os.path.join(a[0], "metrics.jsonl")) if r.get("eval")]
        print(f"{evals[-1]['loss']:.6f}")
    elif cmd == "randomize":
        randomize(a[0], a[1], int(a[2]))
    elif cmd == "random-set":
        random_set(a[0], a[1], int(a[2]))
    elif cmd == "init-args":
        init_args(a[0])
    elif cmd == "unigram":
        unigram(a[0], a[1], int(a[2]))
    elif cmd == "summarize":
        summarize(a[0], a[1])
    elif cmd == "aggregate":
        aggregate(a[0], a[1:])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
