"""What each CUDA kernel asks of an SM, read from ptxas, with no GPU.

A kernel whose registers times its block size exceed the SM's register file,
or whose shared memory exceeds what a launch may take, compiles fine and fails
only at its first launch on a GPU ("too many resources requested"). Spills
and stack frames compile fine too and cost speed silently. This test compiles
every kernels/*.cu for the build's architectures with `--resource-usage` (as
the build does: same flags) and checks, per kernel and architecture:
  - its block size is known: the constant its <<<>>> launches use (a named
    launch, or the one block size of a generic launcher in its .cu file), and
    equal to its __launch_bounds__ where it declares one;
  - registers x block size fit the 64K-register file;
  - no spill stores or loads and no stack frame;
  - static shared memory within 48 KiB, and for the top-k KD kernel, within
    what kForwardKlTopkMaxVocab leaves beside its dynamic bitmap.
ptxas chooses registers without knowing the block size unless a kernel
declares __launch_bounds__; adding bounds changes its choices (it spilled a
few bytes in two SSD kernels when tried), so this test checks the fit rather
than asking every kernel for bounds.

Environment: MINIPUZZLE_NVCC (nvcc), MINIPUZZLE_CUDA_ARCHITECTURES (CMake's
list joined with commas, e.g. 80-real,90a-real), MINIPUZZLE_SOURCE_DIR.
"""

