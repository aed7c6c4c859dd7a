"""The radiomics signature: z-scoring, univariate and redundancy filters, LASSO-Cox, the Rad-score.

Thousands of correlated features and a hundred patients is the classic recipe for an optimistic model; each
filter here exists to cut that down before the LASSO sees it, and every learned number (imputation values,
means, SDs, kept features, coefficients) is stored so a new patient is scored exactly as the training ones.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.survival.splits import event_folds

log = logging.getLogger(__name__)


@dataclass
class SignatureSettings:
    """Filter and LASSO settings; defaults follow the NPC radiomics literature (p < 0.05, |r| > 0.85)."""

    max_missing_fraction: float = 0.5
    p_threshold: float = 0.05
    #: Cap on features entering the LASSO after the p filter (lowest p first) so the CV stays tractable.
    max_univariate: int = 200
    corr_threshold: float = 0.85
    cv_folds: int = 5
    n_alphas: int = 50
    alpha_min_ratio: float = 0.02
    #: Choose the largest alpha whose CV C-index is within one SE of the best (sparser, more stable signature).
    one_se_rule: bool = True
    seed: int = 0


@dataclass
class RadiomicsSignature:
    """A fitted Rad-score: everything needed to score a new patient from a features table row."""

    features: list[str]
    impute: list[float]
    mean: list[float]
    sd: list[float]
    coef: list[float]
    alpha: float
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def rad_score(self, table: pd.DataFrame) -> np.ndarray:
        """Linear predictor of the LASSO-Cox model; NaN features take the training imputation value."""
        missing = [f for f in self.features if f not in table.columns]
        if missing:
            raise InputError(f"features table lacks {len(missing)} feature(s) the model needs, e.g. {missing[:3]}",
                             fix="extract features with the same radiomics parameter file as the training cohort")
        if not self.features:
            return np.zeros(len(table))
        values = table[self.features].to_numpy(float)
        values = np.where(np.isnan(values), np.asarray(self.impute), values)
        z = (values - np.asarray(self.mean)) / np.asarray(self.sd)
        return z @ np.asarray(self.coef)

    def to_dict(self) -> dict[str, Any]:
        return {"features": self.features, "impute": self.impute, "mean": self.mean, "sd": self.sd,
                "coef": self.coef, "alpha": self.alpha, "diagnostics": self.diagnostics}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RadiomicsSignature:
        return cls(**data)


def cox_score_test(x: np.ndarray, time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Univariate Cox score test (Breslow ties) for every column of ``x`` at once.

    At beta = 0 the score statistic needs only risk-set means and variances, so thousands of features are
    screened with matrix products instead of thousands of Newton fits. For a binary covariate it equals the
    log-rank test. Returns (z, two-sided p).
    """
    x = np.asarray(x, float)
    order = np.argsort(time, kind="stable")
    time, event, x = np.asarray(time, float)[order], np.asarray(event, bool)[order], x[order]
    n = len(time)
    # Suffix sums give each patient's risk set {j : t_j >= t_i}.
    cum = np.cumsum(x[::-1], axis=0)[::-1]
    cum2 = np.cumsum((x * x)[::-1], axis=0)[::-1]
    first = np.searchsorted(time, time, side="left")  # start of the tie block = risk set start
    score = np.zeros(x.shape[1])
    info = np.zeros(x.shape[1])
    for t in np.unique(time[event]):
        at = (time == t) & event
        d = at.sum()
        start = first[np.argmax(at)]
        n_risk = n - start
        mean = cum[start] / n_risk
        var = cum2[start] / n_risk - mean**2
        score += x[at].sum(axis=0) - d * mean
        info += d * var
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(info > 0, score / np.sqrt(info), 0.0)
    return z, 2 * stats.norm.sf(np.abs(z))


def redundancy_filter(z: np.ndarray, names: Sequence[str], p: np.ndarray, threshold: float) -> list[str]:
    """Greedy: walk features by ascending p, keep one unless |Pearson r| > threshold with an already kept one."""
    order = np.argsort(p, kind="stable")
    corr = np.corrcoef(z[:, order], rowvar=False) if len(order) > 1 else np.ones((1, 1))
    corr = np.nan_to_num(corr)
    kept: list[int] = []
    for i in range(len(order)):
        if all(abs(corr[i, k]) <= threshold for k in kept):
            kept.append(i)
    return [names[order[i]] for i in kept]


