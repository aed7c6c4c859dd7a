"""How firm a single patient's prediction is: a missing EBV DNA, a score near the cut-off and values outside the
training range are said in words, with numbers recomputed here from the bundle's own coefficients."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from NPCPrognosisLib.io.bundle import read_bundle
from NPCPrognosisLib.io.images import load_patient
from NPCPrognosisLib.io.patient_ids import hash_id
from NPCPrognosisLib.pipeline.models import load_bundle
from NPCPrognosisLib.pipeline.predict import predict_patient
from NPCPrognosisLib.reporting.patient_sheet import patient_sheet_html

CLINICAL = {"age": 55, "sex": "M", "t_stage": "T3", "n_stage": "N1", "rene": 0, "ldh": 200, "chemo": 1, "ccnd": 200}


def _patient(small_cohort):
    """The first cohort patient's images (for their fingerprints) and feature row: predict skips radiomics."""
    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    row = manifest.iloc[0]
    patient = load_patient(row["patient_id"], {s: small_cohort / row[s] for s in ("t1", "t2", "t1c")},
                           small_cohort / row["mask"])
    features = pd.read_csv(small_cohort / "features.csv", dtype={"patient_id": str})
    return patient, features[features.patient_id == row["patient_id"]].iloc[0].drop("patient_id").to_dict()


def _by_hand(document, factors):
    """Risk and survival at 12/36/60 months of the stored nomogram: x'beta - centre and exp(-H0(t) exp(x'beta))."""
    block = document["models"]["nomogram"]
    model = block["model"]
    lp = float(np.dot([factors[c] for c in model["covariates"]], model["coef"]))
    times, cumhaz = np.asarray(model["baseline_times"]), np.asarray(model["baseline_cumhaz"])
    survival = {f"{m}": math.exp(-cumhaz[np.searchsorted(times, m, side="right") - 1] * math.exp(lp))
                for m in (12, 36, 60) if m <= model.get("max_time", np.inf)}
    return lp - float(block.get("center", 0.0)), survival


def test_a_missing_ebv_dna_is_shown_as_not_measured_with_the_range_it_could_give(small_cohort, trained):
    document = read_bundle(trained)
    # train stored the 10th and 90th percentile of the training patients' measured log10 EBV DNA
    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    salt = document["training"]["id_salt"]
    training = manifest[[hash_id(p, salt) in set(document["training"]["patient_id_hashes"]) for p in
                         manifest.patient_id]]
    measured = np.log10(training.ebv_dna.dropna().to_numpy(float) + 1.0)
    stored = document["clinical_encoding"]["imputation_range_p10_p90"]["log10_ebv_dna"]
    assert stored == pytest.approx(np.percentile(measured, [10, 90]), abs=1e-12)

    bundle = load_bundle(trained)
    assert "log10_ebv_dna" in bundle.nomograms["nomogram"].factors
    patient, features = _patient(small_cohort)
    prediction = predict_patient(bundle, patient, CLINICAL, features=features, tta=0).to_dict()
    block = prediction["imputed"]["log10_ebv_dna"]
    assert block["filled_with"] == pytest.approx(document["clinical_encoding"]["log10_ebv_dna_fill"])
    # the range of risk and survival is the nomogram's at the two percentiles, recomputed by hand
    ends = [_by_hand(document, {**prediction["factors"], "log10_ebv_dna": v}) for v in stored]
    assert block["risk_range"] == pytest.approx(sorted(r for r, _ in ends), abs=1e-9)
    for month, (low, high) in block["survival_range"].items():
        assert [low, high] == pytest.approx(sorted(s[month] for _, s in ends), abs=1e-9)
        assert low <= prediction["survival"][month] <= high  # the median lies between the percentiles
    assert set(block["survival_range"]) == set(prediction["survival"])
    cutoff = document["cutoffs"]["nomogram"]["cutoff"]
    groups = {"high" if r > cutoff else "low" for r, _ in ends} | {prediction["risk_group"]}
    assert block["group_determined"] == (len(groups) == 1)
    assert any("EBV DNA missing" in w and "10th-90th percentile" in w for w in prediction["warnings"])
    # the sheet's nomogram row says the value was not measured, never the fill as if it had been
    html = patient_sheet_html(prediction)
    assert "<td>EBV DNA (copies/mL)</td><td>not measured (training median imputed)</td>" in html
    low, high = block["survival_range"]["60"]
    assert f"{low:.0%}-{high:.0%} for EBV DNA at its training P10-P90" in html

    # a cut-off inside the range of risk: the group is not printed as low or high but as undetermined
    inside = (block["risk_range"][0] + block["risk_range"][1]) / 2.0
    bundle.document["cutoffs"]["nomogram"]["cutoff"] = inside
    undetermined = predict_patient(bundle, patient, CLINICAL, features=features, tta=0).to_dict()
    assert undetermined["imputed"]["log10_ebv_dna"]["risk_group"] == "undetermined without EBV DNA"
    assert undetermined["imputed"]["log10_ebv_dna"]["risk_groups"] == ["low", "high"]
    assert "<b class=''>undetermined without EBV DNA" in patient_sheet_html(undetermined)
    # the same patient with EBV DNA measured has no range, and its value is printed
    measured_prediction = predict_patient(bundle, patient, {**CLINICAL, "ebv_dna": 2000}, features=features, tta=0)
    assert measured_prediction.imputed == {}
    assert "<td>EBV DNA (copies/mL)</td><td>2e3</td>" in patient_sheet_html(measured_prediction.to_dict())


