"""Oracle test: the Python `safetensors` package (the reference
implementation) reads files our writer made, and our reader reads files it made.

Runs tests/safetensors/safetensors_write_sample (path from the
SAFETENSORS_WRITE_SAMPLE environment variable that CMake sets).
"""
import json
import os
import subprocess

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

TOOL = os.environ.get("SAFETENSORS_WRITE_SAMPLE", "")

# Our dtype name -> numpy dtype (those numpy has).
NUMPY_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
    "F16": np.float16, "I32": np.int32, "U32": np.uint32, "F32": np.float32,
    "F64": np.float64, "I64": np.int64, "U64": np.uint64,
}
TORCH_ONLY = ["BF16", "F8_E4M3", "F8_E5M2"]


def expected(dtype):
    """The values safetensors_write_sample writes, as float64, shape [2,3]."""
    i = np.arange(6, dtype=np.float64)
    if dtype == "BOOL":
        v = i % 2
    elif dtype.startswith("U"):
        v = i
    elif dtype.startswith("I"):
        v = i - 2
    else:
        v = (i - 2) / 2
    return v.reshape(2, 3)


def fnv1a64(data: bytes) -> str:
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def run_tool(*args):
    if not TOOL or not os.path.exists(TOOL):
        pytest.fail("SAFETENSORS_WRITE_SAMPLE is not set to the built safetensors_write_sample")
    out = subprocess.run([TOOL, *args], check=True, capture_output=True, text=True)
    return out.stdout


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("ours")
    run_tool("write", str(d))
    return d


@pytest.mark.parametrize("dtype", sorted(NUMPY_DTYPES))
def test_numpy_reads_every_numpy_dtype(samples, dtype):
    # load_file would convert every tensor, and numpy has no bfloat16: one at a time.
    with safe_open(str(samples / "all_dtypes.safetensors"), framework="numpy") as f:
        t = f.get_tensor(dtype.lower())
    assert t.dtype == NUMPY_DTYPES[dtype]
    assert t.shape == (2, 3)
    np.testing.assert_array_equal(t.astype(np.float64), expected(dtype))


@pytest.mark.parametrize("dtype", TORCH_ONLY)
def test_torch_reads_bf16_and_fp8(samples, dtype):
    import torch  # in the venv (tools/requirements.txt)
    with safe_open(str(samples / "all_dtypes.safetensors"), framework="pt") as f:
        t = f.get_tensor(dtype.lower())
    want = {"BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
    assert t.dtype == want[dtype]
    np.testing.assert_array_equal(t.double().numpy(), expected(dtype))


def test_metadata_is_format_pt(samples):
    with safe_open(str(samples / "all_dtypes.safetensors"), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}


def test_sharded_checkpoint_reads_through_its_index(samples):
    d = samples / "sharded"
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    seen = {}
    for shard in shards:
        with safe_open(str(d / shard), framework="numpy") as f:
            assert f.metadata() == {"format": "pt"}
            for name in f.keys():
                assert index["weight_map"][name] == shard
                seen[name] = f.get_tensor(name)
    assert sorted(seen) == sorted(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in seen.values())
    for t in seen.values():
        np.testing.assert_array_equal(t, expected("F32"))


def test_our_reader_reads_numpy_written_files(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {}
    for name, dt in NUMPY_DTYPES.items():
        shape = (3, 1, 4) if name != "F64" else (0, 5)  # an empty tensor too
        tensors[f"w.{name.lower()}"] = (rng.integers(0, 100, size=shape)).astype(dt)
    tensors["scalar"] = np.array(3.5, dtype=np.float32)
    path = tmp_path / "py.safetensors"
    save_file(tensors, str(path), metadata={"format": "np", "note": "from python"})

    got = json.loads(run_tool("dump", str(path)))
    assert got["metadata"] == {"format": "np", "note": "from python"}
    assert sorted(got["tensors"]) == sorted(tensors)
    for name, t in tensors.items():
        g = got["tensors"][name]
        assert g["shape"] == list(t.shape)
        assert NUMPY_DTYPES.get(g["dtype"]) == t.dtype.type
        assert g["fnv1a64"] == fnv1a64(np.ascontiguousarray(t).tobytes())


def test_our_reader_reads_torch_written_bf16_fp8_and_sharded(tmp_path):
    import torch  # in the venv (tools/requirements.txt)
    from safetensors.torch import save_file as save_torch

    tensors = {
        "a.bf16": torch.linspace(-3, 3, 12).reshape(3, 4).to(torch.bfloat16),
        "b.e4m3": torch.linspace(-2, 2, 8).to(torch.float8_e4m3fn),
        "c.e5m2": torch.linspace(-2, 2, 8).to(torch.float8_e5m2),
    }
    kinds = {"a.bf16": "BF16", "b.e4m3": "F8_E4M3", "c.e5m2": "F8_E5M2"}
    # Two shards with an HF-style index, as transformers writes them.
    shards = {"model-00001-of-00002.safetensors": ["a.bf16"],
              "model-00002-of-00002.safetensors": ["b.e4m3", "c.e5m2"]}
    for shard, names in shards.items():
        save_torch({n: tensors[n] for n in names}, str(tmp_path / shard), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": {n: s for s, ns in shards.items() for n in ns}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))

    got = json.loads(run_tool("dump", str(tmp_path)))["tensors"]
    assert sorted(got) == sorted(tensors)
    for name, t in tensors.items():
        assert got[name]["dtype"] == kinds[name]
        assert got[name]["shape"] == list(t.shape)
        assert got[name]["fnv1a64"] == fnv1a64(t.view(torch.uint8).numpy().tobytes())
