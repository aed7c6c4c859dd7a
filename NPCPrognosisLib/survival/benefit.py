"""Who benefits from chemotherapy, the treatment model: arms, an arm x risk interaction model and counterfactual
survival.

The evidence for intensified chemotherapy in NPC is that it helps high-risk patients and mostly adds toxicity for
low-risk ones (e.g. cumulative cisplatin dose, CCND, > 160 mg/m2). Answering "does it help *this* patient" from
an observational training cohort needs three things a per-group univariable HR lacks:

* **arms**, not a dose cut alone: radiotherapy alone (``chemo`` = 0), CCND <= threshold, CCND > threshold;
* **adjustment** for why doctors gave more chemotherapy (stage, age, EBV DNA ...) and an **interaction test**
  (one Cox model with arm x risk group, :mod:`NPCPrognosisLib.survival.treatment_effect`), plus
  propensity-weighted (IPTW) Kaplan-Meier curves per arm as a model-free check;
* **per-patient counterfactual survival** under each arm with bootstrap draws, from which
  :mod:`NPCPrognosisLib.survival.benefit_patient` makes the patient's statement (intervals, and "inconclusive"
  whenever the interval of the gain includes zero: compatible with benefit and harm).

Everything fitted is stored as JSON in the bundle (coefficients, covariance, baseline, bootstrap draws).
On held-out patients :mod:`NPCPrognosisLib.survival.benefit_evaluation` checks whether predicted benefit separates
patients who gained from those who did not (C-for-benefit, benefit calibration).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.clinical import CLINICAL_COVARIATES
from NPCPrognosisLib.survival.cox import CoxModel
from NPCPrognosisLib.survival.treatment_effect import fit_interaction, interaction_design, wald_test

CCND_THRESHOLD = 160.0  # mg/m2
ARMS = ("rt_alone", "low_dose", "high_dose")
REFERENCE_ARM = "low_dose"
#: Chemotherapy given, dose not recorded: in no arm of the comparison.
UNKNOWN_DOSE = "unknown_dose"
TREATED_ARM = "high_dose"
#: Confounders of the treatment choice the model adjusts for (the ordinal clinical coding: one column each).
CONFOUNDERS = CLINICAL_COVARIATES
BENEFIT_MONTHS = (12.0, 36.0, 60.0)
#: An arm enters the model only with this many patients and events in each risk group; fewer cannot carry
#: an interaction term (the fit would separate).
MIN_ARM_PATIENTS = 8
MIN_ARM_EVENTS = 2
N_BOOTSTRAP = 200
GROUP_NAME = "risk"
ARM_NAME = "arm"


def recorded_doses(table: pd.DataFrame) -> pd.Series:
    """The table's ``ccnd`` column, or NaN for every patient when the cohort recorded no doses: a patient given
    chemotherapy then belongs to no dose arm (:func:`assign_arms`), where a dose of 0 filled in would have put every
    one of them in the low-dose reference arm."""
    return table["ccnd"] if "ccnd" in table else pd.Series(np.nan, index=table.index)


def assign_arms(chemo: Sequence[Any] | None, ccnd: Sequence[Any], threshold: float = CCND_THRESHOLD) -> np.ndarray:
    """Arm labels: ``rt_alone`` (no chemotherapy), ``low_dose`` (CCND <= threshold), ``high_dose``, and
    :data:`UNKNOWN_DOSE` where the record does not say which dose arm a patient was in.

    Without a ``chemo`` column (``chemo`` None) an empty CCND cell beside recorded doses means none given (a dose
    column filled in for the treated), so radiotherapy alone; a cohort without any dose says nothing about
    treatment, and its patients are in no arm (counted as radiotherapy alone, they would all look untreated). With a
    ``chemo`` column, chemotherapy given without a dose, or a patient with neither field filled in, belongs to no
    arm: counted as low-dose, a patient who may have had 300 mg/m2 would sit in the reference arm.
    """
    raw = pd.to_numeric(pd.Series(np.asarray(ccnd, dtype=object)), errors="coerce")
    if chemo is None:
        if raw.isna().all():
            return np.full(len(raw), UNKNOWN_DOSE)
        raw = raw.fillna(0.0)
        flagged = np.full(len(raw), np.nan)
    else:
        flagged = pd.to_numeric(pd.Series(np.asarray(chemo, dtype=object)), errors="coerce").to_numpy(float)
    dose = raw.to_numpy(float)
    given = (flagged > 0) | (dose > 0)
    untreated = ~given & ((flagged == 0) | (dose == 0))
    arms = np.where(untreated, "rt_alone", np.where(dose > threshold, "high_dose", "low_dose"))
    return np.where(untreated | (given & np.isfinite(dose)), arms, UNKNOWN_DOSE)


def arm_counts(arm: np.ndarray, group: np.ndarray, event: np.ndarray) -> dict:
    return {g: {a: {"n": int(((arm == a) & (group == g)).sum()), "events": int(((arm == a) & (group == g)
                                                                                 & event).sum())}
                for a in ARMS} for g in ("low", "high")}


def _usable_arms(counts: dict) -> list:
    return [a for a in ARMS if all(counts[g][a]["n"] >= MIN_ARM_PATIENTS and counts[g][a]["events"] >= MIN_ARM_EVENTS
                                   for g in counts)]


def _design_row(doc: Mapping[str, Any], arm: str, group: str, confounders: pd.DataFrame) -> pd.DataFrame:
    return interaction_design([arm] * len(confounders), [group] * len(confounders)
                              if np.ndim(group) == 0 else group, confounders,
                              treatment_name=ARM_NAME, reference=doc["reference_arm"], arms=doc["arms"],
                              by_name=GROUP_NAME, by_reference="low", by_levels=["high", "low"])


# ---------------------------------------------------------------------------------------------- fitting
def fit_benefit(time: Sequence[float], event: Sequence[bool], chemo: Sequence[Any] | None, ccnd: Sequence[Any],
                groups: Sequence[str], confounders: pd.DataFrame, *, score: Sequence[float] | None = None,
                threshold: float = CCND_THRESHOLD, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """The bundle's chemotherapy-benefit model, fitted on the training patients.

    Parameters
    ----------
    time, event : array-like
        The endpoint's follow-up and event indicator.
    chemo, ccnd : array-like
        Chemotherapy given (0/1; ``None``: CCND > 0 means given) and cumulative cisplatin dose in mg/m2.
    groups : sequence of {'high', 'low'}
        Risk group from the stored cut-off.
    confounders : DataFrame
        Encoded clinical covariates (:data:`CONFOUNDERS`), one row per patient.
    score : array-like, optional
        Continuous risk score (nomogram linear predictor) for the arm x score interaction test.
    threshold : float
        CCND separating low from high dose.
    n_bootstrap : int
        Bootstrap refits kept for the per-patient intervals.

    Returns
    -------
    doc : dict
        JSON-able: arms and counts, the interaction model (``model``), HRs per risk group, interaction tests,
        IPTW-weighted survival per arm and group, and the bootstrap draws; ``estimable`` False with a
        ``reason`` when the data cannot carry the model.
    """
    time, event = np.asarray(time, float), np.asarray(event, bool)
    arm = assign_arms(chemo, ccnd, threshold)
    group = np.asarray(groups).astype(str)
    confounders = confounders[list(CONFOUNDERS)].reset_index(drop=True).astype(float)
    counts = arm_counts(arm, group, event)
    doc: dict[str, Any] = {"threshold_mg_m2": float(threshold), "arms_all": list(ARMS), "counts": counts,
                           "left_out_unknown_dose": int((arm == UNKNOWN_DOSE).sum()),
                           "reference_arm": REFERENCE_ARM, "confounders": list(CONFOUNDERS),
                           "note": "observational comparison in the training cohort, adjusted for the confounders "
                                   "listed; not a randomised comparison"}
    arms = _usable_arms(counts)
    if REFERENCE_ARM not in arms or TREATED_ARM not in arms:
        return {**doc, "estimable": False,
                "reason": f"each risk group needs >= {MIN_ARM_PATIENTS} patients and >= {MIN_ARM_EVENTS} events in "
                          f"the high-dose and the low-dose arm ({dose_comparison(threshold)})"}
    keep = np.isin(arm, arms)
    try:
        fit = fit_interaction(time[keep], event[keep], arm[keep], by=group[keep], covariates=confounders[keep],
                              reference=REFERENCE_ARM, by_reference="low", treatment_name=ARM_NAME,
                              by_name=GROUP_NAME)
    except InputError as exc:
        return {**doc, "estimable": False, "reason": f"the arm x risk-group Cox model could not be fitted: {exc}"}
    doc.update({"estimable": True, "arms": fit.arms, "n": int(keep.sum()), "events": int(event[keep].sum()),
                "model": fit.model.to_dict(),
                "effects": {g: [fit.effect(a, g) for a in fit.arms if a != REFERENCE_ARM] for g in ("low", "high")},
                "interaction_wald": fit.wald_interaction(), "interaction_lrt": fit.lrt_interaction})
    if score is not None:
        doc["score_interaction"] = _score_interaction(time[keep], event[keep], arm[keep],
                                                      np.asarray(score, float)[keep], confounders[keep], fit.arms)
    doc["iptw"] = iptw_summary(time[keep], event[keep], arm[keep], group[keep], confounders[keep], fit.arms)
    doc["bootstrap"] = _bootstrap(time[keep], event[keep], arm[keep], group[keep], confounders[keep], fit,
                                  n_bootstrap, seed)
    doc["conclusion"] = model_conclusion(doc)  # stored for a reader of the JSON; shown through model_conclusion
    return doc


def _score_interaction(time, event, arm, score, confounders, arms) -> dict | None:
    """Arm x continuous risk score: does the treatment HR change along the score (per SD)?"""

    from NPCPrognosisLib.survival.cox import fit_cox

    z = (score - score.mean()) / (score.std() or 1.0)
    cols = {}
    for a in arms:
        if a != REFERENCE_ARM:
            cols[f"{ARM_NAME}[{a}]"] = (arm == a).astype(float)
    cols["risk_score_sd"] = z
    for a in arms:
        if a != REFERENCE_ARM:
            cols[f"{ARM_NAME}[{a}]:risk_score_sd"] = (arm == a) * z
    design = pd.concat([pd.DataFrame(cols), confounders.reset_index(drop=True)], axis=1)
    try:
        model = fit_cox(design, time, event, list(design.columns), ties="efron")
    except InputError as exc:
        return {"estimable": False, "reason": str(exc)}
    rows = {r["covariate"]: r for r in model.summary()}
    names = [c for c in model.covariates if c.endswith(":risk_score_sd")]
    test = wald_test(model, names)
    return {"estimable": True, "terms": {c: {k: rows[c][k] for k in ("hr", "hr_95ci", "p")} for c in names},
            "wald_chi2": test["chi2"], "df": test["df"], "p": test["p"]}


def _bootstrap(time, event, arm, group, confounders, fit, n_bootstrap: int, seed: int) -> dict:
    """Refits on resampled patients: coefficient vectors and baseline cumulative hazards at the report times."""
    rng = np.random.default_rng(seed)
    coefs, cumhaz = [], []
    n = len(time)
    strata = [np.flatnonzero((arm == a) & (group == g)) for a in fit.arms for g in ("low", "high")]
    for _ in range(n_bootstrap):
        draws = [rng.choice(s, size=len(s), replace=True) for s in strata]  # arms x groups kept
        if not all(event[d].any() for d in draws if len(d)):
            # an arm without an event in a risk group: its effect there is not estimable (the fit separates and
            # its hazard ratio runs off to 0 or infinity), and such a draw would stretch every interval
            continue
        idx = np.concatenate(draws)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                b = fit_interaction(time[idx], event[idx], arm[idx], by=group[idx],
                                    covariates=confounders.iloc[idx].reset_index(drop=True),
                                    reference=REFERENCE_ARM, by_reference="low", treatment_name=ARM_NAME,
                                    by_name=GROUP_NAME)
        except (InputError, np.linalg.LinAlgError):
            continue
        separated = any(issubclass(w.category, RuntimeWarning) and "separation" in str(w.message) for w in caught)
        if separated or b.model.covariates != fit.model.covariates or not np.all(np.isfinite(b.model.coef)):
            continue
        coefs.append([float(v) for v in b.model.coef])
        cumhaz.append([float(v) for v in b.model.baseline_at(BENEFIT_MONTHS)])
    return {"months": list(BENEFIT_MONTHS), "requested": int(n_bootstrap), "n": len(coefs), "n_patients": int(n),
            "stratified_by": "arm x risk group", "coef": coefs, "baseline_cumhaz": cumhaz}


def dose_comparison(threshold: float) -> str:
    """'CCND > 160 vs ≤ 160 mg/m²': the two dose arms as every benefit text names them (the bundle's conclusion, a
    patient's statement and evidence, the forest plot's title), so the same comparison never reads three ways."""
    return f"CCND > {float(threshold):g} vs ≤ {float(threshold):g} mg/m²"


def model_conclusion(doc: Mapping[str, Any]) -> str:
    """The benefit model's conclusion in words: the treated arm's adjusted HR in each risk group and the interaction.

    Why rendered from the model's numbers whenever it is shown, not read back from the ``conclusion`` a bundle
    stores: that is the sentence in the words of the version that trained the bundle (the shipped demo bundle's
    reads 'CCND > 160 vs <= 160 mg/m2'), so an older bundle would read one way and a new one another
    (:func:`dose_comparison`). ``load_bundle`` puts this in place of the stored sentence.

    Parameters
    ----------
    doc : mapping
        An estimable ``chemo_benefit`` block of a bundle (:func:`fit_benefit`): ``effects``, ``interaction_lrt``,
        ``threshold_mg_m2``.

    Returns
    -------
    str
        The sentence, e.g. 'CCND > 160 vs ≤ 160 mg/m², adjusted: high-risk group HR 0.56 (95% CI 0.21-1.52), ...'.
    """
    high = {e["arm"]: e for e in doc["effects"]["high"]}[TREATED_ARM]
    low = {e["arm"]: e for e in doc["effects"]["low"]}[TREATED_ARM]
    p = (doc.get("interaction_lrt") or {}).get("p")
    thr = doc["threshold_mg_m2"]

    def fmt(e):
        return f"HR {e['hr']:.2f} (95% CI {e['hr_95ci'][0]:.2f}-{e['hr_95ci'][1]:.2f})"

    text = (f"{dose_comparison(thr)}, adjusted: high-risk group {fmt(high)}, low-risk group {fmt(low)}; "
            f"interaction p = {p:.3g}." if p is not None else "")
    if p is None or p >= 0.05:
        text += " The data cannot tell whether the effect differs between the risk groups."
    return text


# ---------------------------------------------------------------------------------------------- IPTW
def iptw_weights(arm: np.ndarray, covariates: pd.DataFrame, truncate: float = 0.99) -> tuple[np.ndarray, dict]:
    """Stabilised inverse-probability-of-treatment weights from a multinomial propensity model.

    Returns the weights (truncated at the ``truncate`` quantile, as is usual to tame extreme ones) and an
    overlap summary: each arm's propensity range, the share of patients whose propensity for some arm is below
    0.05 (where the arms barely overlap), and the effective sample size per arm.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X = StandardScaler().fit_transform(covariates.to_numpy(float))
    labels = sorted(set(arm.tolist()))
    model = LogisticRegression(max_iter=2000, C=1.0).fit(X, arm)
    prob = model.predict_proba(X)
    classes = list(model.classes_)
    own = prob[np.arange(len(arm)), [classes.index(a) for a in arm]]
    marginal = np.array([np.mean(arm == a) for a in arm])
    w = marginal / np.clip(own, 1e-6, None)
    cap = float(np.quantile(w, truncate))
    w = np.minimum(w, cap)
    low_share = float(np.mean((prob < 0.05).any(axis=1)))
    overlap = {"propensity_range": {a: [float(prob[:, classes.index(a)].min()), float(prob[:, classes.index(a)].max())]
                                    for a in labels},
               "share_propensity_below_0.05": low_share, "truncated_at": cap,
               "effective_n": {a: float(w[arm == a].sum() ** 2 / (w[arm == a] ** 2).sum()) for a in labels},
               "adequate": bool(low_share <= 0.10)}
    return w, overlap


