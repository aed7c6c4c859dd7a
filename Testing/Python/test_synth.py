"""The synthetic cohort must look like multi-scanner NPC MRI and carry a survival signal we know the size of."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from NPCPrognosisLib.datasets import synth
from NPCPrognosisLib.errors import InputError

SEED = 11
N = 5


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return synth.synthesize_cohort(N, SEED, tmp_path_factory.mktemp("cohort"), progress=False)


@pytest.fixture(scope="module")
def rows(cohort):
    with open(cohort.manifest_path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def outcomes():
    return synth.simulate_outcomes(2000, 2024)


def _read(manifest_path: Path, rel: str) -> sitk.Image:
    return sitk.ReadImage(str(manifest_path.parent / rel))


def test_manifest_columns_paths_and_notice(cohort, rows):
    with open(cohort.manifest_path, newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == synth.MANIFEST_COLUMNS
    assert [r["patient_id"] for r in rows] == cohort.patient_ids == [f"SYN{i:04d}" for i in range(1, N + 1)]
    for r in rows:
        for key in ("t1", "t2", "t1c", "mask"):
            assert r[key] == f"images/{r['patient_id']}_{key}.nii.gz"
            assert (cohort.manifest_path.parent / r[key]).is_file()
        assert r["sex"] in ("M", "F") and r["t_stage"] in ("T1", "T2", "T3", "T4")
        assert r["n_stage"] in ("N0", "N1", "N2", "N3") and r["ldh"].isdigit()
        assert r["dmfs_event"] in ("0", "1") and len(r["dmfs_time"].split(".")[1]) == 2
    readme = (cohort.manifest_path.parent / "README.txt").read_text(encoding="utf-8")
    assert synth.SYNTHETIC_NOTICE in readme and "NOT CLINICAL" in synth.SYNTHETIC_NOTICE
    assert "SYNTHETIC" in (synth.__doc__ or "")
    with open(cohort.truth_path, newline="") as fh:
        assert tuple(next(csv.reader(fh))) == synth.TRUTH_COLUMNS


def test_the_cohort_is_marked_synthetic_for_training(cohort, tmp_path, caplog):
    """A bundle trained on a synth cohort without --synthetic said only 'Research software' on its sheets: the
    marker beside the manifest marks it (and a manifest derived in the same folder), not a copy moved elsewhere."""
    import logging
    import shutil

    from NPCPrognosisLib.io.manifest import SYNTHETIC_MARKER, is_synthetic_cohort, read_manifest

    marker = json.loads((cohort.manifest_path.parent / SYNTHETIC_MARKER).read_text(encoding="utf-8"))
    assert marker["synthetic"] is True and marker["patients"] == N and marker["seed"] == SEED
    with caplog.at_level(logging.WARNING):
        assert is_synthetic_cohort(read_manifest(cohort.manifest_path))
    assert "marked SYNTHETIC" in caplog.text
    censored = cohort.manifest_path.with_name("manifest_censor40.csv")
    shutil.copy(cohort.manifest_path, censored)
    assert is_synthetic_cohort(read_manifest(censored))
    elsewhere = tmp_path / "real" / "manifest.csv"
    shutil.copytree(cohort.manifest_path.parent / "images", elsewhere.parent / "images")
    shutil.copy(cohort.manifest_path, elsewhere)
    assert not is_synthetic_cohort(read_manifest(elsewhere))


def test_images_share_one_grid_and_types(cohort, rows):
    for r in rows:
        imgs = {k: _read(cohort.manifest_path, r[k]) for k in ("t1", "t2", "t1c", "mask")}
        ref = imgs["mask"]
        assert ref.GetPixelID() == sitk.sitkUInt8
        for k in ("t1", "t2", "t1c"):
            assert imgs[k].GetPixelID() == sitk.sitkFloat32
            assert imgs[k].GetSize() == ref.GetSize()
            np.testing.assert_allclose(imgs[k].GetSpacing(), ref.GetSpacing(), atol=1e-6)
            np.testing.assert_allclose(imgs[k].GetOrigin(), ref.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(imgs[k].GetDirection(), ref.GetDirection(), atol=1e-6)
        sx, sy, sz = ref.GetSpacing()
        nx, ny, nz = ref.GetSize()
        assert sx == pytest.approx(sy) and 1.2 <= sx <= 2.0 and 3.0 <= sz <= 5.0
        assert nx == ny and 96 <= nx <= 150 and 24 <= nz <= 40


def test_mask_labels_follow_staging_and_volume(cohort, rows):
    with open(cohort.truth_path, newline="") as fh:
        truth = {t["patient_id"]: t for t in csv.DictReader(fh)}
    stages = set()
    for r in rows:
        mask = _read(cohort.manifest_path, r["mask"])
        arr = sitk.GetArrayFromImage(mask)
        assert set(np.unique(arr)) <= {0, 1, 2}
        voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
        gtvp_ml = (arr == 1).sum() * voxel_ml
        assert gtvp_ml == pytest.approx(float(truth[r["patient_id"]]["gtvp_volume_ml"]), rel=0.2)
        node_positive = r["n_stage"] != "N0"
        stages.add(node_positive)
        assert ((arr == 2).any()) == node_positive
        assert (int(truth[r["patient_id"]]["n_nodes"]) > 0) == node_positive
        if not node_positive:
            assert r["rene"] == "0"
    assert stages == {True, False}, "fixture cohort should contain N0 and N+ patients; change SEED"


def test_determinism_and_patient_independence(cohort, rows, tmp_path):
    again = synth.synthesize_cohort(N, SEED, tmp_path / "again", progress=False)
    assert again.manifest_path.read_text(encoding="utf-8") == cohort.manifest_path.read_text(encoding="utf-8")
    assert again.truth_path.read_text(encoding="utf-8") == cohort.truth_path.read_text(encoding="utf-8")
    for r in rows[:2]:
        for k in ("t1c", "mask"):
            a = sitk.GetArrayFromImage(_read(cohort.manifest_path, r[k]))
            b = sitk.GetArrayFromImage(_read(again.manifest_path, r[k]))
            np.testing.assert_array_equal(a, b)
    other = synth.synthesize_cohort(1, SEED + 1, tmp_path / "other", progress=False)
    assert other.manifest_path.read_text(encoding="utf-8") != cohort.manifest_path.read_text(encoding="utf-8")
    a = sitk.GetArrayFromImage(_read(cohort.manifest_path, rows[0]["t1"]))
    b = sitk.GetArrayFromImage(_read(other.manifest_path, "images/SYN0001_t1.nii.gz"))
    assert a.shape != b.shape or not np.array_equal(a, b)
    # Images are not needed to reproduce the records, and patient i ignores how many came before or after.
    sim = synth.simulate_outcomes(N, SEED)
    assert sim["dmfs_time"].map("{:.2f}".format).tolist() == [r["dmfs_time"] for r in rows]
    assert sim["age"].astype(str).tolist() == [r["age"] for r in rows]
    short = synth.simulate_outcomes(2, SEED)
    assert short.equals(sim.iloc[:2])


def test_id_prefix_renames_the_patients_and_changes_nothing_else(cohort, rows, tmp_path):
    """Bundles recognise their training patients by ID, so a cohort that trains a network needs IDs no other
    synthetic cohort uses (scripts/train_demo_network.sh); the prefix must not change who the patients are."""
    from NPCPrognosisLib.cli import main

    assert main(["--quiet", "synth", "--n", "2", "--seed", str(SEED), "--id-prefix", "NET",
                 "--out", str(tmp_path / "named")]) == 0
    with open(tmp_path / "named" / "manifest.csv", newline="") as fh:
        named = list(csv.DictReader(fh))
    assert [r["patient_id"] for r in named] == ["NET0001", "NET0002"]
    for mine, theirs in zip(named, rows[:2]):
        assert {k: v for k, v in mine.items() if k not in ("patient_id", "t1", "t2", "t1c", "mask")} == \
            {k: v for k, v in theirs.items() if k not in ("patient_id", "t1", "t2", "t1c", "mask")}
        for k in ("t1c", "mask"):
            assert mine[k] == f"images/{mine['patient_id']}_{k}.nii.gz"
            np.testing.assert_array_equal(sitk.GetArrayFromImage(_read(tmp_path / "named" / "manifest.csv", mine[k])),
                                          sitk.GetArrayFromImage(_read(cohort.manifest_path, theirs[k])))


def test_scanner_geometry_varies_across_patients():
    grids = [synth._scanner_grid(np.random.default_rng(i)) for i in range(40)]
    spacings = {tuple(np.round(g.GetSpacing(), 3)) for g in grids}
    directions = [np.array(g.GetDirection()).reshape(3, 3) for g in grids]
    signs = {tuple(np.sign(np.round(np.diag(d), 1))) for d in directions}
    assert len(spacings) == 40
    assert {(1.0, 1.0, 1.0), (-1.0, -1.0, 1.0)} <= signs  # LPS-like and RAS-like storage both occur
    tilted = [d for d in directions if not np.allclose(np.abs(d), np.eye(3), atol=1e-6)]
    assert tilted and all(np.allclose(d @ d.T, np.eye(3), atol=1e-9) for d in directions)
    assert max(np.degrees(np.arccos(np.clip(np.abs(d[2, 2]), 0, 1))) for d in tilted) < 8.0


def test_tissue_contrast_tumour_enhances_and_necrosis_does_not():
    seen_necrosis = False
    for i in range(4):
        p = synth.synthesize_patient(np.random.default_rng(100 + i), f"P{i}")
        tissue = sitk.GetArrayFromImage(p.tissue)
        mask = sitk.GetArrayFromImage(p.mask)
        t1c, t2 = sitk.GetArrayFromImage(p.t1c), sitk.GetArrayFromImage(p.t2)
        viable = (tissue == synth.TISSUE["tumour"]) & (mask == 1)
        muscle = tissue == synth.TISSUE["muscle"]
        assert viable.sum() > 20 and muscle.sum() > 200
        assert t1c[viable].mean() > 1.4 * t1c[muscle].mean()
        necrotic = (tissue == synth.TISSUE["necrosis"]) & (mask == 1)
        if necrotic.sum() > 20:
            seen_necrosis = True
            assert t1c[necrotic].mean() < t1c[viable].mean()
            assert t2[necrotic].mean() > t2[viable].mean()
    assert seen_necrosis


def test_oracle_concordance_and_event_rate(outcomes):
    from sksurv.metrics import concordance_index_censored

    events = outcomes["dmfs_event"].to_numpy().astype(bool)
    c = concordance_index_censored(events, outcomes["dmfs_time"].to_numpy(), outcomes["lp_dmfs"].to_numpy())[0]
    assert 0.72 <= c <= 0.85
    assert 0.25 <= events.mean() <= 0.5
    # Endpoints are coherent: progression comes no later than metastasis; deaths come later on average.
    assert (outcomes["pfs_time"] <= outcomes["dmfs_time"]).all()
    assert outcomes["os_event"].mean() < outcomes["pfs_event"].mean()


def test_chemotherapy_helps_only_the_high_risk_half(outcomes):
    from lifelines import CoxPHFitter

    df = outcomes.assign(
        high_dose=(outcomes["ccnd"] > synth.CCND_THRESHOLD).astype(int),
        base=outcomes["lp_dmfs"] - synth.CHEMO_LOG_HR * outcomes["chemo_benefit_applied"],
    )
    assert df["high_risk"].mean() == pytest.approx(0.5, abs=0.05)  # the fixed threshold is the population median
    hr = {}
    for half in (0, 1):
        sub = df[df["high_risk"] == half][["dmfs_time", "dmfs_event", "high_dose", "base"]]
        fit = CoxPHFitter().fit(sub, "dmfs_time", "dmfs_event")
        hr[half] = float(fit.hazard_ratios_["high_dose"])
    assert hr[1] < 0.8
    assert 0.7 < hr[0] < 1.4


def test_clinical_factors_are_plausible(outcomes):
    from scipy.stats import spearmanr

    assert outcomes["ebv_dna"].isna().mean() == pytest.approx(0.10, abs=0.04)
    assert (outcomes["sex"] == "M").mean() == pytest.approx(2.5 / 3.5, abs=0.05)
    assert outcomes["age"].between(25, 75).all() and outcomes["ldh"].between(120, 350).all()
    assert ((outcomes["n_stage"] == "N0") == (outcomes["n_nodes"] == 0)).all()
    assert (outcomes.loc[outcomes["n_nodes"] == 0, "rene"] == 0).all()
    assert (outcomes.loc[outcomes["chemo"] == 0, "ccnd"] == 0).all()
    assert outcomes.loc[outcomes["chemo"] == 1, "ccnd"].between(80, 300).all()
    t_num = outcomes["t_stage"].str[1].astype(int)
    assert spearmanr(t_num, outcomes["gtvp_volume_ml"])[0] > 0.7
    burden = np.log(outcomes["gtvp_volume_ml"]) + np.log1p(outcomes["gtvn_volume_ml"])
    known = outcomes["ebv_dna"].notna()
    assert spearmanr(burden[known], outcomes.loc[known, "ebv_dna"])[0] > 0.3
    assert spearmanr(outcomes["gtvp_volume_ml"], outcomes["ic_response"])[0] < 0


def test_sample_case_is_node_positive_with_clinical_json(tmp_path):
    paths = synth.write_sample_case(tmp_path / "sample", seed=7)
    assert set(paths) == {"t1", "t2", "t1c", "mask"}
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["mask"])))
    assert (mask == 1).any() and (mask == 2).any()
    clinical = json.loads((tmp_path / "sample" / "clinical.json").read_text(encoding="utf-8"))
    assert set(synth.CLINICAL_COLUMNS) <= set(clinical)
    assert clinical["n_stage"] in ("N1", "N2") and clinical["ebv_dna"] is not None
    assert synth.SYNTHETIC_NOTICE in (tmp_path / "sample" / "README.txt").read_text(encoding="utf-8")


def test_bad_cohort_size_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="at least 1"):
        synth.synthesize_cohort(0, 1, tmp_path)
