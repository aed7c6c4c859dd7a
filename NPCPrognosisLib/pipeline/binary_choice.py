"""Which model a binary endpoint's bundle uses: the default (the ridge), unless a simpler model the training already
cross-validates (:data:`~NPCPrognosisLib.pipeline.binary.CHALLENGERS`) beats it on the same folds by more than the
standard error of their paired difference.

Why a default and a margin rather than the highest cross-validated AUC: with ten models on ~160 patients their
CV AUCs differ by less than their standard errors, and the model with the best one was the luckiest (held-out AUC
/ oracle 0.842 / 0.942 on the two phantom families against the ridge's 0.884 / 0.992, docs/binary-endpoints.md).
But a default kept whatever the folds say ships a model that learned nothing beside one that learned something
(a 160-patient cohort: the ridge's CV AUC 0.491, the tumour volume alone 0.632), against the project's rule to
keep the default that validates better. So the ridge is replaced only by a model that beats it by more than the
paired standard error (:func:`~NPCPrognosisLib.survival.splits.paired_gain`, as the nomogram's design is chosen),
and among several such models the simplest is kept unless a less simple one beats it by the same margin: a model
must never be chosen over a simpler model that validates better, and the best of several noisy beaters is the
luckiest.

The CV AUC of a replacement is then the maximum of several on the folds it was chosen on, so ``train`` reports
the chosen model's nested cross-validated AUC instead (:func:`NPCPrognosisLib.pipeline.binary.nested_choice`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from NPCPrognosisLib.survival.splits import paired_gain


def choose_model(fold_aucs: Mapping[str, Sequence[float]], default: str,
                 challengers: Sequence[str]) -> tuple[str, dict[str, dict[str, Any]]]:
    """The default model, or the simplest challenger that beats it by more than their paired standard error
    (replaced in turn by a less simple beater that beats that one by more than theirs).

    Parameters
    ----------
    fold_aucs : dict of str to sequence of float
        Each model's held-out AUC in every fold of the same cross-validation, fold by fold.
    default : str
        The model kept unless beaten (the ridge).
    challengers : sequence of str
        The models that may replace it, simplest first; those without fold AUCs are skipped.

    Returns
    -------
    chosen : str
        The model to use.
    compared : dict
        Per challenger its ``paired_difference`` from the default (its mean per-fold AUC gain), the ``paired_se`` of
        that difference and whether it ``beats_default`` (gain > SE).
    """
    def beats(paired: tuple[float, float] | None) -> bool:  # a gain beyond its standard error (so above 0)
        return paired is not None and paired[0] > paired[1]

    compared: dict[str, dict[str, Any]] = {}
    chosen = default
    for name in (n for n in challengers if n in fold_aucs):  # simplest first
        paired = paired_gain(fold_aucs[name], fold_aucs[default])
        if paired is None:
            continue
        compared[name] = {"paired_difference": paired[0], "paired_se": paired[1], "beats_default": beats(paired)}
        if beats(paired) and (chosen == default or beats(paired_gain(fold_aucs[name], fold_aucs[chosen]))):
            chosen = name
    return chosen, compared
