"""Treatment effect by subgroup: a Cox model with treatment x subgroup interaction, adjusted for confounders.

Who benefits from intensified chemotherapy is a question about an *interaction*: the hazard ratio of the
treatment differs between risk groups. Fitting one univariable HR per group answers a different question (the
groups' HRs are confounded by why doctors gave more chemotherapy, and two separate CIs are no test of a
difference). This module fits one Cox model

    log h(t | x) = log h0(t) + sum_a b_a [arm = a] + g [by = level] + sum_a c_a [arm = a][by = level] + d'z

(treatment arms against a reference arm, the subgroup, their products and confounders ``z``), reads the
treatment HR of every subgroup level as a linear combination of coefficients with its covariance-based CI, and
tests the interaction with a Wald test and a likelihood-ratio test against the model without the products.
The same code serves ``npc-prognosis benefit`` on any table (checked against ACTG 320, a randomised trial
scikit-survival ships) and the per-risk-group chemotherapy model the bundle stores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.survival.cox import CoxModel, _exp, fit_cox

_Z975 = 1.959963984540054


def _label(value: Any) -> str:
    """Category labels as strings; 1.0 and 1 are the same level."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def indicator_name(prefix: str, level: str) -> str:
    return f"{prefix}[{level}]"


@dataclass
class InteractionFit:
    """A treatment x subgroup Cox fit: the model, the coding of its indicators and the interaction tests."""

    model: CoxModel
    treatment: str
    reference: str
    arms: list
    by: str | None
    by_reference: str | None
    by_levels: list
    covariates: list
    lrt_interaction: dict | None

    # ------------------------------------------------------------------ effects
    def _contrast(self, arm: str, level: str | None) -> np.ndarray:
        names = self.model.covariates
        a = np.zeros(len(names))
        a[names.index(indicator_name(self.treatment, arm))] = 1.0
        if level is not None and level != self.by_reference:
            a[names.index(f"{indicator_name(self.treatment, arm)}:{indicator_name(self.by, level)}")] = 1.0
        return a

    def effect(self, arm: str, level: str | None = None) -> dict:
        """HR of ``arm`` against the reference arm within subgroup ``level`` (Wald CI from the covariance)."""
        from scipy.stats import norm

        a = self._contrast(arm, level)
        b = float(a @ self.model.coef)
        se = float(math.sqrt(max(a @ self.model.covariance @ a, 0.0)))
        z = b / se if se > 0 else float("nan")
        return {"arm": arm, "versus": self.reference, "level": level, "log_hr": b, "se": se,
                "hr": _exp(b), "hr_95ci": [_exp(b - _Z975 * se), _exp(b + _Z975 * se)],
                "p": float(2.0 * norm.sf(abs(z))) if math.isfinite(z) else float("nan")}

    def effects(self) -> list:
        levels = self.by_levels if self.by is not None else [None]
        return [self.effect(arm, level) for level in levels for arm in self.arms if arm != self.reference]

    def wald_interaction(self) -> dict | None:
        """Joint Wald test that the treatment HR is the same in every subgroup level."""
        names = [c for c in self.model.covariates if ":" in c]
        return wald_test(self.model, names) if names else None

    def to_dict(self) -> dict:
        return {"treatment": self.treatment, "reference_arm": self.reference, "arms": list(self.arms),
                "by": self.by, "by_reference": self.by_reference, "by_levels": list(self.by_levels),
                "covariates": list(self.covariates), "model": self.model.to_dict(),
                "effects": self.effects(), "interaction_wald": self.wald_interaction(),
                "interaction_lrt": self.lrt_interaction}


def wald_test(model: CoxModel, terms: Sequence[str]) -> dict:
    """Joint Wald test that the coefficients of ``terms`` are all zero (chi-square with len(terms) df)."""
    from scipy.stats import chi2

    idx = [model.covariates.index(c) for c in terms]
    b = np.asarray(model.coef)[idx]
    stat = float(b @ np.linalg.solve(np.asarray(model.covariance)[np.ix_(idx, idx)], b))
    return {"terms": list(terms), "chi2": stat, "df": len(idx), "p": float(chi2.sf(stat, len(idx)))}


