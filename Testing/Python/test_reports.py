"""The patient sheet and the cohort study page: drawn from the numbers the pipeline wrote, rendered in a real
headless Chromium (no console errors, every image loads, the PDF has one page per section)."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from NPCPrognosisLib.cli import main
from NPCPrognosisLib.io.bundle import read_bundle
from NPCPrognosisLib.reporting import labels
from NPCPrognosisLib.reporting.browser import HEADLESS_FLAGS, find_chromium
from NPCPrognosisLib.reporting.nomogram_chart import (
    chart_survival,
    nomogram_chart,
    points_for_survival,
    read_survival_axis,
)


# ------------------------------------------------------------------------------------------------ browser
def _driver():
    """Selenium driving Debian's Chromium through its chromedriver; a loud skip where either is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is part of the test extra")
    chromium, chromedriver = find_chromium(), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("NO BROWSER TEST: Chromium or chromedriver is not installed and ./run.sh could not install them "
                    "(apt-get install chromium chromium-driver) - the reports were NOT checked in a browser")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in HEADLESS_FLAGS:
        options.add_argument("--headless=new" if flag == "--headless" else flag)
    options.add_argument("--window-size=1200,1600")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def render(html_path) -> dict:
    """Open the page as a user would (file://) and report its console errors and the state of every image."""
    driver = _driver()
    try:
        driver.get(html_path.resolve().as_uri())
        driver.execute_script("return document.readyState")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src').slice(0, 80), i.complete, "
            "i.naturalWidth, i.naturalHeight]);")
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        title = driver.title
    finally:
        driver.quit()
    return {"images": images, "errors": errors, "title": title,
            "broken": [src for src, complete, width, _ in images if not complete or width == 0]}


def pdf_pages(path) -> int:
    from pypdf import PdfReader

    return len(PdfReader(str(path)).pages)


def test_the_browser_check_catches_a_broken_image_and_a_console_error(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><title>t</title></head><body><img src='missing.png' alt='x'>"
                    "<script>console.error('boom')</script></body></html>", encoding="utf-8")
    seen = render(page)
    assert seen["broken"] == ["missing.png"]
    assert any("boom" in e for e in seen["errors"]) and any("missing.png" in e for e in seen["errors"])


# ------------------------------------------------------------------------------------------------ outputs
@pytest.fixture(scope="module")
def evaluation(small_cohort, trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    info = out / "study.json"
    info.write_text(json.dumps({"data_source": "synthetic generator, seed 3", "dates": "2026"}), encoding="utf-8")
    assert main(["--quiet", "evaluate", "--bundle", str(trained), "--manifest", str(small_cohort / "manifest.csv"),
                 "--features", str(small_cohort / "features.csv"), "--endpoint", "dmfs", "--out", str(out),
                 "--n-boot", "50", "--subset", "all", "--study-info", str(info)]) == 0
    return out


@pytest.fixture(scope="module")
def predicted(small_cohort, trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("predicted")
    row = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str}).iloc[1]
    clinical = [f"{k}={row[k]}" for k in ("age", "sex", "t_stage", "n_stage", "rene", "ldh", "chemo", "ccnd")]
    args = ["--quiet", "predict", "--bundle", str(trained), "--patient-id", row["patient_id"], "--out", str(out)]
    for seq in ("t1", "t2", "t1c", "mask"):
        args += [f"--{seq}", str(small_cohort / row[seq])]
    assert main([*args, "--clinical", *clinical]) == 0
    return out, small_cohort / row["t1c"], small_cohort / row["mask"]


