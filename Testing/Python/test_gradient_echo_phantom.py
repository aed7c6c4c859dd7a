"""Family C (gradient-echo phantom): file contract, geometry, labels, determinism and outcome-model targets.

SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from NPCPrognosisLib.datasets import gradient_echo_phantom, phantom_family
from NPCPrognosisLib.datasets.cohort_files import patient_generators
from NPCPrognosisLib.datasets.synth import MANIFEST_COLUMNS, TRUTH_COLUMNS
from NPCPrognosisLib.io.images import load_patient
from NPCPrognosisLib.survival.metrics import harrell_c

N, SEED = 6, 5  # index 3 is written as DICOM series


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("gre")
    result = gradient_echo_phantom.synthesize_cohort(N, SEED, out, progress=False)
    manifest = pd.read_csv(result.manifest_path, dtype={"patient_id": str}, keep_default_na=False)
    truth = pd.read_csv(result.truth_path, dtype={"patient_id": str})
    patients = {}
    for _, row in manifest.iterrows():
        patients[row.patient_id] = load_patient(row.patient_id, {s: out / row[s] for s in ("t1", "t2", "t1c")},
                                                out / row["mask"])
    return out, manifest, truth, patients


def test_registered_and_files(cohort):
    out, manifest, truth, _ = cohort
    assert phantom_family("gradient_echo") is gradient_echo_phantom
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert tuple(truth.columns) == TRUTH_COLUMNS
    assert "SYNTHETIC" in (out / "README.txt").read_text() and (out / "pathology.csv").is_file()
    assert (out / manifest["t1c"][3]).is_dir() and manifest["mask"][3].endswith("_mask.nii.gz")  # DICOM patient


def test_masks_volumes_and_nodes(cohort):
    out, manifest, truth, patients = cohort
    flipped = 0
    for (_, row), (_, tr) in zip(manifest.iterrows(), truth.iterrows()):
        mask_img = sitk.ReadImage(str(out / row["mask"]))
        mask = sitk.GetArrayFromImage(mask_img)
        assert mask.dtype == np.uint8
        assert patients[row.patient_id].mask is not None
        ml = (mask == 1).sum() * np.prod(mask_img.GetSpacing()) / 1000.0
        assert ml > 0 and abs(ml - tr.gtvp_volume_ml) <= 0.15 * tr.gtvp_volume_ml, (row.patient_id, ml)
        assert ((mask == 2).any()) == (row.n_stage != "N0"), row.patient_id
        flipped += bool(np.any(np.diag(np.array(mask_img.GetDirection()).reshape(3, 3)) < 0))
        t1c = sitk.ReadImage(str(out / row["t1c"])) if not (out / row["t1c"]).is_dir() else None
        if t1c is not None:
            assert t1c.GetSize() == mask_img.GetSize() and np.allclose(t1c.GetOrigin(), mask_img.GetOrigin())
    assert flipped >= 1


def test_tumour_visible_not_trivial(cohort):
    _, _, _, patients = cohort
    aucs = []
    for p in patients.values():
        img = sitk.GetArrayFromImage(p.images["t1c"]).astype(float)
        mask = sitk.GetArrayFromImage(p.mask)
        head = img > 0.1 * np.percentile(img, 99)
        gtv = mask == 1
        spacing = np.array(p.mask.GetSpacing())[::-1]
        dist = ndimage.distance_transform_edt(~gtv, sampling=spacing)
        shell = (dist > 0) & (dist <= 5.0) & (mask == 0)
        assert img[gtv].mean() > img[head].mean()
        labels = np.r_[np.ones(gtv.sum()), np.zeros(shell.sum())]
        aucs.append(roc_auc_score(labels, np.r_[img[gtv], img[shell]]))
    assert 0.6 < np.median(aucs) < 0.98, aucs


def test_determinism_and_outcomes_match(cohort):
    out, manifest, _, _ = cohort
    i = 4  # a NIfTI patient: the cohort's files must equal a fresh draw from the same child seed
    again = gradient_echo_phantom.synthesize_patient(patient_generators(N, SEED)[i],
                                                     manifest.patient_id[i])
    for seq in ("t1", "t2", "t1c", "mask"):
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / manifest[seq][i])))
        assert np.array_equal(written, sitk.GetArrayFromImage(getattr(again, seq))), seq
    sim = gradient_echo_phantom.simulate_outcomes(N, SEED)
    for col in ("age", "ldh", "dmfs_event", "os_event", "pfs_event", "ic_response", "chemo", "ccnd"):
        assert np.array_equal(sim[col].to_numpy(), manifest[col].astype(int).to_numpy()), col
    for col in ("dmfs_time", "os_time", "pfs_time"):
        assert np.allclose(sim[col].to_numpy(), manifest[col].astype(float).to_numpy(), atol=0.006), col
    assert list(sim.t_stage) == list(manifest.t_stage) and list(sim.n_stage) == list(manifest.n_stage)


def test_outcome_model_targets():
    df = gradient_echo_phantom.simulate_outcomes(4000, 123)
    c = harrell_c(df.dmfs_time, df.dmfs_event, df.lp_dmfs)
    assert 0.70 <= c <= 0.82, c
    assert 0.2 <= df.dmfs_event.mean() <= 0.5
    assert (df[["dmfs_time", "os_time", "pfs_time"]] > 0).all().all()
    auc = roc_auc_score(df.ic_response, df.p_ic_response)
    assert 0.6 <= auc <= 0.8, auc
    assert (df.loc[df.n_stage == "N0", "rene"] == 0).all() and (df.loc[df.chemo == 0, "ccnd"] == 0).all()
