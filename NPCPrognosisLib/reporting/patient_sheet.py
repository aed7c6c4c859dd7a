"""The patient sheet: one printable page set per patient for the tumour board (HTML, and PDF from it).

``npc-prognosis report`` and the Slicer panel's Export report both call :func:`write_patient_sheet`, so the sheet
is the same whichever way it was asked for. It shows ``prediction.json`` as it is - the sheet computes nothing
the prediction did not (the nomogram chart is drawn from the prediction's own scale and checked against it).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from NPCPrognosisLib.contract import ENDPOINT_TITLES, SEQUENCE_TITLES
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.atomic import write_text_atomic
from NPCPrognosisLib.reporting import figures
from NPCPrognosisLib.reporting.html import bullet_list, document, esc, figure, table
from NPCPrognosisLib.reporting.labels import (
    ARM_LABELS,
    binary_caveat,
    clinical_rows,
    extrapolation_text,
    factor_label,
    factor_name,
    factor_range_text,
    factor_unit,
    factor_value_text,
    format_contour_change,
    interval_text,
    model_label,
    points_text,
    risk_group_standing,
    risk_group_text,
    risk_interval_text,
    shares_text,
    survival_caveat,
    survival_text,
)
from NPCPrognosisLib.reporting.nomogram_chart import chart_rows, check_chart, nomogram_chart
from NPCPrognosisLib.survival.patient import survival_band

log = logging.getLogger(__name__)

SYNTHETIC_BANNER = "SYNTHETIC DEMONSTRATION - research software, not for clinical use"
RESEARCH_BANNER = "Research software - not a medical device; not for clinical decisions on its own"
#: How the sheet's warning about contours other than the prediction's begins (the CLI prints it too).
CONTOURS_DIFFER = "The contours shown on this sheet are not the ones this prediction was computed from"


@dataclass
class SheetImages:
    """The pictures of a patient sheet, all optional: CET1W, the contours shown (edited or manual), the
    automatic contours when the shown ones were edited from them, the TTA uncertainty and the saliency map."""

    t1c: sitk.Image | None = None
    mask: sitk.Image | None = None
    automatic_mask: sitk.Image | None = None
    uncertainty: sitk.Image | None = None
    saliency: sitk.Image | None = None


def contributions(prediction: Mapping[str, Any]) -> list[tuple[str, float]]:
    """Each factor's share of the risk score against a patient in the middle of the training range
    (log hazard), largest effect first: the factors that moved this patient's risk most."""
    scale = prediction.get("nomogram_scale") or {}
    values = prediction.get("factors") or {}
    imputed = prediction.get("imputed") or {}
    rows = []
    for j, factor in enumerate(scale.get("factors", [])):
        middle = (float(scale["low"][j]) + float(scale["high"][j])) / 2.0
        rows.append((f"{factor_label(factor)}: {factor_value_text(factor, values[factor], factor in imputed)}",
                     float(scale["coef"][j]) * (float(values[factor]) - middle)))
    return sorted(rows, key=lambda r: -abs(r[1]))


def _img(fig: Any, alt: str, caption: str, max_height_mm: float) -> str:
    return figure(figures.data_uri(figures.png_bytes(fig)), alt, caption, max_height_mm=max_height_mm)


