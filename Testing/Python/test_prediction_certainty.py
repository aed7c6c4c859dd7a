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
from NPCPrognosisLib.survival.nomogram import COMBINED_RISK

CLINICAL = {"age": 55, "sex": "M", "t_stage": "T3", "n_stage": "N1", "rene": 0, "ldh": 200, "chemo": 1, "ccnd": 200}


def _patient(small_cohort, index: int = 0):
    """A cohort patient's images (for their fingerprints) and feature row (the first patient's unless ``index``):
    predict skips radiomics."""
    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    row = manifest.iloc[index]
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
    assert "<td>EBV DNA (copies/mL)</td><td>2,000</td>" in patient_sheet_html(measured_prediction.to_dict())


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
    assert prediction.out_of_range[0] == {"factor": "age", "value": 105.0, "low": pytest.approx(
        nomogram.low[nomogram.factors.index("age")]), "high": pytest.approx(age_high)}
    # the risk that age brings beyond every training patient's is said too
    assert [item["factor"] for item in prediction.out_of_range[1:]] in ([], [COMBINED_RISK])
    warning = next(w for w in prediction.warnings if w.startswith("Age (years) = 105"))
    assert "extrapolating" in warning and "check the value and its unit" in warning
    html = patient_sheet_html(prediction.to_dict())
    headline = html[:html.index("Risk group")]  # above the risk group and the survival, in words
    assert f"EXTRAPOLATING: Age (years) 105 (training {nomogram.low[nomogram.factors.index('age')]:.0f} to " \
           f"{age_high:.0f})" in headline and "check each value and its unit" in headline
    within = predict_patient(bundle, patient, {**CLINICAL, "ebv_dna": 2000}, features=features, tta=0)
    assert within.out_of_range == [] and "EXTRAPOLATING" not in patient_sheet_html(within.to_dict())


def test_a_risk_beyond_every_training_patients_is_said_as_a_factor_outside_its_range_is(small_cohort, trained):
    """Each factor within its training range, the risk beyond every training patient's (a stored range ending below
    this patient's risk stands in for a combination no training patient had): the record, the warnings and the
    sheet's headline say the model is extrapolating; a bundle saved without the range says nothing of it."""
    bundle = load_bundle(trained)
    nomogram = bundle.nomograms["nomogram"]
    patient, features = _patient(small_cohort)
    clinical = {**CLINICAL, "ebv_dna": 2000}
    within = predict_patient(bundle, patient, clinical, features=features, tta=0)
    low, high = nomogram.risk_range  # kept by train
    assert within.out_of_range == [] and low <= within.risk_score <= high
    nomogram.risk_range = [low, within.risk_score - 0.5]
    beyond = predict_patient(bundle, patient, clinical, features=features, tta=0)
    assert beyond.out_of_range == [{"factor": COMBINED_RISK, "value": pytest.approx(within.risk_score),
                                    "low": pytest.approx(low), "high": pytest.approx(within.risk_score - 0.5)}]
    warning = next(w for w in beyond.warnings if w.startswith("The combination of this patient's factors"))
    assert f"risk score {within.risk_score:.2f}" in warning and "the model is extrapolating" in warning
    html = patient_sheet_html(beyond.to_dict())
    headline = html[:html.index("Risk group")]
    assert "EXTRAPOLATING: the combination of this patient" in headline and "beyond any training patient" in headline
    nomogram.risk_range = None  # a bundle saved before the range was kept
    assert predict_patient(bundle, patient, clinical, features=features, tta=0).out_of_range == []


