"""Discrimination, calibration and risk-group metrics as plain functions of arrays.

Every metric delegates to scikit-survival; this module adds what a validation report needs around it:
input checks with actionable errors, the IPCW range rules sksurv enforces by raising (scored follow-up beyond
that of the censoring data), bootstrap confidence intervals, and a single :func:`evaluate_risk` whose output is
JSON-able and degrades to ``None`` plus a warning instead of crashing on a small or degenerate cohort.
Convention throughout: ``risk`` is higher for worse prognosis; times are in the cohort's unit (months).

The censoring-weighted metrics (Uno's C, time-dependent AUC and ROC, Brier score) take the outcomes their
censoring distribution is estimated from (``censoring_time``, ``censoring_event``; sksurv's ``survival_train``)
apart from the scored ones. Pass the scored cohort's own outcomes: the weights undo that cohort's censoring
(Uno et al., Stat Med 2011; Graf et al., Stat Med 1999), and an external cohort followed differently from the
training cohort is misweighted by the training censoring.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.survival.checks import check_survival_arrays
from NPCPrognosisLib.survival.cox import fit_cox
from NPCPrognosisLib.survival.resampled import concordance

#: The risk groups' tests as a reader says them: the words that open their warnings (which name no metrics.json key a
#: clinician would have to decode) and by which a training report recognises and drops them.
LOGRANK_TEXT = "log-rank test of high vs low risk"
HR_TEXT = "hazard ratio of high vs low risk"
#: Why ``hr_high_vs_low`` is None, recorded beside it as ``hr_high_vs_low_not_estimable`` for the cohort page.
HR_ONE_GROUP = "every patient falls in one risk group"
HR_NO_EVENTS = "one risk group has no events"
HR_NO_FINITE = "no finite estimate, see the warnings"
#: The other metrics' words in their warnings, as a reader says them (they named metrics.json keys: "uno_c: ...").
SURVIVAL_TEXT = "predicted survival"
BRIER_TEXT = "integrated Brier score"

_Z975 = 1.959963984540054


def _surv(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=event.astype(bool), time=time.astype(float))


def _risk_array(risk: Any, n: int, name: str = "risk") -> np.ndarray:
    r = np.asarray(risk, dtype=float).reshape(-1)
    if r.shape[0] != n:
        raise InputError(f"{name} has {r.shape[0]} values for {n} patients", fix="pass one score per patient")
    bad = np.flatnonzero(~np.isfinite(r))
    if len(bad):
        raise InputError(f"non-finite {name} in row {bad[0]}", column=name, fix="check the model inputs")
    return r


def _key(t: float) -> str:
    """'36' for 36 or 36.0, so JSON keys read like the time points the user asked for."""
    return f"{float(t):g}"


def _finite_or_none(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def ipcw_horizon(censoring_time: Any) -> float:
    """Largest usable IPCW horizon: just below the last follow-up time of the censoring data.

    The censoring Kaplan-Meier is undefined beyond its last time and may be 0 at it (a censored last patient),
    where the weights are infinite; every IPCW time point and Uno's tau must lie below it.
    """
    return float(np.nextafter(np.max(np.asarray(censoring_time, float)), -np.inf))


def _clip_test_times(time: np.ndarray, horizon: float) -> np.ndarray:
    """Move scored times beyond the censoring data's follow-up to just below it.

    For metrics evaluated at t <= horizon (time-dependent AUC, Brier) a patient with T > horizon is a
    control/survivor whatever its exact time, and the IPCW weight of such a patient is taken at t, not at T;
    clipping therefore changes no metric value but avoids sksurv's "time must be smaller than largest
    observed time" error at the last follow-up time (or when other censoring data are passed).
    """
    return np.minimum(time, horizon)


# ------------------------------------------------------------------------------------------- discrimination
def harrell_c(time: Any, event: Any, risk: Any) -> float:
    """Harrell's concordance index (sksurv ``concordance_index_censored``); 0.5 = chance."""
    from sksurv.metrics import concordance_index_censored

    t, e = check_survival_arrays(time, event)
    r = _risk_array(risk, len(t))
    if not e.any():
        raise InputError("no events: concordance is undefined", column="event", fix="check the event coding")
    return float(concordance_index_censored(e, t, r)[0])