def weighted_km(time: np.ndarray, event: np.ndarray, weight: np.ndarray, months: Sequence[float]) -> list:
    """Weighted Kaplan-Meier survival at ``months`` (None beyond the last follow-up)."""
    order = np.argsort(time, kind="mergesort")
    t, e, w = time[order], event[order], weight[order]
    at_risk = np.cumsum(w[::-1])[::-1]
    surv, out, i = 1.0, [], 0
    ev_times = np.unique(t[e])
    values = []
    for tt in ev_times:
        k = np.searchsorted(t, tt, side="left")
        d = w[(t == tt) & e].sum()
        surv *= 1.0 - d / at_risk[k]
        values.append(surv)
    for m in months:
        if len(t) == 0 or m > t.max():
            out.append(None)
            continue
        i = int(np.searchsorted(ev_times, m, side="right")) - 1
        out.append(float(values[i]) if i >= 0 else 1.0)
    return out


def weighted_logrank(time: np.ndarray, event: np.ndarray, treated: np.ndarray, weight: np.ndarray) -> dict:
    """Two-arm log-rank test on weighted counts (Xie & Liu 2005's adjusted log-rank with stabilised weights)."""
    from scipy.stats import chi2

    o_minus_e, var = 0.0, 0.0
    for tt in np.unique(time[event]):
        risk = time >= tt
        dead = (time == tt) & event
        y1, y = weight[risk & treated].sum(), weight[risk].sum()
        d1, d = weight[dead & treated].sum(), weight[dead].sum()
        if y <= 0:
            continue
        o_minus_e += d1 - d * y1 / y
        y1_sq, y_sq = (weight[risk & treated] ** 2).sum(), (weight[risk] ** 2).sum()
        # Xie & Liu's variance: the hypergeometric factor d (n - d) / (n (n - 1)) of the unweighted counts times the
        # squared weights of each arm's risk set; scaling every weight by one constant leaves the statistic as it
        # is, and unit weights give the classic log-rank test exactly.
        y0, y0_sq = y - y1, y_sq - y1_sq
        n, d_n = float(risk.sum()), float(dead.sum())
        if n > 1:
            var += d_n * (n - d_n) / (n * (n - 1)) * (y0 ** 2 * y1_sq + y1 ** 2 * y0_sq) / y ** 2
    stat = o_minus_e ** 2 / var if var > 0 else float("nan")
    return {"chi2": float(stat), "p": float(chi2.sf(stat, 1)) if math.isfinite(stat) else None}


