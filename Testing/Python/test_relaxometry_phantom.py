"""The relaxometry phantom (family B) honours family A's file contract and carries the signal it claims to carry."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.stats import spearmanr

from NPCPrognosisLib.datasets import relaxometry_phantom as rp
from NPCPrognosisLib.datasets import synth
from NPCPrognosisLib.imaging.geometry import same_geometry
from NPCPrognosisLib.io.images import load_patient, read_image
from NPCPrognosisLib.io.manifest import read_manifest
from NPCPrognosisLib.survival.metrics import harrell_c

SEED = 3
N = 12


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return rp.synthesize_cohort(N, SEED, tmp_path_factory.mktemp("phantom"), progress=False)


@pytest.fixture(scope="module")
def rows(cohort) -> list[dict[str, str]]:
    with open(cohort.manifest_path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def truth(cohort) -> dict[str, dict[str, str]]:
    with open(cohort.truth_path, newline="") as fh:
        return {t["patient_id"]: t for t in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def loaded(cohort, rows):
    root = cohort.manifest_path.parent
    return {r["patient_id"]: load_patient(r["patient_id"], {k: root / r[k] for k in ("t1", "t2", "t1c")},
                                          root / r["mask"]) for r in rows}


@pytest.fixture(scope="module")
def outcomes():
    return rp.simulate_outcomes(5000, 2025)


def test_manifest_truth_and_notice_follow_the_contract(cohort, rows):
    with open(cohort.manifest_path, newline="") as fh:
        assert tuple(next(csv.reader(fh))) == synth.MANIFEST_COLUMNS
    with open(cohort.truth_path, newline="") as fh:
        assert tuple(next(csv.reader(fh))) == synth.TRUTH_COLUMNS
    assert isinstance(cohort, synth.SynthCohort)
    assert [r["patient_id"] for r in rows] == cohort.patient_ids == [f"RLX{i:04d}" for i in range(1, N + 1)]
    for r in rows:
        assert r["sex"] in ("M", "F") and r["t_stage"] in ("T1", "T2", "T3", "T4")
        assert r["n_stage"] in ("N0", "N1", "N2", "N3") and r["rene"] in ("0", "1", "2")
        assert r["ldh"].isdigit() and r["chemo"] in ("0", "1") and (r["ccnd"] == "0") == (r["chemo"] == "0")
        assert r["ebv_dna"] == "" or r["ebv_dna"].isdigit()
        for ep in ("dmfs", "os", "pfs"):
            assert r[f"{ep}_event"] in ("0", "1") and len(r[f"{ep}_time"].split(".")[1]) == 2
            assert float(r[f"{ep}_time"]) > 0
        assert float(r["pfs_time"]) <= min(float(r["dmfs_time"]), float(r["os_time"]))
        if r["n_stage"] == "N0":
            assert r["rene"] == "0"
    read_manifest(cohort.manifest_path, require_mask=True)  # the project's own validation accepts it
    readme = (cohort.manifest_path.parent / "README.txt").read_text(encoding="utf-8")
    assert rp.SYNTHETIC_NOTICE in readme and "NOT CLINICAL" in readme
    assert "NPCPrognosisLib.datasets.relaxometry_phantom" in rp.SYNTHETIC_NOTICE
    assert "SYNTHETIC" in (rp.__doc__ or "")


def test_every_patient_loads_and_the_geometry_varies(cohort, rows, truth, loaded):
    root = cohort.manifest_path.parent
    dicom, flipped, own_t2_grid = [], [], []
    for i, r in enumerate(rows):
        pid = r["patient_id"]
        patient = loaded[pid]
        if rp.writes_dicom(i):
            dicom.append(pid)
            for seq in ("t1", "t2", "t1c"):
                folder = root / r[seq]
                assert folder.is_dir() and len(list(folder.glob("*.dcm"))) >= 20
            assert not any("mask" in w for w in patient.warnings)
        else:
            assert all(r[seq].endswith(".nii.gz") for seq in ("t1", "t2", "t1c"))
        mask_file = sitk.ReadImage(str(root / r["mask"]))
        assert mask_file.GetPixelID() == sitk.sitkUInt8 and r["mask"].endswith(".nii.gz")
        assert same_geometry(mask_file, patient.images["t1c"]), "mask must lie on the t1c grid"
        arr = sitk.GetArrayFromImage(patient.mask)
        assert set(np.unique(arr).tolist()) <= {0, 1, 2} and (arr == 1).any()
        assert (arr == 2).any() == (r["n_stage"] != "N0") == (int(truth[pid]["n_nodes"]) > 0)
        ref = patient.images["t1c"]
        voxel_ml = float(np.prod(ref.GetSpacing())) / 1000.0
        assert (arr == 1).sum() * voxel_ml == pytest.approx(float(truth[pid]["gtvp_volume_ml"]), rel=0.1)
        sx, sy, sz = ref.GetSpacing()
        nx, ny, nz = ref.GetSize()
        assert sx == pytest.approx(sy) and 0.8 <= sx <= 1.0 and 3.0 <= sz <= 4.0
        assert 190.0 <= nx * sx <= 210.0 and 190.0 <= ny * sy <= 210.0 and 110.0 <= nz * sz <= 130.0
        direction = np.array(ref.GetDirection()).reshape(3, 3)
        assert np.allclose(direction @ direction.T, np.eye(3), atol=1e-6)
        flipped.append(bool((np.diag(direction) < 0).any()))
        own_t2_grid.append(not same_geometry(read_image(root / r["t2"]), patient.images["t1c"]))
    assert dicom == ["RLX0004"]
    assert 1 <= sum(flipped) <= N - 1 and any(own_t2_grid)
    assert {r["n_stage"] == "N0" for r in rows} == {True, False}


def test_same_seed_same_files_whatever_the_workers(cohort, rows, tmp_path):
    again = rp.synthesize_cohort(4, SEED, tmp_path / "again", progress=False, workers=2)
    lines = cohort.manifest_path.read_text(encoding="utf-8").splitlines(keepends=True)
    # byte-identical rows, n and workers aside
    assert again.manifest_path.read_text(encoding="utf-8") == "".join(lines[:5])
    lines = cohort.truth_path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert again.truth_path.read_text(encoding="utf-8") == "".join(lines[:5])
    for r in rows[:4]:
        for key in ("t1c", "t2", "mask"):
            a = read_image(cohort.manifest_path.parent / r[key])
            b = read_image(again.manifest_path.parent / r[key])
            np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    sim = rp.simulate_outcomes(N, SEED)
    assert sim["dmfs_time"].map("{:.2f}".format).tolist() == [r["dmfs_time"] for r in rows]
    assert sim["age"].astype(str).tolist() == [r["age"] for r in rows]
    assert rp.simulate_outcomes(3, SEED).equals(sim.iloc[:3])
    assert not rp.simulate_outcomes(3, SEED + 1)["dmfs_time"].equals(sim["dmfs_time"].iloc[:3])


def test_oracle_concordance_event_share_and_coherent_endpoints(outcomes):
    c = harrell_c(outcomes["dmfs_time"], outcomes["dmfs_event"], outcomes["lp_dmfs"])
    assert 0.68 <= c <= 0.80
    assert 0.25 <= outcomes["dmfs_event"].mean() <= 0.50
    for ep in ("os", "pfs"):
        assert harrell_c(outcomes[f"{ep}_time"], outcomes[f"{ep}_event"], outcomes[f"lp_{ep}"]) > 0.65
    assert (outcomes["pfs_time"] <= outcomes["dmfs_time"]).all() and (outcomes["pfs_time"] <= outcomes["os_time"]).all()
    assert outcomes["os_event"].mean() < outcomes["dmfs_event"].mean() < outcomes["pfs_event"].mean()
    assert outcomes["dmfs_time"].max() <= 120.0
    assert outcomes["high_risk"].mean() == pytest.approx(0.5, abs=0.04)  # LP_CENTRE is the population median


def test_clinical_factors_are_plausible_and_confounded(outcomes):
    o = outcomes
    assert o["ebv_dna"].isna().mean() == pytest.approx(0.05, abs=0.02)
    assert ((o["n_stage"] == "N0") == (o["n_nodes"] == 0)).all() and (o.loc[o["n_nodes"] == 0, "rene"] == 0).all()
    assert (o.loc[o["chemo"] == 0, "ccnd"] == 0).all() and o.loc[o["chemo"] == 1, "ccnd"].between(80, 300).all()
    advanced = (o["t_stage"].isin(["T3", "T4"])) | (o["n_stage"].isin(["N2", "N3"]))
    assert o.loc[advanced, "chemo"].mean() > 0.8 > 0.4 > o.loc[~advanced, "chemo"].mean()
    assert spearmanr(o["t_stage"].str[1].astype(int), o["gtvp_volume_ml"])[0] > 0.6
    assert spearmanr(o["heterogeneity"], o["ic_response"])[0] > 0.05
    assert o["heterogeneity"].between(0.04, 0.55).all() and o["necrosis_fraction"].between(0.0, 0.3).all()


def test_chemotherapy_helps_only_the_high_risk_half(outcomes):
    from lifelines import CoxPHFitter

    df = outcomes.assign(
        high_dose=(outcomes["ccnd"] > rp.CCND_THRESHOLD).astype(int),
        base=outcomes["lp_dmfs"] + rp.CHEMO_EFFECT * outcomes["chemo_benefit_applied"],
    )
    assert ((df["base"] > 0) == df["high_risk"].astype(bool)).all()
    hr = {}
    for half in (0, 1):
        sub = df[df["high_risk"] == half][["dmfs_time", "dmfs_event", "high_dose", "base"]]
        hr[half] = float(CoxPHFitter().fit(sub, "dmfs_time", "dmfs_event").hazard_ratios_["high_dose"])
    assert hr[1] < 0.8
    assert 0.75 < hr[0] < 1.33


def _t2_spread(patient) -> float:
    """Interquartile range over median of T2W in the enhancing GTVp core: a texture measure free of gain and TE.

    The core is the GTVp eroded in plane; voxels enhancing less than 0.6 x the core's median CET1W (necrosis)
    are left out, since bright necrosis would widen the spread whatever the cellularity.
    """
    mask = sitk.GetArrayFromImage(patient.mask) == 1
    core = ndimage.binary_erosion(mask, np.ones((1, 3, 3), bool))
    core = core if core.sum() > 30 else mask
    t1c = sitk.GetArrayFromImage(patient.images["t1c"])
    enhancing = core & (t1c > 0.6 * np.median(t1c[core]))
    q25, q50, q75 = np.percentile(sitk.GetArrayFromImage(patient.images["t2"])[enhancing], [25, 50, 75])
    return float((q75 - q25) / q50)


def test_hypercellular_fraction_is_visible_on_t2(rows, truth, loaded):
    het = [float(truth[r["patient_id"]]["heterogeneity"]) for r in rows]
    spread = [_t2_spread(loaded[r["patient_id"]]) for r in rows]
    assert spearmanr(het, spread)[0] > 0.5  # more hypercellular tumour = more mottled T2W


def test_tissue_contrast_follows_relaxation(cohort, rows):
    """Rendered again in memory (same generators), with the tissue map: tumour vs muscle, necrosis vs viable."""
    generators = np.random.SeedSequence(SEED).spawn(N)
    root = cohort.manifest_path.parent
    seen_necrosis = 0
    for i in range(N):
        p = rp.synthesize_patient(np.random.default_rng(generators[i]), rows[i]["patient_id"], dicom=rp.writes_dicom(i))
        on_disk = sitk.ReadImage(str(root / rows[i]["mask"]))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(p.mask), sitk.GetArrayFromImage(on_disk))
        tissue, mask = sitk.GetArrayFromImage(p.tissue), sitk.GetArrayFromImage(p.mask)
        t2 = sitk.Resample(p.t2, p.t1c, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        t2 = sitk.GetArrayFromImage(t2)
        t1c = sitk.GetArrayFromImage(p.t1c).astype(float)
        gtvp, muscle = mask == 1, ndimage.binary_erosion(tissue == rp.TISSUE["muscle"], np.ones((1, 3, 3), bool))
        viable = gtvp & (tissue == rp.TISSUE["tumour"])
        assert muscle.sum() > 1000 and viable.sum() > 20
        assert t2[gtvp].mean() > 1.5 * t2[muscle].mean()
        assert t1c[viable].mean() > 1.3 * t1c[muscle].mean()
        necrotic = gtvp & (tissue == rp.TISSUE["necrosis"])
        if necrotic.sum() > 30:
            seen_necrosis += 1
            assert t2[necrotic].mean() > t2[viable].mean() and t1c[necrotic].mean() < t1c[viable].mean()
        hyper = gtvp & (tissue == rp.TISSUE["hypercellular"])
        if hyper.sum() > 30:
            assert t2[hyper].mean() < t2[viable].mean()
    assert seen_necrosis >= 1
