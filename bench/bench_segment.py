"""Time automatic segmentation of one patient and measure accuracy across phantom families.

Usage:
    python bench/bench_segment.py [--bundle NETWORK_BUNDLE] [--threads 2] [--tta 0]
                                  [--n 200 --seed 9999 --family relaxometry | --test-manifest M]
                                  [--train-family synth --n-train 160 | --train-manifest M] [--train-config J]
                                  [--work DIR] [--json OUT.json]

Timing: one synthetic patient resampled to a 256 x 256 x 30 matrix per sequence (3 sequences), full
``segment_patient`` (N4 + normalisation, working-grid resample, network, resampling back, post-processing) on
``--threads`` CPU threads; prints the wall time of the second call (the first warms up torch) and the peak resident
memory of the process (ru_maxrss; includes Python, torch and MONAI). Targets: <= 15 s and <= 3 GB.

Training (with ``--train-family`` or ``--train-manifest``): exactly ``npc-prognosis train-net --manifest M
--endpoint dmfs --out DIR/network`` at its defaults (30 epochs, data-derived grid, quality gate) on
``--n-train`` patients of that family (seed ``--train-seed``), timed; the trained bundle is then evaluated
instead of ``--bundle``.

Accuracy (with --n or --test-manifest): a cohort of ``--family`` drawn with --seed (never used in training), or
an existing manifest; Dice and HD95 (mm) per label on each patient's own grid (masks checked to be in the exact
input geometry), the network's inference time per patient, and Harrell's C of the deep score for DMFS against
the oracle C of the true linear predictor (truth.csv ``lp_dmfs``). Issue-10 targets on the family the network was
not trained on: mean Dice GTVp >= 0.85, GTVn >= 0.75. SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from NPCPrognosisLib.deep.segmentation import load_network, segment_patient  # noqa: E402
from NPCPrognosisLib.imaging.overlap import segmentation_metrics  # noqa: E402
from NPCPrognosisLib.resources import DEMO_NETWORK  # noqa: E402

MATRIX = (256, 256, 30)


def _resampled_to_matrix(image: sitk.Image, matrix=MATRIX, is_label: bool = False) -> sitk.Image:
    """The same field of view sampled on a ``matrix`` grid (same direction and physical extent)."""
    size = np.array(image.GetSize(), float)
    spacing = np.array(image.GetSpacing()) * size / np.array(matrix, float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in (size - 1) / 2]))
    ref = sitk.Image([int(v) for v in matrix], sitk.sitkFloat32)
    ref.SetSpacing([float(v) for v in spacing])
    ref.SetDirection(image.GetDirection())
    ref.SetOrigin([float(v) for v in centre - direction @ (spacing * (np.array(matrix) - 1) / 2)])
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    return sitk.Resample(image, ref, sitk.Transform(), interp, 0.0, sitk.sitkUInt8 if is_label else sitk.sitkFloat32)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 ** 2  # Linux: kilobytes


def time_one_patient(model, tta: int, saliency: bool) -> dict:
    from NPCPrognosisLib.datasets.synth import synthesize_patient

    patient = synthesize_patient(np.random.default_rng(4321), "BENCH")
    images = {k: _resampled_to_matrix(getattr(patient, k)) for k in ("t1", "t2", "t1c")}
    segment_patient(model, images, tta=tta, saliency=saliency)  # warm-up
    start = time.perf_counter()
    result = segment_patient(model, images, tta=tta, saliency=saliency)
    wall = time.perf_counter() - start
    return {"matrix": list(MATRIX), "wall_s": round(wall, 2), "peak_rss_gb": round(peak_rss_gb(), 3),
            "tta": tta, "saliency": saliency, "gtvp_ml": round(result.volumes_ml["gtvp"], 2)}


def make_cohort(family: str, n: int, seed: int, out: Path, prefix: str) -> tuple[Path, Path]:
    """(manifest, truth) of a fresh cohort of ``family`` (written once; reused when ``out`` holds it)."""
    from NPCPrognosisLib.datasets import phantom_family

    if not (out / "manifest.csv").exists():
        phantom_family(family).synthesize_cohort(n, seed, out, progress=False, workers=2, id_prefix=prefix)
    return out / "manifest.csv", out / "truth.csv"


def train_default_network(manifest: Path, out: Path, config: str | None = None) -> tuple[Path, float]:
    """``npc-prognosis train-net`` at its defaults (or with ``config`` as ``--config``, to try a candidate
    default); returns (bundle, wall seconds)."""
    from NPCPrognosisLib.cli import main as cli

    start = time.perf_counter()
    code = cli(["train-net", "--manifest", str(manifest), "--endpoint", "dmfs", "--out", str(out), "--resume",
                "--threads", "2", *(["--config", config] if config else [])])
    if code != 0:
        raise SystemExit(f"train-net failed with status {code}")
    return out, time.perf_counter() - start


def evaluate_cohort(model, manifest_path: Path, truth_path: Path, tta: int) -> dict:
    import pandas as pd

    from NPCPrognosisLib.imaging.geometry import same_geometry
    from NPCPrognosisLib.io.images import load_patient
    from NPCPrognosisLib.io.manifest import read_manifest
    from NPCPrognosisLib.survival.metrics import harrell_c

    manifest = read_manifest(manifest_path)
    truth = pd.read_csv(truth_path, dtype={"patient_id": str}).set_index("patient_id")
    rows = []
    for entry in manifest.entries():
        patient = load_patient(entry.patient_id, entry.images, entry.mask)
        start = time.perf_counter()
        result = segment_patient(model, patient.images, patient_id=entry.patient_id, tta=tta)
        seconds = time.perf_counter() - start
        if not same_geometry(result.mask, patient.images["t1c"]):
            raise SystemExit(f"{entry.patient_id}: the automatic mask is not in the CET1W geometry")
        row = {"patient_id": entry.patient_id, **segmentation_metrics(result.mask, patient.mask),
               "deep_score": result.deep_score, "lp_dmfs": float(truth.loc[entry.patient_id, "lp_dmfs"]),
               "time": entry.outcomes["dmfs_time"], "event": entry.outcomes["dmfs_event"] > 0,
               "gtvp_ml": result.volumes_ml["gtvp"], "gtvn_ml": result.volumes_ml["gtvn"], "seconds": seconds,
               "warnings": len(result.warnings)}
        rows.append(row)
        print(f"{entry.patient_id}: Dice GTVp {row['dice_gtvp']:.3f} GTVn {row['dice_gtvn']:.3f} "
              f"HD95 GTVp {row['hd95_gtvp']:.1f} mm GTVn {row['hd95_gtvn']:.1f} mm score {row['deep_score']:.3f} "
              f"[{seconds:.1f} s]", flush=True)
    table = pd.DataFrame(rows)
    c_deep = harrell_c(table["time"], table["event"], table["deep_score"])
    c_oracle = harrell_c(table["time"], table["event"], table["lp_dmfs"])
    from scipy.stats import spearmanr

    summary = {
        "n": len(table), "manifest": str(manifest_path), "tta": tta,
        "dice_gtvp_mean": float(np.nanmean(table["dice_gtvp"])),
        "dice_gtvp_median": float(np.nanmedian(table["dice_gtvp"])),
        "dice_gtvn_mean": float(np.nanmean(table["dice_gtvn"])),
        "dice_gtvn_median": float(np.nanmedian(table["dice_gtvn"])),
        "n_with_gtvn_dice": int(table["dice_gtvn"].notna().sum()),
        "hd95_gtvp_median_mm": float(np.nanmedian(table["hd95_gtvp"])),
        "hd95_gtvn_median_mm": float(np.nanmedian(table["hd95_gtvn"])),
        "seconds_per_patient_median": float(table["seconds"].median()),
        "patients_with_warnings": int((table["warnings"] > 0).sum()),
        "c_index_deep": c_deep, "c_index_oracle": c_oracle, "c_ratio": c_deep / c_oracle,
        "spearman_deep_vs_true_lp": float(spearmanr(table["deep_score"], table["lp_dmfs"]).correlation),
        "n_events": int(table["event"].sum()),
    }
    summary["targets_met"] = {"dice_gtvp>=0.85": summary["dice_gtvp_mean"] >= 0.85,
                              "dice_gtvn>=0.75": summary["dice_gtvn_mean"] >= 0.75}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEMO_NETWORK))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", type=int, default=0)
    parser.add_argument("--saliency", action="store_true")
    parser.add_argument("--n", type=int, default=0, help="also evaluate on a fresh cohort of N patients")
    parser.add_argument("--seed", type=int, default=9999)
    parser.add_argument("--family", default="synth", help="phantom family of the evaluation cohort")
    parser.add_argument("--test-manifest", help="evaluate on this manifest (with truth.csv beside it) instead")
    parser.add_argument("--train-family", help="first train a network at the defaults on this family")
    parser.add_argument("--train-manifest", help="... or on this manifest")
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--train-config", help="options JSON passed to train-net as --config (a candidate default)")
    parser.add_argument("--train-seed", type=int, default=4242)
    parser.add_argument("--work", help="folder for the cohorts and the trained network (kept; re-runs reuse them)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_segment_"))
    results = {"threads": args.threads}
    bundle = Path(args.bundle)
    if args.train_family or args.train_manifest:
        manifest = Path(args.train_manifest) if args.train_manifest else make_cohort(
            args.train_family, args.n_train, args.train_seed, work / "train_cohort", "TRN")[0]
        bundle, seconds = train_default_network(manifest, work / "network", args.train_config)
        results["training"] = {"manifest": str(manifest), "family": args.train_family, "wall_s": round(seconds, 1),
                               "config": args.train_config,
                               "grid": json.loads((bundle / "bundle.json").read_text())["network"]["grid"]}
        settings = f"with --config {args.train_config}" if args.train_config else "at its defaults"
        print(f"train-net {settings}: {seconds / 60:.1f} min (target <= 20 min on 2 cores)", flush=True)
    results["bundle"] = str(bundle)
    model = load_network(bundle, device="cpu")
    if not args.skip_timing:
        results["timing"] = time_one_patient(model, args.tta, args.saliency)
        t = results["timing"]
        print(f"one patient, 3 x {MATRIX} voxels, {args.threads} threads: {t['wall_s']:.2f} s, "
              f"peak RSS {t['peak_rss_gb']:.2f} GB (targets <= 15 s, <= 3 GB)", flush=True)
    if args.n or args.test_manifest:
        if args.test_manifest:
            manifest, truth = Path(args.test_manifest), Path(args.test_manifest).with_name("truth.csv")
        else:
            manifest, truth = make_cohort(args.family, args.n, args.seed, work / f"test_{args.family}", "TST")
        summary = evaluate_cohort(model, manifest, truth, args.tta)
        results["accuracy"] = summary
        print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0 if all(math.isfinite(v) for v in [results.get("timing", {}).get("wall_s", 0.0)]) else 1


if __name__ == "__main__":
    sys.exit(main())
