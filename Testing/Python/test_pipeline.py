"""The command line end to end on a small SYNTHETIC cohort: extract -> train -> evaluate -> predict, and failures."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from NPCPrognosisLib.cli import main
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.bundle import read_bundle
from NPCPrognosisLib.pipeline.predict import SYNTHETIC_WARNING
from NPCPrognosisLib.radiomics.extraction import feature_columns
from NPCPrognosisLib.resources import RADIOMICS_FAST_PARAMS


def test_features_table_has_fixed_columns_and_metadata(small_cohort):
    table = pd.read_csv(small_cohort / "features.csv", dtype={"patient_id": str})
    assert len(table) == 24
    assert list(table.columns[1:]) == feature_columns(RADIOMICS_FAST_PARAMS)
    meta = json.loads((small_cohort / "features.meta.json").read_text(encoding="utf-8"))
    assert meta["pyradiomics_version"].lstrip("v").startswith("3.")
    assert len(meta["settings_hash"]) == 64 and meta["settings"]["setting"]["binWidth"] == 25
    n0 = table["gtvn_present"] == 0
    assert table.loc[n0, [c for c in table.columns if "_gtvn_" in c]].isna().all().all()
    assert table.loc[~n0, "t1c_gtvn_original_shape_MeshVolume"].notna().all()
    assert pd.read_csv(small_cohort / "features.failures.csv").empty


def test_a_training_block_drops_the_tests_of_groups_split_on_its_own_patients_and_their_warnings():
    from NPCPrognosisLib.pipeline.train import _without_group_tests
    from NPCPrognosisLib.survival.metrics import evaluate_risk

    block = {"c_index": 0.7, "logrank_p": 0.01, "logrank_chi2": 6.6, "hr_high_vs_low": 2.0,
             "hr_high_vs_low_95ci": [1.2, 3.3], "calibration": {"36": []}, "n_high": 9,
             "warnings": ["hazard ratio of high vs low risk: not estimable", "log-rank test of high vs low risk: x",
                          "uno_c: short"]}
    out = _without_group_tests(block)
    assert out["warnings"] == ["uno_c: short"] and out["c_index"] == 0.7 and out["n_high"] == 9
    assert not {"logrank_p", "logrank_chi2", "hr_high_vs_low", "hr_high_vs_low_95ci", "calibration"} & set(out)
    # the words evaluate_risk writes are those dropped (every event in the high-risk group: no hazard ratio)
    t, e = np.arange(2, 18, 2.0), np.array([1, 0, 1, 1, 0, 0, 0, 0])
    real = evaluate_risk(np.array([3, 2.5, 2, 1.5, 0, -0.5, -1, -1.5]), t, e, t, e, cutoff=1.0, n_boot=0,
                         times=(6.0,))
    assert any(w.startswith("hazard ratio") for w in real["warnings"])
    dropped = _without_group_tests(real)
    assert not any(w.startswith("hazard ratio") for w in dropped["warnings"])
    assert "hr_high_vs_low_not_estimable" not in dropped


def test_bundle_contents(trained, small_cohort):
    document = read_bundle(trained)
    assert document["endpoint"] == "dmfs"
    assert document["synthetic_demo"] is True  # trained on a synth cohort without --synthetic: marked all the same
    assert set(document["models"]) == {"radiomics", "clinical", "nomogram", "volume"}
    assert document["models"]["nomogram"]["model"]["covariates"][0] == "rad_score"
    training = document["training"]
    assert len(training["patient_id_hashes"]) == 18 and len(training["test_patient_id_hashes"]) == 6
    # Keyed with a random per-bundle salt: not the public-salt hash an attacker could tabulate once for all bundles.
    from NPCPrognosisLib.io.patient_ids import hash_id

    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    ids = set(manifest["patient_id"])
    assert len(training["id_salt"]) == 32
    assert {hash_id(p, training["id_salt"]) for p in ids} >= set(training["patient_id_hashes"])
    assert not {hash_id(p) for p in ids} & set(training["patient_id_hashes"])
    assert not any(p in json.dumps(document) for p in ids)
    assert document["signature"]["features"] and len(document["signature"]["coef"]) == len(
        document["signature"]["features"])
    benefit = document["chemo_benefit"]
    assert set(benefit["counts"]) == {"high", "low"} and benefit["threshold_mg_m2"] == 160.0
    assert benefit["estimable"] or "reason" in benefit
    for name, block in document["cutoffs"].items():
        assert block["n_high"] >= 2 and block["n_low"] >= 2, name  # >= 10 % of 18
        # the training patients' risk groups are read from the risks the cut-off was learned on (cross-fitted
        # Rad-score), not from the in-sample ones, which the cut-off could leave all in one group
        metrics = training["metrics"][name]
        assert (metrics["n_high"], metrics["n_low"]) == (block["n_high"], block["n_low"]), name
        # split where the cut-off separates these patients best: a log-rank p there is no test, so none is given
        assert not {"logrank_p", "hr_high_vs_low", "calibration"} & set(metrics) and "group_tests" in metrics


def test_train_stores_and_prints_the_optimism_and_rad_score_warnings(trained, small_cohort, tmp_path, monkeypatch,
                                                                     capsys):
    import NPCPrognosisLib.pipeline.train as train_module
    from NPCPrognosisLib.pipeline.fit import rad_score_rescaling
    from NPCPrognosisLib.pipeline.internal_validation import too_few_events_warning

    document = read_bundle(trained)
    training = document["training"]
    # 18 training patients: far fewer than 5 events per factor of the nomogram
    factors = len(document["models"]["nomogram"]["model"]["covariates"])
    assert training["events"] < 5 * factors
    assert training["optimism_warning"] == too_few_events_warning(training["events"], factors)
    assert "rad_score_rescaling" in document["cox"]
    if document["cox"]["rad_score_rescaling"] is None:  # this cohort's Rad-score held up: print one that did not
        in_sample = np.linspace(-1.0, 1.0, 18)
        document["cox"]["rad_score_rescaling"] = rad_score_rescaling(in_sample, 0.05 * in_sample)
    monkeypatch.setattr(train_module, "train", lambda *args, **kwargs: document)
    assert main(["train", "--manifest", str(small_cohort / "manifest.csv"), "--features",
                 str(small_cohort / "features.csv"), "--endpoint", "dmfs", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert f"warning: {training['optimism_warning']}" in out
    assert f"warning: {document['cox']['rad_score_rescaling']['warning']}" in out


def test_the_bundle_holds_a_cox_reference_on_the_tumour_volumes(trained, small_cohort):
    """The ``volume`` model: a Cox fit on log(1 + mL) of the GTVp and GTVn volumes of the training patients (an
    empty GTVn, no node, is 0 mL), the reference a Rad-score has to beat; it agrees with lifelines' unpenalised fit
    up to the bundle's negligible ridge, and it is no factor of the nomogram."""
    from lifelines import CoxPHFitter

    from NPCPrognosisLib.io.patient_ids import hash_id
    from NPCPrognosisLib.radiomics.features_table import read_features, tumour_volumes

    document = read_bundle(trained)
    model = document["models"]["volume"]["model"]
    assert model["covariates"] == ["log_volume_gtvp_ml", "log_volume_gtvn_ml"]
    assert not set(model["covariates"]) & set(document["models"]["nomogram"]["model"]["covariates"])
    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    features, _ = read_features(small_cohort / "features.csv")
    training = document["training"]
    hashes = set(training["patient_id_hashes"])
    rows = manifest[[hash_id(p, training["id_salt"]) in hashes for p in manifest["patient_id"]]]
    volumes = tumour_volumes(features.set_index("patient_id").loc[rows["patient_id"]].reset_index())
    gtvn = features.set_index("patient_id").loc[rows["patient_id"], "t1_gtvn_original_shape_VoxelVolume"]
    np.testing.assert_allclose(volumes["log_volume_gtvn_ml"], np.log1p(gtvn.fillna(0.0).to_numpy() / 1000.0))
    frame = volumes.assign(time=rows["dmfs_time"].to_numpy(), event=rows["dmfs_event"].to_numpy())
    reference = CoxPHFitter().fit(frame, "time", "event").params_
    np.testing.assert_allclose(model["coef"], reference[model["covariates"]].to_numpy(), rtol=0.03, atol=0.01)


