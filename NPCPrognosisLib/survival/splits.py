"""Event-stratified splits and folds: the one way patients are divided, through scikit-learn, and how two models
scored on the same folds compare (:func:`paired_gain`).

With a few dozen events, a split that puts most of them on one side gives a test C-index with nothing to rank or
a training fit that learned from few events; stratifying by event status keeps the share of events equal.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np


def event_folds(event: Any, n_folds: int = 5, seed: int = 0, groups: Any = None) -> np.ndarray:
    """The fold (0 to ``n_folds`` - 1) of each patient, folds stratified by event status.

    Why ``groups``: a bootstrap resample holds some patients two or three times. Cross-validation inside it (the
    LASSO penalty, the cross-fitted Rad-score, the stacked nomogram) that puts one copy in the training folds and
    another in the validation fold validates on patients it was fitted to, prefers too weak a penalty, and so
    makes Harrell's bootstrap overstate the optimism. Rows that share a group (a patient ID) share a fold.

    Parameters
    ----------
    event : array-like of bool
        Event indicator per patient.
    n_folds : int, default 5
        Number of folds.
    seed : int, default 0
        Seed of the shuffle (scikit-learn ``StratifiedKFold(shuffle=True)``).
    groups : array-like, optional
        One label per row; rows with the same label (copies of one patient) are put in the same fold. With
        distinct labels (or none) every row is its own group and the folds are those of the rows themselves.

    Returns
    -------
    fold : ndarray of int
        One fold index per row. When neither class has ``n_folds`` members, the folds are not stratified.
    """
    from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

    event = np.asarray(event, bool)
    codes = None
    if groups is not None:
        import pandas as pd

        codes, uniques = pd.factorize(np.asarray(groups), sort=False)
        codes = codes if len(uniques) < len(codes) else None
    counts = np.bincount(event.astype(int), minlength=2)
    n_folds = int(min(n_folds, len(event) if codes is None else codes.max() + 1))
    if codes is not None:
        # balances the events of the rows (not of the groups), so a fold of copies is not short of events
        splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=int(seed))
    elif counts.max() >= n_folds:
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=int(seed))
    else:
        splitter = KFold(n_folds, shuffle=True, random_state=int(seed))
    fold = np.empty(len(event), int)
    with warnings.catch_warnings():  # "the least populated class has only k members": expected with few events
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, held) in enumerate(splitter.split(np.zeros((len(event), 1)), event, codes)):
            fold[held] = k
    return fold


def event_split(strata: Any, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a training and a test part, stratified by ``strata`` (event status, or any labels).

    Parameters
    ----------
    strata : array-like
        One label per patient (e.g. the event indicator, with missing status as its own label).
    test_fraction : float
        Share of patients held out, in [0, 1).
    seed : int, default 0
        Seed of scikit-learn's ``train_test_split``.

    Returns
    -------
    train, test : ndarray of int
        Sorted row indices. A label with fewer than two patients cannot be stratified; then the split is not.
    """
    from sklearn.model_selection import train_test_split

    strata = np.asarray(strata)
    index = np.arange(len(strata))
    if test_fraction <= 0:
        return index, index[:0]
    _, counts = np.unique(strata, return_counts=True)
    stratify = strata if counts.min() >= 2 else None
    train, test = train_test_split(index, test_size=test_fraction, stratify=stratify, random_state=int(seed))
    return np.sort(train), np.sort(test)


def paired_gain(scores: Sequence[float], reference: Sequence[float],
                test_to_train: float | None = None) -> tuple[float, float] | None:
    """How much one candidate out-validates another on the same folds: the mean of their per-fold differences and
    its standard error, or None with fewer than two folds where both were scored.

    Why paired: both are scored on the very same held-out patients, so what makes one fold hard for both cancels,
    and the standard error of the difference is what says whether a gain is more than the folds' noise (a gain
    larger than it is how a candidate "beats" another, in the nomogram's choice and in a binary endpoint's).

    Parameters
    ----------
    scores, reference : sequence of float
        Per-fold scores (C-index or AUC) of the candidate and of the model it is compared with, fold by fold; a
        fold where either is NaN is left out.
    test_to_train : float, optional
        Held-out to training patients of a fold (1 / (k - 1) for k-fold). Given, the standard error is Nadeau &
        Bengio's (2003) corrected one, ``SD x sqrt(1 / folds + test_to_train)``: the folds of a (repeated)
        cross-validation share training patients, so their differences are correlated and ``SD / sqrt(folds)``
        understates the error (Bouckaert & Frank 2004). Without it, the plain ``SD / sqrt(folds)``.

    Returns
    -------
    paired : tuple of (float, float) or None
        The mean difference (``scores - reference``) and its standard error.
    """
    difference = np.asarray(scores, float) - np.asarray(reference, float)
    difference = difference[np.isfinite(difference)]
    if len(difference) < 2:
        return None
    share = 1 / len(difference) + (test_to_train or 0.0)
    return float(difference.mean()), float(difference.std(ddof=1) * np.sqrt(share))