def test_the_treatment_page_names_its_model_marks_the_arm_given_and_says_why_an_arm_is_absent(small_cohort,
                                                                                              trained):
    from NPCPrognosisLib.survival import benefit as bf
    from NPCPrognosisLib.survival import benefit_patient as bp

    bundle = load_bundle(trained)
    patient, features = _patient(small_cohort)
    prediction = predict_patient(bundle, patient, {**CLINICAL, "ebv_dna": 2000}, features=features, tta=0).to_dict()
    arm = {"12": {"survival": 0.93, "ci95": [0.88, 0.97]}, "36": {"survival": 0.81, "ci95": [0.70, 0.89]},
           "60": {"survival": 0.72, "ci95": [0.58, 0.83]}}
    counts = {g: {a: {"n": 12, "events": 3} for a in bf.ARMS} for g in ("low", "high")}
    counts["high"]["rt_alone"] = {"n": 1, "events": 1}
    doc = {"arms": ["low_dose", "high_dose"], "counts": counts}
    prediction["chemo_benefit"] = {
        "statement": "inconclusive", "model": bp.BENEFIT_MODEL, "given_arm": bf.given_arm(1, 200.0),
        "absent_arms": bp.absent_arms(doc),
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


@pytest.fixture(scope="module")
def benefit_doc():
    """A chemotherapy-benefit model fitted on 500 synthetic patients (high dose helps the high-risk half only), as
    ``train`` stores it: for the patient of these tests the high dose is a benefit in the high-risk group and
    inconclusive in the low-risk one."""
    import json

    from NPCPrognosisLib.datasets.synth import simulate_outcomes
    from NPCPrognosisLib.io.clinical import CLINICAL_FIELDS, encode_clinical, parse_clinical
    from NPCPrognosisLib.survival import benefit as bf

    table = simulate_outcomes(500, 13)
    confounders = pd.DataFrame([encode_clinical(parse_clinical({c: r.get(c) for c in CLINICAL_FIELDS},
                                                               r["patient_id"]), 3.0) for _, r in table.iterrows()])
    group = np.where(table["high_risk"].astype(bool), "high", "low")
    doc = bf.fit_benefit(table.dmfs_time, table.dmfs_event, table.chemo, table.ccnd, group,
                         confounders[list(bf.CONFOUNDERS)], n_bootstrap=30, seed=1)
    return json.loads(json.dumps(doc))


def _gain_by_hand(doc, confounders, group):
    """High over low dose at the last month, from the stored coefficients: exp(-H0 exp(x_high'b)) - exp(-H0
    exp(x_low'b)), with the 2.5th/97.5th percentile over the stored bootstrap refits."""
    model, boot = doc["model"], doc["bootstrap"]

    def row(arm):
        cells = []
        for name in model["covariates"]:
            parts = name.split(":")
            cells.append(float(all(p in (f"arm[{arm}]", f"risk[{group}]") for p in parts)) if "[" in name
                         else float(confounders[name]))
        return np.array(cells)

    month = boot["months"][-1]
    h0 = model["baseline_cumhaz"][np.searchsorted(model["baseline_times"], month, side="right") - 1]
    gain = math.exp(-h0 * math.exp(row("high_dose") @ model["coef"])) - \
        math.exp(-h0 * math.exp(row("low_dose") @ model["coef"]))
    coef, cumhaz = np.asarray(boot["coef"]), np.asarray(boot["baseline_cumhaz"])[:, -1]
    draws = np.exp(-cumhaz * np.exp(coef @ row("high_dose"))) - np.exp(-cumhaz * np.exp(coef @ row("low_dose")))
    return gain, np.percentile(draws, [2.5, 97.5])


def test_a_benefit_resting_on_a_missing_ebv_dna_shows_its_range_and_is_undetermined_when_its_conclusion_changes(
        small_cohort, trained, benefit_doc):
    from NPCPrognosisLib.io.clinical import encode_clinical, parse_clinical
    from NPCPrognosisLib.survival import benefit_patient as bp

    bundle = load_bundle(trained)
    bundle.document["chemo_benefit"] = benefit_doc
    patient, features = _patient(small_cohort)
    measured = predict_patient(bundle, patient, {**CLINICAL, "ebv_dna": 2000}, features=features, tta=0)
    confounders = encode_clinical(parse_clinical({**CLINICAL, "ebv_dna": 2000}, "x"), bundle.ebv_fill)
    # with EBV DNA measured: the same numbers and sentence as without any range, and the stored model's by hand
    assert measured.chemo_benefit == bp.patient_benefit(benefit_doc, confounders, measured.risk_group, "T3", "N1",
                                                        "high_dose")
    gain, ci = _gain_by_hand(benefit_doc, confounders, measured.risk_group)
    headline = measured.chemo_benefit["benefit"]["high_dose_vs_low_dose"]["60"]
    assert headline["absolute_benefit"] == pytest.approx(gain, abs=1e-9)
    assert headline["ci95"] == pytest.approx(ci, abs=1e-9) and "imputed" not in measured.chemo_benefit
    assert measured.chemo_benefit["conclusion"] == ("benefit" if ci[0] > 0 else "harm" if ci[1] < 0 else "inconclusive")
    assert "not measured: the survival under each arm" not in patient_sheet_html(measured.to_dict())

    low, high = bundle.imputation_ranges["log10_ebv_dna"]
    fill = bundle.ebv_fill
    grid = sorted({fill, *np.linspace(low, high, bp.RANGE_POINTS)})
    first = predict_patient(bundle, patient, CLINICAL, features=features, tta=0)
    risks = first.imputed["log10_ebv_dna"]["risk_range"]
    # cut-offs below the whole range of risk, inside it, and inside it below the risk at the median (where the
    # median alone gives a high-risk patient a benefit shown: the sentence the old code printed)
    for cutoff, expected in ((risks[0] - 1.0, "determined"), ((risks[0] + risks[1]) / 2.0, "undetermined"),
                             ((risks[0] + first.risk_score) / 2.0, "undetermined")):
        bundle.document["cutoffs"]["nomogram"]["cutoff"] = cutoff
        prediction = predict_patient(bundle, patient, CLINICAL, features=features, tta=0)
        block = prediction.chemo_benefit["imputed"]["log10_ebv_dna"]
        # the gain across the training P10-P90 of EBV DNA, each value with the nomogram group it would give
        by_hand = []
        for value in grid:
            factors = {**prediction.factors, "log10_ebv_dna": value}
            group = "high" if _by_hand(bundle.document, factors)[0] > cutoff else "low"
            by_hand.append((*_gain_by_hand(benefit_doc, {**confounders, "log10_ebv_dna": value}, group), group))
        conclusions = {"benefit" if c[0] > 0 else "harm" if c[1] < 0 else "inconclusive" for _, c, _ in by_hand}
        assert block["value_range"] == pytest.approx([low, high]) and block["filled_with"] == pytest.approx(fill)
        assert block["benefit_range"] == pytest.approx([min(g for g, _, _ in by_hand), max(g for g, _, _ in by_hand)],
                                                       abs=1e-9)
        assert set(block["conclusions"]) == conclusions
        assert block["risk_groups"] == [g for g in ("low", "high") if g in {g for _, _, g in by_hand}]
        statement = prediction.chemo_benefit["statement"]
        span = f"{block['benefit_range'][0]:+.1%} to {block['benefit_range'][1]:+.1%}"
        assert span in statement and "10th-90th percentile of EBV DNA" in statement
        if expected == "determined":  # high risk throughout: a benefit throughout, said with its range
            assert block["conclusions"] == ["benefit"] and block["conclusion_determined"]
            assert "is estimated to raise 60-month survival" in statement and "benefit throughout" in statement
            assert prediction.chemo_benefit["benefit_shown"] is True
            assert prediction.chemo_benefit["conclusion"] == "benefit"
        else:  # low risk (inconclusive) at one end, high risk (a benefit) at the other: no conclusion printed
            assert block["conclusions"] == ["benefit", "inconclusive"] and not block["conclusion_determined"]
            assert "undetermined without EBV DNA" in statement and "estimated to raise" not in statement
            assert prediction.chemo_benefit["benefit_shown"] is False
            assert prediction.chemo_benefit["conclusion"] == "undetermined without EBV DNA"
        page = patient_sheet_html(prediction.to_dict())
        shown = statement.replace(">", "&gt;").replace("<", "&lt;")
        assert shown in page[page.index("<h2>Treatment benefit</h2>"):]
        # the per-arm survival table says it rests on the median, with the range the gain could take
        arms = page[page.index("<h2>Treatment benefit</h2>"):]
        note = arms[arms.index("EBV DNA not measured: the survival under each arm above is at the training median"):]
        assert arms.index("If treated with") < arms.index(note) < arms.index(shown)
        assert "copies/mL), not this patient&#x27;s value" in note[:200]
        assert f"the gain of the high dose at 60 months would be {span}." in note[:400]

    del bundle.document["clinical_encoding"]["imputation_range_p10_p90"]  # an older bundle: range unknown
    older = predict_patient(bundle, patient, CLINICAL, features=features, tta=0).chemo_benefit
    assert older["imputed"]["log10_ebv_dna"]["value_range"] is None
    assert "how far it could move this benefit is unknown" in older["statement"]
    # a conclusion resting on the median with no range behind it is not labelled as one (was the median's 'benefit')
    assert older["conclusion"] == "undetermined without EBV DNA" and older["benefit_shown"] is False
    sheet = patient_sheet_html(predict_patient(bundle, patient, CLINICAL, features=features, tta=0).to_dict())
    assert "stores no training percentiles of EBV DNA, so how far it could move them is unknown" in sheet


def test_predict_prints_the_benefit_of_a_patient_without_ebv_dna_with_its_range(small_cohort, trained, benefit_doc,
                                                                               tmp_path, capsys):
    import json

    from NPCPrognosisLib.cli import main
    from NPCPrognosisLib.io.bundle import write_bundle

    content = {k: v for k, v in read_bundle(trained).items()
               if k not in ("format", "format_version", "created", "software")}
    bundle = write_bundle(tmp_path / "bundle", {**content, "chemo_benefit": benefit_doc})
    row = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str}).iloc[0]
    args = ["predict", "--bundle", str(bundle), "--patient-id", row["patient_id"], "--out", str(tmp_path / "out")]
    for seq in ("t1", "t2", "t1c", "mask"):
        args += [f"--{seq}", str(small_cohort / row[seq])]
    assert main([*args, "--clinical", *(f"{k}={v}" for k, v in CLINICAL.items())]) == 0
    benefit = json.loads((tmp_path / "out" / "prediction.json").read_text(encoding="utf-8"))["chemo_benefit"]
    span = benefit["imputed"]["log10_ebv_dna"]["benefit_range"]
    assert f"{span[0]:+.1%} to {span[1]:+.1%} across the training 10th-90th percentile of EBV DNA" in \
        benefit["statement"]
    assert f"  chemotherapy benefit: {benefit['statement']}" in capsys.readouterr().out