def _page_summary(prediction: Mapping[str, Any], synthetic: bool) -> str:
    endpoint = prediction["endpoint"]
    se = (prediction.get("uncertainty") or {}).get("risk_se")
    group_text = risk_group_text(prediction)
    # coloured as its group only when the score has one: an undetermined or not determined one is not its group
    colour = prediction["risk_group"] if risk_group_standing(prediction)[0] in ("firm", "borderline") else ""
    interval = risk_interval_text(prediction) or f"cut-off {prediction['cutoff']:.2f}"
    # an SE of 0 is a nomogram without weight, not a score known exactly
    cards = [f"<div>Risk group<b class='{esc(colour)}'>{esc(group_text)}</b>"
             f"<span class='small'>score {esc(interval)} (cut-off from training)</span></div>",
             f"<div>Risk score<b>{prediction['risk_score']:.2f}" + (f" ± {se:.2f}" if se else "")
             + "</b><span class='small'>log hazard vs the average training patient</span></div>"]
    intervals = (prediction.get("uncertainty") or {}).get("survival_ci95") or {}
    extrapolating = extrapolation_text(prediction)
    caveat = survival_caveat(prediction)
    for month, value in sorted(prediction["survival"].items(), key=lambda kv: float(kv[0])):
        # a bundle saved before the intervals were stored: the risk score's SE alone, as then
        interval = intervals.get(month) if intervals else survival_band(float(value), se)
        ci = f"<span class='small'>{esc(interval_text(interval, '.0%', '-'))}</span>" if interval else ""
        cards.append(f"<div>{endpoint.upper()} at {float(month):g} months<b>{float(value):.0%}</b>{ci}"
                     + (f"<span class='small'>{esc(caveat)}</span>" if caveat else "")
                     + f"{_imputed_range(prediction, month)}</div>")
    parts = ["<section class='page'>",
             f"<h1>NPCPrognosis patient sheet: {esc(prediction['patient_id'])}</h1>",
             f"<div class='banner'>{esc(SYNTHETIC_BANNER if synthetic else RESEARCH_BANNER)}</div>",
             *([f"<div class='banner'>{esc(extrapolating)}</div>"] if extrapolating else []),
             f"<p class='small'>Endpoint: {esc(ENDPOINT_TITLES.get(endpoint, endpoint))} ({esc(endpoint.upper())}). "
             f"Sheet made {esc(datetime.date.today().isoformat())}.</p>",
             "<div class='key'>" + "".join(cards) + "</div>"]
    curves = prediction.get("survival_curves") or {}
    if curves.get("months"):
        marks = {m: float(v) for m, v in prediction["survival"].items()}
        parts.append(_img(figures.survival_figure(curves, se, endpoint, marks), "predicted survival curve",
                          "Predicted survival with its 95% interval (baseline hazard and coefficients), against "
                          "the training risk groups' median patients, the cut-off and the training Kaplan-Meier "
                          "curve." + (f" The curve marked this patient is {caveat}." if caveat else ""), 55))
    # a binary endpoint's own finding stands under its probability (treatment page), not among these
    elsewhere = set(_binary_warnings(prediction))
    warnings = [w for w in prediction.get("warnings") or [] if w not in elsewhere]
    parts.append("<div class='cols'><div><h2>Warnings</h2>" + (bullet_list(warnings) if warnings else "<p>none</p>")
                 + "</div><div><h2>Clinical factors</h2>"
                 + table(None, clinical_rows(prediction.get("clinical") or {})) + "</div></div>")
    parts.append("</section>")
    return "\n".join(parts)


def _page_provenance(prediction: Mapping[str, Any]) -> str:
    """The model and the inputs the prediction came from, on a page of their own: the first page is the
    clinician's, and the warnings a prediction can carry (a missing factor's range, extrapolation) had pushed its
    last lines onto a second printed page."""
    return ("<section class='page'><h2>Model provenance</h2>" + table(None, _provenance_rows(prediction), css="small")
            + "</section>")


def _imputed_range(prediction: Mapping[str, Any], month: str) -> str:
    """A survival card's line for each filled-in factor: the survival its 10th-90th training percentile gives."""
    lines = []
    for covariate, block in (prediction.get("imputed") or {}).items():
        survival = (block.get("survival_range") or {}).get(month)
        if survival:
            lines.append(f"<span class='small'>{survival[0]:.0%}-{survival[1]:.0%} for {esc(factor_name(covariate))} "
                         "at its training P10-P90 (not measured)</span>")
    return "".join(lines)


def _provenance_rows(prediction: Mapping[str, Any]) -> list[tuple[str, str]]:
    bundle = prediction.get("bundle") or {}
    rows = [("Bundle", bundle.get("path", "–")), ("Trained", bundle.get("created", "–")),
            ("Software version", bundle.get("software_version", "–")),
            ("Bundle format", bundle.get("format_version", "–"))]
    if bundle.get("training_n") is not None:
        rows.append(("Training cohort", f"{bundle['training_n']} patients, {bundle.get('training_events', '?')} "
                                        "events"))
    if bundle.get("sha256"):
        rows.append(("bundle.json SHA-256", bundle["sha256"]))
    if bundle.get("network_sha256"):
        rows.append(("network weights SHA-256", bundle["network_sha256"]))
    titles = {**SEQUENCE_TITLES, "mask": "Contours"}
    for role, fingerprint in (prediction.get("inputs") or {}).items():
        rows.append((f"{titles.get(role, role)} SHA-256 (voxels)", fingerprint))
    source = (prediction.get("segmentation") or {}).get("source")
    rows.append(("Contours", {"automatic": "automatic (the bundle's network); review before acting",
                              "manual": "given by the user"}.get(source, "given by the user")))
    return rows


