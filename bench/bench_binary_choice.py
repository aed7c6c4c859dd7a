"""The binary endpoint's model over many random train / test splits: held-out AUC / oracle AUC of the model the
bundle uses, beside the stacking of every model and the tumour-volume model, paired on the same splits.

Usage:
    python bench/bench_binary_choice.py --cohort DIR [--cohort DIR ...] [--splits 24] [--n-train 160]
                                        [--endpoint ic_response] [--json OUT.json]

Why. ``bench_binary.py`` runs ``train`` and ``evaluate`` once, on one split whose 200 held-out patients move the
AUC ratio by about +-0.06; ``bench_binary_splits.py`` re-splits but scores the radiomics signature alone. This one
re-splits each ``--cohort`` folder (as ``bench_generalise.py`` keeps them: ``manifest.csv``, ``features.csv``,
``truth_all.csv`` or ``truth.csv`` with ``p_<endpoint>``) into ``--n-train`` training and the rest held-out
patients and runs what ``train`` runs for a binary endpoint (:func:`NPCPrognosisLib.pipeline.binary.
fit_binary_endpoint`: every model cross-validated with the selection inside the folds, their stacking, and the
model the bundle uses, ``best``: the ridge since 2026-12-02, before it the stacking), then scores every model on
the held-out patients, so the model used, the stacking (the model used before) and the volume model are paired
on the same fits. The label-permutation test and the bootstrap refits for per-patient intervals do not change
the models and are skipped. Prints per split and the mean, SD and paired difference (model used - stacking) of
the ratios. SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_binary_splits import resplit, resplit_parser  # noqa: E402

from NPCPrognosisLib.io.extra_features import with_extra_columns  # noqa: E402
from NPCPrognosisLib.io.manifest import read_manifest  # noqa: E402
from NPCPrognosisLib.pipeline import binary  # noqa: E402
from NPCPrognosisLib.pipeline.fit import ebv_fill_value  # noqa: E402
from NPCPrognosisLib.radiomics.features_table import read_features  # noqa: E402

COMPARED = ("best", binary.STACKED, binary.VOLUME, "radiomics")


def fit_and_score(clinical_tr, features_tr, y_tr, clinical_te, features_te, y_te, oracle) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = binary.fit_binary_endpoint(clinical_tr, features_tr, y_tr, "endpoint", seed=0, permutations=0)
        probs = binary.predict_models(block, clinical_te, features_te)
    ratios = {name: float(roc_auc_score(y_te, prob) / oracle) for name, prob in probs.items()}
    return {"best_model": block["best"], **{f"{name}_ratio": ratios.get(block["best"] if name == "best" else name)
                                            for name in COMPARED}}


def summary(frame: pd.DataFrame) -> dict:
    """Mean and SD of each ratio and the paired difference model used - stacking with its 95 % interval."""
    diff = frame["best_ratio"] - frame[f"{binary.STACKED}_ratio"]
    result = {f"{name}_ratio": {"mean": float(frame[f"{name}_ratio"].mean()), "sd": float(frame[f"{name}_ratio"].std())}
              for name in COMPARED}
    result["paired_best_minus_stacked"] = {"mean": float(diff.mean()),
                                           "ci95_halfwidth": float(1.96 * diff.std() / np.sqrt(len(diff)))}
    result["best_model"] = dict(Counter(frame["best_model"]))
    result["splits"] = len(frame)
    return result


def cohort_splits(cohort: Path, endpoint: str, splits: int, n_train: int, extras=None):
    """Each random re-split of a kept cohort: ``(split, (clinical_tr, features_tr, y_tr, clinical_te, features_te,
    y_te, oracle AUC of the held-out patients))``, the clinical tables encoded as ``train`` encodes them; ``extras``
    (blocks by name, ``read_extra_blocks``) are joined to the features as ``train --extra-features`` joins them."""
    manifest = read_manifest(cohort / "manifest.csv", require_images=False)
    table, _ = read_features(cohort / "features.csv")
    table = table.set_index("patient_id").loc[manifest.patient_ids].reset_index()
    if extras:
        table = with_extra_columns(table, extras, manifest.patient_ids)
    truth_file = cohort / "truth_all.csv" if (cohort / "truth_all.csv").exists() else cohort / "truth.csv"
    truth = pd.read_csv(truth_file, dtype={"patient_id": str}).set_index("patient_id")
    p = truth.loc[manifest.patient_ids, f"p_{endpoint}"].to_numpy(float)
    y = manifest.table[endpoint].to_numpy(int)
    for split in range(splits):
        tr, te = (np.sort(part) for part in resplit(len(y), n_train, 100 + split))
        train, test = manifest.subset(tr), manifest.subset(te)
        fill = ebv_fill_value(train)
        yield split, (train.clinical_table(fill), table.iloc[tr].reset_index(drop=True), y[tr],
                      test.clinical_table(fill), table.iloc[te].reset_index(drop=True), y[te],
                      roc_auc_score(y[te], p[te]))


def run_resplits(args, one_split, summarise, describe, extras_for=None) -> int:
    """The loop of a paired re-split benchmark: ``one_split(*data)`` on every re-split of every ``--cohort``
    (:func:`cohort_splits`, with the blocks ``extras_for(cohort)`` joined), a line per split, then per cohort
    ``summarise(rows)`` and the line ``describe(summary)``; ``--json`` gets the rows and the summaries."""
    rows, summary = [], {}
    for cohort in args.cohort:
        extras = extras_for(cohort) if extras_for else None
        part = []
        for split, data in cohort_splits(cohort, args.endpoint, args.splits, args.n_train, extras):
            row = {"cohort": str(cohort), "split": split, "oracle_auc": float(data[-1]), **one_split(*data)}
            part.append(row)
            print(json.dumps({k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in row.items()
                              if not isinstance(v, list)}), flush=True)
        rows += part
        summary[str(cohort)] = {"splits": len(part), **summarise(part)}
        print(f"SYNTHETIC {cohort}: {len(part)} splits; {describe(summary[str(cohort)])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "cohorts": summary}, indent=1))
    return 0

def main(argv=None) -> int:
    args = resplit_parser(__doc__.splitlines()[0], splits=24).parse_args(argv)
    binary.BOOTSTRAP_REFITS = 0  # per-patient intervals only; they do not change the choice
    rows = []
    for cohort in args.cohort:
        for split, data in cohort_splits(cohort, args.endpoint, args.splits, args.n_train):
            row = {"cohort": str(cohort), "split": split, "oracle_auc": float(data[-1]), **fit_and_score(*data)}
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    frame = pd.DataFrame(rows)
    result = {cohort: summary(part) for cohort, part in frame.groupby("cohort", sort=False)}
    for cohort, res in result.items():
        paired = res["paired_best_minus_stacked"]
        print(f"SYNTHETIC {cohort}: {res['splits']} splits; model used {res['best_model']} / oracle AUC "
              f"{res['best_ratio']['mean']:.3f} (SD {res['best_ratio']['sd']:.3f}); stacking "
              f"{res['stacked_ratio']['mean']:.3f}; paired {paired['mean']:+.3f} +- {paired['ci95_halfwidth']:.3f}; "
              f"volume model {res['volume_ratio']['mean']:.3f}; radiomics signature "
              f"{res['radiomics_ratio']['mean']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "cohorts": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