def test_evaluate_tells_a_held_out_patient_without_ebv_dna_what_predict_tells_them(small_cohort, trained, benefit_doc,
                                                                                  tmp_path):
    """evaluate's per-patient benefit column is predict's conclusion: "undetermined without EBV DNA" where the
    training 10th-90th percentile of EBV DNA changes it, with the range of the gain; a measured patient keeps the
    plain conclusion and no range."""
    from NPCPrognosisLib.io.bundle import write_bundle
    from NPCPrognosisLib.io.manifest import CLINICAL_FIELDS, read_manifest
    from NPCPrognosisLib.pipeline.evaluate import evaluate_cohort
    from NPCPrognosisLib.survival.benefit_patient import benefit_conclusion

    patient, features = _patient(small_cohort)
    bundle = load_bundle(trained)
    bundle.document["chemo_benefit"] = benefit_doc
    risks = predict_patient(bundle, patient, CLINICAL, features=features, tta=0).imputed["log10_ebv_dna"]["risk_range"]
    content = {k: v for k, v in read_bundle(trained).items()
               if k not in ("format", "format_version", "created", "software")}
    content["cutoffs"]["nomogram"]["cutoff"] = (risks[0] + risks[1]) / 2.0  # the group flips inside the range
    path = write_bundle(tmp_path / "bundle", {**content, "chemo_benefit": benefit_doc})

    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    for column in ("t1", "t2", "t1c", "mask"):
        manifest[column] = [str(small_cohort / v) for v in manifest[column]]
    for key, value in CLINICAL.items():  # the first patient is the one of the tests above, without EBV DNA
        manifest.loc[0, key] = value
    manifest.loc[:5, "ebv_dna"] = np.nan
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    metrics = evaluate_cohort(path, read_manifest(tmp_path / "manifest.csv"), small_cohort / "features.csv", "dmfs",
                              tmp_path / "eval", subset="all", n_boot=0, plots=False)
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv", dtype={"patient_id": str}).set_index("patient_id")

    block = metrics["chemo_benefit"]
    assert block["n_ebv_dna_imputed"] == int(manifest["ebv_dna"].isna().sum()) >= 6
    assert "training median" in block["c_for_benefit_ebv_dna"]
    assert block["conclusions"] == predictions["benefit_conclusion_60m"].value_counts().to_dict()

    disk = load_bundle(path)
    missing = predict_patient(disk, patient, CLINICAL, features=features, tta=0).chemo_benefit
    row = predictions.loc[patient.patient_id]
    assert missing["conclusion"] == "undetermined without EBV DNA" == row["benefit_conclusion_60m"]
    assert [row["predicted_benefit_60m_low"], row["predicted_benefit_60m_high"]] == pytest.approx(
        missing["imputed"]["log10_ebv_dna"]["benefit_range"], abs=1e-12)
    assert row["predicted_benefit_60m"] == pytest.approx(
        missing["benefit"]["high_dose_vs_low_dose"]["60"]["absolute_benefit"], abs=1e-12)

    index = int(np.flatnonzero(manifest["ebv_dna"].notna())[0])
    other = manifest.iloc[index]
    measured_patient, measured_features = _patient(small_cohort, index)
    clinical = {c: other[c] for c in CLINICAL_FIELDS if c in other and pd.notna(other[c])}
    measured = predict_patient(disk, measured_patient, clinical, features=measured_features, tta=0).chemo_benefit
    row = predictions.loc[measured_patient.patient_id]
    headline = measured["benefit"]["high_dose_vs_low_dose"]["60"]
    assert "imputed" not in measured and row["benefit_conclusion_60m"] == benefit_conclusion(headline)
    assert np.isnan(row["predicted_benefit_60m_low"]) and np.isnan(row["predicted_benefit_60m_high"])
    assert row["predicted_benefit_60m"] == pytest.approx(headline["absolute_benefit"], abs=1e-12)


