"""The radiomics signature of a binary endpoint: univariable filter, Yeo-Johnson transform, redundancy filter and
LASSO-logistic, its log-odds the Rad-score.

Why every step sits in one fit: the signature is refitted inside each cross-validation fold and bootstrap sample
of :mod:`NPCPrognosisLib.pipeline.binary`, so that the selection is judged on patients it did not see; a filter
run once on the whole training split would leak the outcome into every fold.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.classification.folds import n_folds
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.radiomics.signature import redundancy_filter

#: Univariable filter: Mann-Whitney p below this (the ten strongest features when none passes).
UNIVARIATE_P = 0.05
#: Redundancy filter: of two features correlated beyond this (Pearson), the weaker univariable one goes.
REDUNDANCY_R = 0.85
#: LASSO sees at most this many filtered features (the best univariable ones).
MAX_CANDIDATES = 200


@dataclass
class Screened:
    """What the univariable and redundancy filters kept from a raw feature matrix."""

    #: Kept columns of the matrix (strongest univariable one first).
    columns: np.ndarray
    #: Their Yeo-Johnson transforms (:func:`yeo_johnson_fit`) and transformed, standardised values.
    transform: list[dict[str, float]]
    z: np.ndarray
    #: Columns that passed the univariable filter (after the cap), before the redundancy filter.
    n_univariate: int


def screen_features(values: np.ndarray, y: np.ndarray) -> Screened:
    """Univariable Mann-Whitney filter, Yeo-Johnson transform of the survivors and redundancy filter.

    Why it is one function: the filters read the outcome, so the penalty's inner cross-validation runs them again
    on each fold's training rows (:func:`_lasso_logistic`); judged after a whole-split screen, noise features
    validate and the penalty comes out too weak.

    Parameters
    ----------
    values : numpy.ndarray
        Raw feature values (NaN where missing), one row per patient.
    y : numpy.ndarray
        The binary outcome (0/1).

    Returns
    -------
    screened : Screened
    """
    from scipy.stats import mannwhitneyu

    raw_mean = np.nanmean(values, axis=0)
    filled = np.where(np.isnan(values), raw_mean, values)
    raw_scale = filled.std(axis=0)
    keep = np.flatnonzero(np.isfinite(raw_mean) & (raw_scale > 0))
    z = (filled[:, keep] - raw_mean[keep]) / raw_scale[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = mannwhitneyu(z[y == 1], z[y == 0], axis=0).pvalue
    p = np.nan_to_num(p, nan=1.0)
    passing = np.flatnonzero(p < UNIVARIATE_P)
    if len(passing) == 0:
        passing = np.argsort(p)[:10]  # nothing passes: offer the ten strongest, LASSO may still drop them all
    passing = passing[np.argsort(p[passing], kind="stable")][:MAX_CANDIDATES]
    full = keep[passing]
    transform = yeo_johnson_fit(values[:, full], raw_scale[full])
    zt = _transformed(values[:, full], {key: [t[key] for t in transform] for key in TRANSFORM_KEYS})
    kept = redundancy_filter(zt, list(range(len(full))), p[passing], REDUNDANCY_R)
    return Screened(full[kept], [transform[i] for i in kept], zt[:, kept], int(len(passing)))


def fit_rad_signature(X: pd.DataFrame, y: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Univariable filter, Yeo-Johnson transform, redundancy filter and LASSO-logistic (penalty by inner CV AUC):
    the radiomics signature.

    Why the transform: volumes, areas and many texture features are strongly right-skewed, while a logistic
    model is linear in its inputs; a few large tumours then dominate the z-scores and the fit. Each candidate is
    scaled by its SD and Yeo-Johnson transformed (lambda by maximum likelihood on the training patients, as
    scikit-learn's PowerTransformer does) before z-scoring; the rank-based filter before it is unaffected.

    Returns
    -------
    signature : dict
        ``features``; per feature the training ``raw_scale``, Yeo-Johnson ``lambda`` and the transformed
        values' ``mean``/``scale`` (missing values take the mean); ``coef`` and ``intercept`` of the logistic
        model on the standardised transformed features; its linear predictor is the Rad-score (log-odds);
        ``cv_auc``, the inner cross-validated AUC of the chosen penalty.
    """
    values = X.to_numpy(float)
    screened = screen_features(values, y)
    coef, intercept, cv_auc = _lasso_logistic(values, y, screened.z, seed)
    chosen = np.flatnonzero(coef != 0)
    return {"features": [str(X.columns[screened.columns[i]]) for i in chosen], "coef": coef[chosen].tolist(),
            "intercept": float(intercept),
            **{key: [float(screened.transform[i][key]) for i in chosen] for key in TRANSFORM_KEYS},
            "transform": "Yeo-Johnson of value / raw_scale, then (t - mean) / scale",
            "n_features_in": int(X.shape[1]), "n_univariate": screened.n_univariate,
            "n_after_redundancy": int(len(screened.columns)), "cv_auc": cv_auc}