def test_evaluate_writes_metrics_predictions_and_plots(small_cohort, trained, tmp_path):
    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    for column in ("t1", "t2", "t1c", "mask"):
        manifest[column] = [str(small_cohort / v) for v in manifest[column]]
    manifest["chemo_cycles"] = np.arange(len(manifest)) % 3 + 1
    manifest["regimen"] = "cisplatin"
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    code = main(["--quiet", "evaluate", "--bundle", str(trained), "--manifest", str(tmp_path / "manifest.csv"),
                 "--features", str(small_cohort / "features.csv"), "--endpoint", "dmfs", "--out", str(tmp_path),
                 "--n-boot", "50", "--subset", "all"])
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n"] == 24 and metrics["endpoint"] == "dmfs"
    # what train found of the fit (18 training patients: too few events for the optimism-corrected C) is said again
    # beside the held-out numbers (train printed it once; evaluate said nothing)
    finding = read_bundle(trained)["training"]["optimism_warning"]
    assert finding and finding in metrics["warnings"]
    for name in ("radiomics", "clinical", "nomogram"):
        block = metrics["models"][name]
        assert 0 <= block["c_index"] <= 1
        assert set(block["td_auc"]) == {"36", "60"}
        assert {"c_index_95ci", "uno_c", "logrank_p", "hr_high_vs_low"} <= set(block)
    predictions = pd.read_csv(tmp_path / "predictions.csv", dtype={"patient_id": str})
    assert {"patient_id", "radiomics_risk", "clinical_risk", "nomogram_risk", "risk_group"} <= set(predictions.columns)
    assert set(predictions["risk_group"]) <= {"high", "low"}
    # each patient's factors outside the nomogram's training range, as predict names them (a Rad-score ten times
    # beyond it gave 0.0 % survival in predictions.csv with nothing beside it)
    from NPCPrognosisLib.pipeline.evaluate import outside_training_text
    from NPCPrognosisLib.pipeline.models import load_bundle
    from NPCPrognosisLib.reporting.labels import factor_label

    assert "nomogram_outside_training_range" in predictions.columns
    nomogram = load_bundle(trained).nomograms["nomogram"]
    inside = {f: (lo + hi) / 2 for f, lo, hi in zip(nomogram.factors, nomogram.low, nomogram.high)}
    name = next(f for f in nomogram.factors if f in ("age", "ldh"))
    far = {**inside, name: 1000.0}
    texts = outside_training_text(nomogram, pd.DataFrame([inside, far]))
    assert texts[0] == "" and texts[1].startswith(f"{factor_label(name)} = 1000 (training ")
    # every factor inside its range, at its worst end: the combination gives a risk beyond any training patient's
    worst = {f: (hi if c > 0 else lo)
             for f, c, lo, hi in zip(nomogram.factors, nomogram.model.coef, nomogram.low, nomogram.high)}
    risk, (low, high) = float(nomogram.risk(worst)[0]), nomogram.risk_range
    assert risk > high
    assert outside_training_text(nomogram, pd.DataFrame([worst])) == [
        f"Risk score (all factors combined) = {risk:.2f} (training {low:.2f} to {high:.2f})"]
    # Treatment arms and the carried-through treatment columns; the benefit checks are in metrics.json.
    assert set(predictions["arm"]) <= {"rt_alone", "low_dose", "high_dose"}
    assert list(predictions["chemo_cycles"]) == list(manifest["chemo_cycles"])
    assert set(predictions["regimen"]) == {"cisplatin"}
    benefit = metrics["chemo_benefit"]
    assert {"subgroups", "t12n1", "arm_counts", "threshold_mg_m2"} <= set(benefit)
    assert {row["subgroup"] for row in benefit["subgroups"]} == {"risk group", "T stage", "N stage", "EBV DNA", "age"}
    from NPCPrognosisLib.survival.metrics import harrell_c

    c = harrell_c(predictions["dmfs_time"], predictions["dmfs_event"] > 0, predictions["nomogram_risk"])
    assert c == pytest.approx(metrics["models"]["nomogram"]["c_index"], abs=1e-12)
    # --subset all scores the 18 training patients too, and says so
    assert metrics["training_patients_included"] == 18
    assert any(w.startswith("NOT A VALIDATION: 18 ") for w in metrics["warnings"])
    # the IPCW metrics weight by this cohort's own censoring (not the training cohort's), up to the recorded tau
    from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc
    from sksurv.util import Surv

    time, event = predictions["dmfs_time"].to_numpy(float), predictions["dmfs_event"].to_numpy(bool)
    own = Surv.from_arrays(event, time)
    block = metrics["models"]["nomogram"]
    assert "evaluated cohort" in metrics["censoring_weights"]
    assert block["uno_c_tau"] == block["ipcw_horizon_months"] == pytest.approx(time.max())
    risk = predictions["nomogram_risk"].to_numpy(float)
    assert block["uno_c"] == pytest.approx(concordance_index_ipcw(own, own, risk, tau=block["uno_c_tau"])[0],
                                           abs=1e-12)
    clipped = Surv.from_arrays(event, np.minimum(time, block["ipcw_horizon_months"]))
    for months, auc in block["td_auc"].items():
        if auc is not None:
            assert auc == pytest.approx(cumulative_dynamic_auc(own, clipped, risk, [float(months)])[0][0], abs=1e-12)
    image = __import__("matplotlib.image", fromlist=["imread"]).imread(tmp_path / "km_nomogram.png")
    assert image.shape[0] > 100


def test_evaluate_leaves_out_training_patients_and_refuses_the_six_left(small_cohort, trained, tmp_path, capsys):
    """The 6 held-out patients are too few to validate anything (a C of 1.000 (1.000-1.000) on three): refused,
    with the counts, the file and the fix; and IDs re-exported in lower case are still known as training patients."""
    code = main(["evaluate", "--bundle", str(trained), "--manifest", str(small_cohort / "manifest.csv"),
                 "--features", str(small_cohort / "features.csv"), "--endpoint", "dmfs", "--out", str(tmp_path),
                 "--n-boot", "20"])
    said = capsys.readouterr().err
    assert code == 2 and "6 patient(s) with" in said and "once the 18 training patient(s) are left out" in said
    assert "manifest.csv" in said and "at least 10 patients and 2 events" in said
    assert not (tmp_path / "metrics.json").exists()
    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    features = pd.read_csv(small_cohort / "features.csv", dtype={"patient_id": str}, low_memory=False)
    for table in (manifest, features):
        table["patient_id"] = table["patient_id"].str.lower()
    for column in ("t1", "t2", "t1c", "mask"):
        manifest[column] = [str(small_cohort / v) for v in manifest[column]]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    features.to_csv(tmp_path / "features.csv", index=False)
    shutil.copy(small_cohort / "features.meta.json", tmp_path / "features.meta.json")
    assert main(["evaluate", "--bundle", str(trained), "--manifest", str(tmp_path / "manifest.csv"), "--features",
                 str(tmp_path / "features.csv"), "--endpoint", "dmfs", "--out", str(tmp_path / "eval")]) == 2
    assert "once the 18 training patient(s) are left out" in capsys.readouterr().err


