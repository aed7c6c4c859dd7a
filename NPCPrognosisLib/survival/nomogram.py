"""Cox nomograms: survival at 1/3/5 years and the points per factor a clinician reads off the chart.

The same class serves the clinical model (clinical factors only) and the combined nomogram (Rad-score, deep
score and clinical factors); which factors enter is data, not code.

Why the combined nomogram is stacked: on ~160 patients a Cox model of a Rad-score and seven clinical factors
estimates eight coefficients from ~60 events, and the clinical coefficients soak up noise that the Rad-score's
coefficient (fitted on its cross-fitted, hence noisier, training values) cannot balance; on held-out phantom
cohorts that joint fit did worse than the better of its two parts. Stacking (Breiman 1996, "Stacked
regressions") fits the clinical Cox model, scores each training patient out of fold, and fits one weight per
block (each score, the clinical score) on those honest values; the nomogram's coefficient of a clinical factor is
then the block weight times its clinical coefficient, so the chart still reads one line per factor. Named groups of
factors (``factor_blocks``: the log tumour volumes) are blocks of their own in the same way, each one Cox fit, one
out-of-fold score and one weight.

Block weights are never negative (Breiman's stacking constrains them the same way): a score, already oriented so
that higher means worse, whose out-of-fold values get a negative weight ranked the training patients the wrong way
round, i.e. it did not validate. Left negative it would turn a good in-sample score into an inverted model; it gets
weight 0 instead, the other blocks are refitted without it, and the model records it (``construction.no_weight``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.survival.cox import CoxModel, cox_with_coefficients, fit_cox, runaway_penalty, runaway_warning

#: Months at which survival is reported (1, 3 and 5 years).
REPORT_MONTHS = (12, 36, 60)
#: Folds of the out-of-fold block scores (clinical, volume) a stacked nomogram weighs against the other scores.
STACKING_FOLDS = 5
#: The name :meth:`Nomogram.out_of_range` gives the risk score (all factors combined) when it lies beyond every
#: training patient's, beside the factors outside their own ranges.
COMBINED_RISK = "combined_risk"
#: Slack of the training risk range (log hazard ratio): a training patient scored again, alone, may differ from its
#: score among all rows by rounding, and must not read as beyond itself.
RISK_RANGE_SLACK = 1e-9


@dataclass
class Nomogram:
    """A fitted Cox model plus the training range of each factor and of the risk score (for points and
    extrapolation warnings)."""

    name: str
    model: CoxModel
    low: list[float]
    high: list[float]
    #: Mean linear predictor of the training cohort: risk 0 is the average training patient, so a score
    #: means something to a clinician (log hazard ratio against that patient) whatever the factors' units.
    center: float = 0.0
    #: How the coefficients were obtained when not by one Cox fit (stacking: block weights and folds).
    construction: dict[str, Any] | None = None
    #: The Cox fits (this model's own, or a stacked block's) whose coefficients ran away and were refitted with a
    #: larger ridge penalty (:func:`~NPCPrognosisLib.survival.cox.runaway_penalty`), each with its ``warning``;
    #: None when every fit was sound.
    runaway: dict[str, dict[str, Any]] | None = None
    #: Lowest and highest :meth:`risk` of the training patients. Why: each factor can lie inside its own training
    #: range while their combination (high LDH, stage and EBV DNA together) puts the patient's risk beyond every
    #: training patient's, where survival is an extrapolation (5e-5 at 36 months on a 28-patient cohort) that the
    #: per-factor check cannot see. None in a bundle saved before it was kept: then only the factors are checked.
    risk_range: list[float] | None = None
    #: Variance of factors that are themselves estimates (``rad_score``: the jackknife of the cross-fitting
    #: signatures, :func:`~NPCPrognosisLib.radiomics.signature.rad_score_variance`), in squared factor units. Why:
    #: the Cox covariance takes every factor as measured, so the intervals ignored that the Rad-score's features
    #: and coefficients were themselves selected on the training patients. None in a bundle saved before it was
    #: kept, or when the Rad-score was not cross-fitted: then the intervals are the Cox fit's alone.
    score_variance: dict[str, float] | None = None

    @property
    def factors(self) -> list[str]:
        return list(self.model.covariates)

    def _matrix(self, table: pd.DataFrame | Mapping[str, float]) -> np.ndarray:
        if isinstance(table, Mapping):
            table = pd.DataFrame([dict(table)])
        missing = [f for f in self.factors if f not in table.columns]
        if missing:
            raise InputError(f"the {self.name} model needs factor(s) {missing}",
                             fix="provide every factor of the model")
        values = table[self.factors].to_numpy(float)
        if np.isnan(values).any():
            bad = [f for f, col in zip(self.factors, np.isnan(values).any(axis=0)) if col]
            raise InputError(f"missing value(s) for {bad} in the {self.name} model", column=bad[0])
        return values

    def risk(self, table: pd.DataFrame | Mapping[str, float]) -> np.ndarray:
        """Log hazard ratio against the average training patient; higher means worse prognosis."""
        return self.model.linear_predictor(self._matrix(table)) - self.center

    def survival(self, table: pd.DataFrame | Mapping[str, float],
                 months: Sequence[float] = REPORT_MONTHS) -> np.ndarray:
        return self.model.survival_at(self._matrix(table), np.asarray(months, float))

    def survival_interval(self, table: pd.DataFrame | Mapping[str, float], months: Sequence[float] = REPORT_MONTHS,
                          z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise interval of :meth:`survival` (95 % at the default ``z``): S ** exp(+-z SE) with the SE of
        log H(t|x) (:meth:`~NPCPrognosisLib.survival.cox.CoxModel.log_cumhaz_se`, Tsiatis) widened by the
        estimated factors' own variance (:meth:`score_log_hazard_variance`); NaN where unknown (before the first
        event time, or a bundle saved without the baseline's variance).

        Parameters
        ----------
        table : DataFrame or mapping
            The patients' factors.
        months : sequence of float, default REPORT_MONTHS
        z : float, default 1.96
            Normal quantile (1.96: 95 %).

        Returns
        -------
        lower, upper : numpy.ndarray
            Shape (patients, months).
        """
        values = self._matrix(table)
        months = np.asarray(months, float)
        survival = np.clip(self.model.survival_at(values, months), 0.0, 1.0)
        se = np.sqrt(self.model.log_cumhaz_se(values, months) ** 2 + self.score_log_hazard_variance())
        factor = np.exp(z * se)
        known = np.isfinite(factor)  # 1.0 ** nan is 1.0: the unknown must stay NaN, not look like certainty
        return np.where(known, survival ** factor, np.nan), np.where(known, survival ** (1.0 / factor), np.nan)

    def score_log_hazard_variance(self) -> float:
        """What the estimated factors' own variance (:attr:`score_variance`) adds to the variance of a patient's
        log hazard: sum of coefficient^2 x variance (the factor's error taken as independent of the Cox fit's);
        0 when none is kept."""
        variance = self.score_variance or {}
        coef = dict(zip(self.factors, np.asarray(self.model.coef, float)))
        return float(sum(coef[f] ** 2 * float(v) for f, v in variance.items() if f in coef))

    def survival_for_risk(self, risk: float, months: Sequence[float]) -> np.ndarray:
        """Survival curve of a patient with this risk score (e.g. a risk group's median: the reference curves)."""
        h0 = self.model.cumulative_hazard_at(np.zeros((1, len(self.factors))), np.asarray(months, float))[0]
        return np.exp(-np.asarray(h0) * np.exp(float(risk) + self.center))

    def _scale(self) -> tuple[np.ndarray, np.ndarray, float]:
        coef = np.asarray(self.model.coef, float)
        low, high = np.asarray(self.low), np.asarray(self.high)
        span = np.abs(coef) * (high - low)
        # the value scoring 0 points: the most favourable one seen in training
        reference = np.where(coef >= 0, low, high)
        return coef, reference, float(span.max()) if span.max() > 0 else 1.0

    def points(self, values: Mapping[str, float]) -> dict[str, Any]:
        """Nomogram points: 100 for the full training range of the strongest factor, 0 at each factor's best value."""
        coef, reference, top = self._scale()
        x = self._matrix(values)[0]
        per_factor = {f: float(100.0 * c * (v - r) / top) for f, c, v, r in zip(self.factors, coef, x, reference)}
        return {"per_factor": per_factor, "total": float(sum(per_factor.values())),
                "points_per_unit_log_hazard": 100.0 / top}

    def chart_scale(self, months: Sequence[float] = REPORT_MONTHS) -> dict[str, Any]:
        """What a printed nomogram needs, as JSON: each factor's coefficient, training range and 0-point value,
        the points per unit log hazard, and the baseline cumulative hazard at ``months``.

        With it a chart maps total points back to survival without the bundle:
        ``S(t) = exp(-H0(t) * exp(total / points_per_unit_log_hazard + offset))``, ``offset = sum(coef * zero)``.
        """
        coef, reference, top = self._scale()
        h0 = self.model.cumulative_hazard_at(np.zeros((1, len(self.factors))), np.asarray(months, float))[0]
        known = np.isfinite(h0)  # a survival axis after the training follow-up would read off an unknown hazard
        months, h0 = [float(m) for m in np.asarray(months, float)[known]], h0[known]
        return {"factors": self.factors, "coef": [float(c) for c in coef], "low": [float(v) for v in self.low],
                "high": [float(v) for v in self.high], "zero_point_value": [float(v) for v in reference],
                "points_per_unit_log_hazard": 100.0 / top, "offset": float(np.dot(coef, reference)),
                "center": float(self.center), "months": months,
                "baseline_cumulative_hazard": [float(v) for v in h0]}

    def out_of_range(self, values: Mapping[str, float]) -> list[dict[str, Any]]:
        """Where the model is extrapolating for this patient: each factor outside its training range, then the
        risk score when it lies beyond every training patient's (:attr:`risk_range`; ``factor`` is
        :data:`COMBINED_RISK`), as data, so a report can put the extrapolation in its headline.

        Parameters
        ----------
        values : mapping of str to float
            One patient's factors.

        Returns
        -------
        list of dict
            ``factor``, ``value``, ``low`` and ``high`` (the training range) of each; empty when the patient lies
            inside every range.
        """
        x = self._matrix(values)[0]
        items = [{"factor": f, "value": float(v), "low": float(lo), "high": float(hi)}
                 for f, v, lo, hi in zip(self.factors, x, self.low, self.high) if v < lo or v > hi]
        if self.risk_range is not None:
            risk, (low, high) = float(self.risk(values)[0]), self.risk_range
            if risk < low - RISK_RANGE_SLACK or risk > high + RISK_RANGE_SLACK:
                items.append({"factor": COMBINED_RISK, "value": risk, "low": float(low), "high": float(high)})
        return items

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "model": self.model.to_dict(), "low": self.low, "high": self.high,
               "center": self.center}
        if self.construction is not None:
            out["construction"] = self.construction
        if self.runaway is not None:
            out["runaway"] = self.runaway
        if self.risk_range is not None:
            out["risk_range"] = self.risk_range
        if self.score_variance is not None:
            out["score_variance"] = self.score_variance
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Nomogram:
        return cls(name=data["name"], model=CoxModel.from_dict(data["model"]), low=list(data["low"]),
                   high=list(data["high"]), center=float(data.get("center", 0.0)),
                   construction=data.get("construction"), runaway=data.get("runaway"),
                   risk_range=None if data.get("risk_range") is None else [float(v) for v in data["risk_range"]],
                   score_variance=None if data.get("score_variance") is None
                   else {str(k): float(v) for k, v in data["score_variance"].items()})