def test_a_bundle_without_the_percentiles_says_the_range_is_unknown(small_cohort, trained):
    bundle = load_bundle(trained)
    del bundle.document["clinical_encoding"]["imputation_range_p10_p90"]
    patient, features = _patient(small_cohort)
    prediction = predict_patient(bundle, patient, CLINICAL, features=features, tta=0)
    assert prediction.imputed["log10_ebv_dna"]["value_range"] is None
    assert any("stores no training percentiles of EBV DNA" in w for w in prediction.warnings)


def test_a_score_whose_interval_spans_the_cut_off_is_borderline(small_cohort, trained):
    bundle = load_bundle(trained)
    patient, features = _patient(small_cohort)
    clinical = {**CLINICAL, "ebv_dna": 2000}
    first = predict_patient(bundle, patient, clinical, features=features, tta=0)
    se = first.uncertainty["risk_se"]
    assert first.uncertainty["risk_ci95"] == pytest.approx([first.risk_score - 1.96 * se,
                                                            first.risk_score + 1.96 * se])
    # cut-offs one SE and three SEs below the score: the first inside the 95% interval, the second outside
    for distance, borderline in ((1.0, True), (3.0, False)):
        bundle.document["cutoffs"]["nomogram"]["cutoff"] = first.risk_score - distance * se
        prediction = predict_patient(bundle, patient, clinical, features=features, tta=0)
        assert prediction.risk_group == "high" and prediction.borderline is borderline
        html = patient_sheet_html(prediction.to_dict())
        assert ("high risk (borderline: the 95% interval of the score spans the cut-off)" in html) is borderline
        lo, hi = prediction.uncertainty["risk_ci95"]
        assert f"95% CI {lo:.2f} to {hi:.2f}" in html


def test_values_outside_the_training_range_put_extrapolating_in_the_headline(small_cohort, trained):
    bundle = load_bundle(trained)
    nomogram = bundle.nomograms["nomogram"]
    patient, features = _patient(small_cohort)
    age_high = nomogram.high[nomogram.factors.index("age")]
    prediction = predict_patient(bundle, patient, {**CLINICAL, "ebv_dna": 2000, "age": 105}, features=features,
                                 tta=0)
    assert prediction.out_of_range == [{"factor": "age", "value": 105.0, "low": pytest.approx(
        nomogram.low[nomogram.factors.index("age")]), "high": pytest.approx(age_high)}]
    warning = next(w for w in prediction.warnings if w.startswith("Age (years) = 105"))
    assert "extrapolating" in warning and "check the value and its unit" in warning
    html = patient_sheet_html(prediction.to_dict())
    headline = html[:html.index("Risk group")]  # above the risk group and the survival, in words
    assert f"EXTRAPOLATING: Age (years) 105 (training {nomogram.low[nomogram.factors.index('age')]:.0f} to " \
           f"{age_high:.0f})" in headline and "check each value and its unit" in headline
    within = predict_patient(bundle, patient, {**CLINICAL, "ebv_dna": 2000}, features=features, tta=0)
    assert within.out_of_range == [] and "EXTRAPOLATING" not in patient_sheet_html(within.to_dict())


def test_the_treatment_page_names_its_model_marks_the_arm_given_and_says_why_an_arm_is_absent(small_cohort,
                                                                                              trained):
    from NPCPrognosisLib.survival import benefit as bf

    bundle = load_bundle(trained)
    patient, features = _patient(small_cohort)
    prediction = predict_patient(bundle, patient, {**CLINICAL, "ebv_dna": 2000}, features=features, tta=0).to_dict()
    arm = {"12": {"survival": 0.93, "ci95": [0.88, 0.97]}, "36": {"survival": 0.81, "ci95": [0.70, 0.89]},
           "60": {"survival": 0.72, "ci95": [0.58, 0.83]}}
    counts = {g: {a: {"n": 12, "events": 3} for a in bf.ARMS} for g in ("low", "high")}
    counts["high"]["rt_alone"] = {"n": 1, "events": 1}
    doc = {"arms": ["low_dose", "high_dose"], "counts": counts}
    prediction["chemo_benefit"] = {
        "statement": "inconclusive", "model": bf.BENEFIT_MODEL, "given_arm": bf.given_arm(1, 200.0),
        "absent_arms": bf.absent_arms(doc),
        "survival_by_arm": {"low_dose": arm, "high_dose": {m: {"survival": c["survival"] - 0.1,
                                                               "ci95": [v - 0.1 for v in c["ci95"]]}
                                                           for m, c in arm.items()}}}
    html = patient_sheet_html(prediction)
    page = html[html.index("<h2>Treatment benefit</h2>"):]
    assert "the chemotherapy-benefit model" in page and "(no radiomics)" in page
    assert "<td>CCND high dose (given)</td>" in page and "<td>CCND low dose</td>" in page
    page_one = prediction["survival"]["60"]
    assert (f"this model gives {0.72 - 0.1:.0%} survival at 60 months there, page 1 gives {page_one:.0%}"
            in page)
    assert "radiotherapy alone: not shown, too few training patients in this arm (12 low-risk patients with 3 " \
           "events, 1 high-risk patients with 1 events; each risk group needs &gt;= 8 patients" in page
