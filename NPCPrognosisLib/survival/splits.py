"""Event-stratified splits and folds: the one way patients are divided, through scikit-learn.

With a few dozen events, a split that puts most of them on one side gives a test C-index with nothing to rank or
a training fit that learned from few events; stratifying by event status keeps the share of events equal.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def event_folds(event: Any, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """The fold (0 to ``n_folds`` - 1) of each patient, folds stratified by event status.

    Parameters
    ----------
    event : array-like of bool
        Event indicator per patient.
    n_folds : int, default 5
        Number of folds.
    seed : int, default 0
        Seed of the shuffle (scikit-learn ``StratifiedKFold(shuffle=True)``).

    Returns
    -------
    fold : ndarray of int
        One fold index per patient. When neither class has ``n_folds`` members, the folds are not stratified.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    event = np.asarray(event, bool)
    counts = np.bincount(event.astype(int), minlength=2)
    n_folds = int(min(n_folds, len(event)))
    if counts.max() >= n_folds:
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=int(seed))
    else:
        splitter = KFold(n_folds, shuffle=True, random_state=int(seed))
    fold = np.empty(len(event), int)
    with warnings.catch_warnings():  # "the least populated class has only k members": expected with few events
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, held) in enumerate(splitter.split(np.zeros((len(event), 1)), event)):
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
