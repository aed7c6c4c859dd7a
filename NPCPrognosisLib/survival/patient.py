"""A patient's risk score uncertainty and survival curves against the cohort's references.

Computed here, in the core, so ``predict`` writes the same numbers into ``prediction.json`` that the Slicer panel
shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def risk_uncertainty(bundle: Any, factors: Mapping[str, float], deep_score_sd: float | None = None) -> dict[str, Any]:
    """Standard error of the patient's risk score from the coefficient covariance (delta method).

    A Cox linear predictor has no intercept, so the SE of x'beta itself grows with the distance of x from zero
    (an LDH of 200 U/L carries the LDH coefficient's uncertainty 200 times) and says nothing useful. What matters
    is the contrast with a typical training patient: Var((x - x_ref)'beta), x_ref = the middle of each factor's
    training range (the bundle stores the ranges). It reflects how well the cohort pinned the coefficients, not
    the contours; the deep score's test-time augmentation SD (when the network gave one) is reported beside it.
    """
    import numpy as np

    nomogram = bundle.nomograms["nomogram"]
    covariance = nomogram.model.covariance
    out: dict[str, Any] = {"risk_se": None, "deep_score_sd": deep_score_sd,
                           "reference": "middle of the training range of each factor"}
    if covariance is not None:
        x = np.array([float(factors[f]) for f in nomogram.factors])
        reference = (np.asarray(nomogram.low, float) + np.asarray(nomogram.high, float)) / 2.0
        d = x - reference
        variance = float(d @ np.asarray(covariance, float) @ d)
        out["risk_se"] = math.sqrt(variance) if variance >= 0 else None
    return out


def survival_curves(bundle: Any, factors: Mapping[str, float], months: Sequence[float] | None = None,
                    ) -> dict[str, list[float]]:
    """Columns for the plot: months, this patient's model survival and the reference curves.

    References: the model's curve at the risk-group cut-off (the boundary between the groups), the training
    cohort's Kaplan-Meier curve, and - when the bundle stores each group's median training risk under
    ``cutoffs.nomogram.group_median_risk`` - the low- and high-risk group curves.
    """
    import numpy as np

    nomogram = bundle.nomograms["nomogram"]
    model = nomogram.model
    if months is None:
        last = float(np.max(model.baseline_times)) if len(model.baseline_times) else 72.0
        horizon = float(max(72.0, min(120.0, last)))
        months = np.linspace(0.0, horizon, 61)
    grid = np.asarray(months, float)

    def at_risk(risk: float) -> list[float]:
        return [float(v) for v in nomogram.survival_for_risk(risk, grid)]

    columns: dict[str, list[float]] = {"months": [float(m) for m in grid]}
    columns["this patient"] = [float(v) for v in nomogram.survival(dict(factors), grid)[0]]
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