#: The block of the factors no named block claims (:func:`stacking_blocks`).
CLINICAL_BLOCK = "clinical"


def stacking_blocks(factors: Sequence[str], scores: Sequence[str],
                    factor_blocks: Mapping[str, Sequence[str]] | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """The blocks a stacked model weighs: the ``factors`` that are scores (one weight each), and groups of the
    others, each fitted as one Cox model and weighed as one out-of-fold score: those of each named group of
    ``factor_blocks`` present, then the rest as the :data:`CLINICAL_BLOCK` (groups without a factor are left
    out)."""
    score_set = set(scores)
    score_list = [f for f in factors if f in score_set]
    others = [f for f in factors if f not in score_set]
    blocks: dict[str, list[str]] = {}
    for block, members in (factor_blocks or {}).items():
        member_set = set(members)
        if found := [f for f in others if f in member_set]:
            blocks[block] = found
    claimed = {f for members in blocks.values() for f in members}
    if rest := [f for f in others if f not in claimed]:
        blocks = {CLINICAL_BLOCK: rest, **blocks}
    return score_list, blocks


def fit_nomogram(name: str, table: pd.DataFrame, factors: Sequence[str], time: np.ndarray, event: np.ndarray,
                 *, ties: str = "efron", penalizer: float = 0.0, scores: Sequence[str] = (),
                 factor_blocks: Mapping[str, Sequence[str]] | None = None, seed: int = 0,
                 groups: np.ndarray | None = None) -> Nomogram:
    """Fit a Cox model on ``factors`` of the training table and remember their observed ranges.

    Parameters
    ----------
    name : str
        The model's name.
    table : DataFrame
        Training factors, one row per patient.
    factors : sequence of str
        Columns of ``table`` the model uses.
    time, event : ndarray
        Training outcomes.
    ties, penalizer
        Cox ties convention and ridge strength (see :func:`NPCPrognosisLib.survival.cox.fit_cox`).
    scores : sequence of str
        Columns that are risk scores already fitted elsewhere (and out of fold on these patients: the Rad-score,
        the deep score). When ``factors`` mixes such scores with other factors, the model is stacked (module
        docstring): one Cox fit of the other factors, scored out of fold over :data:`STACKING_FOLDS` folds
        (seeded by ``seed``), and one weight per score and for that clinical score. Weights of scores and of the
        clinical score are kept non-negative (module docstring).
    factor_blocks : mapping of str to sequence of str, optional
        Named groups of the other factors that are stacked as blocks of their own (e.g. the tumour volumes beside
        the clinical factors): each group is one Cox fit scored out of fold, with its own non-negative weight; the
        factors no group claims form the clinical block. Two or more blocks are stacked even without a score.
    seed : int
        Seed of those folds.
    groups : ndarray, optional
        Patient label of each row: copies of one patient (a bootstrap resample) stay in one fold.

    Returns
    -------
    nomogram : Nomogram
    """
    factors = list(factors)
    values = table[factors].to_numpy(float)
    low, high = [float(v) for v in values.min(axis=0)], [float(v) for v in values.max(axis=0)]
    time, event = np.asarray(time, float), np.asarray(event, bool)
    score_columns, blocks = stacking_blocks(factors, scores, factor_blocks)
    construction, runaway = None, {}
    if len(score_columns) + len(blocks) > 1 and blocks:
        fits, ridges, runaway = _sound_fits(name, blocks, table, time, event, ties, penalizer)
        coef, covariance, construction = _stacked_cox(table, score_columns, blocks, time, event, ties, penalizer,
                                                      seed, groups, fits, ridges)
        stacked_order = score_columns + [f for members in blocks.values() for f in members]
        order = [stacked_order.index(f) for f in factors]
        model = cox_with_coefficients(values, time, event, factors, coef[order], covariance[np.ix_(order, order)],
                                      ties=ties, penalizer=penalizer)
    elif score_columns:
        coef, covariance, dropped = _non_negative_cox(values, factors, time, event, ties, penalizer)
        model = cox_with_coefficients(values, time, event, factors, coef, covariance, ties=ties, penalizer=penalizer)
        if dropped:
            construction = {"method": "non-negative Cox weights of out-of-fold scores", "no_weight": dropped}
    else:
        fits, _, runaway = _sound_fits(name, {name: factors}, table, time, event, ties, penalizer)
        model = fits[name]
    training_risk = model.linear_predictor(values)
    center = float(np.mean(training_risk))
    return Nomogram(name=name, model=model, low=low, high=high, center=center, construction=construction,
                    runaway=runaway or None,
                    risk_range=[float(training_risk.min() - center), float(training_risk.max() - center)])


def _sound_fits(name: str, fits: Mapping[str, Sequence[str]], table: pd.DataFrame, time: np.ndarray,
                event: np.ndarray, ties: str, penalizer: float
                ) -> tuple[dict[str, CoxModel], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Each Cox fit of a model (its own factors, or a stacked model's blocks) on all rows, with its ridge penalty
    as :func:`~NPCPrognosisLib.survival.cox.fit_cox` keywords (for the out-of-fold fits of a block): ``penalizer``
    on the factors as given, or for a fit whose coefficients ran away the larger one per SD that
    :func:`~NPCPrognosisLib.survival.cox.runaway_penalty` chooses; and the record of each such refit with the
    warning that names the model and the factors."""
    models, ridges, runaway = {}, {}, {}
    for fit, members in fits.items():
        models[fit], record = runaway_penalty(table[list(members)].to_numpy(float), time, event, list(members),
                                              ties=ties, penalizer=penalizer)
        ridges[fit] = ({"penalizer": penalizer} if record is None else
                       {"penalizer": record["penalizer"], "penalty_per_sd": record["penalty_per_sd"]})
        if record is not None:
            label = name if fit == name else f"{name} ({fit} block)"
            runaway[fit] = {**record, "warning": runaway_warning(label, record, int(np.sum(event)), len(members))}
    return models, ridges, runaway


def _stacked_cox(table: pd.DataFrame, scores: list[str], blocks: dict[str, list[str]], time: np.ndarray,
                 event: np.ndarray, ties: str, penalizer: float, seed: int, groups: np.ndarray | None,
                 block_fits: Mapping[str, CoxModel], block_ridges: Mapping[str, Mapping[str, Any]]
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Coefficients (scores, then each block's factors in order) of the stacked model and their delta-method
    covariance. ``block_fits`` are the blocks' Cox fits on all rows (:func:`_sound_fits`); their out-of-fold fits
    take the same ``block_ridges`` entry, keywords of :func:`~NPCPrognosisLib.survival.cox.fit_cox`; the block
    weights use ``penalizer``.

    The covariance treats the stages as independent (the block weights are fitted on out-of-fold values, each
    block's Cox model on its own factors): for a factor j of block b with coefficient w_b * beta_j,
    var = w_b^2 var(beta_j) + beta_j^2 var(w_b).
    """
    from NPCPrognosisLib.survival.splits import event_folds

    fold = event_folds(event, STACKING_FOLDS, seed, groups)
    fits, out_of_fold = {block: block_fits[block] for block in blocks}, {}
    for block, members in blocks.items():
        values = table[members].to_numpy(float)
        ridge = block_ridges[block]
        out_of_fold[block] = np.zeros(len(time))
        for k in np.unique(fold):
            held = fold == k
            part = fit_cox(values[~held], time[~held], event[~held], covariates=members, ties=ties, **ridge)
            out_of_fold[block][held] = part.linear_predictor(values[held])
    names = [*scores, *(f"{block}_score" for block in blocks)]
    stack = np.column_stack([table[scores].to_numpy(float), *out_of_fold.values()])
    weights, weight_covariance, dropped = _non_negative_cox(stack, names, time, event, ties, penalizer)
    weight_se = np.sqrt(np.clip(np.diag(weight_covariance), 0.0, None))
    m, n_blocks = len(scores), len(blocks)
    sizes = [len(members) for members in blocks.values()]
    p = sum(sizes)
    coef = np.concatenate([weights[:m], *(weights[m + j] * np.asarray(fit.coef, float)
                                          for j, fit in enumerate(fits.values()))])
    # parameters: the m + n_blocks weights, then every block's Cox coefficients; rows: the stacked model's coefficients
    jacobian = np.zeros((m + p, m + n_blocks + p))
    jacobian[:m, :m] = np.eye(m)
    sigma = np.zeros((m + n_blocks + p, m + n_blocks + p))
    sigma[:m + n_blocks, :m + n_blocks] = weight_covariance
    start = 0
    for j, fit in enumerate(fits.values()):
        rows = slice(m + start, m + start + sizes[j])
        cols = slice(m + n_blocks + start, m + n_blocks + start + sizes[j])
        jacobian[rows, m + j] = fit.coef
        jacobian[rows, cols] = weights[m + j] * np.eye(sizes[j])
        sigma[cols, cols] = fit.covariance
        start += sizes[j]
    covariance = jacobian @ sigma @ jacobian.T
    construction = {
        "method": "stacked: one Cox weight per score and for each block's out-of-fold score (Breiman 1996)",
        "folds": STACKING_FOLDS, "seed": int(seed),
        "weights": {n: float(w) for n, w in zip(names, weights)},
        "weight_se": {n: float(w) for n, w in zip(names, weight_se)},
        "block_coef": {f"{block}_score": {f: float(c) for f, c in zip(blocks[block], fit.coef)}
                       for block, fit in fits.items()},
        "no_weight": dropped,
    }
    return coef, covariance, construction


def _non_negative_cox(blocks: np.ndarray, names: list[str], time: np.ndarray, event: np.ndarray, ties: str,
                      penalizer: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cox weights of out-of-fold blocks with none negative: the most negative block is dropped (weight 0) and the
    rest refitted until every weight is >= 0. Returns the weights, their covariance (zero rows and columns for a
    dropped block) and the dropped names, in order of dropping."""
    keep = list(range(len(names)))
    coef, covariance = np.zeros(len(names)), np.zeros((len(names), len(names)))
    dropped: list[str] = []
    while keep:
        fit = fit_cox(blocks[:, keep], time, event, covariates=[names[i] for i in keep], ties=ties,
                      penalizer=penalizer)
        worst = int(np.argmin(fit.coef))
        if fit.coef[worst] >= 0:
            coef[keep] = fit.coef
            covariance[np.ix_(keep, keep)] = fit.covariance
            break
        dropped.append(names[keep.pop(worst)])
    return coef, covariance, dropped
