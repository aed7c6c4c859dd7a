"""Binary endpoint (induction-chemotherapy response) on held-out synthetic patients: AUC / oracle AUC.

Usage:
    python bench/bench_binary.py --manifest M --features F [--truth TRUTH.csv | --family F --seed S]
                                 [--endpoint ic_response] [--extra-features NAME=CSV ...] [--work DIR]
                                 [--json OUT.json]

Runs exactly ``npc-prognosis train --endpoint ic_response --split-col split`` (the product's defaults) on the
manifest's training patients and ``evaluate`` on its test patients, then compares each model's held-out AUC with
the AUC of the generator's true response probability (``p_ic_response``) on the same patients. The truth comes
from ``truth.csv`` files beside the cohort, or (for cohorts written before that column existed) from the
generator's tabular shortcut with the cohort's family and seed (bench_generalise seeds: train = seed*1000+1,
test = seed*1000+2). Target (issue 11): the best-on-training-CV model reaches >= 0.90 of the oracle AUC.
SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from NPCPrognosisLib.cli import main as cli  # noqa: E402
from NPCPrognosisLib.datasets import FAMILY_MODULES  # noqa: E402


def truth_for(manifest: pd.DataFrame, args: argparse.Namespace) -> pd.Series:
    """The generator's true response probability of every manifest patient (``bench_fusion.truth_for``)."""
    from bench_fusion import truth_for as cohort_truth

    return cohort_truth(manifest, args)["p_ic_response"].reset_index(drop=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--truth")
    parser.add_argument("--family", choices=sorted(FAMILY_MODULES))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--endpoint", default="ic_response")
    parser.add_argument("--extra-features", action="append", default=[], metavar="NAME=CSV",
                        help="passed to train and evaluate as they are (e.g. pathology=slides.csv)")
    parser.add_argument("--work")
    parser.add_argument("--json")
    args = parser.parse_args()
    manifest = pd.read_csv(args.manifest, dtype={"patient_id": str})
    p_true = truth_for(manifest, args)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_binary_"))
    extra = [arg for spec in args.extra_features for arg in ("--extra-features", spec)]
    start = time.perf_counter()
    assert cli(["--quiet", "train", "--manifest", args.manifest, "--features", args.features, "--endpoint",
                args.endpoint, "--out", str(work / "bundle"), "--split-col", "split", *extra]) == 0
    train_s = time.perf_counter() - start
    assert cli(["--quiet", "evaluate", "--bundle", str(work / "bundle"), "--manifest", args.manifest, "--features",
                args.features, "--endpoint", args.endpoint, "--out", str(work / "eval"), *extra]) == 0
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    test = (manifest["split"] == "test").to_numpy()
    oracle = float(roc_auc_score(manifest.loc[test, args.endpoint], p_true[test]))
    best = metrics["model_used"]
    result = {"n_test": int(test.sum()), "oracle_auc": oracle, "train_seconds": train_s, "best": best,
              "auc": {name: m["auc"] for name, m in metrics["models"].items()},
              "auc_95ci": {name: m["auc_95ci"] for name, m in metrics["models"].items()},
              "ratio_to_oracle": {name: m["auc"] / oracle for name, m in metrics["models"].items()},
              "best_ratio": metrics["models"][best]["auc"] / oracle,
              "target_met": metrics["models"][best]["auc"] / oracle >= 0.90}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
