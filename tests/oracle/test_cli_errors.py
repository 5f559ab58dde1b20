"""User errors: exit code 2, exactly one line on stderr, nothing written to --out
(no file, no temp file left next to it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import nemotron_tiny as nt

SPEC = nt.SPECS_BY_NAME["g2_state32"]  # n_groups 2, all three layer types


@pytest.fixture(scope="module")
def model():
    return nt.build_model(SPEC)


@pytest.fixture(scope="module")
def good(model, tmp_path_factory):
    return nt.save_checkpoint(model, SPEC, tmp_path_factory.mktemp("good") / "hub", "hub")


@pytest.fixture(scope="module")
def good_tf5(model, tmp_path_factory):
    return nt.save_checkpoint(model, SPEC, tmp_path_factory.mktemp("good") / "tf5", "tf5")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    p = tmp_path_factory.mktemp("tok") / "tokens.safetensors"
    save_file({"input_ids": nt.random_tokens(SPEC.vocab, 1, 9, seed=3)}, str(p))
    return p


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text("hello world, " * 20)
    prefix = d / "ds"
    nt.run_cli("data", "build", "--input", d / "a.txt", "--out", prefix)
    return prefix


def copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(d: Path, **changes):
    p = d / "config.json"
    cfg = json.loads(p.read_text())
    cfg.update(changes)
    p.write_text(json.dumps(cfg, indent=2))


def edit_tensors(d: Path, fn):
    p = d / "model.safetensors"
    t = load_file(str(p))
    fn(t)
    save_file(t, str(p), metadata={"format": "pt"})


def expect_user_error(args, out_dir: Path, must_contain=(), any_of=()):
    out_dir.mkdir(parents=True, exist_ok=True)
    before = sorted(out_dir.iterdir())
    r = nt.run_cli(*args, check=False)
    cmd = " ".join(str(a) for a in args)
    assert r.returncode == 2, f"rc {r.returncode} for: {cmd}\nstderr: {r.stderr}"
    lines = r.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), f"stderr should be one line, got {len(lines)}:\n{r.stderr}"
    msg = lines[0]
    print(f"[{cmd}] -> {msg}")
    for s in must_contain:
        assert s in msg, f"message should name {s!r}: {msg}"
    if any_of:
        assert any(s in msg for s in any_of), f"message should name one of {any_of}: {msg}"
    after = sorted(out_dir.iterdir())
    assert after == before, f"files written on error: {sorted(set(after) - set(before))}"
    return msg


def logits_args(ckpt, tokens, out_dir: Path):
    return ["logits", ckpt, "--tokens", tokens, "--out", out_dir / "logits.safetensors"]


def test_good_checkpoint_runs(good, tokens, tmp_path):
    """Control: the unmodified checkpoint and tokens work."""
    out = tmp_path / "logits.safetensors"
    nt.run_cli("logits", good, "--tokens", tokens, "--out", out)
    assert out.is_file()


def test_missing_dir(tokens, tmp_path):
    missing = tmp_path / "no_such_model"
    expect_user_error(logits_args(missing, tokens, tmp_path / "o"), tmp_path / "o", must_contain=[str(missing)])


def test_unknown_layer_char(good, tokens, tmp_path):
    d = copy_ckpt(good, tmp_path / "ck")
    edit_config(d, hybrid_override_pattern=SPEC.pattern[:2] + "X" + SPEC.pattern[3:])
    expect_user_error(logits_args(d, tokens, tmp_path / "o"), tmp_path / "o", must_contain=["hybrid_override_pattern"])


def test_unknown_layer_type_tf5(good_tf5, tokens, tmp_path):
    d = copy_ckpt(good_tf5, tmp_path / "ck")
    types = list(SPEC.layer_types)
    types[1] = "bogus_layer"
    edit_config(d, layers_block_type=types)
    expect_user_error(logits_args(d, tokens, tmp_path / "o"), tmp_path / "o", must_contain=["layers_block_type"])


def test_pattern_length_mismatch(good, tokens, tmp_path):
    d = copy_ckpt(good, tmp_path / "ck")
    edit_config(d, num_hidden_layers=len(SPEC.pattern) + 1)
    expect_user_error(logits_args(d, tokens, tmp_path / "o"), tmp_path / "o",
                      any_of=["num_hidden_layers", "hybrid_override_pattern"])


def test_mamba_heads_not_multiple_of_groups(good, tokens, tmp_path):
    d = copy_ckpt(good, tmp_path / "ck")
    assert SPEC.groups == 2
    edit_config(d, mamba_num_heads=SPEC.mamba_heads + 1)
    expect_user_error(logits_args(d, tokens, tmp_path / "o"), tmp_path / "o", any_of=["mamba_num_heads", "n_groups"])


def test_attention_heads_not_multiple_of_kv(good, tokens, tmp_path):
    d = copy_ckpt(good, tmp_path / "ck")
    edit_config(d, num_attention_heads=3, num_key_value_heads=2)
    expect_user_error(logits_args(d, tokens, tmp_path / "o"), tmp_path / "o",
                      any_of=["num_attention_heads", "num_key_value_heads"])


def test_tensor_missing(good, tokens, tmp_path):
    d = copy_ckpt(good, tmp_path / "ck")
    name = "backbone.layers.3.mixer.D"
    edit_tensors(d, lambda t: t.pop(name))
    expect_user_error(logits_args(d, tokens, tmp_path / "o"), tmp_path / "o", must_contain=[name])


def test_tensor_wrong_shape(good, tokens, tmp_path):
    d = copy_ckpt(good, tmp_path / "ck")
    name = "backbone.layers.0.mixer.in_proj.weight"

    def f(t):
        t[name] = t[name][:-1].contiguous()

    edit_tensors(d, f)
    expect_user_error(logits_args(d, tokens, tmp_path / "o"), tmp_path / "o", must_contain=[name])


def test_conv_weight_wrong_rank(good, tokens, tmp_path):
    d = copy_ckpt(good, tmp_path / "ck")
    name = "backbone.layers.0.mixer.conv1d.weight"

    def f(t):
        t[name] = t[name].squeeze(1).contiguous()  # [C, K] instead of [C, 1, K]

    edit_tensors(d, f)
    msg_dir = tmp_path / "o"
    expect_user_error(logits_args(d, tokens, msg_dir), msg_dir, must_contain=[name])


def test_token_id_out_of_vocab(good, tmp_path):
    tok = tmp_path / "bad_tokens.safetensors"
    ids = nt.random_tokens(SPEC.vocab, 1, 9, seed=4)
    ids[0, 5] = SPEC.vocab
    save_file({"input_ids": ids}, str(tok))
    expect_user_error(logits_args(good, tok, tmp_path / "o"), tmp_path / "o", any_of=["vocab", str(SPEC.vocab)])


def test_negative_token_id(good, tmp_path):
    tok = tmp_path / "neg_tokens.safetensors"
    ids = nt.random_tokens(SPEC.vocab, 1, 9, seed=4)
    ids[0, 2] = -1
    save_file({"input_ids": ids}, str(tok))
    expect_user_error(logits_args(good, tok, tmp_path / "o"), tmp_path / "o")


def test_tokens_file_without_input_ids(good, tmp_path):
    tok = tmp_path / "wrong_name.safetensors"
    save_file({"ids": nt.random_tokens(SPEC.vocab, 1, 9, seed=4)}, str(tok))
    expect_user_error(logits_args(good, tok, tmp_path / "o"), tmp_path / "o", must_contain=["input_ids"])


def test_truncated_safetensors(good, tokens, tmp_path):
    d = copy_ckpt(good, tmp_path / "ck")
    p = d / "model.safetensors"
    raw = p.read_bytes()
    p.write_bytes(raw[:-100])
    expect_user_error(logits_args(d, tokens, tmp_path / "o"), tmp_path / "o", must_contain=["model.safetensors"])


def test_unknown_flag(good, tokens, tmp_path):
    expect_user_error(logits_args(good, tokens, tmp_path / "o") + ["--frobnicate"], tmp_path / "o",
                      must_contain=["frobnicate"])


def test_unknown_command(tmp_path):
    expect_user_error(["frobnicate"], tmp_path / "o")


def test_bad_dtype(good, tokens, tmp_path):
    expect_user_error(logits_args(good, tokens, tmp_path / "o") + ["--dtype", "fp13"], tmp_path / "o",
                      must_contain=["fp13"])


def test_eval_data_missing(good, tmp_path):
    missing = tmp_path / "no_such_data"
    expect_user_error(["eval", good, "--data", missing, "--seq-len", 8, "--batch", 2, "--json"], tmp_path / "o",
                      must_contain=["no_such_data"])


def test_eval_dataset_too_short(good, dataset, tmp_path):
    # "hello world, " * 20 + bos/eos = 262 tokens: fewer than seq_len + 1
    expect_user_error(["eval", good, "--data", dataset, "--seq-len", 4096, "--batch", 1, "--json"], tmp_path / "o")


def test_eval_max_tokens_below_one_window(good, dataset, tmp_path):
    # 0 windows would otherwise mean "all of them"
    expect_user_error(["eval", good, "--data", dataset, "--seq-len", 16, "--max-tokens", 8, "--json"], tmp_path / "o",
                      must_contain=["--max-tokens"])
    expect_user_error(["eval", good, "--data", dataset, "--seq-len", 16, "--warmup-batches", -1, "--json"],
                      tmp_path / "o", must_contain=["--warmup-batches"])


def test_data_build_missing_input(tmp_path):
    out_dir = tmp_path / "o"
    expect_user_error(["data", "build", "--input", tmp_path / "nope.txt", "--out", out_dir / "ds"], out_dir,
                      must_contain=["nope.txt"])


def test_export_missing_tensor_writes_nothing(good, tmp_path):
    d = copy_ckpt(good, tmp_path / "ck")
    name = "lm_head.weight"
    edit_tensors(d, lambda t: t.pop(name))
    out_parent = tmp_path / "o"
    expect_user_error(["export", d, "--out", out_parent / "exported"], out_parent, must_contain=[name])


def test_export_bad_shard_size(good, tmp_path):
    out_parent = tmp_path / "o"
    expect_user_error(["export", good, "--out", out_parent / "exported", "--max-shard-size", "lots"], out_parent,
                      must_contain=["lots"])


def test_negative_value_for_an_unsigned_option(good, dataset, tmp_path):
    # Boost would read -1 as 2^64 - 1: "no limit", a huge seed, a huge window count.
    expect_user_error(["eval", good, "--data", dataset, "--seq-len", 16, "--max-tokens", -1, "--json"],
                      tmp_path / "o", must_contain=["--max-tokens", "-1"])
    out_dir = tmp_path / "o2"
    expect_user_error(["data", "build", "--input", dataset.with_suffix(".bin"), "--out", out_dir / "ds",
                       "--max-bytes", -1], out_dir, must_contain=["--max-bytes"])


def test_logits_out_is_a_directory(good, tokens, tmp_path):
    out_dir = tmp_path / "o"
    (out_dir / "taken").mkdir(parents=True)
    msg = expect_user_error(["logits", good, "--tokens", tokens, "--out", out_dir / "taken"], out_dir)
    assert "is a directory" in msg and ".tmp." not in msg, msg


def test_no_command_and_group_help(tmp_path):
    expect_user_error([], tmp_path / "o", must_contain=["--help"])
    r = nt.run_cli("data", "--help")
    assert r.returncode == 0 and "build" in r.stdout, r
    expect_user_error(["data"], tmp_path / "o", must_contain=["build"])
    listing = nt.run_cli("--help").stdout
    assert "teacher-logits  offline" in listing, listing
