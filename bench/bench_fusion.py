"""Multimodal fusion on held-out SYNTHETIC patients: DMFS C and IC-response AUC of every model, with and
without the pathology block, each against the Cox nomogram.

Usage:
    python bench/bench_fusion.py --manifest M --features F (--truth TRUTH.csv | --family F --seed S)
                                 [--work DIR] [--json OUT.json] [--train-arg=ARG ...]

The manifest has a ``split`` column (train/test) and its features table was made by ``extract`` (the
product's defaults). The generator's pathology block (``datasets.pathology``, a fifth of the patients without a
slide) is drawn from the cohort's truth. Two bundles are trained exactly as a user would, ``train --endpoint
dmfs --binary-endpoint ic_response --split-col split --fusion mmoe``, one with ``--extra-features
pathology=...`` and one without; ``evaluate`` scores both on the test patients for DMFS and IC response.
Printed: per model the held-out C (DMFS) and AUC (IC response) with 95% CIs, the paired bootstrap difference
in C to the nomogram and DeLong's test of the AUC against the combined (Rad-score + clinical) model, the oracle C
and AUC (the generator's true linear predictor and response probability), the MMoE's training seconds and one
patient's fusion prediction in seconds (features given). Issue 14's targets: MMoE training <= 300 s, one
prediction <= 1 s. SYNTHETIC DATA - NOT CLINICAL.
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
from NPCPrognosisLib.datasets import FAMILY_MODULES, phantom_family  # noqa: E402
from NPCPrognosisLib.datasets.pathology import pathology_block  # noqa: E402
from NPCPrognosisLib.survival.metrics import harrell_c  # noqa: E402


def truth_for(manifest: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """The generator's truth of every manifest patient (same row order, manifest IDs)."""
    if args.truth:
        truth = pd.read_csv(args.truth, dtype={"patient_id": str}).set_index("patient_id")
        return truth.loc[manifest["patient_id"]].reset_index()
    family = phantom_family(args.family)
    parts = []
    for split, offset in (("train", 1), ("test", 2)):
        rows = manifest[manifest["split"] == split]
        table = family.simulate_outcomes(len(rows), args.seed * 1000 + offset)
        if not (table["age"].to_numpy() == rows["age"].to_numpy()).all():
            raise SystemExit(f"the {split} patients are not family {args.family} seed {args.seed}")
        table["patient_id"] = rows["patient_id"].to_numpy()
        table.index = rows.index
        parts.append(table)
    return pd.concat(parts).sort_index().reset_index(drop=True)


def run(args: argparse.Namespace, work: Path, pathology: Path | None) -> dict:
    """Train and evaluate one bundle; the metrics of both endpoints and the fusion's timings."""
    label = "with_pathology" if pathology else "without_pathology"
    extra = ["--extra-features", f"pathology={pathology}"] if pathology else []
    data = ["--manifest", args.manifest, "--features", args.features]
    bundle = work / f"bundle_{label}"
    start = time.perf_counter()
    assert cli(["--quiet", "train", *data, "--endpoint", "dmfs", "--binary-endpoint", "ic_response",
                "--split-col", "split", "--fusion", "mmoe", *extra, *args.train_arg, "--out", str(bundle)]) == 0
    train_s = time.perf_counter() - start
    out = {}
    for endpoint in ("dmfs", "ic_response"):
        assert cli(["--quiet", "evaluate", "--bundle", str(bundle), *data, "--endpoint", endpoint, *extra,
                    "--out", str(work / f"eval_{label}_{endpoint}")]) == 0
        out[endpoint] = json.loads((work / f"eval_{label}_{endpoint}" / "metrics.json").read_text())
    document = json.loads((bundle / "bundle.json").read_text())
    out["train_seconds"] = train_s
    out["mmoe_fit_seconds"] = document["fusion"]["fit_seconds"]
    out["mmoe_cv"] = {k: document["fusion"]["cv"][k] for k in ("chosen", "task_epochs", "per_task")}
    out["mmoe_cv"]["nested_per_task"] = document["fusion"]["cv"]["nested"]["per_task"]  # the honest estimate
    out["predict_seconds"] = one_prediction_seconds(bundle, args, pathology)
    return out