def iptw_summary(time, event, arm, group, confounders, arms) -> dict:
    """Per risk group: IPTW survival per arm at the report months and the weighted log-rank vs the low dose."""
    out: dict[str, Any] = {}
    for g in ("low", "high"):
        rows = group == g
        try:
            w, overlap = iptw_weights(arm[rows], confounders[rows])
        except ValueError as exc:  # one arm only in this group, or degenerate covariates
            out[g] = {"estimable": False, "reason": str(exc)}
            continue
        block: dict[str, Any] = {"overlap": overlap, "months": list(BENEFIT_MONTHS), "survival": {}, "logrank": {}}
        t, e, a = time[rows], event[rows], arm[rows]
        for name in arms:
            m = a == name
            block["survival"][name] = weighted_km(t[m], e[m], w[m], BENEFIT_MONTHS)
        for name in arms:
            if name != REFERENCE_ARM:
                pair = (a == name) | (a == REFERENCE_ARM)
                block["logrank"][f"{name}_vs_{REFERENCE_ARM}"] = weighted_logrank(t[pair], e[pair], a[pair] == name,
                                                                                  w[pair])
        out[g] = block
    return out


# ---------------------------------------------------------------------------------------------- counterfactual survival
def counterfactual_survival(doc: Mapping[str, Any], confounders: pd.DataFrame, groups: Sequence[str] | str,
                            months: Sequence[float] = BENEFIT_MONTHS) -> dict[str, np.ndarray]:
    """Point estimates of S(t) under every arm: ``{arm: (n_patients, n_months)}``."""
    model = CoxModel.from_dict(doc["model"])
    conf = confounders[list(doc["confounders"])].reset_index(drop=True).astype(float)
    return {a: model.survival_at(_design_row(doc, a, groups, conf), months) for a in doc["arms"]}


