"""The binary signature's held-out AUC / oracle AUC over many random train / test splits of extracted cohorts.

Usage:
    python bench/bench_binary_splits.py --cohort DIR [--cohort DIR ...] [--splits 8] [--n-train 160]
                                        [--endpoint ic_response] [--json OUT.json]

Why. ``bench_binary.py`` scores one split of 200 held-out patients, whose AUC ratio moves by about +-0.06 from
the split alone; a change to the method cannot be judged on it. Each ``--cohort`` folder (as
``bench_generalise.py`` keeps them: ``manifest.csv``, ``features.csv``, ``truth_all.csv`` with ``p_<endpoint>``)
is re-split ``--splits`` times at random into ``--n-train`` training and the rest held-out patients; on each
split the product's radiomics signature (:func:`NPCPrognosisLib.classification.signature.fit_rad_signature`: univariable
filter, Yeo-Johnson, redundancy filter, LASSO-logistic) is fitted on the training patients and its held-out AUC
divided by the AUC of the generator's true probability on the same patients. Beside it, a CEILING that is not a
method: a ridge regression of the generator's true log-odds on all (rank-normalised) features of the training
patients, i.e. what the features allow when the target is the truth itself rather than 160 yes/no answers.
Prints per split and the mean and SD of both ratios. SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata
from sklearn.linear_model import RidgeCV
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from NPCPrognosisLib.classification.signature import fit_rad_signature, rad_score  # noqa: E402
from NPCPrognosisLib.radiomics.features_table import feature_matrix, read_features  # noqa: E402


def load(cohort: Path, endpoint: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Features (manifest order, constant columns dropped), the endpoint and the true probability."""
    table, _ = read_features(cohort / "features.csv")
    manifest = pd.read_csv(cohort / "manifest.csv", dtype={"patient_id": str})
    truth = pd.read_csv(cohort / "truth_all.csv", dtype={"patient_id": str}).set_index("patient_id")
    table = table.set_index("patient_id").loc[manifest["patient_id"]].reset_index()
    X = feature_matrix(table)
    X = X.loc[:, X.std() > 0]
    return X, manifest[endpoint].to_numpy(int), truth.loc[manifest["patient_id"], f"p_{endpoint}"].to_numpy(float)


def rank_normal(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normal scores of the training ranks per column; held-out values interpolated on them."""
    mean = np.nanmean(train, axis=0)
    train = np.where(np.isnan(train), mean, train)
    test = np.where(np.isnan(test), mean, test)
    z = norm.ppf((rankdata(train, axis=0) - 0.5) / len(train))
    held = np.column_stack([np.interp(test[:, j], np.sort(train[:, j]), np.sort(z[:, j]))
                            for j in range(train.shape[1])])
    return z, held


def resplit(n: int, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``n_train`` random training patients and of the rest (the re-split ``seed`` of a cohort)."""
    order = np.random.default_rng(seed).permutation(n)
    return order[:n_train], order[n_train:]


def resplit_parser(description: str, splits: int) -> argparse.ArgumentParser:
    """The options every re-split benchmark takes (``--cohort`` folders, ``--splits``, ``--n-train``, ...)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cohort", action="append", required=True, type=Path)
    parser.add_argument("--splits", type=int, default=splits)
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--endpoint", default="ic_response")
    parser.add_argument("--json")
    return parser


def ratio_summary(part: list[dict], labels, first: str, second: str) -> dict:
    """Over one cohort's re-splits: mean, SD and splits >= 0.90 of each ``<label>_ratio``, and the paired
    difference ``<first>_ratio - <second>_ratio`` with its 95 % interval (``paired_<first>_minus_<second>``)."""
    diff = np.array([r[f"{first}_ratio"] - r[f"{second}_ratio"] for r in part])
    return {**{f"{label}_ratio": {"mean": float(np.mean([r[f"{label}_ratio"] for r in part])),
                                  "sd": float(np.std([r[f"{label}_ratio"] for r in part], ddof=1)),
                                  "splits_at_0.90": int(sum(r[f"{label}_ratio"] >= 0.90 for r in part))}
               for label in labels},
            f"paired_{first}_minus_{second}": {"mean": float(diff.mean()),
                                               "ci95_halfwidth": float(1.96 * diff.std(ddof=1) / np.sqrt(len(diff)))}}


def ratio_text(summary: dict, label: str) -> str:
    """``0.916 (SD 0.038, 20 >= 0.90)`` for one ``<label>_ratio`` of :func:`ratio_summary`."""
    ratio = summary[f"{label}_ratio"]
    return f"{ratio['mean']:.3f} (SD {ratio['sd']:.3f}, {ratio['splits_at_0.90']} >= 0.90)"


def paired_text(summary: dict, first: str, second: str) -> str:
    """``paired +0.064 +- 0.011`` for the difference of :func:`ratio_summary`."""
    paired = summary[f"paired_{first}_minus_{second}"]
    return f"paired {paired['mean']:+.3f} +- {paired['ci95_halfwidth']:.3f}"


def one_split(X: pd.DataFrame, y: np.ndarray, p: np.ndarray, n_train: int, seed: int) -> dict[str, float]:
    train, test = resplit(len(y), n_train, seed)
    oracle = roc_auc_score(y[test], p[test])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signature = fit_rad_signature(X.iloc[train].reset_index(drop=True), y[train], seed=0)
        score = rad_score(signature, X.iloc[test].reset_index(drop=True))
        z_train, z_test = rank_normal(X.iloc[train].to_numpy(float), X.iloc[test].to_numpy(float))
        logit = np.log(p[train] / (1 - p[train]))
        ceiling = RidgeCV(alphas=np.logspace(0, 5, 20)).fit(z_train, logit).predict(z_test)
    return {"oracle_auc": float(oracle), "signature_ratio": float(roc_auc_score(y[test], score) / oracle),
            "ceiling_ratio": float(roc_auc_score(y[test], ceiling) / oracle),
            "features_selected": len(signature["features"])}


def main(argv=None) -> int:
    args = resplit_parser(__doc__.splitlines()[0], splits=8).parse_args(argv)
    rows = []
    for cohort in args.cohort:
        X, y, p = load(cohort, args.endpoint)
        for split in range(args.splits):
            row = {"cohort": str(cohort), "split": split, **one_split(X, y, p, args.n_train, 100 + split)}
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    table = pd.DataFrame(rows)
    result = {name: {"mean": float(table[name].mean()), "sd": float(table[name].std())}
              for name in ("signature_ratio", "ceiling_ratio")}
    result["splits"] = len(table)
    print(f"SYNTHETIC: {len(table)} splits; signature / oracle AUC {result['signature_ratio']['mean']:.3f} "
          f"(SD {result['signature_ratio']['sd']:.3f}); ceiling (ridge on the true log-odds) "
          f"{result['ceiling_ratio']['mean']:.3f} (SD {result['ceiling_ratio']['sd']:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