# ------------------------------------------------------------------------------------------------ nomogram
def test_the_drawn_nomogram_gives_the_total_points_and_survival_of_prediction_json(predicted):
    prediction = json.loads((predicted[0] / "prediction.json").read_text(encoding="utf-8"))
    chart = nomogram_chart(prediction["nomogram_scale"], prediction["factors"])
    # Points read off each factor's axis are the prediction's, and so is their total.
    for axis in chart.axes:
        assert axis.patient_points == pytest.approx(prediction["nomogram_points"]["per_factor"][axis.factor],
                                                    abs=1e-9)
    assert chart.patient_total == pytest.approx(prediction["nomogram_points"]["total"], abs=1e-9)
    # The survival the total gives is the prediction's, through the baseline hazard stored with the scale ...
    assert set(chart_survival(chart)) == set(prediction["survival"])
    for month, value in chart_survival(chart).items():
        assert value == pytest.approx(prediction["survival"][month], abs=1e-9)
    # ... and a reader interpolating between the drawn survival ticks lands on it too (within the ticks' spacing).
    for axis in chart.survival_axes:
        read = read_survival_axis(axis, chart.patient_total)
        if read is not None:
            assert read == pytest.approx(prediction["survival"][f"{axis.months:g}"], abs=0.01)
    # Each drawn factor tick sits at its own points: 0 at the favourable end, 100 for the widest axis.
    widest = chart.axes[0]
    assert max(abs(t[1]) for t in widest.ticks) <= 100.0 + 1e-9
    assert min(abs(t[1]) for t in widest.ticks) == pytest.approx(0.0, abs=1e-9)


def test_chart_survival_axis_matches_the_cox_formula_by_hand():
    scale = {"factors": ["age"], "coef": [0.05], "low": [30.0], "high": [70.0], "zero_point_value": [30.0],
             "points_per_unit_log_hazard": 100.0 / (0.05 * 40.0), "offset": 0.05 * 30.0, "center": 0.0,
             "months": [36.0], "baseline_cumulative_hazard": [0.02]}
    chart = nomogram_chart(scale, {"age": 50.0})
    assert chart.patient_total == pytest.approx(50.0)
    assert chart_survival(chart)["36"] == pytest.approx(math.exp(-0.02 * math.exp(0.05 * 50.0)))
    p = points_for_survival(scale, 0, 0.8)
    assert math.exp(-0.02 * math.exp(p / scale["points_per_unit_log_hazard"] + 1.5)) == pytest.approx(0.8)


def test_ebv_dna_and_points_print_as_a_clinician_reads_them():
    """The sheet printed EBV DNA as '2.4e3' (read as 2.4) and a factor at its favourable end as 'Sex male -0.0'
    points; the panel printed the same points, the terminal the same copies, each through these functions."""
    from NPCPrognosisLib.reporting.nomogram_chart import chart_rows

    assert labels.factor_value_text("log10_ebv_dna", math.log10(2401.0)) == "2,400"
    assert labels.clinical_value_text("ebv_dna", 2400.0) == "2,400"
    assert labels.clinical_value_text("ebv_dna", 123456.7) == "123,457"
    assert labels.factor_range_text("log10_ebv_dna", [math.log10(98.0), math.log10(9701.0)]) == \
        "97-9,700 copies/mL"
    assert "EBV DNA (copies/mL) 150,001 (training 0 to 9,999)" in labels.extrapolation_text(
        {"out_of_range": [{"factor": "log10_ebv_dna", "value": math.log10(150002.0), "low": 0.0,
                           "high": math.log10(10000.0)}]})
    # the factors together beyond every training patient's risk, beside a factor outside its own range
    combined = labels.extrapolation_text({"out_of_range": [
        {"factor": "age", "value": 105.0, "low": 25.0, "high": 71.0},
        {"factor": "combined_risk", "value": 6.2, "low": -3.1, "high": 2.4}]})
    assert combined.startswith("EXTRAPOLATING: Age (years) 105 (training 25 to 71) outside the training range; the "
                               "combination of this patient's factors gives a risk beyond any training patient's "
                               "(risk score 6.20, training -3.10 to 2.40): the model is extrapolating.")
    assert [labels.points_text(v) for v in (-0.0, -0.04, 0.0, 3.666947, -1.25)] == ["0", "0", "0", "3.7", "-1.2"]
    assert labels.points_text(-0.3, 0) == "0" and labels.points_text(4.768, 0) == "5"
    # a nomogram whose sex coefficient is negative gives a male patient -0.0 points: the sheet's table prints 0
    scale = {"factors": ["age", "male"], "coef": [0.05, -0.4], "zero_point_value": [20.0, 1.0],
             "low": [20.0, 0.0], "high": [80.0, 1.0], "points_per_unit_log_hazard": 100.0 / 3.0, "offset": 1.0,
             "months": [36.0], "baseline_cumulative_hazard": [0.02]}
    chart = nomogram_chart(scale, {"age": 50.0, "male": 1.0})
    assert [a.patient_points for a in chart.axes if a.factor == "male"] == [-0.0]
    assert ("Sex", "male", "0") in chart_rows(chart)
    assert not any(points.startswith("-") for _, _, points in chart_rows(chart))


