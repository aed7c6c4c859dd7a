"""The graphical nomogram as data: points axes per factor, the total-points axis and the survival axes.

Drawn the way papers draw a Cox nomogram (R's ``rms::nomogram``): each factor has an axis whose ticks sit at the
points that value earns (0 at the factor's most favourable training value, 100 for the widest-spread factor);
the points add up on the total-points axis, under which each survival axis shows the survival at 1, 3 and 5
years that a total gives. Built only from ``prediction.json``'s ``nomogram_scale``, so the chart a clinician
reads and the numbers the software printed come from the same model.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from NPCPrognosisLib.reporting.labels import factor_label, factor_ticks, factor_value_text, points_text

#: Survival probabilities ticked on the survival axes (those that fall inside the total-points range).
SURVIVAL_TICKS = (0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05)


@dataclass
class PointsAxis:
    """One factor's axis: ticks as (coded value, points, label), and this patient's value and points."""

    factor: str
    label: str
    ticks: list[tuple[float, float, str]]
    patient_value: float | None = None
    patient_points: float | None = None
    patient_text: str = ""


@dataclass
class SurvivalAxis:
    """Survival at ``months`` against total points: ticks as (probability, total points)."""

    months: float
    ticks: list[tuple[float, float]]
    patient_survival: float | None = None


@dataclass
class NomogramChart:
    axes: list[PointsAxis]
    max_total: float
    survival_axes: list[SurvivalAxis]
    patient_total: float | None = None
    scale: dict[str, Any] = field(default_factory=dict, repr=False)


def points_for(scale: Mapping[str, Any], factor: str, value: float) -> float:
    """Points a factor value earns (linear in the coded value; outside the training range it extrapolates)."""
    j = list(scale["factors"]).index(factor)
    return float(scale["points_per_unit_log_hazard"] * scale["coef"][j] * (float(value) - scale["zero_point_value"][j]))


def survival_for_points(scale: Mapping[str, Any], total: float) -> list[float]:
    """Survival at each of ``scale['months']`` for a total of points."""
    linear = float(total) / float(scale["points_per_unit_log_hazard"]) + float(scale["offset"])
    return [float(math.exp(-h0 * math.exp(linear))) for h0 in scale["baseline_cumulative_hazard"]]


def points_for_survival(scale: Mapping[str, Any], month_index: int, survival: float) -> float | None:
    """The total points at which survival at ``months[month_index]`` equals ``survival`` (None when the
    baseline hazard is 0 there: every total gives survival 1)."""
    h0 = float(scale["baseline_cumulative_hazard"][month_index])
    if h0 <= 0 or not 0 < survival < 1:
        return None
    return float(scale["points_per_unit_log_hazard"] * (math.log(-math.log(survival) / h0) - scale["offset"]))


def nomogram_chart(scale: Mapping[str, Any], values: Mapping[str, float] | None = None,
                   imputed: Collection[str] = ()) -> NomogramChart:
    """The chart of a nomogram scale, with a patient's points when ``values`` (coded factors) are given.

    Parameters
    ----------
    scale : mapping
        ``Nomogram.chart_scale()`` as stored in ``prediction.json`` (``nomogram_scale``).
    values : mapping of str to float, optional
        The patient's coded factors (``prediction.json``'s ``factors``).
    imputed : collection of str, optional
        Factors whose value is the training fill, not the patient's (``prediction.json``'s ``imputed``): their
        value reads "not measured (training median imputed)", their points are still those the fill earned.

    Returns
    -------
    chart : NomogramChart
        Axes ordered by their span (widest first, as papers order them), the total-points range and the
        survival axes; the patient's points per factor, total and survival when ``values`` were given.
    """
    axes = []
    for j, factor in enumerate(scale["factors"]):
        low, high = float(scale["low"][j]), float(scale["high"][j])
        ticks = _readable([(v, points_for(scale, factor, v), text) for v, text in factor_ticks(factor, low, high)])
        axis = PointsAxis(factor=factor, label=factor_label(factor), ticks=ticks)
        if values is not None:
            axis.patient_value = float(values[factor])
            axis.patient_points = points_for(scale, factor, axis.patient_value)
            axis.patient_text = factor_value_text(factor, axis.patient_value, imputed=factor in imputed)
        axes.append(axis)
    spans = [abs(points_for(scale, a.factor, scale["high"][j]) - points_for(scale, a.factor, scale["low"][j]))
             for j, a in enumerate(axes)]
    max_total = float(sum(spans))
    order = np.argsort(-np.asarray(spans), kind="stable")
    axes = [axes[k] for k in order]
    total = None if values is None else float(sum(a.patient_points for a in axes))
    survival_at_total = None if total is None else survival_for_points(scale, total)
    survival_axes = []
    for k, months in enumerate(scale["months"]):
        ticks = []
        for s in SURVIVAL_TICKS:
            p = points_for_survival(scale, k, s)
            if p is not None and 0.0 <= p <= max_total:
                ticks.append((s, p))
        gap = 5.0 * max_total / 100.0  # the total axis is drawn on the same width as the 0-100 points axis
        thinned = _readable([(prob, p, "") for prob, p in sorted(ticks, key=lambda t: t[1])], gap)
        ticks = [(prob, p) for prob, p, _ in thinned]
        survival_axes.append(SurvivalAxis(months=float(months), ticks=ticks,
                                          patient_survival=None if total is None else survival_at_total[k]))
    return NomogramChart(axes=axes, max_total=max_total, survival_axes=survival_axes, patient_total=total,
                         scale=dict(scale))


def _readable(ticks: list[tuple[float, float, str]], min_gap: float = 5.0) -> list[tuple[float, float, str]]:
    """Drop ticks that would print on top of each other (closer than ``min_gap`` points), keeping both ends."""
    if len(ticks) <= 2:
        return ticks
    kept = [ticks[0]]
    for tick in ticks[1:-1]:
        if abs(tick[1] - kept[-1][1]) >= min_gap and abs(tick[1] - ticks[-1][1]) >= min_gap:
            kept.append(tick)
    return kept + [ticks[-1]] if abs(ticks[-1][1] - kept[-1][1]) >= min_gap or len(kept) == 1 else kept[:-1] + \
        [ticks[-1]]


def chart_rows(chart: NomogramChart) -> list[tuple[str, str, str]]:
    """(factor, this patient's value, points) rows of the chart, in its order, then the total."""
    rows = [(a.label, a.patient_text, points_text(a.patient_points)) for a in chart.axes
            if a.patient_points is not None]
    if chart.patient_total is not None:
        rows.append(("Total points", "", points_text(chart.patient_total)))
    return rows


def read_survival_axis(axis: SurvivalAxis, total: float) -> float | None:
    """Survival read off a drawn survival axis at ``total`` points, interpolating log(-log S) between its ticks
    (what a reader does with a ruler); None outside the ticked range."""
    if len(axis.ticks) < 2:
        return None
    probs = np.array([t[0] for t in axis.ticks])
    points = np.array([t[1] for t in axis.ticks])
    order = np.argsort(points)
    points, probs = points[order], probs[order]
    if not points[0] <= total <= points[-1]:
        return None
    cloglog = np.interp(total, points, np.log(-np.log(probs)))
    return float(np.exp(-np.exp(cloglog)))


def chart_survival(chart: NomogramChart) -> dict[str, float]:
    """The survival the chart gives this patient, keyed like ``prediction.json``'s ``survival`` ('12', ...)."""
    return {f"{a.months:g}": float(a.patient_survival) for a in chart.survival_axes if a.patient_survival is not None}


def check_chart(chart: NomogramChart, prediction: Mapping[str, Any], tolerance: float = 1e-6) -> list[str]:
    """Disagreements between the chart and the prediction (total points, survival); empty when they agree."""
    problems = []
    total = float(prediction["nomogram_points"]["total"])
    if chart.patient_total is None or abs(chart.patient_total - total) > tolerance * max(1.0, abs(total)):
        problems.append(f"chart total {chart.patient_total} != prediction total {total}")
    for month, value in chart_survival(chart).items():
        expected = prediction["survival"].get(month)
        if expected is not None and abs(value - float(expected)) > tolerance:
            problems.append(f"chart survival at {month} months {value} != prediction {expected}")
    return problems
