"""How many stratified folds a binary endpoint allows: five, or fewer when one outcome is rare, since each fold
must hold a patient of each outcome for its AUC and log-loss to exist; and the folds themselves."""

from __future__ import annotations

import numpy as np

#: Folds of every cross-validation of a binary endpoint, when both outcomes are common enough.
CV_FOLDS = 5


def n_folds(y: np.ndarray) -> int:
    """Stratified folds: five, or as many as the rarer outcome allows (each fold needs one of each)."""
    return max(2, min(CV_FOLDS, int(min(y.sum(), len(y) - y.sum()))))


def stratified_splits(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (training, held-out) rows of the :func:`n_folds` stratified folds shuffled by ``seed``.

    Why one definition: a binary endpoint's cross-validation, its nested model choice and its chance check must
    split the patients identically for the same seed (the nested choice reads the fold AUCs the cross-validation
    already scored on these folds).
    """
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(n_folds(y), shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