def harrell_c_columns(time: np.ndarray, event: np.ndarray, risks: np.ndarray,
                      tied_tol: float = 1e-8) -> np.ndarray:
    """Harrell's C of every column of ``risks`` at once: the pairs, time ties and risk ties of sksurv's
    ``concordance_index_censored``, vectorised for a whole LASSO path (called once per path and fold instead of
    once per penalty, where sksurv's input checks cost more than the count itself). It holds every comparable
    pair in memory (O(n^2)): meant for folds of a few hundred patients; :func:`harrell_c` counts a whole cohort.

    Parameters
    ----------
    time, event : ndarray
        Outcomes (checked by the caller).
    risks : ndarray, shape (n_samples, n_scores)
        One risk score per column (higher = worse).

    Returns
    -------
    c : ndarray, shape (n_scores,)
        NaN for every column when no pair is comparable.
    """
    t, e = np.asarray(time, float), np.asarray(event, bool)
    r = np.asarray(risks, float).reshape(len(t), -1)
    # i (an event) is comparable with j when j is still at risk after t_i, or censored at t_i
    comparable = e[:, None] & ((t[None, :] > t[:, None]) | ((t[None, :] == t[:, None]) & ~e[None, :]))
    pairs = int(comparable.sum())
    if pairs == 0:
        return np.full(r.shape[1], np.nan)
    i, j = np.nonzero(comparable)
    diff = r[i] - r[j]
    tied = np.abs(diff) <= tied_tol
    return ((diff > 0) & ~tied).sum(axis=0) / pairs + 0.5 * tied.sum(axis=0) / pairs


def uno_c(
    censoring_time: Any, censoring_event: Any, time: Any, event: Any, risk: Any, tau: float | None = None
) -> float:
    """Uno's IPCW concordance (sksurv ``concordance_index_ipcw``) up to ``tau``.

    Parameters
    ----------
    censoring_time, censoring_event : array-like
        The outcomes the censoring distribution is estimated from: the scored cohort's own (module docstring).
    time, event, risk : array-like
        The scored cohort.
    tau : float, optional
        Truncation time; defaults to :func:`ipcw_horizon` and is capped there, beyond which the censoring survival
        estimate is undefined (or zero) and the weights blow up.
    """
    from sksurv.metrics import concordance_index_ipcw

    tt, te = check_survival_arrays(censoring_time, censoring_event, time_name="censoring_time",
                                   event_name="censoring_event")
    t, e = check_survival_arrays(time, event)
    r = _risk_array(risk, len(t))
    horizon = ipcw_horizon(tt)
    tau = horizon if tau is None else min(float(tau), horizon)
    if not (e & (t < tau)).any():
        raise InputError(
            "no test events before tau; Uno's C is undefined",
            column="event",
            fix="use a later tau or more data",
        )
    return float(concordance_index_ipcw(_surv(tt, te), _surv(t, e), r, tau=tau)[0])


def bootstrap_ci(
    stat_fn: Callable[..., float],
    *arrays: Any,
    n_boot: int = 500,
    seed: int = 0,
    alpha: float = 0.05,
    event_index: int | None = 1,
) -> tuple:
    """Percentile bootstrap CI of ``stat_fn(*arrays)``, resampling patients (rows of every array together).

    One statistic of :func:`bootstrap_cis` (the same resamples for the same seed). Returns (nan, nan) when fewer
    than 10 resamples were usable.
    """
    return bootstrap_cis({"statistic": stat_fn}, *arrays, n_boot=n_boot, seed=seed, alpha=alpha,
                         event_index=event_index)["statistic"]


def bootstrap_cis(
    stats: Mapping[str, Callable[..., float]],
    *arrays: Any,
    n_boot: int = 500,
    seed: int = 0,
    alpha: float = 0.05,
    event_index: int | None = 1,
) -> dict[str, tuple]:
    """Percentile bootstrap CIs of several statistics, every one from the same resamples of patients.

    Resampling once for all of a model's metrics keeps their intervals comparable (the same replicate cohorts)
    and draws the C-index's resamples exactly as :func:`bootstrap_ci` does.

    Parameters
    ----------
    stats : mapping of str to callable
        ``name -> stat_fn``; each is called as ``stat_fn(*resampled_arrays)``.
    *arrays : array-like
        One entry per patient each; by the (time, event, ...) convention of this module ``arrays[event_index]``
        is the event indicator and resamples without any event are skipped (``event_index=None`` disables this).
    n_boot, seed, alpha : int, int, float
        Resamples, random seed and the two-sided level.

    Returns
    -------
    cis : dict of str to (float, float)
        Per statistic; a resample where it raises InputError/ValueError or is not finite is skipped for that
        statistic only, and (nan, nan) means fewer than 10 usable resamples.
    """
    if not arrays:
        raise InputError("bootstrap_ci needs at least one array", fix="pass (time, event, risk)")
    arrs = [np.asarray(a) for a in arrays]
    n = arrs[0].shape[0]
    if any(a.shape[0] != n for a in arrs):
        raise InputError("all arrays must have one entry per patient", fix="check the array lengths")
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in stats}
    for _ in range(int(n_boot)):
        idx = rng.integers(0, n, n)
        sample = [a[idx] for a in arrs]
        if event_index is not None and len(sample) > event_index and not np.any(sample[event_index]):
            continue
        for name, stat_fn in stats.items():
            try:
                v = float(stat_fn(*sample))
            except (InputError, ValueError, ZeroDivisionError, FloatingPointError):
                continue
            if math.isfinite(v):
                draws[name].append(v)
    cis = {}
    for name, values in draws.items():
        if len(values) < 10:
            cis[name] = (float("nan"), float("nan"))
            continue
        lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        cis[name] = (float(lo), float(hi))
    return cis


