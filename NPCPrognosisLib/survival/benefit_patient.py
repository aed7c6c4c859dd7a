"""One patient's chemotherapy-benefit statement: survival under each arm with bootstrap 95% intervals, the gain of
the high dose, and a sentence that calls it "inconclusive" with its interval whenever that interval includes zero.

The model behind it is :mod:`NPCPrognosisLib.survival.benefit` (fitted on the training cohort, stored in the bundle).
A confounder filled with the training median (a missing EBV DNA) is swept across its training 10th-90th percentile
(:func:`benefit_across_range`), so a conclusion that holds only at the median is not printed as if measured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.survival.benefit import (
    ARMS,
    MIN_ARM_EVENTS,
    MIN_ARM_PATIENTS,
    REFERENCE_ARM,
    TREATED_ARM,
    bootstrap_survival,
    counterfactual_survival,
    dose_comparison,
)

#: What the counterfactual survival comes from, for the page that shows it beside the nomogram's survival.
BENEFIT_MODEL = ("the chemotherapy-benefit model: one Cox model of treatment arm x risk group adjusted for T, N, "
                 "rENE, sex, EBV DNA, age and LDH (no radiomics), fitted on the training cohort")


def absent_arms(doc: Mapping[str, Any]) -> dict[str, str]:
    """Why each arm of :data:`~NPCPrognosisLib.survival.benefit.ARMS` is not in the fitted model: the training
    patients and events it had in each risk group, against the minimum an interaction term needs."""
    counts = doc.get("counts") or {}
    out = {}
    for arm in ARMS:
        if arm in doc.get("arms", ARMS) or not counts:
            continue
        had = ", ".join(f"{counts[g][arm]['n']} {g}-risk patients with {counts[g][arm]['events']} events"
                        for g in ("low", "high"))
        out[arm] = (f"too few training patients in this arm ({had}; each risk group needs >= {MIN_ARM_PATIENTS} "
                    f"patients and >= {MIN_ARM_EVENTS} events)")
    return out


#: What a patient's headline benefit (:func:`benefit_conclusion`) can conclude, in the order reports list them.
CONCLUSIONS = ("benefit", "inconclusive", "harm")


def benefit_conclusion(headline: Mapping[str, Any]) -> str:
    """'benefit' when the 95% interval of the gain lies above 0, 'harm' when below, otherwise (or without an
    interval) 'inconclusive': an interval that includes 0 is compatible with both and demonstrates neither."""
    ci = headline.get("ci95")
    if ci is None:
        return "inconclusive"
    return "benefit" if ci[0] > 0 else "harm" if ci[1] < 0 else "inconclusive"


def _who_and_versus(group: str, subgroup: str, thr: float) -> tuple[str, str]:
    return f"{group.capitalize()}-risk patient{subgroup}", dose_comparison(thr)


def _benefit_sentence(group: str, subgroup: str, thr: float, month: float, headline: Mapping[str, Any]) -> str:
    """The benefit of the high dose at ``month`` in words: shown, harm shown, or inconclusive with the interval
    (:func:`benefit_conclusion`)."""
    gain, ci = headline["absolute_benefit"], headline.get("ci95")
    who, versus = _who_and_versus(group, subgroup, thr)
    if ci is None:
        return (f"{who}: {versus} at {month:g} months estimated {gain:+.1%}; inconclusive (too few bootstrap refits "
                "for an interval).")
    ci_text = f"(95% CI {ci[0]:+.1%} to {ci[1]:+.1%})"
    conclusion = benefit_conclusion(headline)
    if conclusion == "benefit":
        return f"{who}: {versus} is estimated to raise {month:g}-month survival by {gain:+.1%} {ci_text}."
    if conclusion == "harm":
        return f"{who}: {versus} is estimated to lower {month:g}-month survival by {-gain:.1%} {ci_text}."
    return (f"{who}: {versus} at {month:g} months inconclusive: compatible with {ci[0]:+.1%} to {ci[1]:+.1%} "
            f"(estimated {gain:+.1%}).")


#: Values of a filled-in confounder, evenly spread over its training 10th-90th percentile, at which a patient's
#: benefit is recomputed (:func:`benefit_across_range`). Unlike the nomogram's risk, an absolute gain is not
#: monotone in a confounder (it is largest at intermediate baseline risk), so the two ends alone need not bound it.
RANGE_POINTS = 9


def benefit_across_range(doc: Mapping[str, Any], confounders: Mapping[str, float], covariate: str,
                         value_range: Sequence[float], group_at: Callable[[float], str]) -> dict[str, Any]:
    """What a confounder filled with the training median could change in a patient's benefit.

    Why: a missing EBV DNA takes the training median, and the model's benefit (and whether its interval excludes 0)
    depends on it; a conclusion that holds only at the median must not be printed as if EBV DNA had been measured.

    Parameters
    ----------
    doc : mapping
        The bundle's ``chemo_benefit`` (:func:`~NPCPrognosisLib.survival.benefit.fit_benefit`), estimable.
    confounders : mapping
        The patient's encoded covariates, with the fill in ``covariate``.
    covariate : str
        The filled confounder (e.g. ``log10_ebv_dna``).
    value_range : (low, high)
        The training cohort's 10th and 90th percentile of the covariate (measured values).
    group_at : callable
        The patient's risk group with the covariate at a value (the nomogram's group may change within the range).

    Returns
    -------
    effect : dict
        ``filled_with``, ``value_range``, ``month`` (the headline's), ``benefit_range`` [min, max] of the headline
        gain of the high dose over the low dose at :data:`RANGE_POINTS` values and the fill, ``conclusions`` met
        there (:func:`benefit_conclusion`, in :data:`CONCLUSIONS` order), ``conclusion_determined`` (one
        throughout) and ``risk_groups`` met.
    """
    months = [float(m) for m in doc["bootstrap"]["months"]]
    fill = float(confounders[covariate])
    values = sorted({fill, *(float(v) for v in np.linspace(value_range[0], value_range[1], RANGE_POINTS))})
    gains, conclusions, groups = [], set(), set()
    for value in values:
        group = group_at(value)
        row = pd.DataFrame([{c: float(value if c == covariate else confounders[c]) for c in doc["confounders"]}])
        headline = _arm_estimates(doc, row, group, months)[2][f"{TREATED_ARM}_vs_{REFERENCE_ARM}"][f"{months[-1]:g}"]
        gains.append(headline["absolute_benefit"])
        conclusions.add(benefit_conclusion(headline))
        groups.add(group)
    met = [c for c in CONCLUSIONS if c in conclusions]
    return {"filled_with": fill, "value_range": [float(v) for v in value_range], "month": months[-1],
            "benefit_range": [float(min(gains)), float(max(gains))], "conclusions": met,
            "conclusion_determined": len(met) == 1, "risk_groups": [g for g in ("low", "high") if g in groups]}


def _imputed_sentence(name: str, range_text: str | None, block: Mapping[str, Any], sentence: str, who: str,
                      versus: str, gain: float) -> str:
    """The benefit sentence of a patient whose factor ``name`` was filled in: the sentence with the range the gain
    could take (one conclusion throughout), 'undetermined without ...' in its place when the conclusion changes
    within the range, or the sentence saying the range is unknown (a bundle without training percentiles).
    ``range_text`` is the training range as the clinician enters the factor (with its unit)."""
    if block.get("value_range") is None:
        return (f"{sentence} {name} not measured: the training median was used, and this bundle stores no training "
                f"percentiles of {name} (trained before they were kept), so how far it could move this benefit is "
                f"unknown; measure {name}, or retrain.")
    span = (f"{block['benefit_range'][0]:+.1%} to {block['benefit_range'][1]:+.1%} across the training 10th-90th "
            f"percentile of {name} ({range_text})")
    if block["conclusion_determined"]:
        return f"{sentence} {name} not measured (training median used): the estimate would be {span}, " \
               f"{block['conclusions'][0]} throughout."
    groups = (f"; its risk group would be {' or '.join(block['risk_groups'])}" if len(block["risk_groups"]) > 1
              else "")
    return (f"{who}: {versus} at {block['month']:g} months undetermined without {name}: estimated {gain:+.1%} at the "
            f"training median, {span}, where the conclusion would be {' or '.join(block['conclusions'])}{groups}. "
            f"Measure {name} before weighing this benefit.")


def patient_benefit(doc: Mapping[str, Any] | None, confounders: Mapping[str, float], group: str,
                    t_stage: str = "", n_stage: str = "", arm_given: str | None = None, *,
                    imputed: Mapping[str, Sequence[float] | None] | None = None,
                    group_at: Callable[[str, float], str] | None = None,
                    factor_texts: Mapping[str, tuple[str, str | None]] | None = None) -> dict[str, Any]:
    """Counterfactual survival under each arm with bootstrap 95% intervals, the absolute benefit and a sentence.

    Parameters
    ----------
    doc : mapping or None
        The bundle's ``chemo_benefit`` (:func:`~NPCPrognosisLib.survival.benefit.fit_benefit`).
    confounders : mapping
        The patient's encoded clinical covariates (:data:`~NPCPrognosisLib.survival.benefit.CONFOUNDERS`).
    group : {'low', 'high'}
        The patient's risk group.
    t_stage, n_stage : str, optional
        For the T1-2N1 remark.
    arm_given : str, optional
        The arm the patient was actually treated in (:func:`~NPCPrognosisLib.survival.benefit.given_arm`), so the
        page can mark it and say that its survival there is this model's, not the nomogram's.
    imputed : mapping, optional
        The covariates filled with the training median for this patient (missing EBV DNA), each with its training
        10th and 90th percentile (None: this bundle does not store them). The benefit is recomputed across that
        range (:func:`benefit_across_range`); when its conclusion changes there, the statement says "undetermined
        without ..." and ``benefit_shown`` is False.
    group_at : callable, optional
        ``group_at(covariate, value)``: the patient's risk group with the covariate at that value (default: ``group``).
    factor_texts : mapping, optional
        Per filled covariate, its name and its training range as the clinician enters it, for the sentence (the
        caller's labels, e.g. ('EBV DNA', '97-9,700 copies/mL'); default: the coded name and values).

    Returns
    -------
    benefit : dict
        ``statement``, ``conclusion`` (the headline's :func:`benefit_conclusion`, or "undetermined without <factor>"
        when a filled factor's range changes it or the bundle stores no range: one label for predict's and evaluate's
        tables), ``survival_by_arm``,
        ``benefit``, ``benefit_shown`` (``conclusion`` is 'benefit'), ``model`` (:data:`BENEFIT_MODEL`),
        ``given_arm``, ``absent_arms`` (arm: why it is not in the model), ``evidence`` and, per filled covariate the
        model adjusts for, ``imputed`` (:func:`benefit_across_range`; ``value_range`` None when unknown).
    """
    if not doc or not doc.get("estimable") or "model" not in doc:
        reason = (doc or {}).get("reason", "this bundle carries no chemotherapy-benefit model")
        return {"statement": f"Chemotherapy benefit: not estimable ({reason}).", "evidence": None}
    months = [float(m) for m in doc["bootstrap"]["months"]]
    row = pd.DataFrame([{c: float(confounders[c]) for c in doc["confounders"]}])
    point, draws, benefit = _arm_estimates(doc, row, group, months)
    if not all(np.isfinite(point[a][-1]) for a in doc["arms"]):
        return {"statement": f"Chemotherapy benefit: not estimable at {months[-1]:g} months (the training cohort's "
                             "follow-up ended before it).", "evidence": None}
    survival = {a: {f"{m:g}": {"survival": float(point[a][k]), **_interval(draws.get(a), k)}
                    for k, m in enumerate(months)} for a in doc["arms"]}
    thr = doc["threshold_mg_m2"]
    headline = benefit[f"{TREATED_ARM}_vs_{REFERENCE_ARM}"][f"{months[-1]:g}"]
    conclusion = benefit_conclusion(headline)
    subgroup = " (T1-2N1, the subgroup where this question is most debated)" if (
        t_stage in ("T1", "T2") and n_stage == "N1") else ""
    text = _benefit_sentence(group, subgroup, thr, months[-1], headline)
    filled: dict[str, Any] = {}
    for covariate, value_range in (imputed or {}).items():
        if covariate not in doc["confounders"]:
            continue  # the model does not read it: the fill changes nothing
        filled[covariate] = {"filled_with": float(confounders[covariate]), "value_range": None} \
            if value_range is None else benefit_across_range(
                doc, confounders, covariate, value_range,
                (lambda value, c=covariate: group_at(c, value)) if group_at else (lambda value: group))
        name, range_text = (factor_texts or {}).get(covariate) or (
            covariate, None if value_range is None else f"{value_range[0]:g}-{value_range[1]:g}")
        text = _imputed_sentence(name, range_text, filled[covariate], text, *_who_and_versus(group, subgroup, thr),
                                 headline["absolute_benefit"])
        if value_range is None or not filled[covariate]["conclusion_determined"]:
            # a conclusion resting on the median, with no range to show it holds, is not one
            conclusion = f"undetermined without {name}"
    text += " Observational evidence adjusted for clinical factors, not a randomised comparison."
    effect = {e["arm"]: e for e in doc["effects"].get(group, [])}.get(TREATED_ARM)
    out = {"statement": text, "conclusion": conclusion, "benefit_shown": conclusion == "benefit",
           "survival_by_arm": survival, "benefit": benefit, "model": BENEFIT_MODEL,
           "given_arm": arm_given, "absent_arms": absent_arms(doc),
           "evidence": {"threshold_mg_m2": thr, "group_hr": effect,
                        "interaction_p": (doc.get("interaction_lrt") or {}).get("p"),
                        "bootstrap_n": doc["bootstrap"]["n"], "note": doc["note"]}}
    return {**out, "imputed": filled} if filled else out


def _arm_estimates(doc: Mapping[str, Any], row: pd.DataFrame, group: str, months: Sequence[float]
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """One patient's survival under each arm at ``months`` (point estimates), its bootstrap draws, and the gain of
    the high dose over the low dose and over radiotherapy alone per month with its 95% interval."""
    point = {a: v[0] for a, v in counterfactual_survival(doc, row, group, months).items()}
    draws = bootstrap_survival(doc, row, group)
    benefit: dict[str, Any] = {}
    for other in (REFERENCE_ARM, "rt_alone"):
        if other not in doc["arms"]:
            continue
        diff = None if not draws else draws[TREATED_ARM] - draws[other]
        benefit[f"{TREATED_ARM}_vs_{other}"] = {
            f"{m:g}": {"absolute_benefit": float(point[TREATED_ARM][k] - point[other][k]), **_interval(diff, k)}
            for k, m in enumerate(months)}
    return point, draws, benefit

def _interval(draws: np.ndarray | None, k: int) -> dict[str, Any]:
    values = None if draws is None else draws[:, k][np.isfinite(draws[:, k])]  # a draw followed up too briefly
    if values is None or len(values) < 20:
        return {"ci95": None}
    lo, hi = np.percentile(values, [2.5, 97.5])
    return {"ci95": [float(lo), float(hi)]}