def _lasso_cv(z: np.ndarray, time: np.ndarray, event: np.ndarray, settings: SignatureSettings) -> tuple[float, dict]:
    from sksurv.exceptions import NoComparablePairException
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.metrics import concordance_index_censored
    from sksurv.util import Surv

    y = Surv.from_arrays(event=event, time=time)
    path = CoxnetSurvivalAnalysis(l1_ratio=1.0, n_alphas=settings.n_alphas, alpha_min_ratio=settings.alpha_min_ratio)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.fit(z, y)
    alphas = path.alphas_
    fold = event_folds(event, settings.cv_folds, settings.seed)
    scores = np.full((settings.cv_folds, len(alphas)), np.nan)
    for k in range(settings.cv_folds):
        tr, te = fold != k, fold == k
        model = CoxnetSurvivalAnalysis(l1_ratio=1.0, alphas=alphas)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(z[tr], y[tr])
        for j in range(len(model.alphas_)):
            risk = z[te] @ model.coef_[:, j]
            if np.allclose(risk, risk[0]):
                scores[k, j] = 0.5
                continue
            try:
                scores[k, j] = concordance_index_censored(event[te], time[te], risk)[0]
            except NoComparablePairException:
                break  # this fold cannot rank anyone (no event before a later time): it gives no information
    if np.isnan(scores).all():
        raise InputError("no cross-validation fold has comparable pairs: too few events to tune the LASSO",
                         fix="use a larger training cohort")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(scores, axis=0)
        se = np.nanstd(scores, axis=0) / np.sqrt(np.maximum(1, (~np.isnan(scores)).sum(axis=0)))
    best = int(np.nanargmax(mean))
    chosen = best
    if settings.one_se_rule:
        # alphas are decreasing: the first index within one SE of the best is the sparsest acceptable model.
        chosen = int(np.argmax(mean >= mean[best] - se[best]))
    return float(alphas[chosen]), {"cv_c_index": float(mean[chosen]), "cv_c_index_best": float(mean[best]),
                                   "alpha_best": float(alphas[best]), "n_alphas": int(len(alphas))}


def fit_signature(
    features: pd.DataFrame,
    time: np.ndarray,
    event: np.ndarray,
    settings: SignatureSettings | None = None,
) -> RadiomicsSignature:
    """Fit the Rad-score on the training cohort's feature columns (no ID column)."""
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    settings = settings or SignatureSettings()
    time, event = np.asarray(time, float), np.asarray(event, bool)
    if event.sum() < 5:
        raise InputError(f"only {int(event.sum())} events in the training cohort; a radiomics signature needs more",
                         fix="use a larger training cohort or a longer-follow-up endpoint")
    # pd.to_numeric column by column costs seconds on ten thousand columns: only when some are not numeric
    numeric = all(pd.api.types.is_numeric_dtype(dtype) for dtype in features.dtypes)
    table = features if numeric else features.apply(pd.to_numeric, errors="coerce")
    values = table.to_numpy(float)
    missing = np.isnan(values).mean(axis=0)
    impute = np.nanmean(np.where(missing[None, :] < 1, values, 0.0), axis=0)
    values = np.where(np.isnan(values), impute, values)
    sd = values.std(axis=0)
    usable = (missing <= settings.max_missing_fraction) & (sd > 1e-12) & np.isfinite(sd)
    names = [c for c, ok in zip(table.columns, usable) if ok]
    values, impute, mean, sd = values[:, usable], impute[usable], values[:, usable].mean(axis=0), sd[usable]
    z = (values - mean) / sd

    _, p = cox_score_test(z, time, event)
    passed = np.flatnonzero(p < settings.p_threshold)
    if passed.size == 0:
        log.warning("no feature passed the univariate p < %s filter; keeping the 10 lowest p", settings.p_threshold)
        passed = np.argsort(p)[:10]
    passed = passed[np.argsort(p[passed], kind="stable")][: settings.max_univariate]
    kept = redundancy_filter(z[:, passed], [names[i] for i in passed], p[passed], settings.corr_threshold)
    index = [names.index(k) for k in kept]
    zk = z[:, index]

    alpha, cv = _lasso_cv(zk, time, event, settings)
    final = CoxnetSurvivalAnalysis(l1_ratio=1.0, alphas=[alpha])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final.fit(zk, Surv.from_arrays(event=event, time=time))
    coef = final.coef_[:, -1]
    selected = np.flatnonzero(np.abs(coef) > 1e-10)
    if selected.size == 0:
        # The 1-SE rule can land on the empty model; fall back to the strongest single feature.
        selected = np.array([0])
        coef = np.zeros(len(kept))
        coef[0] = -1.0 if np.corrcoef(zk[:, 0], time)[0, 1] > 0 else 1.0
        log.warning("LASSO selected no feature; the Rad-score falls back to %s", kept[0])
    return RadiomicsSignature(
        features=[kept[i] for i in selected],
        impute=[float(impute[index[i]]) for i in selected],
        mean=[float(mean[index[i]]) for i in selected],
        sd=[float(sd[index[i]]) for i in selected],
        coef=[float(coef[i]) for i in selected],
        alpha=alpha,
        diagnostics={"n_features_in": int(features.shape[1]), "n_usable": len(names),
                     "n_univariate": int(passed.size), "n_after_redundancy": len(kept),
                     "n_selected": int(selected.size), **cv},
    )