def one_prediction_seconds(bundle_dir: Path, args: argparse.Namespace, pathology: Path | None) -> float:
    """Seconds of one test patient's fusion prediction once the features exist (bundle already loaded)."""
    from NPCPrognosisLib.io.clinical import parse_clinical
    from NPCPrognosisLib.io.extra_features import read_extra_blocks
    from NPCPrognosisLib.io.manifest import CLINICAL_FIELDS
    from NPCPrognosisLib.pipeline.models import load_bundle
    from NPCPrognosisLib.pipeline.predict import patient_fusion

    bundle = load_bundle(bundle_dir)
    manifest = pd.read_csv(args.manifest, dtype={"patient_id": str})
    row = manifest[manifest["split"] == "test"].iloc[0]
    features = pd.read_csv(args.features, dtype={"patient_id": str})
    start = time.perf_counter()
    extras = read_extra_blocks([f"pathology={pathology}"] if pathology else [])
    table = features[features["patient_id"] == row["patient_id"]].reset_index(drop=True)
    record = parse_clinical({c: row.get(c) for c in CLINICAL_FIELDS}, row["patient_id"])
    factors = bundle.factors([record], table, extras, [row["patient_id"]])
    patient_fusion(bundle, factors, table, extras, row["patient_id"])
    return time.perf_counter() - start


def summary(result: dict, oracle_c: float, oracle_auc: float) -> dict:
    dmfs, ic = result["dmfs"], result["ic_response"]
    survival = {name: {"c": m["c_index"], "ci95": m["c_index_95ci"], "ratio_to_oracle": m["c_index"] / oracle_c,
                       "vs_nomogram": dmfs.get("paired_vs_nomogram", {}).get(name)}
                for name, m in dmfs["models"].items()}
    binary = {name: {"auc": m["auc"], "ci95": m["auc_95ci"], "ratio_to_oracle": m["auc"] / oracle_auc,
                     "delong_vs_combined": ic["delong_vs_combined"].get(name)}
              for name, m in ic["models"].items()}
    return {"dmfs": survival, "ic_response": binary, "ic_model_used": ic["model_used"],
            "train_seconds": result["train_seconds"], "mmoe_fit_seconds": result["mmoe_fit_seconds"],
            "mmoe_cv": result["mmoe_cv"], "predict_seconds": result["predict_seconds"],
            "mean_gate_weights": dmfs.get("mmoe_mean_gate_weights")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--truth")
    parser.add_argument("--family", choices=sorted(FAMILY_MODULES))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--work")
    parser.add_argument("--json")
    parser.add_argument("--variant", action="append", choices=("without_pathology", "with_pathology"),
                        help="which bundles to train (default both)")
    parser.add_argument("--train-arg", action="append", default=[],
                        help="a further train argument (e.g. --train-arg=--network --train-arg=DIR for a features "
                             "table with deep columns); the benchmark's numbers are for the defaults")
    args = parser.parse_args()
    args.variant = args.variant or ["without_pathology", "with_pathology"]
    manifest = pd.read_csv(args.manifest, dtype={"patient_id": str})
    truth = truth_for(manifest, args)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_fusion_"))
    work.mkdir(parents=True, exist_ok=True)
    pathology = work / "pathology.csv"
    pathology_block(truth, args.seed if args.seed is not None else 0).to_csv(pathology, index=False)
    test = (manifest["split"] == "test").to_numpy()
    oracle_c = harrell_c(manifest.loc[test, "dmfs_time"], manifest.loc[test, "dmfs_event"].astype(bool),
                         truth.loc[test, "lp_dmfs"])
    oracle_auc = float(roc_auc_score(manifest.loc[test, "ic_response"], truth.loc[test, "p_ic_response"]))
    report = {"n_test": int(test.sum()), "oracle_c": oracle_c, "oracle_auc": oracle_auc}
    for label in args.variant:
        report[label] = summary(run(args, work, pathology if label == "with_pathology" else None), oracle_c,
                                oracle_auc)
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    for label in args.variant:
        block = report[label]
        print(f"{label}: MMoE fit {block['mmoe_fit_seconds']:.0f} s (target <= 300), one prediction "
              f"{block['predict_seconds']:.3f} s (target <= 1)")
        for name, m in block["dmfs"].items():
            diff = m["vs_nomogram"]
            text = (f"  DMFS {name:20s} C {m['c']:.3f} ({m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}) "
                    f"/oracle {m['ratio_to_oracle']:.3f}")
            if diff:
                text += (f"  vs nomogram {diff['difference']:+.3f} ({diff['ci95'][0]:+.3f} to "
                         f"{diff['ci95'][1]:+.3f}) p {diff['p']:.2g}")
            print(text)
        for name, m in block["ic_response"].items():
            d = m["delong_vs_combined"]
            print(f"  IC   {name:30s} AUC {m['auc']:.3f} ({m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}) /oracle "
                  f"{m['ratio_to_oracle']:.3f}" + (f"  vs combined p {d['p']:.2g}" if d else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
