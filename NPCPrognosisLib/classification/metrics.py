"""Metrics of a binary prediction: AUC with DeLong's CI and test, threshold metrics, Brier score, calibration.

DeLong's method (DeLong et al., Biometrics 1988) gives the AUC's variance from the placement values of each
case and control, and the covariance of two AUCs measured on the same patients, so two models are compared on
the same held-out cohort without a bootstrap. The computation follows Sun & Xu's (IEEE SPL 2014) mid-rank form.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

from NPCPrognosisLib.errors import InputError

_Z975 = 1.959963984540054


def _check(y: Any, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int)
    scores = np.atleast_2d(np.asarray(scores, float))
    if scores.shape[1] != len(y):
        raise InputError(f"{scores.shape[1]} predictions for {len(y)} patients", fix="one prediction per patient")
    if not set(np.unique(y).tolist()) == {0, 1}:
        raise InputError("AUC needs patients with both outcomes (0 and 1)", fix="evaluate on a cohort with both")
    if not np.all(np.isfinite(scores)):
        raise InputError("non-finite predicted probability", fix="check the model inputs")
    return y, scores


def _placements(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and the structural components V10 (cases) and V01 (controls) of each row of ``scores``."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    aucs, v10, v01 = [], [], []
    for p, q in zip(pos, neg):
        tx, ty, tz = rankdata(p), rankdata(q), rankdata(np.r_[p, q])
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)
        v01.append(1.0 - (tz[m:] - ty) / m)
    return np.asarray(aucs), np.asarray(v10), np.asarray(v01)


def _delong_cov(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.cov(v10)) / v10.shape[1] + np.atleast_2d(np.cov(v01)) / v01.shape[1]


#: Below this many patients in the scarcer class, an AUC's interval is the score interval
#: (:func:`auc_score_interval`), not DeLong's.
SMALL_CLASS = 10


def scarcer_class(y: Any) -> int:
    """How many patients the scarcer outcome of 0/1 labels ``y`` has: what an AUC's precision rests on."""
    positives = int(np.sum(np.asarray(y).astype(int)))
    return min(positives, len(y) - positives)


def few_in_a_class(y: Any) -> bool:
    """Whether one outcome has fewer than :data:`SMALL_CLASS` patients: the one rule for when an AUC's interval
    (:func:`delong_auc`), a DeLong comparison (:func:`delong_test`) and an evaluation's warning
    (:func:`NPCPrognosisLib.pipeline.binary.few_patients_warnings`) say that they rest on a few patients."""
    return scarcer_class(y) < SMALL_CLASS


def delong_auc(y: Any, prob: Any) -> dict[str, Any]:
    """AUC with its DeLong standard error and 95% CI (clipped to [0, 1]); with fewer than :data:`SMALL_CLASS`
    patients in either class, or a DeLong SE of 0, the CI is the score interval (:func:`auc_score_interval`).

    Why: DeLong's variance is estimated from each case's and each control's placement, so with 3 cases it rests
    on three numbers, and when the cases rank above every control it is 0, giving an interval of 1.000-1.000.
    Simulated (binormal, true AUC 0.90, 1,500 cohorts each): 3 cases and 37 controls, DeLong's interval held the
    true AUC 69 % of the time, the score interval 86 %; 5 and 35: 78 % / 93 %; 10 and 30: 86 % / 96 %.

    Returns
    -------
    result : dict
        ``auc``, ``se`` (DeLong's), ``auc_95ci`` and ``ci_method``.
    """
    y, scores = _check(y, prob)
    auc, v10, v01 = _placements(y, scores)
    se = float(math.sqrt(max(_delong_cov(v10, v01)[0, 0], 0.0)))
    a = float(auc[0])
    m, n = int(y.sum()), int(len(y) - y.sum())
    if few_in_a_class(y) or se == 0:
        return {"auc": a, "se": se, "auc_95ci": auc_score_interval(a, m, n),
                "ci_method": f"score interval (Hanley-McNeil variance at the bound, Newcombe 2006): "
                             f"{scarcer_class(y)} patient(s) in the scarcer class"}
    return {"auc": a, "se": se, "auc_95ci": [max(0.0, a - _Z975 * se), min(1.0, a + _Z975 * se)],
            "ci_method": "DeLong"}


