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

Why the plain standard error ``SD / sqrt(10)``, although the 2 x 5 folds share training patients and it is about
half the real error under no signal: measured on 160 coin-toss cohorts of 160 patients
(``bench/bench_binary_choice_null.py``), the volume's gain over the ridge varied by SD 0.063 across cohorts against
a plain SE of 0.034 on average, and the one-SE rule replaced the ridge in 85 of 160 (Nadeau & Bengio's 2003
corrected SE, 0.066: 53 of 160); but a replacement there costs nothing held out (both models are chance, and the
nested CV AUC and the chance check say so), while where the volume or the clinical model was truly better the plain
rule replaced the ridge in 48 of 48 cohorts and the corrected one in 43 (held-out AUC gain +0.082 against +0.076),
and where the ridge had learned a little both replaced it in the same 2 of 16. The nomogram's design choice
measured the same way (docs/generalisation.md) keeps the plain SE for the same reason, so both choices use one rule.

The CV AUC of a replacement is then the maximum of several on the folds it was chosen on, so ``train`` reports
the chosen model's nested cross-validated AUC instead (:func:`NPCPrognosisLib.pipeline.binary.nested_choice`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from NPCPrognosisLib.classification.folds import CV_FOLDS
from NPCPrognosisLib.survival.splits import paired_gain

#: Standard errors (plain paired, :func:`choose_model`) a challenger's mean per-fold AUC gain must exceed. One, as the
#: project's other one-SE rules: on coin-toss labels a replacement costs nothing measurable (held-out AUC of the
#: choice minus the ridge's +0.000 on average over 160 cohorts, worst -0.04), while 1.64 SE kept the ridge where the
#: volume or the clinical model was better in 14 of 48 cohorts against 5 (held-out gain over the ridge +0.063
#: against +0.076 on average; ``bench/bench_binary_choice_null.py``, docs/binary-endpoints.md).
MARGIN_SE = 1.0


def choose_model(fold_aucs: Mapping[str, Sequence[float]], default: str, challengers: Sequence[str],
                 z: float = MARGIN_SE, corrected: bool = False,
                 folds: int = CV_FOLDS) -> tuple[str, dict[str, dict[str, Any]]]:
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
    z : float, default :data:`MARGIN_SE`
        The margin in standard errors a gain must exceed.
    corrected : bool, default False
        Use the corrected standard error of repeated cross-validation (:func:`~NPCPrognosisLib.survival.splits.
        paired_gain` with ``test_to_train = 1 / (folds - 1)``) instead of the plain ``SD / sqrt(folds)`` the rule
        uses (the benchmark scores both).
    folds : int
        Folds per repeat of the cross-validation the AUCs come from (the corrected SE needs their size).

    Returns
    -------
    chosen : str
        The model to use.
    compared : dict
        Per challenger its ``paired_difference`` from the default (its mean per-fold AUC gain), the ``paired_se`` of
        that difference (plain unless ``corrected``) and whether it ``beats_default`` (gain > z SE).
    """
    test_to_train = 1 / (folds - 1) if corrected else None

    def gain(name: str, reference: str) -> tuple[float, float] | None:
        return paired_gain(fold_aucs[name], fold_aucs[reference], test_to_train)

    def beats(paired: tuple[float, float] | None) -> bool:  # a gain beyond z standard errors (so above 0)
        return paired is not None and paired[0] > z * paired[1]

    compared: dict[str, dict[str, Any]] = {}
    chosen = default
    for name in (n for n in challengers if n in fold_aucs):  # simplest first
        paired = gain(name, default)
        if paired is None:
            continue
        compared[name] = {"paired_difference": paired[0], "paired_se": paired[1], "beats_default": beats(paired)}
        if beats(paired) and (chosen == default or beats(gain(name, chosen))):
            chosen = name
    return chosen, compared
