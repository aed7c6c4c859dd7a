"""The binary endpoint's chosen model over many random train / test splits: held-out AUC / oracle AUC, with and
without the tumour-volume reference model.

Usage:
    python bench/bench_binary_choice.py --cohort DIR [--cohort DIR ...] [--splits 24] [--n-train 160]
                                        [--endpoint ic_response] [--json OUT.json]

Why. ``bench_binary.py`` runs ``train`` and ``evaluate`` once, on one split whose 200 held-out patients move the
AUC ratio by about +-0.06; ``bench_binary_splits.py`` re-splits but scores the radiomics signature alone. This one
re-splits each ``--cohort`` folder (as ``bench_generalise.py`` keeps them: ``manifest.csv``, ``features.csv``,
``truth_all.csv`` or ``truth.csv`` with ``p_<endpoint>``) into ``--n-train`` training and the rest held-out
patients and runs what ``train`` runs for a binary endpoint (:func:`NPCPrognosisLib.pipeline.binary.
fit_binary_endpoint`: every model cross-validated with the selection inside the folds, and the model the bundle
uses, ``best``: the stacked model since 2026-12-02, before it the one-model choice), twice: with the models as
shipped and with the ``volume`` model taken out of the models and the stacking, so the two are paired on the same
splits. The label-permutation test and the bootstrap refits for per-patient intervals do not change the model and
are skipped. Prints per split and the mean, SD and
paired difference of the chosen model's ratio, and the volume model's own ratio. SYNTHETIC DATA - NOT CLINICAL.
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

from NPCPrognosisLib.io.manifest import read_manifest  # noqa: E402
from NPCPrognosisLib.pipeline import binary  # noqa: E402
from NPCPrognosisLib.pipeline.train import ebv_fill_value  # noqa: E402
from NPCPrognosisLib.radiomics.features_table import read_features  # noqa: E402

SHIPPED = binary.volume_columns


def candidates(with_volume: bool) -> None:
    """With or without the volume model: without, the features look as if they held no GTVp volume, which is
    how the product leaves the model out of the fits, the cross-validation and the stacking."""
    binary.volume_columns = SHIPPED if with_volume else (lambda features: {})


def fit_and_score(clinical_tr, features_tr, y_tr, clinical_te, features_te, y_te, oracle) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = binary.fit_binary_endpoint(clinical_tr, features_tr, y_tr, "endpoint", seed=0, permutations=0)
        probs = binary.predict_models(block, clinical_te, features_te)
    ratios = {name: float(roc_auc_score(y_te, prob) / oracle) for name, prob in probs.items()}
    return {"best": block["best"], "ratio": ratios[block["best"]], "volume": ratios.get(binary.VOLUME)}


def summary(frame: pd.DataFrame) -> dict:
    """Mean and SD of each ratio, the paired difference with its 95 % interval, and how often each model won."""
    diff = frame["shipped_ratio"] - frame["without_volume_ratio"]
    result = {name: {"mean": float(frame[name].mean()), "sd": float(frame[name].std())}
              for name in ("shipped_ratio", "without_volume_ratio", "volume_ratio")}
    result["paired_difference"] = {"mean": float(diff.mean()),
                                   "ci95_halfwidth": float(1.96 * diff.std() / np.sqrt(len(diff)))}
    result["chosen"] = dict(Counter(frame["shipped_best"]))
    result["splits"] = len(frame)
    return result


def main(argv=None) -> int:
    args = resplit_parser(__doc__.splitlines()[0], splits=24).parse_args(argv)
    binary.BOOTSTRAP_REFITS = 0  # per-patient intervals only; they do not change the choice
    rows = []
    for cohort in args.cohort:
        manifest = read_manifest(cohort / "manifest.csv", require_images=False)
        table, _ = read_features(cohort / "features.csv")
        table = table.set_index("patient_id").loc[manifest.patient_ids].reset_index()
        truth_file = cohort / "truth_all.csv" if (cohort / "truth_all.csv").exists() else cohort / "truth.csv"
        truth = pd.read_csv(truth_file, dtype={"patient_id": str}).set_index("patient_id")
        p = truth.loc[manifest.patient_ids, f"p_{args.endpoint}"].to_numpy(float)
        y = manifest.table[args.endpoint].to_numpy(int)
        for split in range(args.splits):
            tr, te = (np.sort(part) for part in resplit(len(y), args.n_train, 100 + split))
            train, test = manifest.subset(tr), manifest.subset(te)
            fill = ebv_fill_value(train)
            data = (train.clinical_table(fill), table.iloc[tr].reset_index(drop=True), y[tr],
                    test.clinical_table(fill), table.iloc[te].reset_index(drop=True), y[te],
                    roc_auc_score(y[te], p[te]))
            row = {"cohort": str(cohort), "split": split, "oracle_auc": float(data[-1])}
            for name, with_volume in (("shipped", True), ("without_volume", False)):
                candidates(with_volume)
                result = fit_and_score(*data)
                row[f"{name}_best"], row[f"{name}_ratio"] = result["best"], result["ratio"]
                if with_volume:
                    row["volume_ratio"] = result["volume"]
            candidates(True)
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    frame = pd.DataFrame(rows)
    result = {cohort: summary(part) for cohort, part in frame.groupby("cohort", sort=False)}
    for cohort, res in result.items():
        print(f"SYNTHETIC {cohort}: {res['splits']} splits; chosen model / oracle AUC "
              f"{res['shipped_ratio']['mean']:.3f} (SD {res['shipped_ratio']['sd']:.3f}), without the volume model "
              f"{res['without_volume_ratio']['mean']:.3f}; paired {res['paired_difference']['mean']:+.3f} +- "
              f"{res['paired_difference']['ci95_halfwidth']:.3f}; volume model alone "
              f"{res['volume_ratio']['mean']:.3f}; chosen {res['chosen']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "cohorts": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