def test_a_nomogram_that_learned_nothing_says_so_in_the_patients_result(small_cohort, trained):
    """train warned that the nomogram learned nothing (every patient at one risk, or an optimism-corrected C at or
    below chance); predict printed 'low risk' and the survival without a word of it."""
    from NPCPrognosisLib.survival.risk_groups import training_cutoff

    bundle = load_bundle(trained)
    patient, features = _patient(small_cohort)
    clinical = {**CLINICAL, "ebv_dna": 2000}
    learned = predict_patient(bundle, patient, clinical, features=features, tta=0)
    assert learned.unproven == {} and not any(w.startswith(("the nomogram learned nothing", "the nomogram gives every"))
                                              for w in learned.warnings)

    # a nomogram whose every factor was dropped (no weight): one risk for all training patients, and the cut-off
    # record train stores for it
    nomogram = bundle.nomograms["nomogram"]
    nomogram.model.coef = np.zeros(len(nomogram.factors))
    time, event = bundle.training_outcomes
    bundle.document["cutoffs"]["nomogram"] = training_cutoff(np.full(len(time), -nomogram.center), time, event)
    bundle.document["training"]["optimism_corrected_c"]["nomogram"].update(
        {"apparent": 0.5, "optimism": 0.09, "corrected": 0.41, "no_better_than_chance": True})
    prediction = predict_patient(bundle, patient, clinical, features=features, tta=0)
    # the low group every patient gets is no patient's: the record says not determined, and why
    assert prediction.risk_group == "not determined"
    assert prediction.unproven == {"no_weight": True, "corrected_c": pytest.approx(0.41)}
    same = [w for w in prediction.warnings if w.startswith("the nomogram gives every patient the same risk")]
    chance = [w for w in prediction.warnings if w.startswith("the nomogram learned nothing")]
    assert len(same) == 1 and "training cohort's average" in same[0]
    assert len(chance) == 1 and "optimism-corrected training C-index was 0.41" in chance[0]
    html = patient_sheet_html(prediction.to_dict())
    assert "the nomogram gives every patient the same risk" in html and "C-index was 0.41" in html