def auc_score_interval(auc: float, cases: int, controls: int) -> list[float]:
    """95% score interval of an AUC: the values theta with (auc - theta)^2 <= z^2 V(theta), V Hanley & McNeil's
    (1982) variance of an AUC of theta with both sample sizes replaced by their mean (Newcombe 2006, Stat Med 25:
    559-573).

    Why: the variance is taken at the candidate value, not at the estimate, so the interval stays inside [0, 1]
    and does not shrink to a point at an AUC of 1 with three cases (:func:`delong_auc`).

    Parameters
    ----------
    auc : float
        The estimate.
    cases, controls : int
        Patients with and without the outcome.

    Returns
    -------
    interval : list of two floats
    """
    from scipy.optimize import brentq

    half = (cases + controls) / 2.0

    def excess(theta: float) -> float:
        variance = theta * (1 - theta) / (cases * controls) * (
            1 + (half - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta)))
        return (auc - theta) ** 2 - _Z975 ** 2 * variance

    inside = min(max(auc, 1e-9), 1.0 - 1e-9)  # where the excess is negative, also for an AUC of 0 or 1
    low = brentq(excess, 0.0, inside) if excess(0.0) > 0 else 0.0
    high = brentq(excess, inside, 1.0) if excess(1.0) > 0 else 1.0
    return [float(low), float(high)]


def delong_test(y: Any, prob_a: Any, prob_b: Any) -> dict[str, Any]:
    """DeLong's test of two correlated AUCs (same patients): difference, its 95% CI and two-sided p; with fewer
    than :data:`SMALL_CLASS` patients of one outcome (:func:`few_in_a_class`) also a ``note`` that p is optimistic.

    Why the note: the variance of the difference is estimated from the scarcer class's few placements, so it is
    too small as often as not. Simulated (two models of equal true AUC, correlated through a shared score, 3,000
    cohorts each), p < 0.05 came out in 6.8 % of cohorts with 3 cases and 17 controls, 6.1 % with 5 and 15, 4.6 %
    with 10 and 10, 4.7 % with 20 and 20.
    """
    y, scores = _check(y, np.vstack([np.asarray(prob_a, float), np.asarray(prob_b, float)]))
    auc, v10, v01 = _placements(y, scores)
    cov = _delong_cov(v10, v01)
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    p = float(2 * norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0)
    result = {"auc_difference": diff, "difference_95ci": [diff - _Z975 * se, diff + _Z975 * se], "p": p}
    if few_in_a_class(y):
        result["note"] = (f"only {scarcer_class(y)} patient(s) in the scarcer class: DeLong's variance rests on "
                          "their placements, so the p value and interval are optimistic")
    return result


