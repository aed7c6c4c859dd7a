"""The cohort study page that ``evaluate`` writes beside ``metrics.json``: one HTML page with the tables and
figures a paper needs, every figure also as PNG and SVG and every table as CSV.

It shows what ``evaluate`` measured; the only things computed here are the curves behind numbers already in
``metrics.json`` (time-dependent ROC curves, decision curves) from the per-patient predictions it wrote.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.contract import ENDPOINT_TITLES
from NPCPrognosisLib.io.atomic import write_text_atomic
from NPCPrognosisLib.reporting import figures
from NPCPrognosisLib.reporting.checklist import reporting_checklist
from NPCPrognosisLib.reporting.cohort_tables import binary_comparison, model_comparison, selected_features
from NPCPrognosisLib.reporting.html import bullet_list, esc, figure, fmt, table
from NPCPrognosisLib.reporting.html import document as html_document
from NPCPrognosisLib.reporting.labels import model_label
from NPCPrognosisLib.survival.plots import _save

log = logging.getLogger(__name__)

FIGURES = "figures"
TABLES = "tables"
PAGE = "cohort_study.html"
#: Horizons (months) of the calibration, ROC and decision-curve figures.
HORIZONS = (36, 60)
#: Threshold probabilities of the decision curves: every 5 % up to 60 % (dcurves refits a Kaplan-Meier curve per
#: threshold and model, so a finer grid costs seconds per evaluation and shows nothing more on a cohort's scale).
DCA_THRESHOLDS = np.round(np.arange(0.0, 0.601, 0.05), 2)


def _frame_html(frame: pd.DataFrame) -> str:
    return table(list(frame.columns), frame.astype(object).where(frame.notna(), "–").to_numpy().tolist())


def _save_table(frame: pd.DataFrame, out_dir: Path, name: str) -> str:
    write_text_atomic(out_dir / TABLES / f"{name}.csv", frame.to_csv(index=False))
    return f"<p class='small'>Table as CSV: <a href='{TABLES}/{name}.csv'>{TABLES}/{name}.csv</a></p>"


def _figure_link(out_dir: Path, png: Path, alt: str, caption: str, width: str = "100%") -> str:
    """A figure saved beside the page, referenced relatively (its SVG twin linked under it)."""
    rel = os.path.relpath(png, out_dir).replace(os.sep, "/")
    svg = png.with_suffix(".svg")
    link = f" (<a href='{esc(os.path.relpath(svg, out_dir))}'>SVG</a>)" if svg.exists() else ""
    return figure(rel, alt, caption, width) + (f"<p class='small'>{link.strip()}</p>" if link else "")


def roc_figure(curves: Mapping[str, Mapping[int, dict | None]], endpoint: str) -> Any:
    fig = figures.new_figure(3.3 * len(HORIZONS), 3.3)
    for k, months in enumerate(HORIZONS):
        axes = fig.add_subplot(1, len(HORIZONS), k + 1)
        for name, by_time in curves.items():
            curve = by_time.get(months)
            if curve:
                axes.plot(curve["fpr"], curve["tpr"], linewidth=1.4, label=f"{name} (AUC {curve['auc']:.2f})")
        axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        axes.set_title(f"{endpoint.upper()} by {months} months", fontsize=9)
        axes.set_xlabel("1 - specificity")
        axes.set_ylabel("sensitivity")
        axes.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    return fig


def decision_curves(predictions: pd.DataFrame, endpoint: str, models: Sequence[str]) -> dict[int, pd.DataFrame]:
    """Net benefit of treating by each model's predicted risk (1 - survival) at each horizon, with the
    treat-all and treat-none references (``dcurves.dca``, survival form: Kaplan-Meier event rate)."""
    from dcurves import dca

    out = {}
    for months in HORIZONS:
        columns = {m: f"{m}_survival_{months}m" for m in models if f"{m}_survival_{months}m" in predictions}
        if not columns:
            continue
        data = pd.DataFrame({"time": predictions[f"{endpoint}_time"].astype(float),
                             "event": predictions[f"{endpoint}_event"].astype(int)})
        if data["time"].max() <= months or data["event"].sum() == 0:
            continue
        for model, column in columns.items():
            data[model] = 1.0 - predictions[column].astype(float)
        out[months] = dca(data=data, outcome="event", modelnames=list(columns), thresholds=DCA_THRESHOLDS,
                          time=float(months), time_to_outcome_col="time")
    return out


def decision_figure(curves: Mapping[int, pd.DataFrame], endpoint: str) -> Any:
    fig = figures.new_figure(3.3 * max(len(curves), 1), 3.3)
    for k, (months, frame) in enumerate(curves.items()):
        axes = fig.add_subplot(1, len(curves), k + 1)
        for model, rows in frame.groupby("model", sort=False):
            style = {"all": {"color": "grey", "linestyle": "--"}, "none": {"color": "black", "linestyle": ":"}}
            axes.plot(rows["threshold"], rows["net_benefit"], linewidth=1.2,
                      label={"all": "treat all", "none": "treat none"}.get(model, model), **style.get(model, {}))
        prevalence = frame.loc[frame["model"] == "all", "net_benefit"].max()
        axes.set_ylim(-0.05, max(0.05, float(prevalence) * 1.15))
        axes.set_xlabel("threshold probability")
        axes.set_ylabel("net benefit")
        axes.set_title(f"{endpoint.upper()} event by {months} months", fontsize=9)
        axes.legend(fontsize=6.5)
    fig.tight_layout()
    return fig


def benefit_calibration_figure(rows: Sequence[Mapping[str, Any]]) -> Any:
    fig = figures.new_figure(4.0, 3.3)
    axes = fig.add_subplot(1, 1, 1)
    points = [(r["predicted_benefit"], r["observed_benefit"]) for r in rows
              if r.get("predicted_benefit") is not None and r.get("observed_benefit") is not None]
    if points:
        x, y = zip(*points)
        axes.plot(x, y, "o-", color="#1f77b4")
        low = min(min(x), min(y), 0.0) - 0.02
        high = max(max(x), max(y), 0.0) + 0.02
        axes.plot([low, high], [low, high], color="grey", linestyle=":")
    axes.axhline(0, color="black", linewidth=0.5)
    axes.set_xlabel("predicted benefit (survival gain)")
    axes.set_ylabel("observed benefit (Kaplan-Meier)")
    axes.set_title("Benefit calibration by predicted-benefit tertile", fontsize=9)
    fig.tight_layout()
    return fig


def _settings_rows(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    radiomics = document.get("radiomics") or {}
    setting = (radiomics.get("settings") or {}).get("setting") or {}
    image_types = (radiomics.get("settings") or {}).get("imageType") or {}
    training = document.get("training") or {}
    rows = [("Radiomics parameter file", radiomics.get("params_file", "–")),
            ("Radiomics settings hash (SHA-256)", radiomics.get("settings_hash", "–")),
            ("Resampling (mm) / bin width", f"{setting.get('resampledPixelSpacing', '–')} / "
                                            f"{setting.get('binWidth', '–')}"),
            ("Image types", ", ".join(image_types) or "–"),
            ("Selection", str((document.get("selection") or {}).get("radiomics", "–"))),
            ("Nomogram factors", ", ".join((document.get("selection") or {}).get("nomogram_factors", [])) or "–")]
    for name, block in (training.get("optimism_corrected_c") or {}).items():
        rows.append((f"{model_label(name)}: training C / optimism-corrected",
                     f"{fmt(block.get('apparent'))} / {fmt(block.get('corrected'))}"))
    rows.append(("Training cohort", f"{training.get('n', '?')} patients, {training.get('events', '?')} events"))
    rows.append(("Bundle created", str(document.get("created", "–"))))
    return rows


def write_cohort_page(out_dir: str | Path, metrics: Mapping[str, Any], predictions: pd.DataFrame,
                      document: Mapping[str, Any], *, characteristics: pd.DataFrame | None = None,
                      study_info: Mapping[str, Any] | None = None) -> Path:
    """Write ``cohort_study.html`` (with ``figures/`` and ``tables/``) in the evaluation folder.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        The evaluation folder (``metrics.json``, ``predictions.csv`` and evaluate's figures are there).
    metrics : mapping
        ``metrics.json``.
    predictions : pandas.DataFrame
        ``predictions.csv``.
    document : mapping
        The bundle document.
    characteristics : pandas.DataFrame, optional
        Baseline characteristics by split (:func:`cohort_characteristics`).
    study_info : mapping, optional
        What only the user knows (data source, dates, ...), for the checklist.

    Returns
    -------
    path : pathlib.Path
        The page.
    """
    from NPCPrognosisLib.survival.metrics import td_roc_curve

    out_dir = Path(out_dir)
    endpoint = str(metrics["endpoint"])
    survival = "c_index" in next(iter(metrics["models"].values()))
    synthetic = bool(document.get("synthetic_demo"))
    body = ["<h1>NPCPrognosis cohort study</h1>"]
    if synthetic:
        body.append("<div class='banner'>SYNTHETIC DEMONSTRATION - the model and the cohort are synthetic</div>")
    if metrics.get("training_patients_included"):
        body.append(f"<div class='banner'>NOT A VALIDATION - {metrics['training_patients_included']} of the "
                    f"{metrics['n']} evaluated patients trained this model (--subset all): their numbers are "
                    "optimistic training performance</div>")
    body.append(f"<p class='small'>Endpoint {esc(endpoint.upper())} ({esc(ENDPOINT_TITLES.get(endpoint, endpoint))})"
                f"; {metrics['n']} evaluated patients ({metrics.get('events', '–')} events); "
                f"{metrics.get('excluded_training_patients', 0)} training patients left out of the evaluation"
                + (f"; {len(metrics['without_features'])} patients not evaluated for want of features "
                   f"({esc(', '.join(metrics['without_features'][:10]))})" if metrics.get("without_features") else "")
                + ". "
                f"Page made {datetime.date.today().isoformat()}.</p>")
    body.append(bullet_list(metrics.get("warnings") or [], "warn"))
    if characteristics is not None and len(characteristics):
        body += ["<h2>Cohort</h2>", _frame_html(characteristics),
                 _save_table(characteristics, out_dir, "cohort_characteristics")]
    comparison = model_comparison(metrics) if survival else binary_comparison(metrics)
    body += ["<h2>Model comparison</h2>", _frame_html(comparison), _save_table(comparison, out_dir,
                                                                                "model_comparison")]
    if survival:
        body += _survival_sections(out_dir, metrics, predictions, endpoint, td_roc_curve)
    else:
        body += ["<h2>ROC and calibration</h2>"]
        for png in [p for p in sorted(out_dir.glob(f"roc_{endpoint}.png"))
                    + sorted(out_dir.glob(f"calibration_{endpoint}_*.png")) if _drawn(metrics, p)]:
            body.append(_figure_link(out_dir, png, png.stem.replace("_", " "), png.stem.replace("_", " "), "70%"))
    features = selected_features(document)
    if len(features):
        body += ["<h2>Selected features</h2>", _frame_html(features), _save_table(features, out_dir,
                                                                                 "selected_features")]
    body += ["<h2>Settings</h2>", table(None, _settings_rows(document))]
    items = reporting_checklist(metrics, document, study_info)
    checklist = pd.DataFrame([{"guideline": i.guideline, "item": i.item, "topic": i.topic,
                               "status": "answered" if i.answered else "not available", "where / what to supply":
                               i.answer} for i in items])
    rows = "".join(f"<tr><td>{esc(i.guideline)}</td><td>{esc(i.item)}</td><td>{esc(i.topic)}</td>"
                   f"<td class='{'answered' if i.answered else 'missing'}'>"
                   f"{'answered' if i.answered else 'not available'}</td><td>{esc(i.answer)}</td></tr>" for i in items)
    body += ["<h2>Reporting checklist (TRIPOD+AI, RQS)</h2>",
             "<p class='small'>Items software can answer; the others (title, abstract, ethics, interpretation) are "
             "the authors'. Study details come from evaluate --study-info.</p>",
             "<table><tr><th>Guideline</th><th>Item</th><th>Topic</th><th>Status</th><th>Where / what to supply"
             f"</th></tr>{rows}</table>", _save_table(checklist, out_dir, "reporting_checklist")]
    return write_text_atomic(out_dir / PAGE, html_document(f"NPCPrognosis cohort study ({endpoint.upper()})", body))


def _drawn(metrics: Mapping[str, Any], png: Path) -> bool:
    """Whether ``evaluate`` drew this figure in this run: a figure is drawn only when it can be estimated, so one
    from an earlier run into the same folder may lie there (metrics written before the list: any that exists)."""
    drawn = metrics.get("figures")
    return png.exists() and (drawn is None or png.name in drawn)


def _survival_sections(out_dir: Path, metrics: Mapping[str, Any], predictions: pd.DataFrame, endpoint: str,
                       td_roc_curve: Any) -> list[str]:
    body = ["<h2>Risk groups</h2><p class='small'>Cut-offs learned on the training patients only.</p>"]
    for name in metrics["models"]:
        png = out_dir / f"km_{name}.png"
        if _drawn(metrics, png):
            body.append(_figure_link(out_dir, png, f"Kaplan-Meier by {name} risk group",
                                     f"{model_label(name)}: Kaplan-Meier by risk group with numbers at risk", "70%"))
    calibration = [out_dir / f"calibration_nomogram_{m}m.png" for m in HORIZONS]
    if any(_drawn(metrics, p) for p in calibration):
        body.append("<h2>Calibration</h2>")
        body += [_figure_link(out_dir, p, p.stem, f"Nomogram calibration at {m} months", "48%")
                 for p, m in zip(calibration, HORIZONS) if _drawn(metrics, p)]
    time = predictions[f"{endpoint}_time"].to_numpy(float)
    event = predictions[f"{endpoint}_event"].to_numpy(bool)
    # censoring weights from the evaluated cohort itself, as its td-AUCs in metrics.json
    curves = {name: {m: td_roc_curve(time, event, time, event, predictions[f"{name}_risk"].to_numpy(float), m)
                     for m in HORIZONS} for name in metrics["models"] if f"{name}_risk" in predictions}
    if any(c for by in curves.values() for c in by.values()):
        png = Path(_save(roc_figure(curves, endpoint), out_dir / FIGURES / "td_roc.png"))
        body += ["<h2>Time-dependent ROC</h2>",
                 _figure_link(out_dir, png, "time-dependent ROC curves",
                              "Cumulative/dynamic ROC curves (inverse-probability-of-censoring weights from this "
                              "cohort)")]
    try:
        dca = decision_curves(predictions, endpoint, list(metrics["models"]))
    except (ValueError, ZeroDivisionError, KeyError) as exc:  # dcurves on a tiny cohort
        log.warning("decision curves not drawn: %s", exc)
        dca = {}
    if dca:
        png = Path(_save(decision_figure(dca, endpoint), out_dir / FIGURES / "decision_curves.png"))
        frame = pd.concat([f.assign(months=m) for m, f in dca.items()])[["months", "model", "threshold",
                                                                          "net_benefit"]]
        body += ["<h2>Decision curves</h2>",
                 _figure_link(out_dir, png, "decision curves",
                              "Net benefit of acting on each model's predicted risk (dcurves, survival form)"),
                 _save_table(frame, out_dir, "decision_curves")]
    benefit = metrics.get("chemo_benefit") or {}
    parts = []
    forest = out_dir / "benefit_forest.png"
    if _drawn(metrics, forest):
        parts.append(_figure_link(out_dir, forest, "subgroup forest plot", "Dose effect by subgroup", "80%"))
    if benefit.get("calibration"):
        png = Path(_save(benefit_calibration_figure(benefit["calibration"]),
                         out_dir / FIGURES / "benefit_calibration.png"))
        parts.append(_figure_link(out_dir, png, "benefit calibration",
                                  f"Predicted vs observed benefit at {benefit.get('horizon_months', 60):g} months"
                                  f" ({_observed_benefit_method(benefit['calibration'])}); "
                                  f"{_c_for_benefit_text(benefit.get('c_for_benefit') or {})}", "55%"))
    if benefit.get("conclusions"):
        parts.append(f"<p>{esc(_conclusions_text(benefit))}</p>")
    if parts:
        body += ["<h2>Treatment benefit</h2>", *parts]
    loco = metrics.get("leave_one_centre_out")
    if loco:
        rows = [(c, b["n"], b["events"], fmt(b.get("nomogram_c_index"))) for c, b in loco["centres"].items()]
        body += ["<h2>Leave one centre out</h2>", table(["Centre", "n", "events", "nomogram C"], rows),
                 f"<p>Event-weighted mean C {fmt(loco.get('nomogram_c_index_event_weighted'))}</p>"]
        if loco.get("note"):
            body.append(f"<p class='small'>{esc(loco['note'][0].upper() + loco['note'][1:])}.</p>")
    return body


def _c_for_benefit_text(block: Mapping[str, Any]) -> str:
    """C-for-benefit with its interval and the patients it rests on, or why there is none."""
    value = block.get("c_for_benefit")
    if value is None:
        return f"C-for-benefit – ({block.get('reason', 'not estimable')})"
    lo, hi = block.get("ci95") or (None, None)
    interval = f" (95% CI {fmt(lo)}-{fmt(hi)})" if lo is not None else ""
    weighted = " (the others weighted for them)" if block.get("censoring_weights") else ""
    return (f"C-for-benefit {fmt(value)}{interval} from {block.get('pairs', '?')} matched pairs; "
            f"{block.get('censored_before_horizon', 0)} patients censored before the horizon{weighted} and "
            f"{block.get('unmatched', 0)} unmatched left out")


def _conclusions_text(benefit: Mapping[str, Any]) -> str:
    """How many patients read each per-patient conclusion (predict's, ``benefit_conclusion_60m``), and that the
    cohort measures above read a missing EBV DNA at the training median."""
    counts = ", ".join(f"{label} {n}" for label, n in benefit["conclusions"].items())
    text = f"What predict tells each patient about the high dose (benefit_conclusion_60m): {counts}."
    filled = benefit.get("n_ebv_dna_imputed", 0)
    if filled:
        text += (f" {filled} patient(s) had no EBV DNA: C-for-benefit and the calibration read the training median for "
                 "them, their conclusions the training 10th-90th percentile.")
    return text


def _observed_benefit_method(rows: Sequence[Mapping[str, Any]]) -> str:
    """How the calibration's observed benefit was estimated (IPTW-weighted, or unadjusted where it had to be)."""
    methods = {row.get("observed_benefit_method", "unadjusted Kaplan-Meier") for row in rows}
    return "; ".join(sorted(methods))