def test_a_nomogram_whose_fit_ran_away_in_training_says_so_in_the_patients_result(small_cohort, trained):
    """On these 18 training patients (7 events, 8 factors) the Cox fit of the nomogram's clinical block ran away and
    was refitted with a larger ridge, and the events were too few for the corrected C: train, evaluate and the
    checklist said so, predict printed the patient's result and its intervals as ordinary ones. It now says both in
    one line, for the nomogram only, in the sheet's labels (train's sentences named log10_ebv_dna and t_stage, and
    ran to 500 characters)."""
    from NPCPrognosisLib.reporting.html import esc
    from NPCPrognosisLib.reporting.labels import factor_name

    document = read_bundle(trained)
    record = document["models"]["nomogram"]["runaway"]["clinical"]
    assert document["models"]["clinical"].get("runaway")  # the clinical model ran away too: not the patient's
    events, factors = document["training"]["events"], len(document["models"]["nomogram"]["model"]["covariates"])
    assert document["training"]["optimism_warning"] and events < 5 * factors
    bundle = load_bundle(trained)
    patient, features = _patient(small_cohort)
    prediction = predict_patient(bundle, patient, {**CLINICAL, "ebv_dna": 2000}, features=features, tta=0)
    said = [w for w in prediction.warnings if "ran away" in w or "training events" in w]
    assert len(said) == 1, said
    names = ", ".join(factor_name(f) for f in record["factors"])
    assert said[0] == (f"the nomogram learned from {events} training events for {factors} factors (at least "
                       f"{5 * factors} wanted), and its weights for {names} ran away and were shrunk towards no "
                       "effect: its risk, risk group and survival intervals for this patient are less certain than "
                       "shown")
    assert "EBV DNA" in names and not any(raw in said[0] for raw in ("log10_ebv_dna", "t_stage", "_"))
    assert len(said[0]) < 300  # one line of the first page's warnings, not train's paragraph
    assert patient_sheet_html(prediction.to_dict()).count(esc(said[0])) == 1

    # without the runaway record the events are still too few: said alone
    del bundle.document["models"]["nomogram"]["runaway"]
    sound = predict_patient(bundle, patient, {**CLINICAL, "ebv_dna": 2000}, features=features, tta=0)
    assert [w for w in sound.warnings if "ran away" in w or "training events" in w] == [
        f"the nomogram learned from {events} training events for {factors} factors (at least {5 * factors} wanted): "
        "its risk, risk group and survival intervals for this patient are less certain than shown"]
    # and with enough events nothing is said
    bundle.document["training"]["events"] = 5 * factors
    enough = predict_patient(bundle, patient, {**CLINICAL, "ebv_dna": 2000}, features=features, tta=0)
    assert not any("ran away" in w or "training events" in w for w in enough.warnings)


