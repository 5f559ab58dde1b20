"""Oracle test: our Megatron .bin/.idx reader and builder against an
independent numpy implementation of the format as Megatron-LM writes it
(megatron/core/datasets/indexed_dataset.py: _IndexWriter, IndexedDatasetBuilder).

The C++ side runs through tests/data/dataset_tool (path in MINIPUZZLE_DATASET_TOOL).
"""
import json
import os
import struct
import subprocess

import numpy as np
import pytest

TOOL = os.environ.get("MINIPUZZLE_DATASET_TOOL")
if not TOOL or not os.path.exists(TOOL):
    pytest.fail("MINIPUZZLE_DATASET_TOOL not set or not built: run through ctest", pytrace=False)

MAGIC = b"MMIDIDX\x00\x00"
# Megatron's DType enum: float64 is 6 and float32 is 7.
CODES = {"uint8": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "float64": 6, "float32": 7, "uint16": 8}
INT_DTYPES = ["uint8", "int8", "int16", "uint16", "int32", "int64"]


def tool(*args, stdin=None, check=True):
    r = subprocess.run([TOOL, *map(str, args)], input=stdin, capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def dump(prefix):
    return json.loads(tool("dump", prefix).stdout)


def megatron_write(prefix, dtype, documents, modes=False):
    """documents: list of documents, each a list of sequences (token lists),
    as IndexedDatasetBuilder.add_item + end_document produce them."""
    lengths, doc_idx = [], [0]
    with open(f"{prefix}.bin", "wb") as f:
        for doc in documents:
            for seq in doc:
                arr = np.asarray(seq, dtype=dtype)
                f.write(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
                lengths.append(arr.size)
            doc_idx.append(len(lengths))
    item = np.dtype(dtype).itemsize
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if lengths:
        pointers[1:] = np.cumsum(np.asarray(lengths[:-1], dtype=np.int64) * item)
    with open(f"{prefix}.idx", "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", CODES[dtype]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(doc_idx)))  # entries, i.e. documents + 1
        f.write(np.asarray(lengths, dtype="<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(np.asarray(doc_idx, dtype="<i8").tobytes())
        if modes:
            f.write(np.zeros(len(lengths), dtype=np.int8).tobytes())
    return lengths, doc_idx


def numpy_read(prefix):
    buf = open(f"{prefix}.idx", "rb").read()
    assert buf[:9] == MAGIC
    (version,) = struct.unpack_from("<Q", buf, 9)
    assert version == 1
    code = buf[17]
    dtype = {v: k for k, v in CODES.items()}[code]
    seq_count, doc_count = struct.unpack_from("<QQ", buf, 18)
    off = 34
    lengths = np.frombuffer(buf, dtype="<i4", count=seq_count, offset=off)
    pointers = np.frombuffer(buf, dtype="<i8", count=seq_count, offset=off + 4 * seq_count)
    doc_idx = np.frombuffer(buf, dtype="<i8", count=doc_count, offset=off + 12 * seq_count)
    data = open(f"{prefix}.bin", "rb").read()
    dt = np.dtype(dtype).newbyteorder("<")
    seqs = [np.frombuffer(data, dtype=dt, count=int(n), offset=int(p)).tolist() for n, p in zip(lengths, pointers)]
    return dtype, lengths.tolist(), doc_idx.tolist(), seqs


def extremes(dtype):
    info = np.iinfo(dtype)
    return [int(info.min), int(info.max), 0, 1, int(info.max) - 1]


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_reader_agrees_with_megatron_writer(tmp_path, dtype):
    lo_hi = extremes(dtype)
    # Documents of several sequences, an empty sequence and an empty document.
    documents = [[lo_hi, [5, 6]], [[]], [], [[7], [8, 9, 10]]]
    prefix = str(tmp_path / "mega")
    lengths, doc_idx = megatron_write(prefix, dtype, documents)
    got = dump(prefix)
    assert got["dtype"] == dtype
    assert got["lengths"] == lengths
    assert got["document_index"] == doc_idx
    assert got["sequences"] == [seq for doc in documents for seq in doc]
    assert got["flat"] == [t for doc in documents for seq in doc for t in seq]


def test_reader_accepts_multimodal_modes(tmp_path):
    prefix = str(tmp_path / "mm")
    megatron_write(prefix, "uint16", [[[1, 2]], [[3]]], modes=True)
    assert dump(prefix)["sequences"] == [[1, 2], [3]]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reader_refuses_float_tokens_with_megatron_codes(tmp_path, dtype):
    prefix = str(tmp_path / "f")
    megatron_write(prefix, dtype, [[[1.5, 2.0]]])
    r = tool("dump", prefix, check=False)
    assert r.returncode == 2
    assert dtype in r.stderr and "not token ids" in r.stderr


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_builder_output_reads_with_numpy(tmp_path, dtype):
    docs = [extremes(dtype), [], [3, 4, 5]]
    prefix = str(tmp_path / "ours")
    tool("write", prefix, dtype, stdin=json.dumps(docs))
    got_dtype, lengths, doc_idx, seqs = numpy_read(prefix)
    assert got_dtype == dtype
    assert lengths == [len(d) for d in docs]
    assert doc_idx == [0, 1, 2, 3]
    assert seqs == docs
    # Byte for byte what a Megatron writer produces for the same documents.
    ref = str(tmp_path / "ref")
    megatron_write(ref, dtype, [[d] for d in docs])
    for ext in (".idx", ".bin"):
        assert open(prefix + ext, "rb").read() == open(ref + ext, "rb").read()


def test_builder_rejects_token_outside_dtype(tmp_path):
    prefix = str(tmp_path / "bad")
    r = tool("write", prefix, "uint16", stdin=json.dumps([[1, 70000]]), check=False)
    assert r.returncode == 2 and "does not fit" in r.stderr
    assert not os.path.exists(prefix + ".idx")


def test_corpus_build_is_readable_by_numpy(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    files = {"b.py": b"print('b')\n", "a.txt": "caf\u00e9\n".encode(), "pkg/c.py": b"c = 3\n"}
    for name, content in files.items():
        (src / name).write_bytes(content)
    (src / "pkg" / "blob.py").write_bytes(b"\x00\x01binary")
    prefix = str(tmp_path / "corpus")
    summary = json.loads(tool("build", prefix, "uint16", 0, "", src).stdout)
    assert summary["documents"] == 3 and summary["skipped_binary"] == 1
    dtype, _, doc_idx, seqs = numpy_read(prefix)
    assert dtype == "uint16" and doc_idx == [0, 1, 2, 3]
    expected = [files["a.txt"], files["b.py"], files["pkg/c.py"]]  # sorted paths
    assert seqs == [[1] + [b + 3 for b in text] + [2] for text in expected]
    assert summary["tokens"] == sum(len(s) for s in seqs)


def splitmix64(seed):
    mask = (1 << 64) - 1
    state = seed
    while True:
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        yield z ^ (z >> 31)


def python_random_windows(total, seq_len, n, seed):
    bound = total - seq_len
    threshold = (1 << 64) % bound
    gen, out = splitmix64(seed), []
    while len(out) < n:
        x = next(gen)
        if x >= threshold:
            out.append(x % bound)
    return out


@pytest.mark.parametrize("total,seq_len,seed", [(1000, 16, 0), (7, 4, 123), ((1 << 63) + 12345, 8, 2**64 - 1)])
def test_random_windows_match_python_splitmix64(total, seq_len, seed):
    got = json.loads(tool("windows", total, seq_len, 50, seed).stdout)
    assert got == python_random_windows(total, seq_len, 50, seed)