def test_labels_say_what_clinicians_write():
    assert labels.factor_label("log10_ebv_dna") == "EBV DNA (copies/mL)"
    assert labels.factor_label("rene") == "rENE grade" and labels.factor_label("t_stage_T3") == "T stage = T3"
    assert labels.factor_value_text("log10_ebv_dna", math.log10(4001.0)) == "4,000"
    assert labels.factor_value_text("male", 1.0) == "male" and labels.factor_value_text("t_stage", 3.0) == "T3"
    assert [t for _, t in labels.factor_ticks("log10_ebv_dna", 0.0, 4.5)] == ["0", "10", "100", "1,000", "10,000"]
    # log tumour volumes (log(1 + mL)) read in mL, ticks at round volumes, the training range's ends included
    assert labels.factor_label("log_volume_gtvp_ml") == "GTVp volume (mL)"
    assert labels.factor_value_text("log_volume_gtvp_ml", math.log1p(12.5)) == "12.5"
    ticks = labels.factor_ticks("log_volume_gtvp_ml", math.log1p(3.0), math.log1p(60.0))
    assert [t for _, t in ticks] == ["3.0", "5", "10", "20", "50", "60.0"]
    assert ticks[2][0] == pytest.approx(math.log1p(10.0))


# ------------------------------------------------------------------------------------------------ patient sheet
def test_patient_sheet_from_the_command_line_renders_and_prints(predicted, tmp_path, capsys):
    from NPCPrognosisLib.reporting.patient_sheet import CONTOURS_DIFFER

    folder, t1c, mask = predicted
    # The contours were edited: the sheet shows the edited ones and the automatic ones dashed.
    automatic = sitk.ReadImage(str(mask))
    edited = sitk.BinaryDilate(automatic == 1, [1, 1, 0]) + (automatic == 2) * 2
    sitk.WriteImage(sitk.Cast(edited, sitk.sitkUInt8), str(tmp_path / "edited.nii.gz"))
    assert main(["--quiet", "report", "--prediction", str(folder), "--t1c", str(t1c), "--mask",
                 str(tmp_path / "edited.nii.gz"), "--automatic-mask", str(mask), "--out", str(tmp_path)]) == 0
    html = (tmp_path / "patient_sheet.html").read_text(encoding="utf-8")
    # ... but the risk was computed from the unedited ones: the sheet and the terminal say so
    assert CONTOURS_DIFFER in html and CONTOURS_DIFFER in capsys.readouterr().out
    assert main(["--quiet", "report", "--prediction", str(folder), "--t1c", str(t1c), "--mask", str(mask),
                 "--no-pdf", "--out", str(tmp_path / "same")]) == 0
    assert CONTOURS_DIFFER not in (tmp_path / "same" / "patient_sheet.html").read_text(encoding="utf-8")
    assert CONTOURS_DIFFER not in capsys.readouterr().out
    # the same contours exported cropped to their extent (as Slicer may): predict pasted them back, so does report
    labels = sitk.GetArrayFromImage(automatic)
    z, y, x = (np.flatnonzero(labels.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    sitk.WriteImage(automatic[int(x[0]):int(x[-1]) + 1, int(y[0]):int(y[-1]) + 1, int(z[0]):int(z[-1]) + 1],
                    str(tmp_path / "cropped.nii.gz"))
    assert main(["--quiet", "report", "--prediction", str(folder), "--t1c", str(t1c), "--mask",
                 str(tmp_path / "cropped.nii.gz"), "--no-pdf", "--out", str(tmp_path / "cropped")]) == 0
    assert CONTOURS_DIFFER not in capsys.readouterr().out
    prediction = json.loads((folder / "prediction.json").read_text(encoding="utf-8"))
    assert "EBV DNA (copies/mL)" in html and "rENE grade" in html and "log10_ebv_dna" not in html
    assert "dashed: the automatic contours before editing" in html and prediction["bundle"]["sha256"] in html
    assert f"{prediction['nomogram_points']['total']:.1f}" in html
    sections = html.count("<section class='page'>")
    assert sections == 5  # summary, contours, nomogram, treatment, provenance
    seen = render(tmp_path / "patient_sheet.html")
    assert seen["errors"] == [] and seen["broken"] == [] and len(seen["images"]) >= 4
    assert seen["title"].endswith(prediction["patient_id"])
    assert pdf_pages(tmp_path / "patient_sheet.pdf") == sections


def test_a_folder_never_shows_an_earlier_runs_images_or_pdf(predicted, small_cohort, tmp_path):
    """A second patient predicted into the same folder had shown the first one's contours: the report read every
    image it found there. predict now refuses a folder holding another patient's result unless --overwrite, which
    removes that result (its images and sheet) first; the report reads only the images the prediction lists."""
    from NPCPrognosisLib.reporting.patient_sheet import read_sheet_inputs

    folder = tmp_path / "run"
    shutil.copytree(predicted[0], folder)
    earlier = [folder / name for name in ("automatic_mask.nii.gz", "uncertainty.nii.gz", "saliency.nii.gz")]
    for path in earlier:
        shutil.copy(predicted[2], path)  # an earlier patient's files
    (folder / "patient_sheet.pdf").write_bytes(b"%PDF- an earlier sheet")
    row = pd.read_csv(small_cohort / "manifest.csv", dtype={"patient_id": str}).iloc[2]
    clinical = [f"{k}={row[k]}" for k in ("age", "sex", "t_stage", "n_stage", "rene", "ldh", "chemo", "ccnd")]
    bundle = json.loads((predicted[0] / "prediction.json").read_text(encoding="utf-8"))["bundle"]["path"]
    args = ["--quiet", "predict", "--bundle", bundle, "--patient-id", row["patient_id"], "--out", str(folder)]
    for seq in ("t1", "t2", "t1c", "mask"):
        args += [f"--{seq}", str(small_cohort / row[seq])]
    assert main([*args, "--clinical", *clinical]) == 2  # another patient's result is there: refused, untouched
    assert (folder / "patient_sheet.pdf").exists() and all(path.exists() for path in earlier)
    assert main([*args, "--overwrite", "--clinical", *clinical]) == 0
    assert not any(path.exists() for path in earlier)  # the other patient's result went with --overwrite
    prediction, images = read_sheet_inputs(folder)
    assert prediction["images"] == [] and images.mask is None and images.uncertainty is None
    assert images.saliency is None
    assert main(["--quiet", "report", "--prediction", str(folder), "--no-pdf"]) == 0
    assert not (folder / "patient_sheet.pdf").exists()
    assert row["patient_id"] in (folder / "patient_sheet.html").read_text(encoding="utf-8")


def test_patient_sheet_shows_treatment_arms_binary_endpoints_and_fusion_gates(predicted, tmp_path):
    from NPCPrognosisLib.reporting.html import esc
    from NPCPrognosisLib.reporting.labels import binary_caveat
    from NPCPrognosisLib.reporting.patient_sheet import write_patient_sheet

    prediction = json.loads((predicted[0] / "prediction.json").read_text(encoding="utf-8"))
    assert "ic_response" in prediction["binary"]  # the bundle carries the IC-response classifiers
    arm = {"12": {"survival": 0.93, "ci95": [0.88, 0.97]}, "36": {"survival": 0.81, "ci95": [0.70, 0.89]},
           "60": {"survival": 0.72, "ci95": [0.58, 0.83]}}
    prediction["chemo_benefit"] = {"statement": "High-risk patient: benefit of CCND > 160 mg/m2 shown.",
                                   "survival_by_arm": {"low_dose": arm, "high_dose": {
                                       m: {"survival": c["survival"] + 0.05, "ci95": [c["ci95"][0] + 0.05,
                                                                                      c["ci95"][1] + 0.04]}
                                       for m, c in arm.items()}}}
    prediction["fusion"] = {"model": "mmoe", "risk_score": 0.31, "risk_group": "low",
                            "survival": {"12": 0.95, "36": 0.84, "60": 0.77},
                            "probabilities": {"ic_response": 0.58}, "missing_modalities": ["pathology"],
                            "gate_weights": {"survival": {"radiomics": 0.55, "clinical": 0.45, "pathology": 0.0},
                                             "ic_response": {"radiomics": 0.3, "clinical": 0.7, "pathology": 0.0}},
                            "warnings": []}
    paths = write_patient_sheet(prediction, tmp_path)
    html = paths["html"].read_text(encoding="utf-8")
    for text in ("CCND high dose", "benefit of CCND", "ic response", "Missing modalities: pathology",
                 "alt='counterfactual survival per treatment arm'", "alt='fusion gate weights'"):
        assert text in html, text
    block = prediction["binary"]["ic_response"]
    # this small cohort's ridge sits at the strongest penalty: train's finding goes with the probability
    assert block["warnings"] and block["warnings"][0].startswith("ic_response: the ridge sits at the strongest")
    caveat = binary_caveat(block)
    assert f"<td>{block['probability']:.0%} ({caveat})</td>" in html and caveat.startswith("unproven")
    treatment = html[html.index("<h2>Binary endpoints</h2>"):]
    assert treatment.index("<h3>Warnings</h3>") < treatment.index(esc(block["warnings"][0]))
    assert html.count(esc(block["warnings"][0])) == 1  # there, not also in the first page's list
    seen = render(paths["html"])
    assert seen["errors"] == [] and seen["broken"] == []
    assert pdf_pages(paths["pdf"]) == html.count("<section class='page'>") == 5


def test_report_names_the_missing_prediction(tmp_path, capsys):
    assert main(["report", "--prediction", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "prediction.json not found" in err and "nowhere" in err


# ------------------------------------------------------------------------------------------------ cohort page
def test_cohort_page_renders_with_figures_as_png_and_svg_and_tables_as_csv(evaluation):
    page = evaluation / "cohort_study.html"
    html = page.read_text(encoding="utf-8")
    metrics = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))
    for section in ("Cohort", "Model comparison", "Risk groups", "Calibration", "Time-dependent ROC",
                    "Decision curves", "Selected features", "Settings", "Reporting checklist"):
        assert f"<h2>{section}" in html, section
    sources = re.findall(r"<img src='([^']+)'", html)
    assert sources and all((evaluation / s).exists() and (evaluation / s).with_suffix(".svg").exists()
                           for s in sources)
    comparison = pd.read_csv(evaluation / "tables" / "model_comparison.csv")
    nomogram = comparison[comparison["model"].str.startswith("Nomogram")].iloc[0]
    assert nomogram["C-index (95% CI)"].startswith(f"{metrics['models']['nomogram']['c_index']:.3f}")
    start, end = metrics["models"]["nomogram"]["integrated_brier_months"]
    assert nomogram["IBS (months)"] == (f"{metrics['models']['nomogram']['integrated_brier']:.3f} "
                                        f"({start:.0f}-{end:.0f})")
    cohort = pd.read_csv(evaluation / "tables" / "cohort_characteristics.csv")
    assert int(cohort.loc[cohort["characteristic"] == "Patients", "evaluated"].iloc[0]) == metrics["n"]
    checklist = pd.read_csv(evaluation / "tables" / "reporting_checklist.csv")
    source = checklist[checklist["topic"] == "Source of data and dates"].iloc[0]
    assert source["status"] == "answered" and "seed 3" in source["where / what to supply"]
    assert (checklist["status"] == "not available").any()  # e.g. no centres: said, with what to supply
    seen = render(page)
    assert seen["errors"] == [] and seen["broken"] == [] and len(seen["images"]) == len(sources)


def test_model_comparison_without_bootstrap_names_the_missing_interval(evaluation):
    """evaluate --n-boot 0 stores each paired difference with ci95 [None, None]: the table formatted it as a number
    and evaluate died after predictions.csv was written (TypeError in the ΔC column)."""
    from NPCPrognosisLib.reporting.cohort_tables import model_comparison

    metrics = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))
    paired = metrics["paired_vs_nomogram"]
    assert paired, "the fixture's evaluation has no paired comparison to format"
    for block in paired.values():
        block["ci95"], block["p"] = [None, None], None
    comparison = model_comparison(metrics).set_index("model")
    for name, block in paired.items():
        from NPCPrognosisLib.reporting.labels import model_label

        assert comparison.loc[model_label(name), "ΔC vs nomogram (95% CI)"] == \
            f"{block['difference']:+.3f} (no interval: no bootstrap)"