def paired_c_difference(time: Any, event: Any, risk: Any, reference: Any, *, n_boot: int = 1000,
                        seed: int = 0) -> dict[str, Any]:
    """Harrell's C of ``risk`` minus that of ``reference`` on the same patients, with a paired bootstrap.

    Both scores are resampled together (the same patients in every replicate), so the interval reflects the
    difference, not two independent uncertainties.

    Parameters
    ----------
    time, event : array-like
        Follow-up and event indicator.
    risk, reference : array-like
        The two risk scores (higher = worse).
    n_boot : int, default 1000
        Bootstrap replicates (resamples without an event are skipped).

    Returns
    -------
    comparison : dict
        ``difference``, ``ci95`` (percentile) and ``p`` (two-sided, from the share of replicates on either side
        of zero; None with fewer than 10 usable replicates).

    Raises
    ------
    InputError
        With fewer than two patients or no event (no pair of patients to compare).
    """
    t, e = check_survival_arrays(time, event)
    if len(t) < 2 or not e.any():
        raise InputError(f"comparing two models' C needs two patients and an event, not {len(t)} patient(s) with "
                         f"{int(e.sum())} event(s)", column="event", fix="compare the models on a larger cohort")
    a, b = _risk_array(risk, len(t)), _risk_array(reference, len(t), "reference")
    difference = harrell_c(t, e, a) - harrell_c(t, e, b)
    rng = np.random.default_rng(seed)
    draws = []
    unit = np.ones(len(t))
    for _ in range(int(n_boot)):
        idx = rng.integers(0, len(t), len(t))
        if not e[idx].any():
            continue
        try:  # harrell_c's value, without sksurv's input checks on every resample
            draws.append(concordance(t[idx], e[idx], a[idx], unit) - concordance(t[idx], e[idx], b[idx], unit))
        except ValueError:
            continue
    if len(draws) < 10:
        return {"difference": float(difference), "ci95": [None, None], "p": None, "replicates": len(draws)}
    draws_array = np.asarray(draws)
    lo, hi = np.percentile(draws_array, [2.5, 97.5])
    p = min(1.0, 2.0 * min(float((draws_array <= 0).mean()), float((draws_array >= 0).mean())))
    return {"difference": float(difference), "ci95": [float(lo), float(hi)], "p": max(p, 1.0 / len(draws)),
            "replicates": len(draws)}


def td_auc(
    censoring_time: Any, censoring_event: Any, time: Any, event: Any, risk: Any, times: Sequence[float] = (36, 60)
) -> dict:
    """Cumulative/dynamic AUC at each time point (sksurv ``cumulative_dynamic_auc``), keyed by '36', '60'.

    The censoring distribution comes from ``censoring_time``, ``censoring_event`` (the scored cohort's own, module
    docstring). A time point outside the follow-up (at or beyond :func:`ipcw_horizon`, where the IPCW is undefined),
    or without both cases and controls, maps to None rather than raising: a short external cohort simply has
    no 5-year AUC.
    """
    from sksurv.metrics import cumulative_dynamic_auc

    tt, te = check_survival_arrays(censoring_time, censoring_event, time_name="censoring_time",
                                   event_name="censoring_event")
    t, e = check_survival_arrays(time, event)
    r = _risk_array(risk, len(t))
    horizon = ipcw_horizon(tt)
    tc = _clip_test_times(t, horizon)
    out = {}
    for tp in times:
        tp = float(tp)
        ok = tp >= tc.min() and tp < tc.max() and tp < horizon
        has_cases = bool((e & (tc <= tp)).any())
        has_controls = bool((tc > tp).any())
        if not (ok and has_cases and has_controls):
            out[_key(tp)] = None
            continue
        try:
            auc, _ = cumulative_dynamic_auc(_surv(tt, te), _surv(tc, e), r, [tp])
            out[_key(tp)] = _finite_or_none(auc[0])
        except ValueError:
            out[_key(tp)] = None
    return out


