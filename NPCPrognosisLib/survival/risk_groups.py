"""High/low risk groups from a continuous risk score.

Nomogram papers split patients at the cut-off that maximises the log-rank statistic on the training cohort
and then apply that fixed cut-off to validation cohorts. Scanning every candidate with sksurv's
``compare_survival`` costs milliseconds each (seconds per scan, minutes inside a bootstrap), so the scan
evaluates the two-group log-rank statistic for all candidates at once from risk-set counts; the winning
cut-off's statistic is then recomputed with ``compare_survival`` so the reported number comes from the
reference implementation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.survival.checks import check_survival_arrays

#: Risks closer than this are one value (sksurv's ``concordance_index_censored`` counts them as tied).
TIED_RISK_TOL = 1e-8


def _logrank_all_cutoffs(order_risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Log-rank chi2 for high = the last m patients in risk order, for every m = 1..n-1 (index m-1)."""
    ev_times = np.unique(time[event])
    t = time[order_risk]
    e = event[order_risk]
    at_risk = (t[:, None] >= ev_times[None, :]).astype(np.int32)  # patients x event times
    dies = (e[:, None] & (t[:, None] == ev_times[None, :])).astype(np.int32)
    n_k = at_risk.sum(axis=0).astype(float)
    d_k = dies.sum(axis=0).astype(float)
    # Suffix sums over risk order: row m holds the counts of the patients ranked m..n-1 (the high group).
    n1 = np.cumsum(at_risk[::-1], axis=0)[::-1][1:].astype(float)
    d1 = np.cumsum(dies[::-1], axis=0)[::-1][1:].astype(float)
    frac = n1 / n_k
    o_minus_e = (d1 - d_k * frac).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(n_k > 1, (n_k - d_k) / np.maximum(n_k - 1, 1), 0.0)
        var = (d_k * frac * (1 - frac) * corr).sum(axis=1)
        chi2 = np.where(var > 0, o_minus_e**2 / var, 0.0)
    return chi2


def max_logrank_cutoff(risk: Any, time: Any, event: Any, min_share: float = 0.10) -> dict:
    """Maximally selected log-rank cut-off: {"cutoff", "chi2", "n_high", "n_low", "min_share"}.

    Candidates are midpoints between consecutive sorted unique risk values, high = risk > cutoff, and both
    groups must hold at least `min_share` of the patients (small extreme groups give unstable, optimistic
    splits). The chi2 is the naive statistic at the chosen cut-off: its p-value ignores the search and must
    not be reported as a test.
    """
    t, e = check_survival_arrays(time, event)
    r = np.asarray(risk, dtype=float).reshape(-1)
    if r.shape[0] != t.shape[0]:
        raise InputError(
            f"risk has {r.shape[0]} values for {t.shape[0]} patients", fix="one score per patient"
        )
    if not np.all(np.isfinite(r)):
        raise InputError(f"non-finite risk in row {np.flatnonzero(~np.isfinite(r))[0]}", column="risk")
    if not (0.0 <= float(min_share) < 0.5):
        raise InputError(f"min_share must be in [0, 0.5), got {min_share}", fix="use e.g. 0.10")
    if not e.any():
        raise InputError(
            "no events: no cut-off separates survival", column="event", fix="check the event coding"
        )
    n = len(r)
    order = np.argsort(r, kind="mergesort")
    rs = r[order]
    # A split after position m-1 (m patients low) is a valid cut only where the risk value changes by more than
    # rounding: patients with the same factors get linear predictors a few ulps apart from the BLAS, and they
    # must share a group (the same tolerance as Harrell's C counts ties with); the midpoint of such a gap could
    # also round onto the upper value and leave the scanned split unmade.
    m = np.arange(1, n)
    valid = (rs[1:] - rs[:-1]) > TIED_RISK_TOL
    need = max(1, math.ceil(float(min_share) * n - 1e-9))
    valid &= (m >= need) & (n - m >= need)
    if not valid.any():
        raise InputError(
            f"no cut-off leaves both groups with >= {min_share:.0%} of {n} patients "
            f"({len(np.unique(r))} distinct risk values)",
            column="risk",
            fix="lower min_share or check that the risk score varies between patients",
        )
    chi2_all = _logrank_all_cutoffs(order, t, e)
    chi2_all = np.where(valid, chi2_all, -np.inf)
    best = int(np.argmax(chi2_all))
    cutoff = float((rs[best] + rs[best + 1]) / 2.0)

    from sksurv.compare import compare_survival
    from sksurv.util import Surv

    high = r > cutoff
    chi2 = float(compare_survival(Surv.from_arrays(event=e, time=t), high.astype(int))[0])
    return {
        "cutoff": cutoff,
        "chi2": chi2,
        "n_high": int(high.sum()),
        "n_low": int((~high).sum()),
        "min_share": float(min_share),
    }


def training_cutoff(risk: Any, time: Any, event: Any, min_share: float = 0.10) -> dict:
    """The risk-group cut-off a model stores: :func:`max_logrank_cutoff` on its training risks, plus each group's
    median risk (the typical patients whose survival curves are shown beside a new patient's).

    A model without weight (every block of a stacked model dropped, so every patient has the same risk) has no
    cut-off to learn: all patients are in the low-risk group, and the record says so (``no_groups``).

    Parameters
    ----------
    risk, time, event : array-like
        Training risks (linear predictors) and outcomes.
    min_share : float, default 0.10
        Smallest share of patients either group may hold.

    Returns
    -------
    block : dict
        ``cutoff``, ``chi2``, ``n_high``, ``n_low``, ``min_share``, ``group_median_risk`` (``low``, ``high``)
        and, for a constant risk, ``no_groups``.
    """
    r = np.asarray(risk, dtype=float).reshape(-1)
    if r.size and np.all(np.isfinite(r)) and np.ptp(r) == 0:
        value = float(r[0])
        return {"cutoff": value, "chi2": 0.0, "n_high": 0, "n_low": int(r.size), "min_share": float(min_share),
                "group_median_risk": {"low": value, "high": value},
                "no_groups": "every training patient has the same risk: the model carries no weight"}
    block = max_logrank_cutoff(r, time, event, min_share=min_share)
    block["group_median_risk"] = {"low": float(np.median(r[r <= block["cutoff"]])),
                                  "high": float(np.median(r[r > block["cutoff"]]))}
    return block


def assign_groups(risk: Any, cutoff: float) -> np.ndarray:
    """'high' where risk > cutoff else 'low' (the cut-off itself belongs to the low group)."""
    r = np.asarray(risk, dtype=float).reshape(-1)
    if not np.all(np.isfinite(r)):
        raise InputError(f"non-finite risk in row {np.flatnonzero(~np.isfinite(r))[0]}", column="risk")
    return np.where(r > float(cutoff), "high", "low")