def _page_images(prediction: Mapping[str, Any], images: SheetImages | None, contour_change: Any) -> str:
    parts = ["<section class='page'>", "<h2>Contours on CET1W</h2>"]  # and what moved the risk
    if images is not None and images.t1c is not None:
        overlays = {"TTA uncertainty": images.uncertainty, "saliency of the risk": images.saliency}
        fig = figures.key_slices_figure(images.t1c, images.mask, images.automatic_mask,
                                        {k: v for k, v in overlays.items() if v is not None})
        caption = ("Key axial slices (largest GTVp and GTVn cross-sections), radiological convention. "
                   "Red: GTVp, green: GTVn" + ("; dashed: the automatic contours before editing" if
                                              images.automatic_mask is not None and images.mask is not None else "")
                   + ". Further rows: the network's uncertainty over test-time augmentations and the saliency of "
                   "the deep risk score, where they were computed.")
        parts.append(_img(fig, "key slices with contours", caption, 135))
    else:
        parts.append("<p class='missing'>No images given: pass the CET1W image and the contours "
                     "(npc-prognosis report --t1c ... --mask ...) to show them here.</p>")
    segmentation = prediction.get("segmentation") or {}
    rows = []
    if segmentation.get("automatic_volumes_ml"):
        rows += [(f"automatic {k.upper()} volume (mL)", f"{v:.2f}")
                 for k, v in segmentation["automatic_volumes_ml"].items()]
    if segmentation.get("deep_score") is not None:
        sd = segmentation.get("deep_score_sd")
        rows.append(("deep score", f"{segmentation['deep_score']:.3f}" + (f" ± {sd:.3f} (TTA SD)" if sd else "")))
    if rows:
        parts.append(table(None, rows))
    if contour_change:
        parts.append("<h3>Edited contours against the automatic ones</h3>"
                     + bullet_list(format_contour_change(contour_change)))
    rows = contributions(prediction)
    if rows:
        parts.append("<h2>What moved the risk</h2>")
        parts.append(_img(figures.bar_figure(rows[:8], "log hazard vs a mid-range patient (red raises risk)"),
                          "factor contributions",
                          "Each factor's contribution to the risk score against a patient in the middle of every "
                          "factor's training range (the saliency row above shows where in the image the deep score "
                          "looked).", 52))
    parts.append("</section>")
    return "\n".join(parts)


def _page_nomogram(prediction: Mapping[str, Any]) -> tuple[str, Any]:
    scale = prediction.get("nomogram_scale")
    if not scale:
        rows = [(factor_label(k), points_text(v)) for k, v in prediction["nomogram_points"]["per_factor"].items()]
        return ("<section class='page'><h2>Nomogram</h2><p>This prediction carries no nomogram scale (made by an "
                "older version): points only.</p>" + table(["Factor", "Points"], rows) + "</section>"), None
    chart = nomogram_chart(scale, prediction["factors"], prediction.get("imputed") or {})
    problems = check_chart(chart, prediction)
    if problems:  # never print a chart that disagrees with the numbers above it
        raise InputError("the nomogram chart does not reproduce the prediction: " + "; ".join(problems),
                         patient_id=prediction.get("patient_id"),
                         fix="re-run predict with this software version to refresh prediction.json")
    fig = figures.nomogram_figure(chart, prediction["endpoint"])
    html = ["<section class='page'>", "<h2>Nomogram</h2>",
            _img(fig, "nomogram with this patient's points",
                 "Read each factor's points on the top scale, add them, and read survival below the total. Red: "
                 "this patient.", 175),
            table(["Factor", "This patient", "Points"], chart_rows(chart), [False, False, True]), "</section>"]
    return "\n".join(html), chart


