"""The binary ridge's held-out AUC / oracle AUC along its whole penalty path, and under two rules for choosing the
penalty, over random train / test re-splits of kept cohorts.

Usage:
    python bench/bench_ridge_penalty.py --cohort DIR [--cohort DIR ...] [--splits 24] [--n-train 160]
                                        [--endpoint ic_response] [--json OUT.json]

Why. The ridge (:func:`NPCPrognosisLib.classification.ridge.fit_ridge`) takes its penalty from a 5-fold
cross-validated log-loss inside the training patients; with a weak signal that loss curve is flat, so which point
of it to take matters more than the curve's noise suggests. On each re-split (the splits of
``bench_binary_choice.py``) the product's normal-score map is fitted once, the weights at each of the 13 penalties
of :data:`~NPCPrognosisLib.classification.ridge.RIDGE_CS` (``ridge_weights``) are scored on the held-out patients, and
the two rules are read off the same folds' losses (``ridge_fold_losses``): the lowest mean loss, and the strongest
penalty within one standard error of it (what ``train`` uses, ``one_standard_error_choice``).
Prints per split, then per cohort the mean ratio at every penalty and for each rule, with the paired difference
(one-standard-error - lowest) and its 95 % interval. About 10 s per split on 2 cores. SYNTHETIC DATA - NOT
CLINICAL.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_binary_choice import run_resplits  # noqa: E402
from bench_binary_splits import paired_text, ratio_summary, ratio_text, resplit_parser  # noqa: E402

from NPCPrognosisLib.classification import ridge as rg  # noqa: E402

RULES = ("lowest", "one_se")


def one_split(clinical_tr, features_tr, y_tr, clinical_te, features_te, y_te, oracle) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = rg.fit_ridge(clinical_tr, features_tr, y_tr, seed=0)
        S = rg.ridge_scores(model, rg.ridge_inputs(clinical_tr, features_tr))
        S_test = rg.ridge_scores(model, rg.ridge_inputs(clinical_te, features_te))
        path = [float(roc_auc_score(y_te, S_test @ np.asarray(rg.ridge_weights(S, y_tr, C)[0])) / oracle)
                for C in rg.RIDGE_CS]
        losses = rg.ridge_fold_losses(S, y_tr, seed=0)
    chosen = {"lowest": int(np.argmin(losses.mean(axis=1))), "one_se": rg.one_standard_error_choice(losses)}
    assert rg.RIDGE_CS[chosen["one_se"]] == model["C"]  # the rule read here is the product's
    return {"path": path, **{f"{rule}_index": i for rule, i in chosen.items()},
            **{f"{rule}_ratio": path[i] for rule, i in chosen.items()}}


def main(argv=None) -> int:
    args = resplit_parser(__doc__.splitlines()[0], splits=24).parse_args(argv)

    def summarise(part: list[dict]) -> dict:
        return {"path_mean": np.mean([r["path"] for r in part], axis=0).round(4).tolist(),
                **ratio_summary(part, RULES, "one_se", "lowest")}

    def describe(res: dict) -> str:
        return (f"held-out AUC / oracle along the path (C {rg.RIDGE_CS[0]:g} to {rg.RIDGE_CS[-1]:g}): "
                f"{res['path_mean']}; lowest loss {ratio_text(res, 'lowest')}, one standard error "
                f"{ratio_text(res, 'one_se')}; {paired_text(res, 'one_se', 'lowest')}")

    return run_resplits(args, one_split, summarise, describe)

if __name__ == "__main__":
    sys.exit(main())