def test_a_fit_still_running_away_at_the_strongest_ridge_names_its_factors():
    from NPCPrognosisLib.pipeline.predict import fit_warnings, runaway_text

    record = {"factors": {"log10_ebv_dna": 5.1, "male": 3.2}, "factors_after": {"log10_ebv_dna": 2.4}}
    text = runaway_text(record, None)
    assert text.startswith("the nomogram's weights for EBV DNA, Sex ran away on too few training events and were "
                           "shrunk towards no effect (EBV DNA still implausibly large): ")
    model = {"model": {"covariates": ["log10_ebv_dna", "male"]}, "runaway": {"volume": record}}
    document = {"training": {"events": 10}, "models": {"nomogram": model, "clinical": {"runaway": {"c": record}}}}
    assert fit_warnings(document) == [runaway_text(record, 10)]  # 5 events per factor: enough, only the runaway
    document["training"]["events"] = 9
    assert fit_warnings(document) == [
        "the nomogram learned from 9 training events for 2 factors (at least 10 wanted), and its weights for EBV DNA, "
        "Sex ran away and were shrunk towards no effect: its risk, risk group and survival intervals for this "
        "patient are less certain than shown"]
    assert fit_warnings({"models": {"nomogram": {}}}) == [] and fit_warnings({}) == []