def interaction_design(treatment: Sequence[Any], by: Sequence[Any] | None, covariates: pd.DataFrame | None, *,
                       treatment_name: str, reference: str, arms: Sequence[str], by_name: str | None = None,
                       by_reference: str | None = None, by_levels: Sequence[str] = (),
                       interaction: bool = True) -> pd.DataFrame:
    """Indicator columns for the arms, the subgroup levels, their products, then the confounders."""
    arm = np.array([_label(v) for v in treatment])
    cols: dict[str, np.ndarray] = {}
    others = [a for a in arms if a != reference]
    for a in others:
        cols[indicator_name(treatment_name, a)] = (arm == a).astype(float)
    if by is not None:
        level = np.array([_label(v) for v in by])
        for lv in by_levels:
            if lv != by_reference:
                cols[indicator_name(by_name, lv)] = (level == lv).astype(float)
        if interaction:
            for a in others:
                for lv in by_levels:
                    if lv != by_reference:
                        cols[f"{indicator_name(treatment_name, a)}:{indicator_name(by_name, lv)}"] = (
                            (arm == a) & (level == lv)).astype(float)
    design = pd.DataFrame(cols)
    if covariates is not None and len(covariates.columns):
        design = pd.concat([design, covariates.reset_index(drop=True)], axis=1)
    return design


def _levels(values: Sequence[Any], what: str, column: str) -> list:
    labels = [_label(v) for v in values]
    if any(lb in ("nan", "None", "") for lb in labels):
        raise InputError(f"missing {what} value(s)", column=column, fix="fill or drop those rows")
    return sorted(set(labels), key=lambda s: (not _is_number(s), float(s) if _is_number(s) else 0.0, s))


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def fit_interaction(time: Any, event: Any, treatment: Sequence[Any], *, by: Sequence[Any] | None = None,
                    covariates: pd.DataFrame | None = None, reference: str | None = None,
                    by_reference: str | None = None, treatment_name: str = "treatment", by_name: str = "by",
                    ties: str = "efron", penalizer: float = 0.0) -> InteractionFit:
    """Fit the treatment x subgroup Cox model.

    Parameters
    ----------
    time, event : array-like
        Follow-up time and event indicator (1 = event).
    treatment : sequence
        Arm of each patient (any labels; numbers and their string forms are the same arm).
    by : sequence, optional
        Subgroup of each patient; without it the model has the treatment terms and confounders only.
    covariates : DataFrame, optional
        Numeric confounders, one row per patient, in the order of ``time``.
    reference, by_reference : str, optional
        Reference arm and reference subgroup level; default: the lowest label.
    ties : {'efron', 'breslow'}
        Tie handling (Efron reproduces the published ACTG 320 HR).

    Returns
    -------
    fit : InteractionFit
        The fitted model; :meth:`InteractionFit.effects` gives the arm HRs per subgroup level, and the
        interaction is tested by Wald (``wald_interaction``) and likelihood ratio (``lrt_interaction``).
    """
    from scipy.stats import chi2

    arms = _levels(treatment, "treatment", treatment_name)
    if len(arms) < 2:
        raise InputError(f"every patient has the same treatment ({arms})", column=treatment_name,
                         fix="a treatment effect needs at least two arms")
    reference = _label(reference) if reference is not None else arms[0]
    if reference not in arms:
        raise InputError(f"reference arm {reference!r} is not among the arms {arms}", column=treatment_name,
                         fix="name an arm that occurs in the data")
    by_levels: list = []
    if by is not None:
        by_levels = _levels(by, "subgroup", by_name)
        by_reference = _label(by_reference) if by_reference is not None else by_levels[0]
        if by_reference not in by_levels:
            raise InputError(f"reference level {by_reference!r} not among {by_levels}", column=by_name,
                             fix="name a level that occurs in the data")
    kwargs = dict(treatment_name=treatment_name, reference=reference, arms=arms, by_name=by_name,
                  by_reference=by_reference, by_levels=by_levels)
    design = interaction_design(treatment, by, covariates, **kwargs)
    time, event = np.asarray(time, float), np.asarray(event, float)
    model = fit_cox(design, time, event, list(design.columns), ties=ties, penalizer=penalizer)
    lrt = None
    if by is not None and len(by_levels) > 1:
        main = interaction_design(treatment, by, covariates, interaction=False, **kwargs)
        reduced = fit_cox(main, time, event, list(main.columns), ties=ties, penalizer=penalizer)
        stat = max(2.0 * (model.log_likelihood - reduced.log_likelihood), 0.0)
        df = len(design.columns) - len(main.columns)
        lrt = {"chi2": float(stat), "df": int(df), "p": float(chi2.sf(stat, df))}
    return InteractionFit(model=model, treatment=treatment_name, reference=reference, arms=arms,
                          by=by_name if by is not None else None, by_reference=by_reference, by_levels=by_levels,
                          covariates=list(covariates.columns) if covariates is not None else [],
                          lrt_interaction=lrt)


