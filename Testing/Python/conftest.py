"""Shared fixtures: small SYNTHETIC cohorts made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from NPCPrognosisLib.resources import RADIOMICS_FAST_PARAMS

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """24 synthetic patients with radiomics (original-image features only, for speed)."""
    from NPCPrognosisLib.datasets.synth import synthesize_cohort
    from NPCPrognosisLib.io.manifest import read_manifest
    from NPCPrognosisLib.pipeline.extract import extract_cohort

    root = tmp_path_factory.mktemp("small_cohort")
    cohort = synthesize_cohort(24, 3, root, progress=False, workers=2)
    extract_cohort(read_manifest(cohort.manifest_path), root / "features.csv", workers=2,
                   params_path=RADIOMICS_FAST_PARAMS,
                   progress=False)
    return root


@pytest.fixture(scope="session")
def trained(small_cohort, tmp_path_factory) -> Path:
    """A bundle trained on ``small_cohort`` (DMFS, with the ic_response classifiers), shared by the pipeline and
    report tests; without the robustness study and the permutation test, which test_robustness and
    test_binary_endpoint exercise on their own."""
    from NPCPrognosisLib.cli import main

    out = tmp_path_factory.mktemp("trained")
    code = main(["--quiet", "train", "--manifest", str(small_cohort / "manifest.csv"), "--features",
                 str(small_cohort / "features.csv"), "--endpoint", "dmfs", "--out", str(out / "bundle"),
                 "--test-fraction", "0.25", "--seed", "1", "--robustness-patients", "0",
                 "--binary-endpoint", "ic_response", "--permutations", "0"])
    assert code == 0
    return out / "bundle"