def test_cohort_tables_say_a_missing_hazard_ratio_and_round_coefficients():
    """The cohort page showed a hazard ratio that cannot exist as '– (–-–)', the Rad-score's coefficients with 17
    digits (0.24131684499876363) and EBV DNA medians without separators; the numbers are those of a real
    evaluate_risk block."""
    from NPCPrognosisLib.reporting.cohort_tables import cohort_characteristics, model_comparison, selected_features
    from NPCPrognosisLib.survival.metrics import evaluate_risk

    t, e = np.arange(2, 18, 2.0), np.array([1, 0, 1, 0, 1, 0, 0, 0])  # every event in the high-risk group
    risk = np.array([3, -1, 2.5, -0.5, 2, 0, 1.5, -1.5])
    no_events_low = evaluate_risk(risk, t, e, t, e, cutoff=1.0, n_boot=0, times=(6.0,))
    estimable = evaluate_risk(risk, t, np.array([1, 1, 1, 0, 0, 1, 1, 0]), t, e, cutoff=1.0, n_boot=0, times=(6.0,))
    old_file = {k: v for k, v in no_events_low.items() if k != "hr_high_vs_low_not_estimable"}
    table = model_comparison({"models": {"clinical": no_events_low, "nomogram": estimable, "volume": old_file}})
    hr = dict(zip(table["model"], table["HR high vs low (95% CI)"]))
    assert hr["Clinical factors alone"] == "not estimable (one risk group has no events)"
    assert hr["Tumour volume alone"] == "not estimable"  # a metrics.json written before the reason was kept
    lo, hi = estimable["hr_high_vs_low_95ci"]
    assert hr["Nomogram (combined factors)"] == f"{estimable['hr_high_vs_low']:.2f} ({lo:.2f}-{hi:.2f})"
    features = selected_features({"signature": {"features": ["a", "b", "c", "d"], "coef": [
        0.24131684499876363, -0.7332865786273173, 0.005990986390084557, -0.0]},
        "robustness": {"selected_feature_icc": {"a": 0.912345, "b": None}}})
    assert list(features["coefficient (per SD)"]) == ["0.241", "-0.733", "0.00599", "0"]
    assert list(features["robustness ICC"]) == ["0.912", "–", "–", "–"]
    clinical = pd.DataFrame({"ebv_dna": [1200.0, 2400.0, 15000.0, 150000.0]})
    characteristics = cohort_characteristics(clinical, ["evaluated"] * 4, "dmfs").set_index("characteristic")
    assert characteristics.loc["EBV DNA, copies/mL, median (IQR)", "evaluated"] == "8,700 (2,100-48,750)"