def test_training_patients_are_known_whatever_the_case_and_leading_zeros():
    """Bundles from now on store hashes of id_key (case, leading zeros); older ones only the ID as written, which
    evaluate still matches in upper and lower case."""
    from NPCPrognosisLib.io.patient_ids import hash_id, id_key, new_id_salt
    from NPCPrognosisLib.pipeline.evaluated_patients import _trained
    from NPCPrognosisLib.pipeline.train import training_id_record

    assert id_key(" NPC0007 ") == id_key("npc7") == "npc7" and id_key("NPC0070") == "npc70"
    asked = ["npc0007", "NPC0007", "Npc07", "NPC0008", "npc70"]
    new = {"training": training_id_record(["NPC0007"], ["NPC0008"], True)}
    assert _trained(new, asked).tolist() == [True, True, True, False, False]
    salt = new_id_salt()
    old = {"training": {"patient_id_hashes": [hash_id("NPC0007", salt)], "id_salt": salt}}
    assert _trained(old, asked).tolist() == [True, True, False, False, False]
    unsalted = {"training": {"patient_id_hashes": [hash_id("NPC0007")], "id_salt": None}}
    assert _trained(unsalted, asked).tolist() == [True, True, False, False, False]


def test_a_cohort_too_small_to_validate_is_refused_with_its_counts_for_either_kind_of_endpoint(tmp_path):
    """Survival and binary endpoints share the floors (MIN_PATIENTS, MIN_EVENTS) and the message's frame; each
    names its own counts and reason. Exact messages, so one check serving both cannot change what either says."""
    from NPCPrognosisLib.io.manifest import Manifest
    from NPCPrognosisLib.pipeline.evaluated_patients import check_binary_cohort, check_cohort_size

    source = tmp_path / "held_out.csv"
    table = pd.DataFrame({"patient_id": [f"P{i}" for i in range(12)], "ic_response": [1] + [0] * 10 + [None]})
    manifest = Manifest(table, tmp_path, source)
    time, event = np.arange(1.0, 7.0), np.array([1, 0, 0, 0, 0, 0])
    with pytest.raises(InputError) as survival:
        check_cohort_size(time, event, manifest, "dmfs", 18)
    assert str(survival.value) == (
        f"column 'dmfs_event', file '{source}': 6 patient(s) with 1 dmfs event(s) to evaluate once the 18 training "
        "patient(s) are left out: too few to validate a model (evaluate needs at least 10 patients and 2 events: "
        "without an event no two patients can be compared, and with fewer the C-index and its interval are decided "
        "by one or two patients). Fix: evaluate on a larger held-out cohort (validation studies aim at 100 events or "
        "more)")
    with pytest.raises(InputError) as binary:
        check_binary_cohort(manifest, "ic_response", 0)
    assert str(binary.value) == (
        f"column 'ic_response', file '{source}': 11 patient(s) with ic_response recorded, 1 positive and 10 negative, "
        "to evaluate: too few to validate a classifier (evaluate needs at least 10 patients and 2 in each class). "
        "Fix: evaluate on a larger held-out cohort")
    # at the floors both pass: ten patients, two events / two in the scarcer class
    check_cohort_size(np.arange(1.0, 11.0), np.array([1, 1] + [0] * 8), manifest, "dmfs", 0)
    check_binary_cohort(Manifest(table.assign(ic_response=[1, 1] + [0] * 8 + [None, None]), tmp_path, source),
                        "ic_response", 3)


def test_evaluate_refuses_other_endpoint(small_cohort, trained, tmp_path, capsys):
    code = main(["evaluate", "--bundle", str(trained), "--manifest", str(small_cohort / "manifest.csv"),
                 "--features", str(small_cohort / "features.csv"), "--endpoint", "os", "--out", str(tmp_path)])
    assert code == 2 and "trained for dmfs" in capsys.readouterr().err


def test_predict_one_patient_matches_cohort_prediction(small_cohort, trained, tmp_path):
    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    row = manifest.iloc[0]
    clinical = [f"{k}={row[k]}" for k in ("age", "sex", "t_stage", "n_stage", "rene", "ldh", "chemo", "ccnd")]
    if not pd.isna(row["ebv_dna"]):
        clinical.append(f"ebv_dna={row['ebv_dna']}")
    args = ["--quiet", "predict", "--bundle", str(trained), "--patient-id", row["patient_id"], "--out", str(tmp_path)]
    for seq in ("t1", "t2", "t1c", "mask"):
        args += [f"--{seq}", str(small_cohort / row[seq])]
    # an earlier run's sheet and report of this patient, which the new prediction makes wrong
    for name in ("patient_sheet.html", "patient_sheet.pdf", "report.json"):
        (tmp_path / name).write_text("age 105, DMFS 6%", encoding="utf-8")
    # The bundle was trained on fast-settings features; predict must extract with the bundle's settings.
    assert main([*args, "--clinical", *clinical]) == 0
    prediction = json.loads((tmp_path / "prediction.json").read_text(encoding="utf-8"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("patient_sheet", "report"))]
    assert prediction["warnings"][0] == SYNTHETIC_WARNING  # a synth cohort's bundle, trained without --synthetic
    assert prediction["risk_group"] in ("high", "low")
    assert set(prediction["survival"]) == {"12", "36", "60"}
    assert 0 < prediction["survival"]["60"] <= prediction["survival"]["36"] <= prediction["survival"]["12"] <= 1
    assert set(prediction["nomogram_points"]["per_factor"]) >= {"rad_score", "t_stage", "age"}
    assert "statement" in prediction["chemo_benefit"]
    # The binary endpoint trained into the same bundle is predicted with its interval.
    response = prediction["binary"]["ic_response"]
    assert 0 <= response["probability"] <= 1 and response["model"] in response["model"]
    if response["ci95"] is not None:
        assert response["ci95"][0] <= response["probability"] <= response["ci95"][1]
    # The same patient scored through the features table gives the same risk.
    from NPCPrognosisLib.io.clinical import parse_clinical
    from NPCPrognosisLib.pipeline.models import load_bundle

    bundle = load_bundle(trained)
    features = pd.read_csv(small_cohort / "features.csv", dtype={"patient_id": str}).iloc[[0]]
    factors = bundle.factors([parse_clinical(row.to_dict(), row["patient_id"])], features.reset_index(drop=True))
    expected = bundle.nomograms["nomogram"].risk(factors)[0]
    assert prediction["risk_score"] == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # the record names its inputs by content: the mask's voxels and geometry, read here independently
    import hashlib

    mask = sitk.ReadImage(str(small_cohort / row["mask"]))
    header = (mask.GetPixelIDTypeAsString(), mask.GetNumberOfComponentsPerPixel(), mask.GetSize())
    voxels = sitk.GetArrayFromImage(mask).tobytes()
    assert prediction["inputs"]["mask"] == hashlib.sha256(repr(header).encode() + voxels).hexdigest()
    assert set(prediction["inputs"]) == {"t1", "t2", "t1c", "mask"} and len(set(prediction["inputs"].values())) == 4