def _weightless_bundle(trained, out):
    """The trained bundle with its nomogram as train leaves one whose every block was dropped (stacked weights of
    0, so coefficients and their covariance 0): one risk for every training patient, the cut-off record train
    stores for it, and an optimism-corrected C below chance."""
    from NPCPrognosisLib.io.bundle import write_bundle
    from NPCPrognosisLib.survival.risk_groups import training_cutoff

    content = {k: v for k, v in read_bundle(trained).items()
               if k not in ("format", "format_version", "created", "software")}
    block = content["models"]["nomogram"]
    width = len(block["model"]["coef"])
    block["model"]["coef"] = [0.0] * width
    block["model"]["covariance"] = [[0.0] * width for _ in range(width)]
    time, event = content["training"]["time"], content["training"]["event"]
    content["cutoffs"]["nomogram"] = training_cutoff(np.full(len(time), -block["center"]), time, event)
    content["training"]["optimism_corrected_c"]["nomogram"].update(
        {"apparent": 0.5, "optimism": 0.09, "corrected": 0.41, "no_better_than_chance": True})
    return write_bundle(out, content)


def test_a_nomogram_that_learned_nothing_determines_no_risk_group_anywhere_it_is_shown(small_cohort, trained,
                                                                                       tmp_path, capsys):
    """predict printed 'low risk', a '95% CI 0.00 to 0.00' and the survival as the patient's for a nomogram without
    weight (every patient at one risk): a clinician reads the first line. The group is 'not determined' in
    prediction.json, the terminal, the sheet, the panel and evaluate's predictions.csv (one decision), the interval
    is not estimable and the survival is labelled as the training cohort's average."""
    import json

    from NPCPrognosisLib.cli import main
    from NPCPrognosisLib.io.manifest import read_manifest
    from NPCPrognosisLib.pipeline.evaluate import evaluate_cohort
    from NPCPrognosisLib.reporting.labels import risk_group_standing, risk_group_text
    from NPCPrognosisLib.slicer_support import formatting

    bundle = _weightless_bundle(trained, tmp_path / "bundle")
    row = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str}).iloc[0]
    args = ["predict", "--bundle", str(bundle), "--patient-id", row["patient_id"], "--out", str(tmp_path / "out")]
    for seq in ("t1", "t2", "t1c", "mask"):
        args += [f"--{seq}", str(small_cohort / row[seq])]
    assert main([*args, "--clinical", *(f"{k}={v}" for k, v in {**CLINICAL, "ebv_dna": 2000}.items())]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    prediction = json.loads((tmp_path / "out" / "prediction.json").read_text(encoding="utf-8"))

    # every patient has the same risk: the training patients' one value (zero coefficients), with an SE of 0
    document = read_bundle(bundle)
    assert prediction["risk_score"] == pytest.approx(-document["models"]["nomogram"]["center"], abs=1e-12)
    assert prediction["uncertainty"]["risk_se"] == 0.0
    assert prediction["risk_group"] == "not determined"
    assert prediction["unproven"] == {"no_weight": True, "corrected_c": pytest.approx(0.41)}
    text = "not determined: the nomogram carries no weight (every patient gets the same risk)"
    assert risk_group_standing(prediction)[0] == "not determined" and risk_group_text(prediction) == text
    assert f"; {text};" in first and "low risk" not in first and "high risk" not in first
    assert "95% CI not estimable" in first and "0.00 to 0.00" not in first
    assert first.endswith("(the training cohort's average, not this patient's)")
    html = patient_sheet_html(prediction)
    assert text in html and "low risk" not in html and "95% CI not estimable" in html
    assert html.count("the training cohort&#x27;s average, not this patient&#x27;s") >= len(prediction["survival"])
    assert formatting.format_group(prediction) == "NOT DETERMINED"
    assert formatting.format_risk(prediction, prediction["uncertainty"]) == (
        f"{prediction['risk_score']:.2f} ({text}; cut-off {prediction['cutoff']:.2f})")  # no '± 0.00'
    assert all(line.endswith("(the training cohort's average, not this patient's)")
               for line in formatting.format_survival(prediction))

    manifest = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str})
    for column in ("t1", "t2", "t1c", "mask"):
        manifest[column] = [str(small_cohort / v) for v in manifest[column]]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    metrics = evaluate_cohort(bundle, read_manifest(tmp_path / "manifest.csv"), small_cohort / "features.csv",
                              "dmfs", tmp_path / "eval", subset="all", n_boot=0, plots=False)
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv", dtype={"patient_id": str})
    assert set(predictions["risk_group"]) == {"not determined"} and len(predictions) == len(manifest)
    # and evaluate says why, as predict does (its warnings had nothing; the column alone changed)
    # (on these 18 training patients the nomogram's clinical block also ran away and was refitted: evaluate repeats
    # that finding of the training, as it repeats train's other findings)
    unproven = [w for w in metrics["warnings"] if w.startswith("the nomogram ") and "ran away" not in w]
    assert len(unproven) == 2 and unproven == [w for w in prediction["warnings"]
                                               if w.startswith("the nomogram ") and "training events" not in w]
    assert any(w.startswith("the nomogram (clinical block) model's Cox fit ran away") for w in metrics["warnings"])