def test_cohort_page_warns_of_training_patients_and_shows_c_for_benefit(evaluation, trained, tmp_path):
    """--subset all puts a banner on the page; the benefit caption gives C-for-benefit (stored under
    'c_for_benefit', read under 'c' before, so always '-'), its interval and whom it rests on."""
    from NPCPrognosisLib.reporting.cohort_page import write_cohort_page

    html = (evaluation / "cohort_study.html").read_text(encoding="utf-8")
    assert "NOT A VALIDATION - 18 of the 24 evaluated patients trained this model" in html
    shutil.copytree(evaluation, tmp_path, dirs_exist_ok=True)
    metrics = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))
    metrics["chemo_benefit"]["calibration"] = [
        {"group": 1, "predicted_benefit": 0.01, "observed_benefit": 0.02,
         "observed_benefit_method": "IPTW-weighted Kaplan-Meier (stabilised weights, confounders: age)"}]
    metrics["chemo_benefit"]["c_for_benefit"] = {"horizon_months": 60.0, "pairs": 40, "c_for_benefit": 0.6123,
                                                 "ci95": [0.55, 0.68], "censored_before_horizon": 7, "unmatched": 2,
                                                 "censoring_weights": "inverse probability of censoring"}
    metrics["chemo_benefit"].update(conclusions={"inconclusive": 15, "undetermined without EBV DNA": 4, "benefit": 5},
                                    n_ebv_dna_imputed=6)
    predictions = pd.read_csv(evaluation / "predictions.csv", dtype={"patient_id": str})
    page = write_cohort_page(tmp_path, metrics, predictions, read_bundle(trained))
    html = page.read_text(encoding="utf-8")
    assert ("(benefit_conclusion_60m): inconclusive 15, undetermined without EBV DNA 4, benefit 5. 6 patient(s) had no "
            "EBV DNA: C-for-benefit and the calibration read the training median") in html
    assert ("C-for-benefit 0.612 (95% CI 0.550-0.680) from 40 matched pairs; 7 patients censored before the "
            "horizon (the others weighted for them) and 2 unmatched left out") in html
    assert "IPTW-weighted Kaplan-Meier" in html


