"""The suite's skip policy. ctest runs each Python file as one test, so a
case that skips would otherwise leave it "Passed" and nobody would see it:

- a test that needs a GPU carries @pytest.mark.needs_gpu; without a CUDA
  device it is skipped with a reason starting "needs a GPU". That is the
  one declared skip.
- any other skip (pytest.skip, skipif, importorskip, a module-level skip)
  fails the test, with its reason.
- declared skips are listed by test id at the end of the run, and in the
  file $MINIPUZZLE_PYTEST_SKIP_LOG when set (ctest sets it per test;
  tools/test.sh prints them all after the suite).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

GPU_REASON = "needs a GPU"
_declared_skips: list[str] = []


def _have_cuda() -> bool:
    import torch  # only when a test needs a GPU: most files never import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    gpu = [item for item in items if item.get_closest_marker("needs_gpu")]
    if gpu and not _have_cuda():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason=f"{GPU_REASON}: no CUDA device"))


def _reason(report) -> str:
    r = report.longrepr
    text = r[2] if isinstance(r, tuple) and len(r) == 3 else str(r)
    return text.removeprefix("Skipped: ")


def _fail_undeclared(report, where: str) -> None:
    report.outcome = "failed"
    report.longrepr = (f"{where} skipped ({_reason(report)}); only a test marked needs_gpu may skip, and only "
                       "without a CUDA device: make it run, or fail with the reason")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    if item.get_closest_marker("needs_gpu") and _reason(report).startswith(GPU_REASON):
        _declared_skips.append(f"{item.nodeid}: {_reason(report)}")
    else:
        _fail_undeclared(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        _fail_undeclared(report, str(collector.nodeid or collector.path))


def pytest_terminal_summary(terminalreporter):
    if _declared_skips:
        terminalreporter.write_sep("-", f"{len(_declared_skips)} skipped (declared GPU skips)")
        for line in _declared_skips:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session):
    log = os.environ.get("MINIPUZZLE_PYTEST_SKIP_LOG")
    if not log:
        return
    path = Path(log)
    if _declared_skips:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in _declared_skips))
    else:
        path.unlink(missing_ok=True)
