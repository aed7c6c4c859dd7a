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
    cohort = synthesize_cohort(24, 3, root, progress=False)
    extract_cohort(read_manifest(cohort.manifest_path), root / "features.csv", workers=2,
                   params_path=RADIOMICS_FAST_PARAMS,
                   progress=False)
    return root