def _page_treatment(prediction: Mapping[str, Any]) -> str:
    endpoint = prediction["endpoint"]
    parts = ["<section class='page'>", "<h2>Treatment benefit</h2>"]
    benefit = prediction.get("chemo_benefit") or {}
    given = benefit.get("given_arm")
    if benefit.get("survival_by_arm"):
        model = benefit.get("model") or "an adjusted Cox model of the training cohort"
        parts.append(_img(figures.arms_figure(benefit["survival_by_arm"], ARM_LABELS, endpoint),
                          "counterfactual survival per treatment arm",
                          f"This patient's survival had they been treated in each arm, from {model} (bars: "
                          "bootstrap 95% intervals).", 70))
        months = list(next(iter(benefit["survival_by_arm"].values())))
        rows = []
        for arm, by_month in benefit["survival_by_arm"].items():
            cells = [survival_text(by_month[m]) if "survival" in (by_month.get(m) or {}) else "–" for m in months]
            rows.append([ARM_LABELS.get(arm, arm) + (" (given)" if arm == given else ""), *cells])
        parts.append(table(["If treated with", *[f"{float(m):g} months" for m in months]], rows))
        parts += [f"<p>{esc(note)}</p>" for note in _filled_factor_notes(benefit)]
        parts.append(f"<p>{esc(_arm_given_text(prediction, benefit))}</p>")
        absent = benefit.get("absent_arms") or {}
        if absent:
            parts.append(bullet_list([f"{ARM_LABELS.get(arm, arm)}: not shown, {why}" for arm, why in absent.items()]))
    parts.append(f"<p>{esc(benefit.get('statement') or 'Chemotherapy benefit: not available in this bundle.')}</p>")
    binary = prediction.get("binary") or {}
    if binary:
        rows = []
        for name, block in binary.items():
            ci = block.get("ci95")
            caveat = binary_caveat(block)
            rows.append((factor_label(name), f"{block['probability']:.0%}" + (f" ({caveat})" if caveat else ""),
                         f"{ci[0]:.0%}-{ci[1]:.0%}" if ci else "–", model_label(block.get("model", ""))))
        parts.append("<h2>Binary endpoints</h2>" + table(["Endpoint", "Probability", "95% CI", "Model"], rows))
        notes = _binary_warnings(prediction)
        if notes:
            parts.append("<h3>Warnings</h3>" + bullet_list(notes))
    fusion = prediction.get("fusion") or {}
    if fusion:
        survival = ", ".join(f"{float(m):g} months {v:.0%}" for m, v in fusion.get("survival", {}).items())
        if survival_caveat(fusion):  # the fusion learned nothing in training: as the nomogram's survival says it
            survival += f" ({survival_caveat(fusion)})"
        parts.append(f"<h2>Multimodal fusion ({esc(model_label(fusion.get('model', 'mmoe')))})</h2>"
                     f"<p>Risk {fusion['risk_score']:.2f} ({esc(risk_group_text(fusion))}); {esc(survival)}."
                     + (f" Missing modalities: {esc(', '.join(fusion['missing_modalities']))}."
                        if fusion.get("missing_modalities") else "") + "</p>")
        if fusion.get("gate_weights"):
            parts.append(_img(figures.gates_figure(fusion["gate_weights"]), "fusion gate weights",
                              "Gate weights: how the fusion mixed each modality's expert for this patient; not how "
                              "much each modality moved the prediction.", 45))
        if fusion.get("training_contributions"):
            parts.append("<p>What moves the fused output (each modality's share of its variance over the training "
                         "patients): " + "; ".join(f"{esc(factor_label(task))}: {esc(shares_text(shares))}"
                                                   for task, shares in fusion["training_contributions"].items())
                         + ".</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _binary_warnings(prediction: Mapping[str, Any]) -> list[str]:
    """What train found the binary endpoints' models failed to learn (their blocks' ``warnings``, also among the
    prediction's): the sheet prints them under the probabilities they qualify, where the reader of one looks,
    instead of in the first page's list (the ridge's finding, a paragraph, pushed that page onto two)."""
    return list(dict.fromkeys(w for block in (prediction.get("binary") or {}).values()
                              for w in block.get("warnings") or []))


def _filled_factor_notes(benefit: Mapping[str, Any]) -> list[str]:
    """One note per factor the benefit model read at the training median (a missing EBV DNA): the survival per arm
    above rests on that fill, and the gain of the high dose could be anywhere in the range the factor's training
    10th-90th percentile gives (or, for a bundle without the percentiles, unknown)."""
    notes = []
    for covariate, block in (benefit.get("imputed") or {}).items():
        name = factor_name(covariate)
        text = (f"{name} not measured: the survival under each arm above is at the training median "
                f"({factor_value_text(covariate, block['filled_with'])} {factor_unit(covariate)}), not this patient's "
                "value.")
        if block.get("value_range") is None:
            text += f" This bundle stores no training percentiles of {name}, so how far it could move them is unknown."
        else:
            low, high = block["benefit_range"]
            text += (f" Across the training 10th-90th percentile of {name} "
                     f"({factor_range_text(covariate, block['value_range'])}) the gain of the high dose at "
                     f"{block['month']:g} months would be {low:+.1%} to {high:+.1%}.")
        notes.append(text)
    return notes


def _arm_given_text(prediction: Mapping[str, Any], benefit: Mapping[str, Any]) -> str:
    """Which arm the patient was given and how this page's survival there compares with page 1's: the two come
    from different models (this one has no radiomics), and a reader comparing them must know why they differ."""
    given = benefit.get("given_arm")
    if given is None:
        return "The arm this patient was given is not recorded in the prediction."
    label = ARM_LABELS.get(given, given)
    if given not in (benefit.get("survival_by_arm") or {}):
        why = (benefit.get("absent_arms") or {}).get(given, "chemotherapy given without a recorded dose")
        return f"This patient was given {label}; that arm is not in the benefit model ({why})."
    month = max(prediction["survival"], key=float, default=None)
    here = (benefit["survival_by_arm"][given].get(month) or {}).get("survival") if month else None
    if here is None:
        return f"This patient was given {label} (marked 'given')."
    return (f"This patient was given {label} (marked 'given'): this model gives {float(here):.0%} survival at "
            f"{float(month):g} months there, page 1 gives {float(prediction['survival'][month]):.0%}. Page 1 is the "
            f"{model_label('nomogram').lower()}; this page is the benefit model, which uses the clinical factors only "
            "and compares arms, so the two need not agree.")


def contours_warning(prediction: Mapping[str, Any], shown: sitk.Image | None,
                     reference: sitk.Image | None = None) -> str | None:
    """The warning when the contours a sheet shows are not those the prediction was computed from (an edited mask
    shown above the risk of the unedited one would put numbers under contours that did not produce them); None
    when they are, or when the prediction does not say (made before it recorded its inputs).

    Parameters
    ----------
    prediction : mapping
        ``prediction.json``; its ``inputs`` hold the contours' :func:`image_fingerprint`.
    shown : SimpleITK.Image, optional
        The label map the sheet draws.
    reference : SimpleITK.Image, optional
        The CET1W: a mask cropped to its contours or on another grid is first placed on it as predict placed it
        (pasted, or nearest-neighbour resampled), since predict fingerprinted the mask on that grid.

    Returns
    -------
    warning : str or None
    """
    from NPCPrognosisLib.imaging.geometry import image_fingerprint
    from NPCPrognosisLib.io.images import mask_on_reference

    used = (prediction.get("inputs") or {}).get("mask")
    if shown is None or not used:
        return None
    if reference is not None:
        shown = mask_on_reference(shown, reference, resample=True)[0]
    if image_fingerprint(sitk.Cast(shown, sitk.sitkUInt8)) == used:
        return None
    return (f"{CONTOURS_DIFFER} (their SHA-256 differs from prediction.json's): run predict again with these "
            "contours before acting on the result")


def patient_sheet_html(prediction: Mapping[str, Any], images: SheetImages | None = None,
                       contour_change: Mapping[str, Any] | None = None) -> str:
    """The sheet as one self-contained HTML page (pictures embedded), four printed pages.

    Parameters
    ----------
    prediction : mapping
        ``prediction.json`` of :func:`NPCPrognosisLib.pipeline.predict.predict_patient`.
    images : SheetImages, optional
        CET1W, contours and maps for the key slices.
    contour_change : mapping, optional
        The edited-versus-automatic report of the Slicer module.

    Returns
    -------
    html : str
    """
    synthetic = any("SYNTHETIC" in w for w in prediction.get("warnings") or [])
    mismatch = None if images is None else contours_warning(prediction, images.mask, images.t1c)
    if mismatch:
        prediction = {**prediction, "warnings": [mismatch, *(prediction.get("warnings") or [])]}
    nomogram_html, _ = _page_nomogram(prediction)
    body = [_page_summary(prediction, synthetic), _page_images(prediction, images, contour_change), nomogram_html,
            _page_treatment(prediction), _page_provenance(prediction)]
    return document(f"NPCPrognosis patient sheet {prediction['patient_id']}", body)


def write_patient_sheet(prediction: Mapping[str, Any], out_dir: str | Path, images: SheetImages | None = None,
                        contour_change: Mapping[str, Any] | None = None, pdf: bool = True) -> dict[str, Path]:
    """``patient_sheet.html`` (and ``patient_sheet.pdf`` when Chromium is installed) in ``out_dir``.

    Parameters
    ----------
    prediction : mapping
        ``prediction.json``.
    out_dir : str or pathlib.Path
        Folder for the sheet (created).
    images : SheetImages, optional
    contour_change : mapping, optional
    pdf : bool, default True
        Also print the PDF; without a browser the HTML is still written and a warning says why no PDF.

    Returns
    -------
    paths : dict
        ``html`` and, when printed, ``pdf`` (paths); when printing failed, ``pdf_error`` (why).
    """
    from NPCPrognosisLib.reporting.browser import BrowserUnavailable, print_pdf

    out_dir = Path(out_dir)
    paths = {"html": write_text_atomic(out_dir / "patient_sheet.html",
                                       patient_sheet_html(prediction, images, contour_change))}
    # an earlier sheet's PDF must not sit beside this HTML as if it were its print
    (out_dir / "patient_sheet.pdf").unlink(missing_ok=True)
    if pdf:
        try:
            paths["pdf"] = print_pdf(paths["html"], out_dir / "patient_sheet.pdf")
        except BrowserUnavailable as exc:
            log.warning("patient sheet PDF not written: %s", exc)
            paths["pdf_error"] = str(exc)
    return paths


def read_sheet_inputs(prediction: str | Path, *, t1c: str | None = None, mask: str | None = None,
                      automatic_mask: str | None = None, uncertainty: str | None = None,
                      saliency: str | None = None) -> tuple[dict[str, Any], SheetImages]:
    """``prediction.json`` and the sheet's images, with predict's own outputs beside it used by default.

    Parameters
    ----------
    prediction : str or pathlib.Path
        predict's output folder, or its ``prediction.json``.
    t1c, mask, automatic_mask, uncertainty, saliency : str, optional
        Image files (NIfTI, NRRD, DICOM folder). Without ``mask``, the folder's ``automatic_mask.nii.gz`` (the
        network's contours) is shown; the folder's ``uncertainty.nii.gz`` and ``saliency.nii.gz`` likewise.

    Returns
    -------
    prediction, images : dict, SheetImages
    """
    import json

    from NPCPrognosisLib.io.images import read_image
    from NPCPrognosisLib.pipeline.prediction_record import (
        AUTOMATIC_MASK_FILE,
        PREDICTION_FILE,
        SALIENCY_FILE,
        UNCERTAINTY_FILE,
    )

    path = Path(prediction)
    file = path / PREDICTION_FILE if path.is_dir() else path
    if not file.exists():
        raise InputError("prediction.json not found", path=file, column="--prediction",
                         fix="pass the folder that npc-prognosis predict --out wrote")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"prediction.json cannot be read ({exc})", path=file, column="--prediction",
                         fix="re-run npc-prognosis predict") from exc
    missing = [k for k in ("patient_id", "endpoint", "risk_score", "survival", "nomogram_points", "factors")
               if k not in data]
    if missing:
        raise InputError(f"prediction.json lacks {missing}", path=file, column="--prediction",
                         fix="re-run npc-prognosis predict with this version")
    folder = file.parent
    patient_id = data["patient_id"]
    # a prediction lists the images it made; one written before the list: whatever lies beside it, as then
    made = data.get("images")

    def image(given: str | None, default: str | None, role: str) -> sitk.Image | None:
        if given:
            return read_image(given, patient_id=patient_id, role=role)
        if default and (folder / default).exists() and (made is None or default in made):
            return read_image(folder / default, patient_id=patient_id, role=role)
        return None

    shown = image(mask, AUTOMATIC_MASK_FILE, "mask")
    automatic = image(automatic_mask, None, "automatic mask")
    images = SheetImages(t1c=image(t1c, None, "CET1W image"), mask=shown, automatic_mask=automatic,
                         uncertainty=image(uncertainty, UNCERTAINTY_FILE, "uncertainty map"),
                         saliency=image(saliency, SALIENCY_FILE, "saliency map"))
    return data, images
