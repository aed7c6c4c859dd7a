"""How many stratified folds a binary endpoint allows: five, or fewer when one outcome is rare, since each fold
must hold a patient of each outcome for its AUC and log-loss to exist."""

from __future__ import annotations

import numpy as np

#: Folds of every cross-validation of a binary endpoint, when both outcomes are common enough.
CV_FOLDS = 5


def n_folds(y: np.ndarray) -> int:
    """Stratified folds: five, or as many as the rarer outcome allows (each fold needs one of each)."""
    return max(2, min(CV_FOLDS, int(min(y.sum(), len(y) - y.sum()))))
