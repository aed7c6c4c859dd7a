"""What another modality adds to the binary ridge: held-out AUC / oracle AUC of the ridge without and with the
``--extra-features`` blocks, paired on random train / test re-splits of kept cohorts.

Usage:
    python bench/bench_binary_extras.py --cohort DIR [--cohort DIR ...] --extra NAME=PATTERN [--extra ...]
                                        [--splits 24] [--n-train 160] [--endpoint ic_response] [--json OUT.json]

Why. The IC-response study this product follows fuses MRI with the biopsy's slide features; the ridge takes such a
table as a block of its own inputs, weighted so that its few columns are not drowned by the ~650 image inputs
(:func:`NPCPrognosisLib.classification.ridge.ridge_column_weights`). On each re-split of ``bench_binary_choice.py`` the
product's ``fit_ridge`` is fitted on the training patients' features alone and on the same features with the
blocks joined (``with_extra_columns``, as ``train --extra-features`` joins them), and both are scored on the
held-out patients. ``PATTERN`` is a file name or glob inside each cohort folder, its files concatenated (the
cohorts of ``bench_generalise.py`` keep ``train/pathology.csv`` and ``test/pathology.csv``:
``--extra 'pathology=*/pathology.csv'``). Prints per split, then per cohort the mean ratios and the paired
difference (with - without) with its 95 % interval. About 10 s per split on 2 cores. SYNTHETIC DATA - NOT
CLINICAL.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_binary_choice import run_resplits  # noqa: E402
from bench_binary_splits import paired_text, ratio_summary, ratio_text, resplit_parser  # noqa: E402

from NPCPrognosisLib.classification import ridge as rg  # noqa: E402
from NPCPrognosisLib.io.extra_features import extra_block_name, read_extra_block  # noqa: E402


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
            model = rg.fit_ridge(clinical_tr, features_tr[columns], y_tr, seed=0)
            prob = rg.predict_ridge(model, clinical_te, features_te[columns])
            out[f"{label}_ratio"] = float(roc_auc_score(y_te, prob) / oracle)
            out[f"{label}_C"] = model["C"]
            if label == "with":
                out["block_weights"] = {b: v["weight"] for b, v in (model.get("blocks") or {}).items()}
    return out


def main(argv=None) -> int:
    parser = resplit_parser(__doc__.splitlines()[0], splits=24)
    parser.add_argument("--extra", action="append", required=True, metavar="NAME=PATTERN")
    args = parser.parse_args(argv)

    def describe(res: dict) -> str:
        return (f"ridge held-out AUC / oracle without {ratio_text(res, 'without')}, with {', '.join(args.extra)} "
                f"{ratio_text(res, 'with')}; {paired_text(res, 'with', 'without')}")

    with tempfile.TemporaryDirectory() as scratch:
        return run_resplits(args, one_split, lambda part: ratio_summary(part, ("without", "with"), "with", "without"),
                            describe, lambda cohort: cohort_extras(cohort, args.extra, Path(scratch)))

if __name__ == "__main__":
    sys.exit(main())
