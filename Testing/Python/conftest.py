"""Shared fixtures: small SYNTHETIC cohorts made once per test session.

The suite runs on two pytest-xdist workers (``-n 2`` in pyproject.toml). A session fixture would be built once
per worker, so the expensive ones are built once into the directory the workers share, under a file lock; the
second worker to ask waits for the first and reuses its files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one core per worker: BLAS and torch threads that wait on each other across two busy workers cost more
    # CPU than they save (the network quality-gate test used 1.4 times the CPU on two threads)
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

from NPCPrognosisLib.resources import RADIOMICS_FAST_PARAMS  # noqa: E402  (after the thread settings)


@pytest.fixture(scope="session")
def cli_printed() -> Callable[[list[str]], str]:
    """Runs ``npc-prognosis`` with an argument list, asserts it exited 0 and returns what it printed: for the
    fixtures that build a bundle once and let their tests read both the bundle and ``train``'s printout."""
    import contextlib
    import io

    from NPCPrognosisLib.cli import main

    def run(argv: list[str]) -> str:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            assert main(argv) == 0
        return printed.getvalue()

    return run


@pytest.fixture
def dead_owner() -> str:
    """``<pid>@<this host>`` of a process that has ended: the owner a hard-killed run's leftover carries
    (:func:`~NPCPrognosisLib.io.staging.owner_tag`), for the tests of what the next run does with it."""
    import subprocess
    import sys

    from NPCPrognosisLib.io.staging import _this_host

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    return f"{gone.pid}@{_this_host()}"


def _built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(directory)`` run by one worker only; a ``.done`` marker says the directory is complete."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the root every worker's base directory lies in
    root = base / f"shared_{name}"
    with FileLock(str(base / f"shared_{name}.lock")):
        if not (base / f"shared_{name}.done").exists():
            root.mkdir(exist_ok=True)
            build(root)
            (base / f"shared_{name}.done").touch()
    return root


def _build_small_cohort(root: Path) -> None:
    from NPCPrognosisLib.datasets.synth import synthesize_cohort
    from NPCPrognosisLib.io.manifest import read_manifest
    from NPCPrognosisLib.pipeline.extract import extract_cohort

    cohort = synthesize_cohort(24, 3, root, progress=False, workers=2)
    extract_cohort(read_manifest(cohort.manifest_path), root / "features.csv", workers=2,
                   params_path=RADIOMICS_FAST_PARAMS, progress=False)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """24 synthetic patients with radiomics (original-image features only, for speed)."""
    return _built_once(tmp_path_factory, "small_cohort", _build_small_cohort)


@pytest.fixture(scope="session")
def trained(small_cohort, tmp_path_factory) -> Path:
    """A bundle trained on ``small_cohort`` (DMFS, with the ic_response classifiers), shared by the pipeline and
    report tests; without the robustness study and the permutation test, which test_robustness and
    test_binary_endpoint exercise on their own."""
    from NPCPrognosisLib.cli import main

    def build(out: Path) -> None:
        code = main(["--quiet", "train", "--manifest", str(small_cohort / "manifest.csv"), "--features",
                     str(small_cohort / "features.csv"), "--endpoint", "dmfs", "--out", str(out / "bundle"),
                     "--test-fraction", "0.25", "--seed", "1", "--robustness-patients", "0",
                     "--binary-endpoint", "ic_response", "--permutations", "0"])
        assert code == 0

    return _built_once(tmp_path_factory, "trained", build) / "bundle"


def pytest_collection_modifyitems(config, items) -> None:
    """Modules with end-to-end (``slow``) tests first, so that the two workers start on the long ones and the
    many short modules fill in at the end; the order inside a module is left as written."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)