#: Yeo-Johnson lambdas are searched in this interval (a stronger transform than lambda 3 only chases outliers).
YJ_LAMBDA_BOUNDS = (-3.0, 3.0)


def _yeo_johnson(u: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Yeo-Johnson transform of each column of ``u`` with its own lambda, written with ``expm1``/``log1p`` so the
    limits lambda -> 0 and lambda -> 2 need no branch of their own beyond a guard."""
    magnitude = np.log1p(np.abs(u))
    with np.errstate(all="ignore"):
        a, b = lam, 2.0 - lam
        a_safe, b_safe = np.where(np.abs(a) < 1e-12, 1.0, a), np.where(np.abs(b) < 1e-12, 1.0, b)
        positive = np.where(np.abs(a) < 1e-12, magnitude, np.expm1(a * magnitude) / a_safe)
        negative = np.where(np.abs(b) < 1e-12, -magnitude, -np.expm1(b * magnitude) / b_safe)
    return np.where(u >= 0, positive, negative)


def _yeo_johnson_llf(u: np.ndarray, lam: np.ndarray, jacobian: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Profile log-likelihood of each column's lambda (scipy.stats.yeojohnson_llf, NaNs left out)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        llf = -0.5 * n * np.log(np.nanvar(_yeo_johnson(u, lam), axis=0)) + (lam - 1.0) * jacobian
    return np.where(np.isfinite(llf), llf, -np.inf)


def yeo_johnson_fit(values: np.ndarray, raw_scale: np.ndarray) -> list[dict[str, float]]:
    """Maximum-likelihood Yeo-Johnson lambda, and mean and SD of the transformed training values, of each column.

    Why not ``scipy.stats.yeojohnson_normmax`` per column: the signature is refitted in every cross-validation
    fold and bootstrap sample, and one Brent search per feature made the transform most of ``train``'s time.
    Here every column is searched at once: a grid over the bounds, then golden-section refinement around the
    best grid point, so the global maximum inside the bounds is found (scipy's unbounded search, clipped to the
    bounds, gives the same lambda whenever the likelihood has one peak; checked in the tests).

    Parameters
    ----------
    values : ndarray of shape (n_patients, n_features)
        Raw training values (NaN where missing).
    raw_scale : ndarray of shape (n_features,)
        Each feature's SD; the transform acts on ``value / raw_scale``.

    Returns
    -------
    transforms : list of dict
        Per feature ``raw_scale``, ``lambda``, ``mean`` and ``scale`` (lambda 1, the identity, where the
        transform is not finite or constant).
    """
    u = np.asarray(values, float) / np.asarray(raw_scale, float)
    finite = np.isfinite(u)
    u = np.where(finite, u, np.nan)
    n = finite.sum(axis=0).astype(float)
    jacobian = np.nansum(np.sign(u) * np.log1p(np.abs(u)), axis=0)
    low, high = YJ_LAMBDA_BOUNDS
    grid = np.linspace(low, high, 25)
    scores = np.stack([_yeo_johnson_llf(u, np.full(u.shape[1], g), jacobian, n) for g in grid])
    best = np.argmax(scores, axis=0)
    step = grid[1] - grid[0]
    a, b = np.maximum(grid[best] - step, low), np.minimum(grid[best] + step, high)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _yeo_johnson_llf(u, c, jacobian, n), _yeo_johnson_llf(u, d, jacobian, n)
    for _ in range(40):  # the bracket shrinks to 0.5 * 0.618^40 (about 2e-9)
        left = fc >= fd
        a, b = np.where(left, a, c), np.where(left, d, b)
        c_new, d_new = b - ratio * (b - a), a + ratio * (b - a)
        f_new = _yeo_johnson_llf(u, np.where(left, c_new, d_new), jacobian, n)
        c, d, fc, fd = (np.where(left, c_new, d), np.where(left, c, d_new), np.where(left, f_new, fd),
                        np.where(left, fc, f_new))
    lam = np.clip((a + b) / 2.0, low, high)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        t = _yeo_johnson(u, lam)
        mean, scale = np.nanmean(t, axis=0), np.nanstd(t, axis=0)
    failed = ~(np.isfinite(t) | ~finite).all(axis=0) | ~(scale > 1e-12 * (1.0 + np.abs(mean)))  # constant
    if failed.any():  # lambda 1 is the identity
        lam[failed] = 1.0
        mean[failed], scale[failed] = np.nanmean(u[:, failed], axis=0), np.nanstd(u[:, failed], axis=0)
    return [{"raw_scale": float(r), "lambda": float(lm), "mean": float(m), "scale": float(sd)}
            for r, lm, m, sd in zip(raw_scale, lam, mean, scale)]


#: Per-feature parameters of the transform, stored as lists in a binary signature.
TRANSFORM_KEYS = ("raw_scale", "lambda", "mean", "scale")


def _transformed(values: np.ndarray, transform: Mapping[str, Sequence[float]]) -> np.ndarray:
    """Standardised transformed values of each column (the same Yeo-Johnson as the fit, :func:`_yeo_johnson`);
    a missing value becomes 0 (the transformed training mean)."""
    raw_scale, lam, mean, scale = (np.asarray(transform[key], float) for key in TRANSFORM_KEYS)
    with np.errstate(all="ignore"):
        z = (_yeo_johnson(values / raw_scale, lam) - mean) / scale
    return np.nan_to_num(np.where(np.isfinite(values), z, 0.0), nan=0.0, posinf=0.0, neginf=0.0)


def signature_values(signature: Mapping[str, Any], features: pd.DataFrame) -> np.ndarray:
    """The signature's features of each patient as its model sees them (transformed and standardised)."""
    missing = [f for f in signature["features"] if f not in features.columns]
    if missing:
        raise InputError(f"the features table lacks the signature's feature(s) {missing[:3]}", column=missing[0],
                         fix="extract with the bundle's radiomics settings")
    values = features[signature["features"]].to_numpy(float)
    if "lambda" not in signature:  # bundles written before the transform: plain z-scores
        mean = np.asarray(signature["mean"])
        return (np.where(np.isnan(values), mean, values) - mean) / np.asarray(signature["scale"])
    return _transformed(values, signature)


def _lasso_logistic(values: np.ndarray, y: np.ndarray, z: np.ndarray, seed: int) -> tuple[np.ndarray, float, float]:
    """L1 logistic regression on the screened, transformed ``z`` with the penalty chosen by stratified inner CV
    AUC (scikit-learn liblinear); each fold screens the raw ``values`` on its own training rows
    (:func:`screen_features`). Returns the coefficients, the intercept and the chosen penalty's CV AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    grid = np.logspace(-2, 1, 12)
    oof = np.zeros((len(grid), len(y)))
    for tr, va in StratifiedKFold(n_folds(y), shuffle=True, random_state=seed).split(values, y):
        fold = screen_features(values[tr], y[tr])
        held = _transformed(values[va][:, fold.columns],
                            {key: [t[key] for t in fold.transform] for key in TRANSFORM_KEYS})
        for g, C in enumerate(grid):
            m = LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", max_iter=5000).fit(fold.z, y[tr])
            oof[g, va] = m.decision_function(held)
    scores = [roc_auc_score(y, row) if np.ptp(row) > 0 else 0.5 for row in oof]
    best = int(np.argmax(scores))
    final = LogisticRegression(C=float(grid[best]), l1_ratio=1.0, solver="liblinear", max_iter=5000).fit(z, y)
    return final.coef_[0], float(final.intercept_[0]), float(scores[best])


def rad_score(signature: Mapping[str, Any], features: pd.DataFrame) -> np.ndarray:
    """Log-odds of the signature (0 features: the intercept only)."""
    if not signature["features"]:
        return np.full(len(features), signature["intercept"])
    return signature_values(signature, features) @ np.asarray(signature["coef"]) + signature["intercept"]