def td_roc_curve(censoring_time: Any, censoring_event: Any, time: Any, event: Any, risk: Any,
                 t: float) -> dict | None:
    """The cumulative/dynamic ROC curve at time ``t``: the curve whose area is :func:`td_auc`'s AUC.

    Cases had the event by ``t`` and are weighted by the inverse probability of remaining uncensored (the
    censoring distribution estimated from ``censoring_time``, ``censoring_event``, the scored cohort's own, as
    sksurv's ``cumulative_dynamic_auc`` does with its ``survival_train``); controls are
    still event-free after ``t``. None when ``t`` has no cases or controls, or lies outside the follow-up.

    Returns
    -------
    curve : dict or None
        ``fpr`` and ``tpr`` (from (0, 0) to (1, 1), thresholds falling) and their trapezoid ``auc``.
    """
    from sksurv.nonparametric import CensoringDistributionEstimator

    tt, te = check_survival_arrays(censoring_time, censoring_event, time_name="censoring_time",
                                   event_name="censoring_event")
    tc_raw, e = check_survival_arrays(time, event)
    r = _risk_array(risk, len(tc_raw))
    horizon = ipcw_horizon(tt)
    tc = _clip_test_times(tc_raw, horizon)
    t = float(t)
    cases, controls = e & (tc <= t), tc > t
    if not (t >= tc.min() and t < tc.max() and t < horizon and cases.any() and controls.any()):
        return None
    weights = CensoringDistributionEstimator().fit(_surv(tt, te)).predict_ipcw(_surv(tc, e))
    thresholds = np.unique(r)[::-1]
    w_case = np.where(cases, weights, 0.0)
    tpr = [0.0] + [float(w_case[r >= c].sum() / w_case.sum()) for c in thresholds]
    fpr = [0.0] + [float(controls[r >= c].sum() / controls.sum()) for c in thresholds]
    auc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    return {"t": t, "fpr": fpr, "tpr": tpr, "auc": auc}


# ------------------------------------------------------------------------------------------- survival curves
def kaplan_meier(time: Any, event: Any) -> tuple:
    """Kaplan-Meier estimate (sksurv): (unique observed times, survival just after each time)."""
    from sksurv.nonparametric import kaplan_meier_estimator

    t, e = check_survival_arrays(time, event)
    x, s = kaplan_meier_estimator(e, t)
    return np.asarray(x, dtype=float), np.asarray(s, dtype=float)


def _km_at(time: np.ndarray, event: np.ndarray, t: float) -> tuple:
    """KM survival at t with its log-log 95% CI; None when t lies beyond the group's follow-up.

    A group whose every patient had the event before t has a known survival of 0 at t, not an unknown one:
    the worst-prognosis group of a small cohort often ends that way, and leaving it out would drop exactly the
    group a calibration plot is read for.

    A group without an event by t has survival 1 and a Greenwood variance of 0, so the log-log interval
    collapses to [1, 1], as if ten patients proved that nobody relapses. Its lower bound is then the exact
    (Clopper-Pearson) one for no event among the patients followed to t: 0.025 ** (1 / n), 0.69 for ten.
    """
    from sksurv.nonparametric import kaplan_meier_estimator

    if len(time) == 0:
        return None, None, None
    x, s, ci = kaplan_meier_estimator(event, time, conf_type="log-log")
    if t > time.max():
        return (0.0, None, None) if s[-1] == 0 else (None, None, None)
    i = int(np.searchsorted(x, t, side="right")) - 1
    if i < 0 or s[i] == 1.0:
        followed = int(np.sum(time >= t))
        return 1.0, float(0.025 ** (1.0 / followed)), 1.0
    return float(s[i]), _finite_or_none(ci[0][i]), _finite_or_none(ci[1][i])