def predicted_benefit(doc: Mapping[str, Any], confounders: pd.DataFrame, groups: Sequence[str],
                      month: float = 60.0, versus: str = REFERENCE_ARM) -> np.ndarray:
    """Absolute survival gain at ``month`` of the high dose over ``versus`` for each patient (point estimate)."""
    s = counterfactual_survival(doc, confounders, groups, [month])
    return (s[TREATED_ARM] - s[versus])[:, 0]


def bootstrap_survival(doc: Mapping[str, Any], row: pd.DataFrame, group: str) -> dict[str, np.ndarray]:
    """One patient's survival under every arm at the bootstrap months, one row per bootstrap refit (empty without
    refits): the draws behind the intervals of :mod:`~NPCPrognosisLib.survival.benefit_patient`."""
    boot = doc.get("bootstrap") or {}
    if not boot.get("n"):
        return {}
    coef = np.asarray(boot["coef"], float)  # (B, p)
    h0 = np.asarray(boot["baseline_cumhaz"], float)  # (B, months)
    out = {}
    for a in doc["arms"]:
        x = _design_row(doc, a, group, row).to_numpy(float)[0]
        out[a] = np.exp(-h0 * np.exp(coef @ x)[:, None])
    return out


def given_arm(chemo: int | None, ccnd: float | None, threshold: float = CCND_THRESHOLD) -> str | None:
    """The arm a patient was actually treated in (:func:`assign_arms`); a dose not recorded (None, or 0 with
    chemotherapy given, as older records store an empty dose) gives no dose arm, and a treatment not recorded at
    all (neither field) None: no arm is claimed for the patient."""
    if chemo is None and (ccnd is None or ccnd <= 0):
        return None
    return str(assign_arms([chemo], [ccnd if ccnd is not None and ccnd > 0 else None], threshold)[0])