def test_predict_refuses_a_folder_of_another_patients_result(small_cohort, trained, tmp_path, capsys):
    """A failed run for SYN0009 left SYN0021's prediction.json in the folder. Another patient's result is refused
    before any work; with --overwrite it is removed first, so a failure leaves none of it."""
    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    row = manifest.iloc[1]
    earlier = {"patient_id": "SYN0021", "risk_score": 1.0}
    (tmp_path / "prediction.json").write_text(json.dumps(earlier), encoding="utf-8")
    (tmp_path / "patient_sheet.html").write_text("SYN0021", encoding="utf-8")
    args = ["predict", "--bundle", str(trained), "--patient-id", row["patient_id"], "--out", str(tmp_path),
            *[f"--{seq}={small_cohort / row[seq]}" for seq in ("t1", "t2", "t1c", "mask")],
            "--clinical", "age=38", "sex=M", "t_stage=T5", "n_stage=N2", "rene=0", "ldh=245"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "'SYN0021'" in error and row["patient_id"] in error and "--overwrite" in error
    assert json.loads((tmp_path / "prediction.json").read_text(encoding="utf-8")) == earlier  # left whole
    assert main([*args, "--overwrite"]) == 2 and "t_stage" in capsys.readouterr().err  # fails on T5, after
    assert not (tmp_path / "prediction.json").exists() and not (tmp_path / "patient_sheet.html").exists()


def test_a_replaced_result_keeps_the_runs_inputs(tmp_path):
    """An edited automatic mask given back as --mask is an input: never removed, nor the automatic mask of this
    patient's earlier run (it may be the radiologist's edit); the earlier maps and sheet go."""
    from NPCPrognosisLib.pipeline.prediction_folder import claim_folder, remove_replaced

    for name in ("automatic_mask.nii.gz", "uncertainty.nii.gz", "saliency.nii.gz", "patient_sheet.html"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "prediction.json").write_text(json.dumps({"patient_id": "P1"}), encoding="utf-8")
    assert claim_folder(tmp_path, "P1") == []  # this patient's own folder
    removed = remove_replaced(tmp_path, {"prediction.json", "saliency.nii.gz"}, [tmp_path / "patient_sheet.html"])
    assert [p.name for p in removed] == ["uncertainty.nii.gz"]
    assert (tmp_path / "automatic_mask.nii.gz").exists() and (tmp_path / "patient_sheet.html").exists()
    removed = claim_folder(tmp_path, "P2", overwrite=True, inputs=[tmp_path / "automatic_mask.nii.gz"])
    assert sorted(p.name for p in removed) == ["patient_sheet.html", "prediction.json", "saliency.nii.gz"]
    assert (tmp_path / "automatic_mask.nii.gz").exists()
    (tmp_path / "prediction.json").write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match="cannot be read"):
        claim_folder(tmp_path, "P2")


def test_an_image_fingerprint_follows_the_content_not_the_file(tmp_path):
    from NPCPrognosisLib.imaging.geometry import image_fingerprint

    image = sitk.Image([6, 5, 4], sitk.sitkUInt8)
    copy = sitk.Image(image)
    assert image_fingerprint(copy) == image_fingerprint(image)
    copy[2, 2, 2] = 1  # one voxel of an edited contour
    assert image_fingerprint(copy) != image_fingerprint(image)
    assert image_fingerprint(sitk.Cast(image, sitk.sitkInt16)) != image_fingerprint(image)
    assert image_fingerprint(sitk.Image([5, 6, 4], sitk.sitkUInt8)) != image_fingerprint(image)
    # a mask written to NIfTI (geometry in 32 bits) and read back is the same contours
    copy.SetOrigin((-101.123456789, 33.3333333333, 12.987654321))
    copy.SetSpacing((0.4888888888, 0.4888888888, 3.3))
    sitk.WriteImage(copy, str(tmp_path / "mask.nii.gz"))
    assert image_fingerprint(sitk.ReadImage(str(tmp_path / "mask.nii.gz"))) == image_fingerprint(copy)


def test_predict_bad_stage_is_a_one_line_error(small_cohort, trained, tmp_path, capsys):
    args = ["predict", "--bundle", str(trained), "--out", str(tmp_path), "--clinical", "age=50", "sex=M",
            "t_stage=T9", "n_stage=N0", "rene=0", "ldh=200"]
    for seq in ("t1", "t2", "t1c", "mask"):
        args += [f"--{seq}", str(small_cohort / "images" / f"SYN0001_{seq}.nii.gz")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "t_stage" in err and "T9" in err and "Traceback" not in err
    assert not (tmp_path / "prediction.json").exists()


def test_tampered_bundle_is_refused_by_predict(trained, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(trained, copy)
    document = json.loads((copy / "bundle.json").read_text(encoding="utf-8"))
    document["cutoffs"]["nomogram"]["cutoff"] = -99.0
    (copy / "bundle.json").write_text(json.dumps(document))
    assert main(["predict", "--bundle", str(copy), "--t1", "a", "--t2", "b", "--t1c", "c", "--mask", "m",
                 "--out", str(tmp_path / "o")]) == 2
    assert "checksum mismatch" in capsys.readouterr().err


def test_extract_continues_past_a_bad_patient(small_cohort, tmp_path, capsys):
    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str}).iloc[:3].copy()
    for col in ("t1", "t2", "t1c", "mask"):
        manifest[col] = [str(small_cohort / p) for p in manifest[col]]
    manifest.loc[1, "t2"] = str(tmp_path / "missing_t2.nii.gz")
    empty = sitk.ReadImage(manifest.loc[2, "mask"]) * 0
    sitk.WriteImage(empty, str(tmp_path / "empty_mask.nii.gz"))
    manifest.loc[2, "mask"] = str(tmp_path / "empty_mask.nii.gz")
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "features.csv"
    assert main(["--quiet", "extract", "--manifest", str(tmp_path / "manifest.csv"), "--out", str(out),
                 "--params", str(RADIOMICS_FAST_PARAMS)]) == 0
    table = pd.read_csv(out, dtype={"patient_id": str})
    assert list(table["patient_id"]) == [manifest.loc[0, "patient_id"]]
    failures = pd.read_csv(tmp_path / "features.failures.csv", dtype={"patient_id": str})
    assert list(failures["patient_id"]) == list(manifest.loc[1:2, "patient_id"])
    assert "missing_t2.nii.gz" in failures.loc[0, "error"] and "GTVp" in failures.loc[1, "error"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_extract_with_every_patient_failing_leaves_no_table(small_cohort, tmp_path, capsys):
    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str}).iloc[:2].copy()
    manifest["t1"] = "nowhere.nii.gz"
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    assert main(["--quiet", "extract", "--manifest", str(tmp_path / "manifest.csv"), "--out",
                 str(tmp_path / "f.csv")]) == 2
    assert not (tmp_path / "f.csv").exists()
    err = capsys.readouterr().err
    assert "no patient could be processed" in err
    assert "is kept" not in err  # there was no earlier table ("earlier output in f.csv is kept" said there was)
    assert not (tmp_path / "f.failures.csv").exists()


