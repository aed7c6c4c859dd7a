"""Figures of the reports, built on bare matplotlib ``Figure`` objects (Agg) and saved as PNG and SVG.

Like :mod:`NPCPrognosisLib.survival.plots`, never ``pyplot``: rendering from Slicer, a worker or a test must not
switch the global backend or leak figures.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.contract import LABELS, SEGMENTS
from NPCPrognosisLib.imaging.geometry import resample_onto, same_geometry
from NPCPrognosisLib.reporting.labels import factor_label, points_text
from NPCPrognosisLib.reporting.nomogram_chart import NomogramChart
from NPCPrognosisLib.survival.patient import BAND_LOWER, BAND_UPPER, survival_band
from NPCPrognosisLib.survival.plots import _new_figure

_SEGMENT_COLOURS = {s["label"]: s["color"] for s in SEGMENTS}
_SEGMENT_NAMES = {s["label"]: s["name"] for s in SEGMENTS}


#: Resolution of the reports' figures (their printed size is set by the page's style sheet).
DPI = 110


def new_figure(width: float, height: float) -> Any:
    return _new_figure((width, height), dpi=DPI)


def png_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI, so an HTML page carries its pictures and stays one file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ---------------------------------------------------------------------------------------------------- images


def _on_grid(image: sitk.Image | None, reference: sitk.Image, is_label: bool) -> sitk.Image | None:
    if image is None or same_geometry(image, reference):
        return image
    return resample_onto(image, reference, is_label=is_label)


def key_slice_indices(mask: np.ndarray, count: int = 3) -> list[int]:
    """Axial slices worth showing: the largest cross-section of GTVp, of GTVn, and the tumour's middle slice.

    ``mask`` is (z, y, x); with no contour the middle slice of the volume is shown.
    """
    chosen: list[int] = []
    for label in (LABELS["gtvp"], LABELS["gtvn"]):
        area = (mask == label).sum(axis=(1, 2))
        if area.max() > 0:
            chosen.append(int(np.argmax(area)))
    tumour = np.flatnonzero((mask > 0).any(axis=(1, 2)))
    extra = [int(tumour[len(tumour) // 2])] if len(tumour) else [mask.shape[0] // 2]
    if len(tumour):
        extra += [int(tumour[len(tumour) // 4]), int(tumour[(3 * len(tumour)) // 4])]
    for z in extra:
        if z not in chosen:
            chosen.append(z)
    return sorted(chosen[:count])


def key_slices_figure(t1c: sitk.Image, mask: sitk.Image | None, automatic_mask: sitk.Image | None = None,
                      overlays: Mapping[str, sitk.Image] | None = None) -> Any:
    """CET1W key slices with GTVp (red) and GTVn (green) contours; the automatic contours dashed when the shown
    ones were edited; one extra row per overlay (uncertainty, saliency) on the same slices.

    Slices are shown in the radiological convention (the patient's right on the image's left, anterior up)
    whatever the file's orientation.
    """
    image = sitk.DICOMOrient(t1c, "LPS")
    shown = _on_grid(None if mask is None else sitk.DICOMOrient(mask, "LPS"), image, is_label=True)
    auto = _on_grid(None if automatic_mask is None else sitk.DICOMOrient(automatic_mask, "LPS"), image, is_label=True)
    array = sitk.GetArrayFromImage(image).astype(float)
    labels = sitk.GetArrayFromImage(shown) if shown is not None else np.zeros(array.shape, np.uint8)
    auto_labels = sitk.GetArrayFromImage(auto) if auto is not None else None
    slices = key_slice_indices(labels if labels.any() or auto_labels is None else auto_labels)
    extra = [(name, _on_grid(sitk.DICOMOrient(img, "LPS"), image, is_label=False))
             for name, img in (overlays or {}).items() if img is not None]
    rows = 1 + len(extra)
    figure = new_figure(2.4 * len(slices), 2.5 * rows)
    spacing = image.GetSpacing()
    aspect = spacing[1] / spacing[0]
    lo, hi = np.percentile(array, [1, 99.5])
    for col, z in enumerate(slices):
        axes = figure.add_subplot(rows, len(slices), col + 1)
        axes.imshow(array[z], cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="bilinear")
        for label, colour in _SEGMENT_COLOURS.items():
            if (labels[z] == label).any():
                axes.contour(labels[z] == label, levels=[0.5], colors=[colour], linewidths=1.2)
            if auto_labels is not None and (auto_labels[z] == label).any():
                axes.contour(auto_labels[z] == label, levels=[0.5], colors=[colour], linewidths=0.9,
                             linestyles="dashed")
        axes.set_title(f"slice {z + 1}/{array.shape[0]}", fontsize=8)
        axes.set_axis_off()
        for row, (name, overlay) in enumerate(extra, start=1):
            values = sitk.GetArrayFromImage(overlay).astype(float)
            axes = figure.add_subplot(rows, len(slices), row * len(slices) + col + 1)
            axes.imshow(array[z], cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
            top = float(np.nanmax(values)) if np.isfinite(values).any() and np.nanmax(values) > 0 else 1.0
            axes.imshow(np.ma.masked_less_equal(values[z], 0.05 * top), cmap="inferno", alpha=0.6, vmin=0,
                        vmax=top, aspect=aspect)
            axes.set_title(f"{name}, slice {z + 1}", fontsize=8)
            axes.set_axis_off()
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_SEGMENT_COLOURS[k], label=_SEGMENT_NAMES[k]) for k in _SEGMENT_COLOURS]
    if auto_labels is not None and shown is not None:
        handles.append(Line2D([], [], color="grey", linestyle="dashed", label="automatic (before editing)"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.09, wspace=0.04, hspace=0.12)
    return figure


# ---------------------------------------------------------------------------------------------------- curves


def survival_figure(curves: Mapping[str, Sequence[float]], risk_se: float | None, endpoint: str,
                    marks: Mapping[str, float]) -> Any:
    """This patient's survival curve with its 95% band (the curves' own band columns; for predictions made before
    them, :func:`survival_band` of the risk score's SE), the risk-group reference curves and the 12/36/60-month
    values marked."""
    figure = new_figure(6.2, 3.6)
    axes = figure.add_subplot(1, 1, 1)
    months = np.asarray(curves["months"], float)
    patient = np.asarray(curves["this patient"], float)
    styles = {"low-risk group (median)": ("#1f77b4", "-"), "high-risk group (median)": ("#d62728", "-"),
              "risk-group cut-off": ("grey", ":"), "training cohort (Kaplan-Meier)": ("#555555", "--")}
    for name, values in curves.items():
        if name in ("months", "this patient", BAND_LOWER, BAND_UPPER):
            continue
        colour, line = styles.get(name, ("#999999", "-"))
        axes.plot(months, values, color=colour, linestyle=line, linewidth=1.1, label=name)
    band = (np.asarray(curves[BAND_LOWER], float), np.asarray(curves[BAND_UPPER], float)) \
        if BAND_LOWER in curves and BAND_UPPER in curves else survival_band(patient, risk_se)
    if band is not None:
        axes.fill_between(months, band[0], band[1], color="black", alpha=0.12, linewidth=0,
                          label="this patient, 95% interval")
    axes.plot(months, patient, color="black", linewidth=2.4, label="this patient")
    for month, value in marks.items():
        axes.plot([float(month)], [value], "o", color="black", markersize=4)
        axes.annotate(f"{value:.0%}", (float(month), value), textcoords="offset points", xytext=(3, 5), fontsize=8)
    axes.set_xlabel("Months from the start of treatment")
    axes.set_ylabel(f"{endpoint.upper()} probability")
    axes.set_ylim(0, 1.02)
    axes.set_xlim(0, months.max())
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    return figure


def nomogram_figure(chart: NomogramChart, endpoint: str) -> Any:
    """The nomogram drawn as papers draw it, with this patient's value and points marked in red on each axis,
    the total and the survival it gives."""
    axes_rows = ["Points"] + [a.label for a in chart.axes] + ["Total points"] + \
        [f"{endpoint.upper()} at {s.months:g} months" for s in chart.survival_axes]
    height = 0.42 * len(axes_rows) + 0.5
    figure = new_figure(7.4, height)
    ax = figure.add_axes([0.25, 0.03, 0.72, 0.94])
    n = len(axes_rows)
    ax.set_ylim(-0.6, n - 0.4)
    ax.invert_yaxis()
    ax.set_axis_off()
    total_max = max(chart.max_total, 1e-9)
    top_scale = 100.0 / total_max if total_max > 0 else 1.0  # the total axis is drawn on the same width

    def line(y: int, x0: float, x1: float) -> None:
        ax.plot([x0, x1], [y, y], color="black", linewidth=0.8)

    def tick(y: int, x: float, text: str, raised: bool = False) -> None:
        ax.plot([x, x], [y - 0.08, y + 0.08], color="black", linewidth=0.8)
        ax.text(x, y - (0.36 if raised else 0.15), text, ha="center", va="center", fontsize=6.5)

    def mark(y: int, x: float, text: str) -> None:
        ax.plot([x], [y], marker="v", color="#d62728", markersize=6, zorder=5)
        ax.text(x, y + 0.33, text, ha="center", va="center", fontsize=6.5, color="#d62728", fontweight="bold")

    for y, label in enumerate(axes_rows):
        ax.text(-4, y, label, ha="right", va="center", fontsize=7.5)
    line(0, 0, 100)
    for p in range(0, 101, 10):
        tick(0, p, f"{p}")
    for y, axis in enumerate(chart.axes, start=1):
        xs = [t[1] for t in axis.ticks]
        if xs:
            line(y, min(xs), max(xs))
        previous = None
        for _, points, text in sorted(axis.ticks, key=lambda t: t[1]):
            crowded = previous is not None and points - previous < 7.0  # its label goes one tier higher
            tick(y, points, text, raised=crowded)
            previous = None if crowded else points
        if axis.patient_points is not None:
            mark(y, axis.patient_points, f"{axis.patient_text} = {points_text(axis.patient_points, 0)} pts")
    y_total = len(chart.axes) + 1
    line(y_total, 0, 100)
    step = _nice_step(total_max)
    for value in np.arange(0, total_max + 1e-9, step):
        tick(y_total, value * top_scale, f"{value:g}")
    if chart.patient_total is not None:
        mark(y_total, chart.patient_total * top_scale, f"{chart.patient_total:.0f}")
    for k, axis in enumerate(chart.survival_axes):
        y = y_total + 1 + k
        xs = [p * top_scale for _, p in axis.ticks]
        if xs:
            line(y, min(xs), max(xs))
        for s, p in axis.ticks:
            tick(y, p * top_scale, f"{s:g}")
        if axis.patient_survival is not None and chart.patient_total is not None:
            mark(y, chart.patient_total * top_scale, f"{axis.patient_survival:.0%}")
    if chart.patient_total is not None:
        ax.axvline(chart.patient_total * top_scale, ymin=0.0, ymax=1.0, color="#d62728", linewidth=0.6,
                   linestyle=":")
    ax.set_xlim(-2, 104)
    return figure


def _nice_step(span: float) -> float:
    raw = max(span, 1e-9) / 8.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 5, 10):
        if raw <= multiple * magnitude:
            return multiple * magnitude
    return 10 * magnitude


def arms_figure(survival_by_arm: Mapping[str, Mapping[str, Mapping[str, Any]]], labels: Mapping[str, str],
                endpoint: str) -> Any:
    """Counterfactual survival of this patient under each treatment arm with the bootstrap 95% intervals."""
    figure = new_figure(5.6, 3.2)
    axes = figure.add_subplot(1, 1, 1)
    colours = ["#7f7f7f", "#1f77b4", "#d62728", "#2ca02c"]
    for k, (arm, by_month) in enumerate(survival_by_arm.items()):
        months = np.array([0.0] + [float(m) for m in by_month])
        values = np.array([1.0] + [float(c["survival"]) for c in by_month.values()])
        lower = np.array([1.0] + [float((c.get("ci95") or [c["survival"]] * 2)[0]) for c in by_month.values()])
        upper = np.array([1.0] + [float((c.get("ci95") or [c["survival"]] * 2)[1]) for c in by_month.values()])
        offset = (k - (len(survival_by_arm) - 1) / 2) * 0.8
        colour = colours[k % len(colours)]
        axes.plot(months, values, marker="o", color=colour, label=labels.get(arm, arm), linewidth=1.6)
        axes.errorbar(months[1:] + offset, values[1:], yerr=[values[1:] - lower[1:], upper[1:] - values[1:]],
                      fmt="none", ecolor=colour, capsize=3, linewidth=1)
    axes.set_xlabel("Months")
    axes.set_ylabel(f"{endpoint.upper()} probability if treated so")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    return figure


def bar_figure(rows: Sequence[tuple[str, float]], xlabel: str, title: str = "",
               colours: Sequence[str] | None = None) -> Any:
    """Horizontal bars (contributions to the risk, gate weights): largest at the top."""
    figure = new_figure(5.6, 0.32 * len(rows) + 1.0)
    axes = figure.add_subplot(1, 1, 1)
    names = [r[0] for r in rows][::-1]
    values = [r[1] for r in rows][::-1]
    if colours is None:
        colours = ["#d62728" if v > 0 else "#1f77b4" for v in values]
    else:
        colours = list(colours)[::-1]
    axes.barh(names, values, color=colours)
    axes.axvline(0, color="black", linewidth=0.6)
    axes.set_xlabel(xlabel)
    axes.tick_params(axis="y", labelsize=7)
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def gates_figure(gate_weights: Mapping[str, Mapping[str, float]]) -> Any:
    """The fusion model's gate weights per task as stacked bars: how the experts were mixed for this patient (not
    what each modality adds: :func:`~NPCPrognosisLib.deep.mmoe.expert_contributions`)."""
    figure = new_figure(5.6, 0.45 * len(gate_weights) + 1.2)
    axes = figure.add_subplot(1, 1, 1)
    blocks = sorted({b for weights in gate_weights.values() for b in weights})
    colours = dict(zip(blocks, ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]))
    for row, weights in enumerate(gate_weights.values()):
        left = 0.0
        for block in blocks:
            width = float(weights.get(block, 0.0))
            axes.barh(row, width, left=left, color=colours[block], label=block if row == 0 else None)
            if width > 0.08:
                axes.text(left + width / 2, row, f"{width:.0%}", ha="center", va="center", fontsize=7, color="white")
            left += width
    axes.set_yticks(range(len(gate_weights)), [factor_label(t) for t in gate_weights])
    axes.set_xlim(0, 1)
    axes.set_xlabel("gate weight (mixing share, not contribution)")
    axes.legend(fontsize=7, ncol=len(blocks), loc="upper center", bbox_to_anchor=(0.5, -0.35), frameon=False)
    figure.tight_layout()
    return figure