def test_time_dependent_roc_area_is_sksurvs_auc():
    from NPCPrognosisLib.survival.metrics import td_auc, td_roc_curve

    rng = np.random.default_rng(4)
    x = rng.normal(size=240)
    t_event, t_censor = rng.exponential(30 * np.exp(-x)), rng.uniform(0, 100, 240)
    time, event = np.minimum(t_event, t_censor), t_event <= t_censor
    for months in (24, 48):
        curve = td_roc_curve(time[:120], event[:120], time[120:], event[120:], x[120:], months)
        expected = td_auc(time[:120], event[:120], time[120:], event[120:], x[120:], (months,))[str(months)]
        assert curve["auc"] == pytest.approx(expected, abs=1e-10)
        assert curve["fpr"][0] == 0 and curve["tpr"][-1] == pytest.approx(1.0)


def test_the_checklist_names_the_weight_files_the_bundle_has_and_no_others():
    # every cohort page answered TRIPOD+AI 23 with "bundle.json ... and network.safetensors", also for a bundle
    # without a network (a reviewer looks for a file that is not there)
    from NPCPrognosisLib.reporting.checklist import reporting_checklist
    from NPCPrognosisLib.resources import DEMO_BUNDLE

    demo = read_bundle(DEMO_BUNDLE)
    plain = {k: v for k, v in demo.items() if k not in ("network", "fusion")}

    def answer(document):
        return next(i.answer for i in reporting_checklist({"models": {}}, document) if i.item == "23")

    assert answer(plain) == "the bundle's bundle.json (coefficients, baseline hazard, cut-off)"
    assert answer(demo).startswith("the bundle's bundle.json") and "network/ (the segmentation network" in answer(demo)
    assert (DEMO_BUNDLE / demo["network"]["folder"] / "network.safetensors").is_file()


def test_the_checklist_lists_what_train_found_of_the_fit_from_the_bundle():
    # the Rad-score rescaled, too few events for the optimism-corrected C and a runaway Cox fit were printed and
    # repeated by evaluate, but the checklist's account of how the model was fitted said nothing of them
    from NPCPrognosisLib.reporting.checklist import reporting_checklist

    document = {"training": {"optimism_warning": "too few events"},
                "cox": {"rad_score_rescaling": {"warning": "shrunk"}},
                "models": {"clinical": {"runaway": {"clinical": {"warning": "ran away on ldh"}}}}}
    item = next(i for i in reporting_checklist({"models": {}}, document) if i.item == "12c")
    assert item.answer == "(1) too few events; (2) shrunk; (3) ran away on ldh"
    plain = next(i for i in reporting_checklist({"models": {}}, {}) if i.item == "12c")
    assert "nothing to warn about" in plain.answer