def test_a_failed_rerun_keeps_the_earlier_good_table(small_cohort, tmp_path, capsys):
    good = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str}).iloc[:1].copy()
    for column in ("t1", "t2", "t1c", "mask"):
        good[column] = [str(small_cohort / v) for v in good[column]]
    good.to_csv(tmp_path / "good.csv", index=False)
    out = tmp_path / "features.csv"
    assert main(["--quiet", "extract", "--manifest", str(tmp_path / "good.csv"), "--out", str(out),
                 "--params", str(RADIOMICS_FAST_PARAMS)]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.glob("features*")}
    bad = good.assign(t1="nowhere.nii.gz")
    bad.to_csv(tmp_path / "bad.csv", index=False)
    capsys.readouterr()
    assert main(["--quiet", "extract", "--manifest", str(tmp_path / "bad.csv"), "--out", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in tmp_path.glob("features*")} == before
    assert f"(the earlier table {out} is kept)" in capsys.readouterr().err
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(good.columns) + "\n")
    capsys.readouterr()
    assert main(["--quiet", "extract", "--manifest", str(header_only), "--out", str(tmp_path / "h.csv")]) == 2
    assert not list(tmp_path.glob("h.*"))


def test_file_names_from_patient_ids_stay_inside_the_output_folder(tmp_path):
    from NPCPrognosisLib.io.atomic import patient_file, safe_name

    for pid in ("../../etc/passwd", "/abs/path", "C:\\x", "..", "a/../../b", "ok-ID_1.2"):
        path = patient_file(tmp_path, pid, "_mask.nii.gz")
        assert path.parent == tmp_path.resolve(), pid
    assert safe_name("ok-ID_1.2") == "ok-ID_1.2" and safe_name("../x") == "_x"


def test_train_refuses_missing_outcome_and_duplicates(small_cohort, tmp_path, capsys):
    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    pid = manifest.loc[2, "patient_id"]
    manifest.loc[2, "dmfs_event"] = np.nan
    manifest["split"] = "train"
    manifest.to_csv(tmp_path / "m.csv", index=False)
    assert main(["train", "--manifest", str(tmp_path / "m.csv"), "--features", str(small_cohort / "features.csv"),
                 "--endpoint", "dmfs", "--out", str(tmp_path / "b"), "--split-col", "split"]) == 2
    err = capsys.readouterr().err
    assert pid in err and "dmfs_event" in err
    assert not (tmp_path / "b").exists()
    manifest.loc[3, "patient_id"] = manifest.loc[4, "patient_id"]
    manifest.to_csv(tmp_path / "m.csv", index=False)
    assert main(["train", "--manifest", str(tmp_path / "m.csv"), "--features", str(small_cohort / "features.csv"),
                 "--endpoint", "dmfs", "--out", str(tmp_path / "b")]) == 2
    assert "duplicate" in capsys.readouterr().err


