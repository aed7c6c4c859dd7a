"""Held-out checks of the chemotherapy-benefit model and the subgroup analyses a trial report shows.

:func:`c_for_benefit` (van Klaveren et al., J Clin Epidemiol 2018) and :func:`benefit_calibration` check whether
the predicted benefit of :mod:`NPCPrognosisLib.survival.benefit` separates patients who gained from those who did
not; :func:`evaluate_benefit` gathers them with the subgroup forest and the T1-2N1 arms for ``evaluate``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.clinical import copies_text
from NPCPrognosisLib.survival.benefit import (
    ARM_NAME,
    CCND_THRESHOLD,
    CONFOUNDERS,
    REFERENCE_ARM,
    TREATED_ARM,
    arm_counts,
    assign_arms,
    iptw_weights,
    predicted_benefit,
    weighted_km,
)
from NPCPrognosisLib.survival.treatment_effect import fit_interaction


def _status_at(time: np.ndarray, event: np.ndarray, horizon: float) -> np.ndarray:
    """1 = event by the horizon, 0 = event-free at the horizon (followed up to it or beyond, as whole-month
    follow-up often ends exactly there), -1 = censored before it (unknown)."""
    return np.where(event & (time <= horizon), 1, np.where(time >= horizon, 0, -1))


def _censoring_weights(time: np.ndarray, event: np.ndarray, horizon: float) -> np.ndarray:
    """Inverse probability of a known outcome at ``horizon``: 1 / G(min(T, horizon)-) for every patient whose
    status is known (:func:`_status_at`), 0 for those censored before it.

    G is the Kaplan-Meier of the censoring distribution of the patients given (sksurv's
    ``CensoringDistributionEstimator``, as the IPCW metrics of :mod:`~NPCPrognosisLib.survival.metrics` fit it),
    taken just before min(T, horizon): an event at T is seen when censoring comes at T or later, and an
    event-free patient counts as known when followed up to the horizon or exactly to it. Never infinite: the
    patient itself is still in the censoring risk set just before its own time.
    """
    from sksurv.nonparametric import CensoringDistributionEstimator

    from NPCPrognosisLib.survival.metrics import _surv

    known = _status_at(time, event, horizon) >= 0
    weight = np.zeros(len(time))
    if known.any():
        cens = CensoringDistributionEstimator().fit(_surv(time, event))
        weight[known] = 1.0 / cens.predict_proba(np.nextafter(np.minimum(time[known], horizon), -np.inf))
    return weight


def c_for_benefit(benefit: Any, arm: Any, time: Any, event: Any, horizon: float = 60.0,
                  treated: str = TREATED_ARM, control: str = REFERENCE_ARM, *, n_boot: int = 0,
                  seed: int = 0) -> dict[str, Any]:
    """C-for-benefit (van Klaveren et al. 2018): do pairs with larger predicted benefit gain more?

    Treated and control patients (outcome known at ``horizon``) are each sorted by predicted benefit and matched
    1:1 by rank (the larger arm subsampled evenly); a pair's observed benefit is control outcome minus treated
    outcome (-1, 0, 1), its predicted benefit the mean of the two; the C is the concordance of the two over
    pairs of pairs with different observed benefit. 0.5 means predicted benefit tells nothing.

    Patients censored before the horizon have no known outcome and are left out; how many, and how many the
    matching left unpaired, is reported beside the C so that a reader can judge what it rests on. Leaving them
    out selects: a patient with an early event stays, an event-free one lost to follow-up early leaves, so the
    kept patients have more events than the cohort. The kept patients are therefore weighted by the inverse
    probability of a known outcome, 1 / G(min(T, horizon)-) with G the Kaplan-Meier of the censoring of the
    patients given (:func:`_censoring_weights`; censoring assumed independent of outcome and covariates). Rank
    matching is unchanged; a pair carries the product of its two patients' weights, and a pair of pairs the
    product of the two pairs' weights, i.e. of its four patients' (all four outcomes are seen with probability
    G_1 G_2 G_3 G_4 under independent censoring, so these Horvitz-Thompson weights make the weighted
    concordant, discordant and tied counts estimate those of the cohort without censoring, of which the C is the
    ratio; approximately, since the pairs are matched among the kept patients, not among all). Without censoring
    before the horizon every weight is 1 and the C is the unweighted one.

    Measured (``bench/bench_cfb_censoring.py``; randomised arms, hazard exp(0.7 x + arm (-0.4 - 0.6 x)), x ~ N(0, 1),
    the true benefit at 60 months as the predictor, censoring uniform and independent; truth = the C of the
    same patients without censoring; 1000 cohorts): 200 patients, 47% censored before 60 months: dropped
    -0.0149 (SE 0.0016), weighted +0.0008 (0.0017); 31% censored: -0.0071 (0.0012) vs -0.0009 (0.0012); 600
    patients, 46%: -0.0146 (0.0009) vs -0.0006 (0.0010). The weighting removes the bias; its spread is a little
    larger, so the root-mean-square error barely moves (0.0527 vs 0.0523 at 200 patients).

    Parameters
    ----------
    benefit, arm, time, event : array-like
        Predicted benefit, treatment arm and outcome per patient.
    horizon : float
        Months at which a patient's outcome counts.
    treated, control : str
        The two arms compared; other arms are not used.
    n_boot, seed : int
        Bootstrap resamples of the patients (the whole matching redone in each) for the percentile ``ci95``; 0
        gives none.

    Returns
    -------
    result : dict
        ``c_for_benefit`` (censoring-weighted; None with fewer than 10 pairs, with a ``reason``),
        ``c_for_benefit_unweighted`` (the complete-case C, for comparison), ``ci95`` (None without resamples or
        with fewer than 10 usable ones; the weights stay the whole cohort's), ``pairs``, ``patients_used`` (twice
        the pairs), ``censored_before_horizon`` (of the two arms), ``unmatched`` (known outcome, but the larger
        arm's surplus) and ``censoring_weights`` (how the kept patients were weighted).
    """
    from NPCPrognosisLib.survival.metrics import bootstrap_ci

    benefit, arm = np.asarray(benefit, float), np.asarray(arm).astype(str)
    time, event = np.asarray(time, float), np.asarray(event, bool)
    status = _status_at(time, event, horizon)
    in_arms = (arm == treated) | (arm == control)
    known = in_arms & (status >= 0)
    m = int(min(np.sum(known & (arm == treated)), np.sum(known & (arm == control))))
    out = {"horizon_months": float(horizon), "pairs": m, "patients_used": 2 * m,
           "censored_before_horizon": int((in_arms & (status < 0)).sum()), "unmatched": int(known.sum()) - 2 * m,
           "censoring_weights": CFB_CENSORING_WEIGHTS, "ci95": None}
    if m < MIN_BENEFIT_PAIRS:
        return {**out, "c_for_benefit": None, "c_for_benefit_unweighted": None,
                "reason": f"fewer than {MIN_BENEFIT_PAIRS} matched pairs"}
    weight = _censoring_weights(time, event, horizon)
    value = _matched_concordance(benefit, arm, status, treated, control, weight)
    if n_boot > 0:
        lo, hi = bootstrap_ci(lambda b, a, st, w: _matched_concordance(b, a, st, treated, control, w), benefit, arm,
                              status, weight, n_boot=n_boot, seed=seed, event_index=None)
        out["ci95"] = [float(lo), float(hi)] if np.isfinite([lo, hi]).all() else None
    return {**out, "c_for_benefit": value,
            "c_for_benefit_unweighted": _matched_concordance(benefit, arm, status, treated, control)}


#: How :func:`c_for_benefit` weights the patients whose outcome at the horizon is known, recorded with it.
CFB_CENSORING_WEIGHTS = ("patients censored before the horizon are left out; the others are weighted by 1 / G(min(T, "
                         "horizon)-), G the Kaplan-Meier of the evaluated cohort's censoring, so that the kept "
                         "patients stand for those lost too (inverse probability of censoring weighting)")


#: C-for-benefit is not given on fewer matched pairs (nor counted in a bootstrap resample with fewer).
MIN_BENEFIT_PAIRS = 10


def _matched_concordance(benefit: np.ndarray, arm: np.ndarray, status: np.ndarray, treated: str,
                         control: str, weight: np.ndarray | None = None) -> float:
    """The C of :func:`c_for_benefit` for outcomes ``status`` (from :func:`_status_at`); NaN with fewer than
    :data:`MIN_BENEFIT_PAIRS` pairs or no pair of pairs with different observed benefit. With ``weight`` (one
    per patient, :func:`_censoring_weights`) every pair of pairs counts with the product of its four patients'
    weights."""
    ti = np.flatnonzero((status >= 0) & (arm == treated))
    ci = np.flatnonzero((status >= 0) & (arm == control))
    m = min(len(ti), len(ci))
    if m < MIN_BENEFIT_PAIRS:
        return float("nan")
    ti = ti[np.argsort(benefit[ti], kind="mergesort")]
    ci = ci[np.argsort(benefit[ci], kind="mergesort")]
    ti = ti[np.round(np.linspace(0, len(ti) - 1, m)).astype(int)]
    ci = ci[np.round(np.linspace(0, len(ci) - 1, m)).astype(int)]
    pred = (benefit[ti] + benefit[ci]) / 2.0
    obs = status[ci] - status[ti]
    first, second = np.triu_indices(m, 1)
    usable = obs[second] != obs[first]
    gap = (pred[second] - pred[first])[usable] * np.sign(obs[second] - obs[first])[usable]
    pair_weight = np.ones(m) if weight is None else weight[ti] * weight[ci]  # unweighted: each pair counts once
    w = (pair_weight[first] * pair_weight[second])[usable]
    concordant, discordant, ties = np.sum(w[gap > 0]), np.sum(w[gap < 0]), np.sum(w[gap == 0])
    total = concordant + discordant + ties
    return float((concordant + 0.5 * ties) / total) if total else float("nan")


def benefit_calibration(benefit: Any, arm: Any, time: Any, event: Any, horizon: float = 60.0, n_groups: int = 3,
                        treated: str = TREATED_ARM, control: str = REFERENCE_ARM,
                        confounders: pd.DataFrame | None = None) -> list:
    """Patients grouped by predicted benefit: mean predicted vs observed benefit and the arm HR per group.

    The arms were not randomised: whoever received the higher dose differs from whoever did not (stage, EBV DNA),
    so an unadjusted difference of the arms' Kaplan-Meier curves mixes the dose effect with that difference. The
    observed benefit is therefore the difference of IPTW-weighted Kaplan-Meier curves
    (:func:`~NPCPrognosisLib.survival.benefit.iptw_weights` from ``confounders``, one propensity model fitted on
    both arms' patients; its weights balance the arms within any group defined by the confounders, so within each
    tertile too). Without confounders, or when the propensity
    model cannot be fitted, the unadjusted difference is given and ``observed_benefit_method`` says so; the
    unadjusted difference is always given beside it (``observed_benefit_unadjusted``), as is the unadjusted HR.

    Returns
    -------
    rows : list of dict
        Per group ``n_treated``, ``n_control``, ``predicted_benefit``, ``observed_benefit``,
        ``observed_benefit_method``, ``observed_benefit_unadjusted``, ``hr`` and ``hr_95ci`` (unadjusted Cox).
    """
    from NPCPrognosisLib.survival.metrics import _km_at, hazard_ratio

    benefit, arm = np.asarray(benefit, float), np.asarray(arm).astype(str)
    time, event = np.asarray(time, float), np.asarray(event, bool)
    pair = (arm == treated) | (arm == control)
    weight, method = _calibration_weights(arm, pair, confounders)
    edges = np.quantile(benefit[pair], np.linspace(0, 1, n_groups + 1)) if pair.any() else []
    rows = []
    for k in range(n_groups if len(edges) else 0):
        inside = pair & (benefit >= edges[k]) & ((benefit <= edges[k + 1]) if k == n_groups - 1 else
                                                   (benefit < edges[k + 1]))
        t_, c_ = inside & (arm == treated), inside & (arm == control)
        row: dict[str, Any] = {"group": k + 1, "n_treated": int(t_.sum()), "n_control": int(c_.sum()),
                               "predicted_benefit": float(benefit[inside].mean()) if inside.any() else None}
        s_t = _km_at(time[t_], event[t_], horizon)[0] if t_.any() else None
        s_c = _km_at(time[c_], event[c_], horizon)[0] if c_.any() else None
        row["observed_benefit_unadjusted"] = None if s_t is None or s_c is None else float(s_t - s_c)
        if weight is None:
            row["observed_benefit"] = row["observed_benefit_unadjusted"]
        else:
            w_t = weighted_km(time[t_], event[t_], weight[t_], [horizon])[0] if t_.any() else None
            w_c = weighted_km(time[c_], event[c_], weight[c_], [horizon])[0] if c_.any() else None
            row["observed_benefit"] = None if w_t is None or w_c is None else float(w_t - w_c)
        row["observed_benefit_method"] = method
        try:
            hr = hazard_ratio(time[inside], event[inside], (arm[inside] == treated).astype(int))
            row["hr"], row["hr_95ci"] = hr[0], [hr[1], hr[2]]
        except InputError as exc:
            row["hr"], row["reason"] = None, str(exc)
        rows.append(row)
    return rows


def _calibration_weights(arm: np.ndarray, pair: np.ndarray,
                         confounders: pd.DataFrame | None) -> tuple[np.ndarray | None, str]:
    """Stabilised IPTW weights of the two arms' patients (1 elsewhere) for :func:`benefit_calibration`, and how
    its observed benefit is estimated with them; None (unadjusted) without confounders or a propensity model."""
    if confounders is None:
        return None, "unadjusted Kaplan-Meier (no confounders given)"
    try:
        w, _ = iptw_weights(arm[pair], confounders[pair].reset_index(drop=True))
    except ValueError as exc:  # one arm only, or degenerate covariates
        return None, f"unadjusted Kaplan-Meier (no propensity model: {exc})"
    weight = np.ones(len(arm))
    weight[pair] = w
    return weight, "IPTW-weighted Kaplan-Meier (stabilised weights, confounders: " + ", ".join(confounders) + ")"


EBV_DNA_CUTOFF = 4000.0  # copies/mL, the pretreatment cut-off NPC staging studies use


#: Age separating the younger from the older subgroup of the forest plot (years).
AGE_CUTOFF = 50.0


def benefit_subgroups(records: Sequence[Any], groups: Sequence[str]) -> dict[str, np.ndarray]:
    """Each patient's level of every subgroup variable of the forest plot (:func:`subgroup_effects`).

    The levels are what the plot and ``metrics.json`` print: cut-offs written as every report writes the number
    (EBV DNA '≥4,000' copies/mL through :func:`~NPCPrognosisLib.io.clinical.copies_text`, as the sheet and the
    terminal print copies/mL) and '≥' rather than '>=' (both outputs carry Unicode: a PNG drawn in DejaVu Sans, which
    has the glyph, and JSON, which escapes it; no CSV column is named after a level).

    Parameters
    ----------
    records : sequence of ClinicalRecord
        The evaluated patients' clinical records (EBV DNA in copies/mL, None when not measured).
    groups : sequence of {'high', 'low'}
        Their risk groups.

    Returns
    -------
    dict of str to ndarray
        Variable name ('risk group', 'T stage', 'N stage', 'EBV DNA', 'age') to one level per patient.
    """
    ebv, age = copies_text(EBV_DNA_CUTOFF), f"{AGE_CUTOFF:g}"
    return {
        "risk group": np.asarray(groups).astype(str),
        "T stage": np.array(["T1-2" if r.t_stage in ("T1", "T2") else "T3-4" for r in records]),
        "N stage": np.array(["N0-1" if r.n_stage in ("N0", "N1") else "N2-3" for r in records]),
        "EBV DNA": np.array(["missing" if r.ebv_dna is None else f"≥{ebv}" if r.ebv_dna >= EBV_DNA_CUTOFF
                             else f"<{ebv}" for r in records]),
        "age": np.array([f"<{age}" if r.age < AGE_CUTOFF else f"≥{age}" for r in records]),
    }


def subgroup_effects(time: Any, event: Any, arm: Any, subgroups: Mapping[str, Sequence[str]],
                     confounders: pd.DataFrame | None = None) -> list:
    """High vs low dose HR within each level of each subgroup variable, with that variable's interaction p.

    One adjusted interaction model per variable (as forest plots in trials report them); a variable whose model
    cannot be fitted gets a row saying why instead of a number.
    """
    time, event = np.asarray(time, float), np.asarray(event, bool)
    arm = np.asarray(arm).astype(str)
    pair = (arm == TREATED_ARM) | (arm == REFERENCE_ARM)
    rows = []
    for name, labels in subgroups.items():
        labels = np.asarray(labels).astype(str)
        try:
            # a subgroup level without events in one arm separates; its row says so below, so fit_cox's
            # separation warning would only repeat it on the console without naming the subgroup
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                fit = fit_interaction(time[pair], event[pair], arm[pair], by=labels[pair], reference=REFERENCE_ARM,
                                      covariates=None if confounders is None else
                                      confounders[pair].reset_index(drop=True),
                                      treatment_name=ARM_NAME, by_name=name)
        except (InputError, np.linalg.LinAlgError) as exc:
            rows.append({"subgroup": name, "estimable": False, "reason": str(exc)})
            continue
        p = (fit.lrt_interaction or {}).get("p")
        for level in fit.by_levels:
            e = fit.effect(TREATED_ARM, level)
            inside = pair & (labels == level)
            row = {"subgroup": name, "level": level, "n": int(inside.sum()), "events": int(event[inside].sum()),
                   "hr": e["hr"], "hr_95ci": e["hr_95ci"], "interaction_p": p, "estimable": True}
            if not (0.0 < e["hr_95ci"][0] and math.isfinite(e["hr_95ci"][1]) and e["se"] < 5.0):
                row.update(estimable=False, reason="too few events in one arm of this subgroup (the fit separates)")
            rows.append(row)
    return rows


def three_arm_logrank(time: np.ndarray, event: np.ndarray, arm: np.ndarray) -> dict:
    """Log-rank across the arms present (sksurv ``compare_survival``), with each arm's size."""
    from NPCPrognosisLib.survival.metrics import logrank

    present = sorted(set(arm.tolist()))
    block: dict[str, Any] = {"arms": {a: {"n": int((arm == a).sum()), "events": int(event[arm == a].sum())}
                                      for a in present}}
    try:
        block["chi2"], block["p"] = logrank(time, event, arm)
    except InputError as exc:
        block["p"], block["reason"] = None, str(exc)
    return block


def evaluate_benefit(doc: Mapping[str, Any] | None, confounders: pd.DataFrame, groups: Sequence[str],
                     chemo: Sequence[Any] | None, ccnd: Sequence[Any], time: Any, event: Any,
                     records: Sequence[Any], horizon: float = 60.0, *, n_boot: int = 0,
                     seed: int = 0) -> dict[str, Any]:
    """Held-out checks of the benefit model and the subgroup analyses a trial report shows.

    Parameters
    ----------
    doc : dict
        The bundle's ``chemo_benefit`` block.
    confounders : DataFrame
        Encoded clinical covariates of the evaluated patients.
    groups : sequence of {'high', 'low'}
        Risk groups from the bundle's cut-off.
    chemo, ccnd : array-like
        Treatment actually given (defines each patient's arm).
    time, event : array-like
        The endpoint.
    records : sequence of ClinicalRecord
        For the subgroups (T, N, EBV DNA, age).
    horizon : float
        Months of the predicted benefit, C-for-benefit and benefit calibration.
    n_boot, seed : int
        Bootstrap resamples for the CI of C-for-benefit (0: none).

    Returns
    -------
    result : dict
        ``predicted_benefit`` (per patient, high vs low dose at ``horizon``; None when the model is not
        estimable), ``c_for_benefit``, ``calibration``, ``subgroups`` (forest-plot rows) and ``t12n1`` (three arms
        per risk group in T1-2N1 patients, log-rank).
    """
    time, event = np.asarray(time, float), np.asarray(event, bool)
    groups = np.asarray(groups).astype(str)
    threshold = float((doc or {}).get("threshold_mg_m2", CCND_THRESHOLD))
    arm = assign_arms(chemo, ccnd, threshold)
    out: dict[str, Any] = {"threshold_mg_m2": threshold, "horizon_months": float(horizon), "arm": arm.tolist(),
                           "arm_counts": arm_counts(arm, groups, event)}
    pb = predicted_benefit(doc, confounders, groups, horizon) if doc and doc.get("estimable") else None
    if pb is not None and not np.isfinite(pb).all():  # the benefit model knows nothing after its follow-up
        doc = {**doc, "estimable": False,
               "reason": f"the training cohort's follow-up ended before the {horizon:g}-month horizon"}
    conf = confounders[list(CONFOUNDERS)].reset_index(drop=True).astype(float)
    if doc and doc.get("estimable"):
        out["predicted_benefit"] = pb.tolist()
        out["c_for_benefit"] = c_for_benefit(pb, arm, time, event, horizon, n_boot=n_boot, seed=seed)
        # the risk group is prognostic and may have guided the dose: balanced as the clinical factors are
        out["calibration"] = benefit_calibration(pb, arm, time, event, horizon,
                                                 confounders=conf.assign(high_risk=(groups == "high").astype(float)))
    else:
        out["predicted_benefit"] = None
        out["not_estimable"] = (doc or {}).get("reason", "no benefit model in the bundle")
    t_early = np.array([r.t_stage in ("T1", "T2") for r in records])
    out["subgroups"] = subgroup_effects(time, event, arm, benefit_subgroups(records, groups), conf)
    t12n1 = t_early & np.array([r.n_stage == "N1" for r in records])
    out["t12n1"] = {g: three_arm_logrank(time[t12n1 & (groups == g)], event[t12n1 & (groups == g)],
                                         arm[t12n1 & (groups == g)]) for g in ("high", "low")}
    return out
