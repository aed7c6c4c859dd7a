"""A patient's risk score uncertainty and survival curves against the cohort's references.

Computed here, in the core, so ``predict`` writes the same numbers into ``prediction.json`` that the Slicer panel
shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from NPCPrognosisLib.survival.nomogram import REPORT_MONTHS


def risk_uncertainty(bundle: Any, factors: Mapping[str, float], deep_score_sd: float | None = None,
                     months: Sequence[float] = REPORT_MONTHS) -> dict[str, Any]:
    """The patient's risk score standard error and the 95 % intervals of the predicted survival.

    The survival intervals carry the baseline hazard's and the coefficients' uncertainty (Tsiatis) and the
    Rad-score's own (:meth:`~NPCPrognosisLib.survival.nomogram.Nomogram.survival_interval`). The risk score is a
    contrast with the average training patient, so its SE is that of (x - x_mean)'beta by the delta method plus
    the Rad-score's variance times its squared weight (the Cox part is 0 for the average patient by construction:
    the score is defined against them); bundles saved without the training means use the middle of each factor's
    training range. It reflects how well the cohort pinned the coefficients, not the
    contours; the deep score's test-time augmentation SD (when the network gave one) is reported beside it.

    Parameters
    ----------
    bundle : LoadedBundle
        The model bundle (its ``nomogram``).
    factors : mapping
        The patient's encoded factors.
    deep_score_sd : float, optional
        The deep score's spread over test-time augmentations.
    months : sequence of float, default REPORT_MONTHS
        Where the survival intervals are given.

    Returns
    -------
    uncertainty : dict
        ``risk_se``, ``reference``, ``deep_score_sd`` and ``survival_ci95`` {month: [lower, upper]} (empty for a
        bundle saved without the baseline's variance).
    """
    import numpy as np

    nomogram = bundle.nomograms["nomogram"]
    model = nomogram.model
    covariance = model.covariance
    means = getattr(model, "means", None)
    out: dict[str, Any] = {"risk_se": None, "deep_score_sd": deep_score_sd,
                           "reference": "the average training patient" if means is not None
                           else "middle of the training range of each factor", "survival_ci95": {}}
    if covariance is not None:
        x = np.array([float(factors[f]) for f in nomogram.factors])
        reference = np.asarray(means, float) if means is not None else \
            (np.asarray(nomogram.low, float) + np.asarray(nomogram.high, float)) / 2.0
        d = x - reference
        variance = float(d @ np.asarray(covariance, float) @ d) + nomogram.score_log_hazard_variance()
        out["risk_se"] = math.sqrt(variance) if variance >= 0 else None
    lower, upper = nomogram.survival_interval(dict(factors), months)
    for month, lo, hi in zip(months, lower[0], upper[0]):
        if np.isfinite(lo) and np.isfinite(hi):  # unknown before the first event, or in an older bundle
            out["survival_ci95"][f"{month}"] = [float(lo), float(hi)]
    return out


#: The columns of :func:`survival_curves` that bound this patient's 95 % interval.
BAND_LOWER, BAND_UPPER = "this patient, 95% lower", "this patient, 95% upper"


def survival_curves(bundle: Any, factors: Mapping[str, float], months: Sequence[float] | None = None,
                    ) -> dict[str, list[float]]:
    """Columns for the plot: months, this patient's model survival and the reference curves.

    References: the model's curve at the risk-group cut-off (the boundary between the groups), the training
    cohort's Kaplan-Meier curve, and - when the bundle stores each group's median training risk under
    ``cutoffs.nomogram.group_median_risk`` - the low- and high-risk group curves. This patient's 95 % band
    (:data:`BAND_LOWER`, :data:`BAND_UPPER`) when the bundle stores the baseline's variance.
    """
    import numpy as np

    nomogram = bundle.nomograms["nomogram"]
    model = nomogram.model
    if months is None:
        last = float(np.max(model.baseline_times)) if len(model.baseline_times) else 72.0
        horizon = float(max(72.0, min(120.0, last)))
        if model.max_time is not None:  # no curve after the training follow-up: its survival is unknown there
            horizon = min(horizon, float(model.max_time))
        months = np.linspace(0.0, horizon, 61)
    grid = np.asarray(months, float)

    def at_risk(risk: float) -> list[float]:
        return [float(v) for v in nomogram.survival_for_risk(risk, grid)]

    columns: dict[str, list[float]] = {"months": [float(m) for m in grid]}
    columns["this patient"] = [float(v) for v in nomogram.survival(dict(factors), grid)[0]]
    lower, upper = nomogram.survival_interval(dict(factors), grid)
    if np.isfinite(lower).any():  # a bundle saved without the baseline's variance has no band
        first_event = float(model.baseline_times[0]) if len(model.baseline_times) else np.inf
        before = grid < first_event  # S = 1 exactly there: the band starts at 1
        columns[BAND_LOWER] = [1.0 if b else float(v) for b, v in zip(before, lower[0])]
        columns[BAND_UPPER] = [1.0 if b else float(v) for b, v in zip(before, upper[0])]
    block = bundle.document.get("cutoffs", {}).get("nomogram", {})
    medians = block.get("group_median_risk") if isinstance(block, Mapping) else None
    if medians:
        columns["low-risk group (median)"] = at_risk(float(medians["low"]))
        columns["high-risk group (median)"] = at_risk(float(medians["high"]))
    columns["risk-group cut-off"] = at_risk(float(bundle.cutoffs["nomogram"]))
    training = bundle.document.get("training", {})
    if training.get("time") and training.get("event"):
        from NPCPrognosisLib.survival.metrics import kaplan_meier

        km_t, km_s = kaplan_meier(np.asarray(training["time"], float), np.asarray(training["event"], bool))
        index = np.searchsorted(km_t, grid, side="right") - 1
        km = np.where(index >= 0, km_s[np.clip(index, 0, None)], 1.0)
        km = np.where(grid <= km_t.max(), km, np.nan)
        columns["training cohort (Kaplan-Meier)"] = [float(v) for v in km]
    return columns


def survival_band(survival: Any, risk_se: float | None, z: float = 1.96) -> tuple[Any, Any] | None:
    """The survival interval that the risk score's standard error gives: S^exp(+z SE) to S^exp(-z SE).

    A Cox survival is S0(t)^exp(risk), so an interval of the risk score maps to survival by the same power; None
    when the standard error is unknown.

    Parameters
    ----------
    survival : float or array-like
        Predicted survival probabilities.
    risk_se : float or None
        Standard error of the risk score (:func:`risk_uncertainty`).
    z : float, default 1.96
        Normal quantile of the interval (1.96: 95%).

    Returns
    -------
    band : (lower, upper) or None
        Same shape as ``survival``.
    """
    import numpy as np

    if risk_se is None or not math.isfinite(float(risk_se)):
        return None
    factor = math.exp(z * float(risk_se))
    values = np.clip(np.asarray(survival, float), 0.0, 1.0)
    lower, upper = values ** factor, values ** (1.0 / factor)
    return (float(lower), float(upper)) if np.ndim(lower) == 0 else (lower, upper)


def group_certainty(risk: float, risk_se: float | None, cutoff: float, z: float = 1.96) -> dict[str, Any]:
    """The risk score's 95 % interval and whether it spans the group cut-off.

    Why: a score whose interval reaches across the cut-off could belong to either group with the cohort's
    uncertainty about the coefficients, so its group must not be printed as a firm label.

    Parameters
    ----------
    risk : float
        The risk score (log hazard against the average training patient).
    risk_se : float or None
        Its standard error (:func:`risk_uncertainty`); None when the bundle stores no covariance.
    cutoff : float
        The training cut-off between the low- and the high-risk group.
    z : float, default 1.96
        Normal quantile of the interval.

    Returns
    -------
    certainty : dict
        ``risk_ci95`` ([lower, upper], None without an SE) and ``borderline`` (|risk - cut-off| < z SE; None
        without an SE).
    """
    if risk_se is None or not math.isfinite(float(risk_se)):
        return {"risk_ci95": None, "borderline": None}
    half = z * float(risk_se)
    return {"risk_ci95": [float(risk) - half, float(risk) + half], "borderline": bool(abs(risk - cutoff) < half)}


def imputation_effect(nomogram: Any, factors: Mapping[str, float], covariate: str, value_range: Sequence[float],
                      cutoff: float, months: Sequence[float] = REPORT_MONTHS) -> dict[str, Any]:
    """The prediction with a filled-in covariate set to each end of its training range instead of the fill.

    Why: a missing EBV DNA takes the training median, but the patient's own value may lie anywhere, and the
    range of risk it could give (and whether the group changes within it) tells a clinician whether the missing
    value must be measured before the result is used. The risk is linear in the covariate and survival monotone
    in the risk, so the two ends bound every value between them.

    Parameters
    ----------
    nomogram : Nomogram
        The model that made the prediction.
    factors : mapping
        The patient's encoded factors, with the fill in ``covariate``.
    covariate : str
        The filled covariate (e.g. ``log10_ebv_dna``).
    value_range : (low, high)
        The training cohort's 10th and 90th percentile of the covariate (measured values).
    cutoff : float
        The risk-group cut-off.
    months : sequence of float, default REPORT_MONTHS

    Returns
    -------
    effect : dict
        ``filled_with`` (the fill), ``value_range``, ``risk_range`` [min, max], ``survival_range`` {month: [min,
        max]} (months the model knows), ``risk_groups`` (the groups met across the range, in order low, high) and
        ``group_determined`` (one group throughout).
    """
    import numpy as np

    ends = [{**factors, covariate: float(v)} for v in value_range]
    risks = [float(nomogram.risk(end)[0]) for end in ends]
    survival = np.vstack([nomogram.survival(end, months)[0] for end in ends])
    from NPCPrognosisLib.survival.risk_groups import assign_groups

    point = float(nomogram.risk(dict(factors))[0])
    groups = sorted(set(assign_groups([*risks, point], cutoff).tolist()), key=["low", "high"].index)
    return {"filled_with": float(factors[covariate]), "value_range": [float(v) for v in value_range],
            "risk_range": [min(risks), max(risks)],
            "survival_range": {f"{m}": [float(survival[:, k].min()), float(survival[:, k].max())]
                               for k, m in enumerate(months) if np.all(np.isfinite(survival[:, k]))},
            "risk_groups": groups, "group_determined": len(groups) == 1}