def test_train_refuses_too_few_events_before_any_work_and_warns_when_none_is_censored(small_cohort, tmp_path,
                                                                                        capsys, caplog, monkeypatch):
    """An event column with no events (or 1 = censored) failed only after the robustness study's perturbed
    re-extractions (4 min 48 s on 46 patients), with an error naming neither the manifest nor the column; a column
    with an event for every patient trained without a word."""
    import NPCPrognosisLib.pipeline.train as train_module

    def never(*args, **kwargs):
        raise AssertionError("the robustness study ran before the event count was checked")

    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    manifest["split"] = "train"
    manifest.assign(dmfs_event=0).to_csv(tmp_path / "censored.csv", index=False)
    args = ["--features", str(small_cohort / "features.csv"), "--endpoint", "dmfs", "--split-col", "split"]
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "feature_robustness", never)
        assert main(["train", "--manifest", str(tmp_path / "censored.csv"), *args, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"only 0 of the {len(manifest)} training patients have a dmfs event" in err
    assert "censored.csv" in err and "column 'dmfs_event'" in err and "check the coding of dmfs_event" in err
    assert not (tmp_path / "b").exists()

    manifest.assign(dmfs_event=1).to_csv(tmp_path / "events.csv", index=False)
    with caplog.at_level("WARNING"):
        assert main(["train", "--manifest", str(tmp_path / "events.csv"), *args, "--out", str(tmp_path / "e"),
                     "--no-select", "--optimism-bootstraps", "0", "--robustness-patients", "0"]) == 0
    assert f"every one of the {len(manifest)} training patients has a dmfs event" in caplog.text
    assert read_bundle(tmp_path / "e")["training"]["events"] == len(manifest)


def test_train_skips_the_robustness_study_when_too_few_events_let_it_choose_anything(small_cohort, tmp_path,
                                                                                    monkeypatch):
    """With fewer than 25 training events the configuration is not chosen and the default one has no ICC filter,
    yet train at its defaults perturbed every training patient first (16 min on a 28-patient cohort, 8 events)
    for ICCs no model used. The bundle now says why the study was not run."""
    import NPCPrognosisLib.pipeline.train as train_module
    from NPCPrognosisLib.radiomics.signature import SignatureSettings

    def never(*args, **kwargs):
        raise AssertionError("the robustness study ran though nothing could use it")

    monkeypatch.setattr(train_module, "feature_robustness", never)
    events = int(pd.read_csv(small_cohort / "manifest.csv")["dmfs_event"].sum())
    assert events < 25
    assert main(["--quiet", "train", "--manifest", str(small_cohort / "manifest.csv"), "--features",
                 str(small_cohort / "features.csv"), "--endpoint", "dmfs", "--out", str(tmp_path / "b"),
                 "--test-fraction", "0.2", "--optimism-bootstraps", "0"]) == 0
    block = read_bundle(tmp_path / "b")["robustness"]
    assert not block["measured"] and "too few to choose an ICC threshold" in block["reason"], block
    # asked for by number (--robustness-patients) it still runs: test_network's automatic pipeline measures it
    # a fixed ICC threshold, or enough events for the cross-validation to choose one, still measures it
    assert train_module.robustness_unused(True, np.ones(30), SignatureSettings()) is None
    assert train_module.robustness_unused(False, np.ones(5), SignatureSettings(min_icc=0.75)) is None
    assert "--no-select" in train_module.robustness_unused(False, np.ones(30), SignatureSettings())


def test_cox_command_matches_lifelines_on_rossi(tmp_path, capsys):
    from lifelines import CoxPHFitter
    from lifelines.datasets import load_rossi

    rossi = load_rossi()
    rossi.to_csv(tmp_path / "rossi.csv", index=False)
    covariates = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]
    assert main(["cox", "--table", str(tmp_path / "rossi.csv"), "--time-col", "week", "--event-col", "arrest",
                 "--covariates", ",".join(covariates), "--ties", "efron", "--out", str(tmp_path / "cox.json")]) == 0
    result = json.loads((tmp_path / "cox.json").read_text(encoding="utf-8"))
    reference = CoxPHFitter().fit(rossi, "week", "arrest").summary
    for row in result["coefficients"]:
        ref = reference.loc[row["covariate"]]
        assert row["coef"] == pytest.approx(ref["coef"], abs=1e-4)
        assert row["se"] == pytest.approx(ref["se(coef)"], abs=1e-4)
        assert row["p"] == pytest.approx(ref["p"], abs=1e-4)
        assert row["hr_95ci"][0] == pytest.approx(ref["exp(coef) lower 95%"], rel=1e-4)
    assert main(["cox", "--table", str(tmp_path / "rossi.csv"), "--time-col", "week", "--event-col", "arrest",
                 "--covariates", "fin,nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_dask_engine_gives_the_same_table(small_cohort, tmp_path):
    from NPCPrognosisLib.io.manifest import Manifest, read_manifest
    from NPCPrognosisLib.pipeline.extract import dask_runner, extract_cohort

    manifest = read_manifest(small_cohort / "manifest.csv")
    first_two = Manifest(table=manifest.table.iloc[:2].reset_index(drop=True), root=manifest.root,
                         source=manifest.source)
    result = extract_cohort(first_two, tmp_path / "dask.csv", params_path=RADIOMICS_FAST_PARAMS, progress=False,
                            runner=dask_runner(None))
    local = pd.read_csv(small_cohort / "features.csv", dtype={"patient_id": str}).iloc[:2]
    dask = pd.read_csv(tmp_path / "dask.csv", dtype={"patient_id": str})
    assert not result.failures
    pd.testing.assert_frame_equal(dask, local.reset_index(drop=True))


@pytest.mark.parametrize("command", ["synth", "extract", "train", "evaluate", "predict", "train-net", "segment",
                                     "cox", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: npc-prognosis " + command in capsys.readouterr().out


def test_ctrl_c_ends_a_command_with_one_line_saying_what_is_kept_not_a_traceback(tmp_path, monkeypatch, capsys):
    """Ctrl-C printed a Python traceback; it now ends the command with exit status 130 (interrupted) and, for
    extract, says where the finished patients wait for the re-run."""
    from NPCPrognosisLib import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_extract", interrupted)
    out = tmp_path / "features.csv"
    assert main(["extract", "--manifest", str(tmp_path / "manifest.csv"), "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == (
        f"npc-prognosis extract: interrupted; the patients finished so far are kept in {out}.partial and are not "
        "extracted again when the same command runs again")
    monkeypatch.setattr(cli, "_cmd_cox", interrupted)
    assert main(["cox", "--table", "t.csv", "--time-col", "t", "--event-col", "e", "--covariates", "x"]) == 130
    assert capsys.readouterr().err.strip() == "npc-prognosis cox: interrupted"
    # train: no bundle, and the robustness study's perturbed extractions (minutes per patient) wait for the re-run
    monkeypatch.setattr(cli, "_cmd_train", interrupted)
    assert main(["train", "--manifest", "m.csv", "--features", str(tmp_path / "f.csv"), "--endpoint", "dmfs",
                 "--out", str(tmp_path / "b")]) == 130
    assert capsys.readouterr().err.strip() == (
        f"npc-prognosis train: interrupted; no bundle was written to {tmp_path / 'b'}; the robustness study's "
        f"perturbed extractions finished so far are kept in {tmp_path / 'f_robustness'} and are not extracted again "
        "when the same command runs again")


def test_an_error_is_followed_by_what_the_images_said_before_it(tmp_path, monkeypatch, capsys):
    """A one-patient command (predict, segment) printed only the error, though the images' warnings raised before
    it (a sequence covering half the field, a frame of reference) are often its reason and travel with it."""
    from NPCPrognosisLib import cli

    def failing(args):
        error = InputError("GTVp mask is empty", patient_id="P1")
        error.warnings = ["t2 covers 50% of the t1c field"]
        raise error

    monkeypatch.setattr(cli, "_cmd_cox", failing)
    assert main(["cox", "--table", "t.csv", "--time-col", "t", "--event-col", "e", "--covariates", "x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("npc-prognosis cox: error: patient 'P1'") and "GTVp mask is empty" in err[0]
    assert err[1:] == ["  warned before the error: t2 covers 50% of the t1c field"]


def test_a_split_cell_left_empty_is_named_as_empty_with_the_other_patients_that_lack_one(tmp_path):
    """A blank split cell was reported as "split value 'nan' not understood", and only its first patient named."""
    from pathlib import Path

    from NPCPrognosisLib.io.manifest import Manifest
    from NPCPrognosisLib.pipeline.train import split_cohort

    def manifest(split):
        table = pd.DataFrame({"patient_id": ["P1", "P2", "P3", "P4"], "split": split})
        return Manifest(table=table, root=tmp_path, source=Path(tmp_path / "manifest.csv"))

    assert split_cohort(manifest(["Train", " TEST", "validation", "training"]), "dmfs", split_col="Split") == (
        ["P1", "P4"], ["P2", "P3"])
    with pytest.raises(InputError) as blank:
        split_cohort(manifest(["train", np.nan, "test", " "]), "dmfs", split_col="split")
    assert str(blank.value).startswith(f"patient 'P2', column 'split', file '{tmp_path / 'manifest.csv'}': no split "
                                       "value (the cell is empty); 1 other patient(s) too, e.g. ['P4']")
    with pytest.raises(InputError, match=r"split value 'val' not understood\. Fix: use 'train' or 'test'"):
        split_cohort(manifest(["train", "val", "test", "test"]), "dmfs", split_col="split")


def _first_three(small_cohort):
    from NPCPrognosisLib.io.manifest import Manifest, read_manifest

    manifest = read_manifest(small_cohort / "manifest.csv")
    return Manifest(table=manifest.table.iloc[:3].reset_index(drop=True), root=manifest.root, source=manifest.source)


def test_a_killed_extract_resumes_with_the_finished_patients_and_the_same_table(small_cohort, tmp_path, monkeypatch):
    from NPCPrognosisLib.pipeline import extract

    manifest = _first_three(small_cohort)
    extract.extract_cohort(manifest, tmp_path / "full.csv", params_path=RADIOMICS_FAST_PARAMS, progress=False)
    assert not (tmp_path / "full.csv.partial").exists()  # removed once the table holds everything

    def killed_after_two(function, entries, *args):
        for entry in entries[:2]:
            function(entry, *args)
        raise KeyboardInterrupt  # the user pressed Ctrl-C (or the machine went down) during the third patient

    with pytest.raises(KeyboardInterrupt):
        extract.extract_cohort(manifest, tmp_path / "resumed.csv", params_path=RADIOMICS_FAST_PARAMS,
                               progress=False, runner=killed_after_two)
    assert not (tmp_path / "resumed.csv").exists() and len(list((tmp_path / "resumed.csv.partial").iterdir())) == 2
    computed = []
    original = extract._one_patient
    monkeypatch.setattr(extract, "_one_patient", lambda entry, *a: computed.append(entry.patient_id) or original(
        entry, *a))
    extract.extract_cohort(manifest, tmp_path / "resumed.csv", params_path=RADIOMICS_FAST_PARAMS, progress=False)
    assert computed == [manifest.patient_ids[2]]
    assert (tmp_path / "resumed.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()


def _with_half_a_t2(small_cohort, tmp_path):
    """The first two patients of ``small_cohort``, the first one's T2W cut through the middle of its tumour (as a
    T2W acquired over a smaller field): its manifest, and the first patient's ID with the covered share of the CET1W
    field and the contoured voxels left outside the T2W, counted here on the arrays."""
    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str}).iloc[:2].copy()
    for column in ("t1", "t2", "t1c", "mask"):
        manifest[column] = [str(small_cohort / v) for v in manifest[column]]
    t2 = sitk.ReadImage(manifest.loc[0, "t2"])
    contoured = sitk.GetArrayFromImage(sitk.ReadImage(manifest.loc[0, "mask"])) > 0  # (z, y, x), on the T2W grid
    columns = np.flatnonzero(contoured.any(axis=(0, 1)))
    cut = int(columns[len(columns) // 2])  # the T2W keeps x < cut
    sitk.WriteImage(t2[:cut, :, :], str(tmp_path / "half_t2.nii.gz"))  # same origin, spacing and direction
    manifest.loc[0, "t2"] = str(tmp_path / "half_t2.nii.gz")
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    return (tmp_path / "manifest.csv", manifest.loc[0, "patient_id"], cut / t2.GetSize()[0],
            int(contoured[:, :, cut:].sum()), int(contoured.sum()))


def _coverage_warning(covered: float) -> str:
    """load_patient's warning for a T2W covering ``covered`` of the CET1W field (the share floored)."""
    return (f"t2 covers {math.floor(100 * covered + 1e-9)}% of the t1c field; outside it t2 has no image (read as 0): "
            "t2 features of a contour reaching there describe that fill, not tissue, and a segmentation network, "
            "where one is used, sees only the other sequences there")


def test_extract_keeps_each_patients_image_warnings_beside_the_table(small_cohort, tmp_path, capsys):
    """load_patient's warnings were only logged by the worker that read the patient: a cohort run left no trace that
    a T2W covered half of a tumour (features.csv, .failures.csv and .meta.json said nothing)."""
    manifest, warned, covered, outside, contoured = _with_half_a_t2(small_cohort, tmp_path)
    out = tmp_path / "features.csv"
    assert main(["--quiet", "extract", "--manifest", str(manifest), "--out", str(out), "--params",
                 str(RADIOMICS_FAST_PARAMS), "--workers", "2"]) == 0  # the local process pool
    assert f"1 patient(s) have image warnings, listed in {tmp_path / 'features.warnings.csv'}: {warned}\n" in (
        capsys.readouterr().out)
    warnings = pd.read_csv(tmp_path / "features.warnings.csv", dtype={"patient_id": str})
    assert list(warnings.columns) == ["patient_id", "warning", "status"] and set(warnings["patient_id"]) == {warned}
    assert set(warnings["status"]) == {"extracted"}
    assert list(warnings["warning"]) == [
        _coverage_warning(covered),  # true whether contours are drawn or a network segments: extract uses none
        f"{outside} of the {contoured} contoured voxels lie outside the t2 field: its features describe part of the "
        "contours only, with the rest read as 0"]
    assert 0 < outside < contoured and covered < 0.95
    assert json.loads((tmp_path / "features.meta.json").read_text())["patients_with_warnings"] == [warned]
    assert len(pd.read_csv(out)) == 2  # the patient keeps its row: a warning is not a failure


def test_a_failed_patient_keeps_the_warnings_it_raised_before_failing(small_cohort, tmp_path, capsys):
    """A patient whose T2W covers half of the field and whose mask is then refused (not on the CET1W grid) was listed
    with the mask error only: the coverage warning, raised first, was lost (not in .warnings.csv, not even logged).
    It is kept in the warnings file, marked as a failed patient's, and named when no patient could be extracted."""
    from NPCPrognosisLib.io.images import load_patient

    manifest, warned, covered, *_ = _with_half_a_t2(small_cohort, tmp_path)
    table = pd.read_csv(manifest, dtype={"patient_id": str})
    mask = sitk.ReadImage(table.loc[0, "mask"])
    mask.SetSpacing([s * 1.01 for s in mask.GetSpacing()])  # drawn on another grid: refused after the images
    sitk.WriteImage(mask, str(tmp_path / "other_grid_mask.nii.gz"))
    table.loc[0, "mask"] = str(tmp_path / "other_grid_mask.nii.gz")
    table.to_csv(manifest, index=False)
    coverage = _coverage_warning(covered)
    with pytest.raises(InputError, match="mask is not on the t1c image's grid") as refused:
        load_patient(warned, {c: table.loc[0, c] for c in ("t1", "t2", "t1c")}, table.loc[0, "mask"])
    assert refused.value.warnings == [coverage]

    out = tmp_path / "features.csv"
    assert main(["--quiet", "extract", "--manifest", str(manifest), "--out", str(out), "--params",
                 str(RADIOMICS_FAST_PARAMS), "--workers", "2"]) == 0  # the local process pool
    failures = pd.read_csv(tmp_path / "features.failures.csv", dtype={"patient_id": str})
    assert list(failures["patient_id"]) == [warned] and "not on the t1c image's grid" in failures.loc[0, "error"]
    warnings = pd.read_csv(tmp_path / "features.warnings.csv", dtype={"patient_id": str})
    assert warnings.to_dict("records") == [{"patient_id": warned, "warning": coverage, "status": "failed"}]
    assert json.loads((tmp_path / "features.meta.json").read_text())["patients_with_warnings"] == []  # rows only
    assert (f"1 of them had image warnings before failing (often the reason), listed in "
            f"{tmp_path / 'features.warnings.csv'} with status 'failed': {warned}\n") in capsys.readouterr().out
    assert len(pd.read_csv(out)) == 1

    table.iloc[:1].to_csv(manifest, index=False)  # that patient alone: nothing is written, the error says it
    assert main(["--quiet", "extract", "--manifest", str(manifest), "--out", str(tmp_path / "alone.csv"),
                 "--params", str(RADIOMICS_FAST_PARAMS)]) == 2
    assert f"; {warned} warned before it failed: {coverage})" in capsys.readouterr().err


def test_a_resumed_extract_keeps_the_warnings_of_the_patients_it_reuses(small_cohort, tmp_path, monkeypatch):
    """A patient taken from the resume cache is not read again, so nothing logged its warnings either."""
    from NPCPrognosisLib.io.manifest import read_manifest
    from NPCPrognosisLib.pipeline import extract

    manifest, warned, *_ = _with_half_a_t2(small_cohort, tmp_path)
    manifest = read_manifest(manifest)

    def killed_after_one(function, entries, *args):
        function(entries[0], *args)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract.extract_cohort(manifest, tmp_path / "f.csv", params_path=RADIOMICS_FAST_PARAMS, progress=False,
                               runner=killed_after_one)
    cached = json.loads((tmp_path / "f.csv.partial" / f"{warned}.json").read_text())["result"]["warnings"]
    computed = []
    original = extract._one_patient
    monkeypatch.setattr(extract, "_one_patient", lambda entry, *a: computed.append(entry.patient_id) or original(
        entry, *a))
    result = extract.extract_cohort(manifest, tmp_path / "f.csv", params_path=RADIOMICS_FAST_PARAMS, progress=False)
    assert warned not in computed and len(cached) == 2
    assert result.warnings == [{"patient_id": warned, "warning": text, "status": "extracted"} for text in cached]
    assert pd.read_csv(tmp_path / "f.warnings.csv", dtype={"patient_id": str}).to_dict("records") == result.warnings


def test_train_and_evaluate_say_how_many_of_their_patients_had_image_warnings(small_cohort, trained, tmp_path,
                                                                              caplog):
    """The warnings are written once, at extraction; train and evaluate, where the rows are used, repeat the count
    (only for the patients they use: the other split's are not theirs)."""
    from NPCPrognosisLib.io.patient_ids import hash_id

    document = read_bundle(trained)["training"]
    ids = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})["patient_id"]
    training = [p for p in ids if hash_id(p, document["id_salt"]) in set(document["patient_id_hashes"])]
    held_out = [p for p in ids if p not in training]
    shutil.copy(small_cohort / "features.csv", tmp_path / "features.csv")
    meta = json.loads((small_cohort / "features.meta.json").read_text())
    (tmp_path / "features.meta.json").write_text(json.dumps(
        {**meta, "patients_with_warnings": sorted([*training[:2], held_out[0]])}))
    args = ["--manifest", str(small_cohort / "manifest.csv"), "--features", str(tmp_path / "features.csv"),
            "--endpoint", "dmfs"]
    listed = tmp_path / "features.warnings.csv"
    with caplog.at_level("WARNING"):
        assert main(["train", *args, "--out", str(tmp_path / "b"), "--test-fraction", "0.25", "--seed", "1",
                     "--no-select", "--optimism-bootstraps", "0", "--robustness-patients", "0"]) == 0
    assert (f"2 of the 18 training patients had image warnings at extraction (listed in {listed}): "
            f"{', '.join(p for p in ids if p in training[:2])}") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # refused afterwards (6 held-out patients), but the count comes first
        main(["evaluate", "--bundle", str(trained), *args, "--out", str(tmp_path / "e"), "--n-boot", "0"])
    assert f"1 of the 6 evaluated patients had image warnings at extraction (listed in {listed}): {held_out[0]}" in (
        caplog.text)
    meta.pop("patients_with_warnings", None)  # a table extracted before the warnings were kept: nothing to say
    (tmp_path / "features.meta.json").write_text(json.dumps(meta))
    caplog.clear()
    with caplog.at_level("WARNING"):
        main(["evaluate", "--bundle", str(trained), *args, "--out", str(tmp_path / "e"), "--n-boot", "0"])
    assert "image warnings" not in caplog.text


def _dies_once(marker, function, entry, *args):
    """Kills its Dask worker process the first time it runs (a lost worker mid-run), then behaves."""
    import os
    from pathlib import Path

    if not Path(marker).exists():
        Path(marker).write_text(entry.patient_id)
        os._exit(1)
    return function(entry, *args)


def test_dask_survives_a_lost_worker_and_gives_the_same_table(small_cohort, tmp_path):
    import functools

    from dask.distributed import LocalCluster

    from NPCPrognosisLib.pipeline.extract import dask_runner, extract_cohort

    manifest = _first_three(small_cohort)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True)
    try:
        runner = dask_runner(cluster.scheduler_address)

        def with_a_dying_worker(function, entries, *args):
            return runner(functools.partial(_dies_once, str(tmp_path / "died"), function), entries, *args)

        result = extract_cohort(manifest, tmp_path / "dask.csv", params_path=RADIOMICS_FAST_PARAMS, progress=False,
                                runner=with_a_dying_worker)
    finally:
        cluster.close()
    assert (tmp_path / "died").exists() and not result.failures
    local = pd.read_csv(small_cohort / "features.csv", dtype={"patient_id": str}).iloc[:3].reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "dask.csv", dtype={"patient_id": str}), local)


def _kills_its_worker(victim, function, entry, *args):
    """Kills its worker process whenever it runs ``victim`` (as the out-of-memory killer would), every time."""
    import os

    if entry.patient_id == victim:
        os._exit(137)
    return function(entry, *args)


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_a_patient_that_kills_its_worker_is_listed_and_the_cohort_carries_on(small_cohort, tmp_path, engine):
    """Before, the first such death stopped the whole run: BrokenProcessPool (--workers 2) or KilledWorker (Dask,
    naming a task key), with no patient named and no table."""
    import functools

    from dask.distributed import LocalCluster

    from NPCPrognosisLib.pipeline.extract import dask_runner, extract_cohort, local_runner

    manifest = _first_three(small_cohort)
    victim = manifest.patient_ids[1]
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True) if engine == "dask" else None
    try:
        runner = dask_runner(cluster.scheduler_address) if cluster else local_runner(2)

        def with_a_killer(function, entries, *args):
            return runner(functools.partial(_kills_its_worker, victim, function), entries, *args)

        result = extract_cohort(manifest, tmp_path / "features.csv", params_path=RADIOMICS_FAST_PARAMS,
                                progress=False, runner=with_a_killer)
    finally:
        if cluster is not None:
            cluster.close()
    assert [f["patient_id"] for f in result.failures] == [victim]
    assert f"patient {victim!r}" in result.failures[0]["error"] and "worker process died" in result.failures[0][
        "error"] and "--workers" in result.failures[0]["error"]
    assert pd.read_csv(tmp_path / "features.failures.csv", dtype={"patient_id": str})["patient_id"].tolist() == [victim]
    local = pd.read_csv(small_cohort / "features.csv", dtype={"patient_id": str}).iloc[[0, 2]].reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "features.csv", dtype={"patient_id": str}), local)


def _worker_name(entry, pause):
    import time

    from dask.distributed import get_worker

    time.sleep(pause)  # long enough that every worker gets patients
    return {"patient_id": entry.patient_id, "worker": get_worker().address}


def test_dask_engine_runs_as_many_local_workers_as_asked(small_cohort, monkeypatch):
    """``extract --engine dask --workers 3`` started a local cluster of two workers whatever --workers said."""
    from NPCPrognosisLib import cli
    from NPCPrognosisLib.io.manifest import read_manifest
    from NPCPrognosisLib.pipeline import extract

    entries = read_manifest(small_cohort / "manifest.csv").entries()[:9]
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)  # as the command line sets it
    shown = logging.Handler()
    shown.emit = lambda record: infos.append(record.getMessage()) if record.levelno < logging.WARNING else None
    infos: list[str] = []
    logging.getLogger().addHandler(shown)
    try:
        results = extract.dask_runner(None, workers=3)(_worker_name, entries, 1.0)
    finally:
        logging.getLogger().removeHandler(shown)
    assert infos == []  # distributed's INFO lines (33 for three patients) stay quiet without --verbose
    assert [r["patient_id"] for r in results] == [e.patient_id for e in entries]
    assert len({r["worker"] for r in results}) == 3
    asked = []
    monkeypatch.setattr(extract, "dask_runner", lambda address, progress, workers: asked.append(workers))
    monkeypatch.setattr(extract, "extract_cohort", lambda *a, **k: (_ for _ in ()).throw(InputError("stop")))
    for extra in (["--workers", "3"], []):
        assert cli.main(["--quiet", "extract", "--manifest", str(small_cohort / "manifest.csv"), "--out", "x.csv",
                         "--engine", "dask", *extra]) == 2
    assert asked == [3, 2]