import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SOURCE = Path(os.environ.get("MINIPUZZLE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
KERNELS = SOURCE / "kernels"
NVCC = os.environ.get("MINIPUZZLE_NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
ARCHS = [a for a in os.environ.get("MINIPUZZLE_CUDA_ARCHITECTURES", "80-real,90a-real").split(",") if a]

REGISTER_FILE = 64 * 1024  # 32-bit registers per block (every sm_80 / sm_90 part)
STATIC_SHARED_LIMIT = 48 * 1024  # bytes of static shared memory a kernel may declare
GLOBAL_RE = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\((\w+)\)\s+)?(\w+)\s*\(")
CONSTANT_RE = re.compile(r"constexpr\s+int\s+(k\w+)\s*=\s*(\d+)\s*;")
LAUNCH_RE = re.compile(r"(\w+)\s*(?:<[^;{}]*?>)?\s*<<<\s*[^,]+,\s*(\w+)\s*,")


def sources(pattern):
    return {p.name: p.read_text() for p in sorted(KERNELS.glob(pattern))}


def declared_kernels():
    """Kernel name -> the constant in its __launch_bounds__ (None when missing)."""
    kernels = {}
    for text in {**sources("*.cuh"), **sources("*.cu")}.values():
        for bound, name in GLOBAL_RE.findall(text):
            kernels[name] = bound or None
    return kernels


def block_constants():
    constants = {}
    for text in sources("*.cuh").values():
        constants.update({name: int(value) for name, value in CONSTANT_RE.findall(text)})
    return constants


def gencode(arch):
    m = re.fullmatch(r"(\d+[a-z]?)(?:-real|-virtual)?", arch)
    if not m:
        pytest.fail(f"architecture '{arch}' is not a number ptxas can be asked for: set MINIPUZZLE_CUDA_ARCHITECTURES "
                    "to numbers (80-real, 90a)", pytrace=False)
    return f"arch=compute_{m.group(1)},code=sm_{m.group(1)}"


def ptxas_report(cu, arch):
    """One entry per compiled kernel: name (mangled), registers, static shared, stack, spills."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [NVCC, "-std=c++17", "--expt-relaxed-constexpr", "-gencode", gencode(arch), "-cubin",
               "--resource-usage", f"-I{KERNELS}", "-o", str(Path(tmp) / "out.cubin"), str(KERNELS / cu)]
        done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}"
    entries, current = [], None
    for line in (done.stdout + done.stderr).splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = {"mangled": m.group(1), "registers": None, "smem": 0, "stack": None, "spills": None}
            entries.append(current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["stack"] = int(m.group(1))
            current["spills"] = int(m.group(2)) + int(m.group(3))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    return entries


def kernel_of(mangled, names):
    """The declared kernel a mangled entry instantiates (Itanium: <length><name>)."""
    found = [n for n in names if f"{len(n)}{n}" in mangled]
    assert len(found) == 1, f"entry {mangled} matches kernels {found}"
    return found[0]


@pytest.fixture(scope="module")
def reports():
    if not Path(NVCC).exists() and not shutil.which(NVCC):
        pytest.fail(f"no nvcc at {NVCC} (the test exists only in builds that found nvcc)", pytrace=False)
    jobs = [(cu, arch) for cu in sources("*.cu") for arch in ARCHS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: ptxas_report(*job), jobs))
    return dict(zip(jobs, results))


def block_sizes(reports):
    """Kernel name -> the name of the constant that is its block size, from its launches."""
    kernels, sizes = declared_kernels(), {}
    for cu, text in sources("*.cu").items():
        launches = LAUNCH_RE.findall(text)
        assert launches, f"{cu}: no <<<>>> launch found: the pattern is stale"
        generic = {block for name, block in launches if name not in kernels}
        assert len(generic) <= 1, f"{cu}: generic launches with different block sizes {generic}"
        for name, block in launches:
            if name in kernels:
                assert sizes.get(name, block) == block, f"{name} launched with {sizes[name]} and {block} threads"
                sizes[name] = block
        # A generic launcher (`kernel<<<grid, kSsdThreads>>>`) runs every
        # kernel its file compiles that has no launch of its own.
        for arch in ARCHS:
            for entry in reports[(cu, arch)]:
                name = kernel_of(entry["mangled"], kernels)
                if name not in sizes:
                    assert generic, f"{cu} compiles {name} but no launch of it was found"
                    sizes[name] = next(iter(generic))
    return sizes


def test_every_launch_matches_the_kernels_launch_bounds(reports):
    kernels, constants, sizes = declared_kernels(), block_constants(), block_sizes(reports)
    assert kernels, "no __global__ kernels found in kernels/: the pattern is stale"
    for name, block in sizes.items():
        assert block in constants, f"{name}: block size {block} is not a `constexpr int kX = N;` in kernels/*.cuh"
        if kernels[name] is not None:
            assert kernels[name] == block, f"{name} is launched with {block} threads, bounded by {kernels[name]}"


def test_every_kernel_fits_an_sm_without_spilling(reports):
    kernels, constants, sizes = declared_kernels(), block_constants(), block_sizes(reports)
    seen, problems = set(), []
    for (cu, arch), entries in reports.items():
        assert entries, f"ptxas reported no kernels for {cu} ({arch}): the output format changed"
        for e in entries:
            name = kernel_of(e["mangled"], kernels)
            seen.add(name)
            assert e["registers"] is not None and e["spills"] is not None, f"unparsed ptxas report for {e['mangled']}"
            block = constants[sizes[name]]
            # Registers are handed out per warp in units of 256.
            per_warp = -(-e["registers"] * 32 // 256) * 256
            where = f"{name} ({cu}, {arch})"
            if per_warp * (-(-block // 32)) > REGISTER_FILE:
                problems.append(f"{where}: {e['registers']} registers x {block} threads exceed the register file")
            if e["spills"] or e["stack"]:
                problems.append(f"{where}: {e['stack']} B stack frame, {e['spills']} B spilled")
            if e["smem"] > STATIC_SHARED_LIMIT:
                problems.append(f"{where}: {e['smem']} B static shared memory")
    assert not problems, "\n".join(problems)
    assert seen == set(kernels), f"kernels ptxas never compiled (not instantiated?): {set(kernels) - seen}"


def test_topk_kernel_leaves_room_for_its_bitmap(reports):
    # kForwardKlTopkMaxVocab reserves a fixed number of bytes for the top-k
    # kernel's static shared memory beside the dynamic vocabulary bitmap.
    header = (KERNELS / "forward_kl_cuda.h").read_text()
    m = re.search(r"kForwardKlTopkMaxVocab\s*=\s*\(48 \* 1024 - (\d+)\) \* 8", header)
    assert m, "kForwardKlTopkMaxVocab's formula changed: update this test"
    reserved = int(m.group(1))
    for (cu, arch), entries in reports.items():
        for e in entries:
            if "forward_kl_topk_kernel" in e["mangled"]:
                assert e["smem"] <= reserved, f"{arch}: {e['smem']} B static shared, {reserved} B reserved"
