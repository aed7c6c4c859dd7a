"""What another modality adds to the binary ridge: held-out AUC / oracle AUC of the ridge without and with the
``--extra-features`` blocks, paired on random train / test re-splits of kept cohorts.

Usage:
    python bench/bench_binary_extras.py --cohort DIR [--cohort DIR ...] --extra NAME=PATTERN [--extra ...]
                                        [--splits 24] [--n-train 160] [--endpoint ic_response] [--json OUT.json]

Why. The IC-response study this product follows fuses MRI with the biopsy's slide features; the ridge takes such a
table as a block of its own inputs, weighted so that its few columns are not drowned by the ~650 image inputs
(:func:`NPCPrognosisLib.pipeline.binary.ridge_column_weights`). On each re-split of ``bench_binary_choice.py`` the
product's ``fit_ridge`` is fitted on the training patients' features alone and on the same features with the
blocks joined (``with_extra_columns``, as ``train --extra-features`` joins them), and both are scored on the
held-out patients. ``PATTERN`` is a file name or glob inside each cohort folder, its files concatenated (the
cohorts of ``bench_generalise.py`` keep ``train/pathology.csv`` and ``test/pathology.csv``:
``--extra 'pathology=*/pathology.csv'``). Prints per split, then per cohort the mean ratios and the paired
difference (with - without) with its 95 % interval. About 10 s per split on 2 cores. SYNTHETIC DATA - NOT
CLINICAL.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_binary_choice import cohort_splits  # noqa: E402
from bench_binary_splits import ratio_summary, resplit_parser  # noqa: E402

from NPCPrognosisLib.io.extra_features import extra_block_name, read_extra_block  # noqa: E402
from NPCPrognosisLib.pipeline import binary  # noqa: E402


def cohort_extras(cohort: Path, specs: list[str], scratch: Path) -> dict:
    """Each ``NAME=PATTERN`` block of one cohort: the files matching the pattern, concatenated, read as the product
    reads ``--extra-features`` tables."""
    blocks = {}
    for spec in specs:
        name, _, pattern = spec.partition("=")
        files = sorted(cohort.glob(pattern))
        if not files:
            raise SystemExit(f"{cohort}: no file matches {pattern!r}")
        path = scratch / f"{cohort.name}_{name}.csv"
        pd.concat([pd.read_csv(f, dtype={"patient_id": str}) for f in files]).to_csv(path, index=False)
        blocks[name] = read_extra_block(f"{name}={path}")
    return blocks


def one_split(clinical_tr, features_tr, y_tr, clinical_te, features_te, y_te, oracle) -> dict:
    own = [c for c in features_tr.columns if extra_block_name(str(c)) is None]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, columns in (("without", own), ("with", list(features_tr.columns))):
            model = binary.fit_ridge(clinical_tr, features_tr[columns], y_tr, seed=0)
            prob = binary.predict_ridge(model, clinical_te, features_te[columns])
            out[f"{label}_ratio"] = float(roc_auc_score(y_te, prob) / oracle)
            out[f"{label}_C"] = model["C"]
            if label == "with":
                out["block_weights"] = {b: v["weight"] for b, v in (model.get("blocks") or {}).items()}
    return out


def main(argv=None) -> int:
    parser = resplit_parser(__doc__.splitlines()[0], splits=24)
    parser.add_argument("--extra", action="append", required=True, metavar="NAME=PATTERN")
    args = parser.parse_args(argv)
    rows, summary = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for cohort in args.cohort:
            extras = cohort_extras(cohort, args.extra, Path(scratch))
            part = []
            for split, data in cohort_splits(cohort, args.endpoint, args.splits, args.n_train, extras):
                row = {"cohort": str(cohort), "split": split, "oracle_auc": float(data[-1]), **one_split(*data)}
                part.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) and not k.endswith("_C") else v
                                  for k, v in row.items()}), flush=True)
            rows += part
            summary[str(cohort)] = {"splits": len(part), **ratio_summary(part, ("without", "with"), "with", "without")}
            res = summary[str(cohort)]
            print(f"SYNTHETIC {cohort}: {len(part)} splits; ridge held-out AUC / oracle without "
                  f"{res['without_ratio']['mean']:.3f} (SD {res['without_ratio']['sd']:.3f}, "
                  f"{res['without_ratio']['splits_at_0.90']} >= 0.90), with {', '.join(args.extra)} "
                  f"{res['with_ratio']['mean']:.3f} (SD {res['with_ratio']['sd']:.3f}, "
                  f"{res['with_ratio']['splits_at_0.90']} >= 0.90); paired "
                  f"{res['paired_with_minus_without']['mean']:+.3f} +- "
                  f"{res['paired_with_minus_without']['ci95_halfwidth']:.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "cohorts": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