def _thread_counts() -> dict:
    """What a Dask worker's numerical libraries will run: ITK's default threads per filter and the variables."""
    import os

    from NPCPrognosisLib.processes import THREAD_VARIABLES

    return {"itk": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
            **{name: os.environ.get(name) for name in THREAD_VARIABLES}}


def test_dask_workers_run_their_share_of_the_cores():
    """Dask's nanny gives each worker one BLAS/OpenMP thread but left ITK at one thread per core: two local workers on
    two cores ran two ITK threads each. Local workers now get the local pool's share (``share_cores``); a remote
    scheduler's workers get ITK at the OpenMP count their cluster set (Dask's default 1)."""
    import os

    from dask.distributed import LocalCluster

    from NPCPrognosisLib.pipeline.dask_cluster import dask_client
    from NPCPrognosisLib.processes import THREAD_VARIABLES

    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("on one core a worker's share is the whole machine, limited or not")
    share = cores // 2
    with dask_client(None, workers=2) as client:
        local = client.run(_thread_counts)
    assert list(local.values()) == [{"itk": share, **dict.fromkeys(THREAD_VARIABLES, str(share))}] * 2
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True) as cluster, \
            dask_client(cluster.scheduler_address) as client:
        (remote,) = client.run(_thread_counts).values()
    assert remote["itk"] == int(remote["OMP_NUM_THREADS"]) == 1
