"""Complete model folders: prune, distill (final/) and export carry the
source's tokenizer / generation / chat-template files; export writes a model
card; a broken tokenizer file is refused (exit 2, one line, nothing written);
AutoTokenizer and AutoModelForCausalLM load the export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nemotron_tiny as nt

SPEC = nt.SPECS_BY_NAME["m_a_f_g1"]
ROOT = Path(__file__).resolve().parents[2]
CARRIED = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
           "chat_template.jinja"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """m_a_f_g1 with the byte-level tokenizer (vocab 300 >= 259) and a README naming a license."""
    d = nt.save_checkpoint(nt.build_model(SPEC), SPEC, tmp_path_factory.mktemp("t") / "teacher", "hub")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny_model.py"), "--tokenizer-only", str(d)], check=True)
    (d / "README.md").write_text("---\nlicense: other\nlicense_name: test-license\nlicense_link: LICENSE\n"
                                 "tags:\n- x\n---\n\n# teacher\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["_name_or_path"] = "example-org/tiny-teacher"
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def front_matter(readme: Path) -> dict:
    import yaml
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("dtype", ["bf16", "nvfp4"])
def test_export_is_a_complete_hub_folder(teacher, tmp_path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = tmp_path / "export"
    r = nt.run_cli("export", teacher, "--out", out, "--dtype", dtype)
    for name in CARRIED:
        assert (out / name).read_bytes() == (teacher / name).read_bytes(), name
    assert "copied 5 tokenizer/generation files" in r.stdout
    fm = front_matter(out / "README.md")
    assert fm["base_model"] == "example-org/tiny-teacher"
    assert fm["library_name"] == "transformers"
    assert (fm["license"], fm["license_name"], fm["license_link"]) == ("other", "test-license", "LICENSE")
    assert "minipuzzle" in fm["tags"] and (dtype != "nvfp4" or {"compressed-tensors", "nvfp4"} <= set(fm["tags"]))
    card = (out / "README.md").read_text()
    assert f"minipuzzle export {teacher} --out export --dtype {dtype}" in card  # the command to reproduce
    assert f"hidden {SPEC.hidden}" in card and SPEC.pattern in card
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("hello")["input_ids"]
    assert ids == [1] + [b + 3 for b in b"hello"]
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), SPEC.vocab) and torch.isfinite(logits).all()


def test_no_license_in_the_source_means_none_in_the_card(teacher, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(teacher, src)
    (src / "README.md").unlink()
    nt.run_cli("export", src, "--out", tmp_path / "o")
    assert "license" not in front_matter(tmp_path / "o" / "README.md")


def test_prune_and_distill_final_carry_the_files(teacher, tmp_path):
    pruned = tmp_path / "pruned"
    nt.run_cli("prune", teacher, "--set", "drop_layers=2", "--out", pruned)
    for name in CARRIED:
        assert (pruned / name).read_bytes() == (teacher / name).read_bytes(), name
    # distill final/: a two-step run on a tiny byte corpus
    corpus = tmp_path / "text"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    nt.run_cli("data", "build", "--input", corpus, "--out", tmp_path / "data")
    nt.run_cli("distill", "--teacher", teacher, "--student", pruned, "--data", tmp_path / "data",
               "--out", tmp_path / "run", "--steps", "2", "--seq-len", "32", "--micro-batch", "2",
               "--global-batch", "2", "--warmup", "0", "--save-every", "2")
    for name in CARRIED:
        assert (tmp_path / "run" / "final" / name).read_bytes() == (teacher / name).read_bytes(), name


@pytest.mark.parametrize("command", ["export", "prune"])
def test_broken_tokenizer_file_is_refused(teacher, tmp_path, command):
    src = tmp_path / "src"
    shutil.copytree(teacher, src)
    (src / "tokenizer_config.json").write_text('{"tokenizer_class": ')
    out = tmp_path / "out"
    extra = ["--set", "drop_layers=2"] if command == "prune" else []
    r = nt.run_cli(command, src, *extra, "--out", out, check=False)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "tokenizer_config.json" in lines[0] and "JSON" in lines[0], r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("args,words", [
    (["--dtype", "fp4"], "unknown --dtype 'fp4'"),
    (["--dtype", "nvfp4", "--format", "fp8-transformers"], "unknown --format"),
    (["--dtype", "bf16", "--format", "compressed-tensors"], "--format applies"),
    (["--dtype", "bf16", "--dequantized"], "--dequantized needs"),
])
def test_bad_export_flags(teacher, tmp_path, args, words):
    r = nt.run_cli("export", teacher, "--out", tmp_path / "o", *args, check=False)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o").exists()