def _binary_group(group: Any, n: int) -> np.ndarray:
    """Coerce a two-level grouping to 0/1: 'high'/'low' strings, booleans or 0/1 numbers."""
    g = np.asarray(group)
    if g.shape[0] != n:
        raise InputError(f"group has {g.shape[0]} values for {n} patients", fix="one label per patient")
    if g.dtype.kind in "USO":
        labels = set(np.unique(g.astype(str)).tolist())
        if not labels <= {"high", "low"}:
            raise InputError(f"group labels must be 'high'/'low', got {sorted(labels)}", column="group")
        return (g.astype(str) == "high").astype(int)
    gf = g.astype(float)
    if not np.all(np.isin(gf, (0.0, 1.0))):
        raise InputError("group must be 0/1 (1 = high risk)", column="group", fix="recode the groups")
    return gf.astype(int)


def logrank(time: Any, event: Any, group: Any) -> tuple:
    """Log-rank test (sksurv ``compare_survival``): (chi2, p)."""
    from sksurv.compare import compare_survival

    t, e = check_survival_arrays(time, event)
    g = np.asarray(group)
    if g.shape[0] != len(t):
        raise InputError(f"group has {g.shape[0]} values for {len(t)} patients", fix="one label per patient")
    if len(np.unique(g)) < 2:
        raise InputError("log-rank test needs at least two groups", column="group", fix="check the cut-off")
    if not e.any():
        raise InputError(
            "no events: log-rank test is undefined", column="event", fix="check the event coding"
        )
    try:
        chi2, p = compare_survival(_surv(t, e), g)[:2]
    except np.linalg.LinAlgError:
        # a group whose patients are all censored before the first event is at risk at no event time: it adds a
        # zero row to the variance matrix, and the test among the groups as given is undefined
        first = t[e].min()
        empty = [str(label) for label in np.unique(g) if not (t[g == label] >= first).any()]
        raise InputError(f"log-rank test is undefined: group(s) {empty or 'of these patients'} have no patient at risk "
                         "at any event time", column="group", fix="too few patients in this comparison") from None
    return float(chi2), float(p)


def hazard_ratio(time: Any, event: Any, group: Any) -> tuple:
    """Hazard ratio of group 1 ('high') vs 0 ('low') with its Wald 95% CI, from a univariable Cox fit.

    When the groups' event times do not overlap (each event of one group happens while no patient of the
    other is at risk) the likelihood has no maximum and the fit stops at an arbitrary huge value: that is
    refused rather than reported as a number (the log-rank test and the curves still describe such groups).
    """
    t, e = check_survival_arrays(time, event)
    g = _binary_group(group, len(t))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        model = fit_cox(g.reshape(-1, 1).astype(float), t, e, ["group"], ties="efron")
    row = model.summary()[0]
    hr, lo, hi = float(row["hr"]), float(row["hr_95ci"][0]), float(row["hr_95ci"][1])
    separated = any(issubclass(w.category, RuntimeWarning) and "Cox" in str(w.message) for w in caught)
    if separated or not all(np.isfinite([hr, lo, hi])) or lo <= 0.0:
        raise InputError(
            "the hazard ratio is infinite or zero: the two groups' event times do not overlap (monotone "
            "likelihood), so no finite estimate exists",
            column="group", fix="report the log-rank test and the Kaplan-Meier curves of the groups instead",
        )
    return hr, lo, hi


# ------------------------------------------------------------------------------------------- calibration
def calibration(predicted_survival: Any, time: Any, event: Any, t: float, n_groups: int = 4) -> list:
    """Predicted vs observed survival at `t` within quantile groups of predicted survival.

    Groups are equal-sized slices of the patients sorted by prediction (robust to tied predictions, unlike
    quantile cut points). Observed = Kaplan-Meier at t with log-log 95% CI; None when a group's follow-up
    ends before t.
    """
    ts, es = check_survival_arrays(time, event)
    p = _risk_array(predicted_survival, len(ts), name="predicted_survival")
    if n_groups < 1:
        raise InputError("n_groups must be >= 1", fix="use 3-5 groups")
    n_groups = int(min(n_groups, len(ts)))
    order = np.argsort(p, kind="mergesort")
    rows = []
    for k, idx in enumerate(np.array_split(order, n_groups)):
        obs, lo, hi = _km_at(ts[idx], es[idx], float(t))
        rows.append(
            {
                "group": k + 1,
                "n": len(idx),
                "events": int(es[idx].sum()),
                "predicted": float(p[idx].mean()),
                "predicted_range": [float(p[idx].min()), float(p[idx].max())],
                "observed": obs,
                "observed_95ci": [lo, hi],
            }
        )
    return rows


