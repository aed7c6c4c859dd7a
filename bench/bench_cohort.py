"""Cohort benchmark on SYNTHETIC data: the nomogram's held-out C-index against the oracle, full paper settings.

    python bench/bench_cohort.py [--n 200] [--seed 2026] [--workers 2] [--params PARAMS.yaml]
                                 [--network NETWORK_BUNDLE [--mask auto]]

Prints the wall time of each stage, the oracle C-index (true linear predictor from truth.csv) and each model's
C-index on the 30 % held-out patients, and the ratio nomogram / oracle (target >= 0.85). Exit code 1 if the
target is missed.

With ``--network`` every patient also gets the network's deep score (and with ``--mask auto`` radiomics come from
the network's own contours, the fully automatic AutoRadio path); the bundle then holds the deep-only model, the
radiomics-only nomogram (Rad-score + clinical) and the combined nomogram (deep + Rad-score + clinical), all on the
same split. Extra targets: deep-score C >= 0.85 x oracle, combined nomogram C >= radiomics-only nomogram C.
The demo network was trained on seed 31337: use any other seed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from NPCPrognosisLib.datasets.synth import synthesize_cohort
from NPCPrognosisLib.io.manifest import read_manifest
from NPCPrognosisLib.pipeline.evaluate import evaluate_cohort
from NPCPrognosisLib.pipeline.extract import extract_cohort
from NPCPrognosisLib.pipeline.train import train
from NPCPrognosisLib.resources import RADIOMICS_PARAMS
from NPCPrognosisLib.survival.metrics import harrell_c


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--params", default=str(RADIOMICS_PARAMS))
    parser.add_argument("--endpoint", default="dmfs")
    parser.add_argument("--out", default=None, help="keep outputs here (default: a temporary folder)")
    parser.add_argument("--network", default=None, help="network bundle: adds the deep score")
    parser.add_argument("--mask", choices=("manifest", "auto"), default="manifest",
                        help="auto: radiomics from the network's contours (needs --network)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="npc-bench-cohort-"))
    stamps = {}
    start = time.perf_counter()
    cohort = synthesize_cohort(args.n, args.seed, out / "cohort", progress=False, workers=args.workers)
    stamps["synth_s"] = time.perf_counter() - start
    manifest = read_manifest(cohort.manifest_path)
    start = time.perf_counter()
    extraction = extract_cohort(manifest, out / "features.csv", workers=args.workers, params_path=args.params,
                                progress=False, network=args.network, auto_mask=args.mask == "auto")
    stamps["extract_s"] = time.perf_counter() - start
    start = time.perf_counter()
    train(manifest, out / "features.csv", args.endpoint, out / "bundle", test_fraction=0.3, seed=args.seed,
          network=args.network)
    metrics = evaluate_cohort(out / "bundle", manifest, out / "features.csv", args.endpoint, out / "eval", n_boot=500)
    stamps["train_evaluate_s"] = time.perf_counter() - start
    predictions = pd.read_csv(out / "eval" / "predictions.csv", dtype={"patient_id": str})
    joined = predictions.merge(pd.read_csv(cohort.truth_path, dtype={"patient_id": str}), on="patient_id")
    oracle = harrell_c(joined[f"{args.endpoint}_time"], joined[f"{args.endpoint}_event"] > 0,
                       joined[f"lp_{args.endpoint}"])
    print(f"SYNTHETIC cohort n={args.n} seed={args.seed}; params {Path(args.params).name}; "
          f"{extraction.table.shape[1] - 1} features; failures {len(extraction.failures)}; "
          f"network {args.network}; mask {args.mask}")
    for key, value in stamps.items():
        print(f"{key}={value:.1f}")
    print(f"held_out_n={metrics['n']} events={metrics['events']}")
    print(f"oracle_c_index={oracle:.3f}")
    for name, block in metrics["models"].items():
        lo, hi = block["c_index_95ci"]
        print(f"{name}_c_index={block['c_index']:.3f} (95% CI {lo:.3f}-{hi:.3f})")
    ratio = metrics["models"]["nomogram"]["c_index"] / oracle
    print(f"ratio_nomogram_over_oracle={ratio:.3f} (target >= 0.85)")
    ok = ratio >= 0.85
    if args.network:
        models = metrics["models"]
        deep_ratio = models["deep"]["c_index"] / oracle
        gain = models["nomogram"]["c_index"] - models["radiomics_nomogram"]["c_index"]
        print(f"ratio_deep_over_oracle={deep_ratio:.3f} (target >= 0.85)")
        print(f"combined_minus_radiomics_nomogram={gain:+.3f} (target >= 0)")
        ok = ok and deep_ratio >= 0.85 and gain >= 0.0
    print(f"outputs: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