def benefit_table(table: pd.DataFrame, time_col: str, event_col: str, treatment_col: str, *,
                  by: str | None = None, covariates: Sequence[str] = (), reference: str | None = None,
                  ties: str = "efron") -> dict:
    """What ``npc-prognosis benefit`` prints: overall and per-subgroup treatment HRs and the interaction test.

    Parameters
    ----------
    table : DataFrame
        One row per patient.
    time_col, event_col, treatment_col : str
        Column names of follow-up, event (1 = event) and treatment arm.
    by : str, optional
        Subgroup column; the per-level HRs come from one interaction model, adjusted for ``covariates``.
    covariates : sequence of str
        Numeric confounder columns.
    reference : str, optional
        Reference arm (default: lowest label).

    Returns
    -------
    result : dict
        ``overall`` (treatment HRs adjusted for the covariates), ``by_subgroup`` (the interaction model:
        per-level HRs, Wald and likelihood-ratio interaction tests) and ``within_subgroups`` (separate fits in
        each level, as a stratified analysis reports them), JSON-able.
    """
    for col in [time_col, event_col, treatment_col, *([by] if by else []), *covariates]:
        if col not in table.columns:
            raise InputError("column not found", column=col, fix=f"columns are {list(table.columns)}")
    cov = table[list(covariates)].reset_index(drop=True) if covariates else None
    t, e = table[time_col].to_numpy(), table[event_col].to_numpy()
    overall = fit_interaction(t, e, table[treatment_col].to_numpy(), covariates=cov, reference=reference,
                              treatment_name=treatment_col, ties=ties)
    result: dict[str, Any] = {"n": int(len(table)), "events": int(overall.model.events), "ties": ties,
                              "treatment": treatment_col, "reference_arm": overall.reference,
                              "covariates": list(covariates), "overall": overall.effects()}
    if by:
        fit = fit_interaction(t, e, table[treatment_col].to_numpy(), by=table[by].to_numpy(), covariates=cov,
                              reference=reference, treatment_name=treatment_col, by_name=by, ties=ties)
        result["by_subgroup"] = {"by": by, "levels": fit.by_levels, "effects": fit.effects(),
                                 "interaction_wald": fit.wald_interaction(), "interaction_lrt": fit.lrt_interaction}
        within = []
        labels = np.array([_label(v) for v in table[by]])
        for level in fit.by_levels:
            rows = labels == level
            sub = table[rows].reset_index(drop=True)
            try:
                one = fit_interaction(sub[time_col].to_numpy(), sub[event_col].to_numpy(),
                                      sub[treatment_col].to_numpy(),
                                      covariates=sub[list(covariates)] if covariates else None,
                                      reference=overall.reference, treatment_name=treatment_col, ties=ties)
                within.append({"level": level, "n": int(rows.sum()), "events": int(one.model.events),
                               "effects": one.effects()})
            except InputError as exc:
                within.append({"level": level, "n": int(rows.sum()), "estimable": False, "reason": str(exc)})
        result["within_subgroups"] = within
    return result