def integrated_brier(
    censoring_time: Any, censoring_event: Any, time: Any, event: Any, survival_matrix: Any, times: Sequence[float]
) -> float | None:
    """Integrated Brier score (sksurv) over `times`; None when fewer than two usable time points remain.

    The censoring distribution (Graf et al. 1999) comes from ``censoring_time``, ``censoring_event``: the scored
    cohort's own. Time points must lie inside the follow-up and below :func:`ipcw_horizon`; the caller's matrix
    columns for other time points are dropped rather than failing.
    """
    from sksurv.metrics import integrated_brier_score

    tt, te = check_survival_arrays(censoring_time, censoring_event, time_name="censoring_time",
                                   event_name="censoring_event")
    t, e = check_survival_arrays(time, event)
    S = np.asarray(survival_matrix, dtype=float)
    grid = np.asarray(times, dtype=float).reshape(-1)
    if S.ndim != 2 or S.shape != (len(t), len(grid)):
        raise InputError(
            f"survival matrix must have shape (patients, times) = ({len(t)}, {len(grid)}), got {S.shape}",
            fix="evaluate the survival function at exactly the given times",
        )
    horizon = ipcw_horizon(tt)
    tc = _clip_test_times(t, horizon)
    keep = (grid >= tc.min()) & (grid < tc.max()) & (grid < horizon)
    keep_idx = np.flatnonzero(keep)
    grid_k = grid[keep_idx]
    grid_k, uniq = np.unique(grid_k, return_index=True)
    keep_idx = keep_idx[uniq]
    if len(grid_k) < 2 or not np.all(np.isfinite(S[:, keep_idx])):
        return None
    try:
        return _finite_or_none(integrated_brier_score(_surv(tt, te), _surv(tc, e), S[:, keep_idx], grid_k))
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------- one-stop report
def evaluate_risk(
    risk: Any,
    time: Any,
    event: Any,
    censoring_time: Any,
    censoring_event: Any,
    *,
    cutoff: float,
    survival_at: Callable[[np.ndarray], np.ndarray] | None = None,
    n_boot: int = 500,
    seed: int = 0,
    times: Sequence[float] = (36, 60),
    ipcw_intervals: bool = False,
) -> dict:
    """All validation numbers for one risk score on one cohort, JSON-able, with None + warnings on failure.

    Parameters
    ----------
    risk, time, event : array-like
        The scored cohort.
    censoring_time, censoring_event : array-like
        What the IPCW metrics estimate the censoring distribution from: pass ``time``, ``event`` (module
        docstring). Every IPCW number is taken below :func:`ipcw_horizon` of these.
    cutoff : float
        high risk = risk > cutoff (the cut-off fixed on the training cohort).
    survival_at : callable, optional
        ``survival_at(times)`` returns the (patients, len(times)) predicted-survival matrix of this cohort; when
        given, calibration at ``times`` and the integrated Brier score (over a grid between the 10th and 90th
        percentile of the follow-up) are added.
    n_boot, seed : int
        Bootstrap resamples for the CI of Harrell's C.
    times : sequence of float
        Months of the td-AUC and the calibration.
    ipcw_intervals : bool, default False
        Also bootstrap Uno's C, the td-AUCs and the integrated Brier score, from the C-index's resamples
        (:func:`bootstrap_cis`; the censoring weights stay those of the whole cohort, looked up once:
        :mod:`~NPCPrognosisLib.survival.resampled`). ``evaluate`` asks for them (1000 resamples of 200 patients:
        about 1 s per model, 10 times faster than calling the metric functions, ``bench/bench_evaluate.py``), the
        training report, which keeps only the C-index's interval, does not.

    Returns
    -------
    metrics : dict
        Besides the metrics, ``uno_c_tau`` (Uno's truncation time) and ``ipcw_horizon_months`` (no IPCW metric
        looks beyond it), so that two cohorts' numbers are compared over the same months.
    """
    t, e = check_survival_arrays(time, event)
    tt, te = check_survival_arrays(censoring_time, censoring_event, time_name="censoring_time",
                                   event_name="censoring_event")
    r = _risk_array(risk, len(t))
    cutoff = float(cutoff)
    horizon = ipcw_horizon(tt)
    warns: list[str] = []
    out = {
        "n": len(t),
        "events": int(e.sum()),
        "cutoff": cutoff,
        "c_index": None,
        "c_index_95ci": [None, None],
        "uno_c": None,
        "uno_c_95ci": [None, None],
        "uno_c_tau": None,
        "ipcw_horizon_months": horizon,
        "td_auc": {_key(tp): None for tp in times},
        "td_auc_95ci": {_key(tp): [None, None] for tp in times},
        "logrank_chi2": None,
        "logrank_p": None,
        "hr_high_vs_low": None,
        "hr_high_vs_low_95ci": [None, None],
        "n_high": int((r > cutoff).sum()),
        "n_low": int((r <= cutoff).sum()),
    }

    def attempt(label: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (InputError, ValueError, ZeroDivisionError, OverflowError, np.linalg.LinAlgError) as exc:
            warns.append(f"{label}: {exc}")
            return None

    brier_grid, brier_matrix = None, None
    if survival_at is not None:
        out.update(_calibration_block(survival_at, t, e, times, attempt, warns))
        grid = np.unique(np.percentile(t, np.linspace(10, 90, 17)))
        brier_grid = grid[grid < min(t.max(), horizon)]
        if len(brier_grid) >= 2:
            brier_matrix = attempt(SURVIVAL_TEXT, lambda: np.asarray(survival_at(brier_grid), dtype=float))
        ibs = None if brier_matrix is None else attempt(
            BRIER_TEXT, lambda: integrated_brier(tt, te, t, e, brier_matrix, brier_grid))
        if ibs is None:
            warns.append(f"{BRIER_TEXT}: not computable on this follow-up")
            brier_matrix = None
        out["integrated_brier"] = ibs
        out["integrated_brier_95ci"] = [None, None]
        # the score depends on the months it is integrated over (the 10th to 90th percentile of this cohort's
        # follow-up): two cohorts' scores compare only over the same months
        out["integrated_brier_months"] = [float(brier_grid[0]), float(brier_grid[-1])] if ibs is not None else None

    if not e.any():
        warns.append("no events in this cohort: discrimination and risk-group statistics are undefined")
        out["warnings"] = warns
        return out
    out["c_index"] = _finite_or_none(attempt("Harrell's C-index", lambda: harrell_c(t, e, r)))
    out["uno_c"] = _finite_or_none(attempt("Uno's C-index", lambda: uno_c(tt, te, t, e, r, tau=horizon)))
    out["uno_c_tau"] = horizon if out["uno_c"] is not None else None
    auc = attempt("time-dependent AUC", lambda: td_auc(tt, te, t, e, r, times))
    if auc is not None:
        out["td_auc"] = auc
        for k, v in auc.items():
            if v is None:
                warns.append(f"time-dependent AUC at {k} months: time point outside follow-up or without "
                             "cases/controls")
    cis = attempt("bootstrap confidence intervals", lambda: bootstrap_cis(
        _bootstrap_stats(tt, te, horizon, out, brier_matrix, brier_grid, ipcw_intervals, t, e), t, e, r,
        np.arange(len(t)),
        n_boot=n_boot, seed=seed))
    for name, ci in (cis or {}).items():
        pair = [_finite_or_none(ci[0]), _finite_or_none(ci[1])]
        if name.startswith("td_auc "):
            out["td_auc_95ci"][name.split()[1]] = pair
        else:
            out[f"{name}_95ci"] = pair
    if cis is not None and out["c_index_95ci"][0] is None:
        warns.append("95% CI of the C-index: too few bootstrap resamples with events" if n_boot > 0
                     else "95% CI of the C-index: not computed (no bootstrap resamples were asked for)")
    _risk_group_tests(out, t, e, r, cutoff, attempt, warns)
    out["warnings"] = warns
    return out


def _bootstrap_stats(censoring_time: np.ndarray, censoring_event: np.ndarray, horizon: float, point: Mapping,
                     brier_matrix: np.ndarray | None, brier_grid: np.ndarray | None, ipcw_intervals: bool,
                     time: np.ndarray, event: np.ndarray) -> dict[str, Callable]:
    """The statistics :func:`evaluate_risk` bootstraps, as functions of a resample's (time, event, risk, rows):
    Harrell's C, and with ``ipcw_intervals`` the IPCW metrics that have a point estimate, each over the same
    months as its point estimate (a resample whose follow-up no longer spans them is skipped, not scored over
    other months).

    Each is the value :func:`harrell_c`, :func:`uno_c`, :func:`td_auc` and :func:`integrated_brier` give on the
    resample, computed by :mod:`~NPCPrognosisLib.survival.resampled` from the cohort's censoring weights looked up
    once (``time``, ``event``: the whole scored cohort), bit for bit and about 20 times faster."""
    from NPCPrognosisLib.survival.resampled import ResampledIPCW

    def harrell(t: np.ndarray, e: np.ndarray, r: np.ndarray, rows: np.ndarray) -> float:
        return concordance(t, e, r, np.ones(len(t)))

    stats: dict[str, Callable] = {"c_index": harrell}
    if not ipcw_intervals:
        return stats
    brier_used = point.get("integrated_brier") is not None and brier_matrix is not None
    weights = ResampledIPCW.fit(censoring_time, censoring_event, time, event, horizon,
                                brier_grid if brier_used else None)

    def auc_at(tp: str) -> Callable:
        return lambda t, e, r, rows: weights.td_auc(rows, e, r, float(tp))

    def brier(t: np.ndarray, e: np.ndarray, r: np.ndarray, rows: np.ndarray) -> float:
        if not (t.min() <= brier_grid[0] and brier_grid[-1] < t.max()):
            return float("nan")
        return weights.integrated_brier(rows, e, brier_matrix[rows])

    if point["uno_c"] is not None:
        stats["uno_c"] = lambda t, e, r, rows: weights.uno_c(rows, t, e, r)
    stats.update({f"td_auc {tp}": auc_at(tp) for tp, v in point["td_auc"].items() if v is not None})
    if brier_used:
        stats["integrated_brier"] = brier
    return stats


def _none_to_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _calibration_block(survival_at: Callable, t: np.ndarray, e: np.ndarray, times: Sequence[float],
                       attempt: Callable, warns: list[str]) -> dict[str, Any]:
    """Calibration at each of ``times`` (:func:`calibration`), for :func:`evaluate_risk`."""
    tp = np.asarray(times, dtype=float)
    S = attempt(SURVIVAL_TEXT, lambda: np.asarray(survival_at(tp), dtype=float))
    if S is None:
        return {}
    if S.shape != (len(t), len(tp)):
        warns.append(f"{SURVIVAL_TEXT}: shape {S.shape}, expected {(len(t), len(tp))}")
        return {}
    # a non-finite predicted survival (after the training follow-up, or an overflowing linear predictor) costs
    # that time's calibration, not the other metrics
    block = {}
    for j, x in enumerate(tp):
        if not np.isfinite(S[:, j]).all():
            warns.append(f"calibration at {_key(x)} months: no predicted survival for "
                         f"{int((~np.isfinite(S[:, j])).sum())} patient(s) (after the training follow-up?)")
            continue
        block[_key(x)] = calibration(S[:, j], t, e, float(x))
    for k, rows in block.items():
        if all(row["observed"] is None for row in rows):
            warns.append(f"calibration at {k} months: follow-up too short for an observed survival")
    return {"calibration": block}


def _risk_group_tests(out: dict, t: np.ndarray, e: np.ndarray, r: np.ndarray, cutoff: float, attempt: Callable,
                      warns: list[str]) -> None:
    """Log-rank test and hazard ratio of the high vs low risk group, into ``out`` (for :func:`evaluate_risk`)."""
    high = (r > cutoff).astype(int)
    if out["n_high"] == 0 or out["n_low"] == 0:
        warns.append(
            f"all patients fall in the {'high' if out['n_low'] == 0 else 'low'}-risk group at cut-off "
            f"{cutoff:g}: log-rank and hazard ratio are undefined"
        )
        out["hr_high_vs_low_not_estimable"] = HR_ONE_GROUP
        return
    lr = attempt(LOGRANK_TEXT, lambda: logrank(t, e, high))
    if lr is not None:
        out["logrank_chi2"], out["logrank_p"] = _finite_or_none(lr[0]), _finite_or_none(lr[1])
    if not (e[high == 1].any() and e[high == 0].any()):
        warns.append(f"{HR_TEXT}: not estimable, {HR_NO_EVENTS} (the ratio would be infinite or zero)")
        out["hr_high_vs_low_not_estimable"] = HR_NO_EVENTS
        return
    hr = attempt(HR_TEXT, lambda: hazard_ratio(t, e, high))
    if hr is not None:
        out["hr_high_vs_low"] = _finite_or_none(hr[0])
        out["hr_high_vs_low_95ci"] = [_finite_or_none(hr[1]), _finite_or_none(hr[2])]
    if out["hr_high_vs_low"] is None:
        out["hr_high_vs_low_not_estimable"] = HR_NO_FINITE