def youden_threshold(y: Any, prob: Any) -> float:
    """Probability threshold maximising sensitivity + specificity - 1 (on the data given: the training set)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(y).astype(int), np.asarray(prob, float))
    best = int(np.argmax(tpr - fpr))
    return float(min(thr[best], 1.0))


def threshold_metrics(y: Any, prob: Any, threshold: float) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, PPV and NPV of ``prob >= threshold`` (None where undefined)."""
    y = np.asarray(y).astype(int)
    pred = np.asarray(prob, float) >= threshold
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    fn, tn = int((~pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {"threshold": float(threshold), "accuracy": ratio(tp + tn, len(y)), "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def calibration_binary(y: Any, prob: Any, n_groups: int = 5) -> dict[str, Any]:
    """Brier score, calibration slope and intercept (logistic recalibration), and grouped observed vs predicted.

    The slope is the coefficient of logit(p) in a logistic model of the outcome (1 = perfect, < 1 = predictions
    too extreme); the intercept is calibration-in-the-large, fitted with logit(p) as an offset (0 = perfect).
    """
    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(prob, float), 1e-6, 1 - 1e-6)
    lp = np.log(p / (1 - p))
    intercept_slope = _logistic_fit(np.column_stack([np.ones(len(y)), lp]), y)
    in_the_large = _logistic_fit(np.ones((len(y), 1)), y, offset=lp)
    order = np.argsort(p, kind="mergesort")
    groups = []
    for chunk in np.array_split(order, n_groups):
        if len(chunk):
            groups.append({"n": int(len(chunk)), "predicted": float(p[chunk].mean()),
                           "observed": float(y[chunk].mean())})
    return {"brier": float(np.mean((p - y) ** 2)), "slope": float(intercept_slope[1]),
            "intercept": float(in_the_large[0]), "groups": groups}


def recalibration(y: Any, linear_predictor: Any, *, ranks: bool = True, model: str = "the model",
                  evidence: str = "") -> dict[str, Any]:
    """Intercept and slope that turn a model's linear predictor into a probability, fitted by a logistic regression
    of the outcome on its out-of-fold values (logistic recalibration, Cox 1958; Platt scaling).

    Why: a penalised or ensembled model ranks patients but its raw output is no probability (a strong ridge
    penalty squeezes every patient towards the training prevalence; an ensemble of networks is over- or
    under-confident); out-of-fold values show how the outcome really moves with it. When they do not rank the
    patients (slope <= 0, or ``ranks`` False) there is nothing to calibrate and a negative slope would reverse
    the ranking: the probability is the training prevalence for everyone, and the record says why.

    Parameters
    ----------
    y : array of 0/1
        The outcome of the patients whose out-of-fold values are given.
    linear_predictor : array
        Each patient's out-of-fold output (log-odds scale), on the scale the calibration will be applied to.
    ranks : bool, default True
        Further evidence that the values rank the patients (e.g. a cross-validated AUC above 0.5).
    model, evidence : str
        For the note: what learned nothing (e.g. "the fusion, for this task,") and what showed it besides the slope
        (e.g. "cross-validated AUC 0.480, ").

    Returns
    -------
    calibration : dict
        ``intercept``, ``slope`` (probability = expit(intercept + slope * output)), ``validated``; and a ``note``
        when not validated.
    """
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y).astype(int)
    fit = LogisticRegression(C=1e4).fit(np.asarray(linear_predictor, float)[:, None], y)
    slope = float(fit.coef_[0, 0])
    if slope > 0 and ranks:
        return {"intercept": float(fit.intercept_[0]), "slope": slope, "validated": True}
    prevalence = float(np.mean(y))
    found = f"{evidence}out-of-fold calibration slope {slope:.2f}"
    return {"intercept": float(np.log(prevalence / (1 - prevalence))), "slope": 0.0, "validated": False,
            "evidence": found,
            "note": f"{found}: {model} learned nothing that validates; it predicts the training prevalence"}


def _logistic_fit(X: np.ndarray, y: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """Unpenalised logistic regression by Newton-Raphson (a few columns, so exact and fast)."""
    beta = np.zeros(X.shape[1])
    off = np.zeros(len(y)) if offset is None else offset
    for _ in range(50):
        mu = 1.0 / (1.0 + np.exp(-(X @ beta + off)))
        w = mu * (1 - mu)
        step = np.linalg.lstsq(X.T @ (X * w[:, None]), X.T @ (y - mu), rcond=None)[0]
        beta += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta


def binary_metrics(y: Any, prob: Any, threshold: float) -> dict[str, Any]:
    """Everything ``evaluate`` reports for one model on one cohort."""
    out = delong_auc(y, prob)
    out.update(threshold_metrics(y, prob, threshold))
    calibration = calibration_binary(y, prob)
    out.update(brier=calibration.pop("brier"), calibration=calibration)
    return out