def test_a_nomogram_no_better_than_chance_says_its_group_is_unproven_and_a_learned_one_keeps_its_group():
    """The same decision for a nomogram that ranks but no better than chance once corrected for optimism; a zero-width
    interval is not estimable wherever it comes from, a real one is printed."""
    from NPCPrognosisLib.reporting.labels import interval_text, risk_group_text, risk_interval_text, survival_caveat

    chance = {"risk_group": "not determined", "unproven": {"corrected_c": 0.43}, "borderline": True}
    assert risk_group_text(chance) == ("not determined: the nomogram is unproven (optimism-corrected training "
                                       "C-index 0.43; 0.5 is chance)")
    assert survival_caveat(chance) == "unproven: the nomogram ranks new patients no better than chance"
    learned = {"risk_group": "high", "unproven": {}, "cutoff": 0.5, "uncertainty": {"risk_ci95": [0.61, 1.2]}}
    assert risk_group_text(learned) == "high risk" and survival_caveat(learned) == ""
    assert risk_interval_text(learned) == "95% CI 0.61 to 1.20, cut-off 0.50"
    assert interval_text([0.674, 0.674], ".0%", "-") == "95% CI not estimable"
    assert interval_text([0.6, 0.75], ".0%", "-") == "95% CI 60%-75%"


def test_the_fusion_models_learned_nothing_from_its_out_of_fold_c_and_says_which_model():
    """The fusion (``mmoe``) is never scored in-sample: its training C-index is out of fold, so that C at or below
    0.5 is its 'learned nothing' (the nomogram's is the optimism-corrected C); the texts name the model whose group
    is not determined, and a nomogram's apparent C at 0.5 alone decides nothing."""
    from NPCPrognosisLib.pipeline.predict import unproven_nomogram, unproven_warnings
    from NPCPrognosisLib.reporting.labels import risk_group_standing, risk_group_text, survival_caveat

    document = {"cutoffs": {"nomogram": {}, "mmoe": {}},
                "training": {"metrics": {"nomogram": {"c_index": 0.5}, "mmoe": {"c_index": 0.5}},
                             "optimism_corrected_c": {"nomogram": {"corrected": 0.58, "no_better_than_chance": False}}}}
    assert unproven_nomogram(document) == {} and unproven_nomogram(document, "mmoe") == {"out_of_fold_c": 0.5}
    document["training"]["metrics"]["mmoe"]["c_index"] = 0.51
    assert unproven_nomogram(document, "mmoe") == {}
    document["training"]["metrics"]["mmoe"]["c_index"] = float("nan")  # not estimable (no events): unknown
    assert unproven_nomogram(document, "mmoe") == {}
    document["cutoffs"]["mmoe"]["no_groups"] = "every training patient has the same risk: the model carries no weight"
    assert unproven_nomogram(document, "mmoe") == {"no_weight": True} and unproven_nomogram(document) == {}
    fusion = {"model": "mmoe", "risk_group": "not determined", "unproven": {"out_of_fold_c": 0.48}}
    assert risk_group_standing(fusion)[0] == "not determined"
    assert risk_group_text(fusion) == ("not determined: the multimodal fusion (MMoE) is unproven (out-of-fold "
                                       "training C-index 0.48; 0.5 is chance)")
    assert survival_caveat(fusion) == "unproven: the multimodal fusion (MMoE) ranks new patients no better than chance"
    assert unproven_warnings(fusion["unproven"], "mmoe") == [
        "the multimodal fusion (MMoE) learned nothing that holds on new patients: its out-of-fold training C-index "
        "was 0.48 (0.5 is chance); no risk group is determined, and its survival is unproven"]
