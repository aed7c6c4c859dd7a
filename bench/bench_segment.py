"""Time automatic segmentation of one patient and (optionally) measure accuracy on a fresh synthetic cohort.

Usage: python bench/bench_segment.py [--bundle NETWORK_BUNDLE] [--threads 2] [--tta 0]
                                     [--n 20 --seed 9999] [--json OUT.json]

Timing: one synthetic patient resampled to a 256 x 256 x 30 matrix per sequence (3 sequences), full
``segment_patient`` (N4 + normalisation, working-grid resample, network, resampling back, post-processing) on
``--threads`` CPU threads; prints the wall time of the second call (the first warms up torch) and the peak resident
memory of the process (ru_maxrss; includes Python, torch and MONAI). Targets: <= 15 s and <= 3 GB.

Accuracy (with --n): a synthetic cohort drawn with --seed (never used in training: the demo network is trained on
seed 31337), Dice and HD95 (mm) per label on each patient's own grid, and Harrell's C of the deep score for DMFS
against the oracle C of the true linear predictor (truth.csv lp_dmfs). Targets: Dice GTVp >= 0.80, GTVn >= 0.70,
deep-score C >= 0.85 x oracle C. SYNTHETIC DATA - NOT CLINICAL.
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


def evaluate_cohort(model, n: int, seed: int, tta: int) -> dict:
    import pandas as pd

    from NPCPrognosisLib.datasets.synth import synthesize_cohort
    from NPCPrognosisLib.io.images import load_patient
    from NPCPrognosisLib.io.manifest import read_manifest
    from NPCPrognosisLib.survival.metrics import harrell_c

    with tempfile.TemporaryDirectory() as tmp:
        cohort = synthesize_cohort(n, seed, tmp, progress=False)
        manifest = read_manifest(cohort.manifest_path)
        truth = pd.read_csv(cohort.truth_path, dtype={"patient_id": str}).set_index("patient_id")
        rows = []
        for entry in manifest.entries():
            patient = load_patient(entry.patient_id, entry.images, entry.mask)
            result = segment_patient(model, patient.images, patient_id=entry.patient_id, tta=tta)
            row = {"patient_id": entry.patient_id, **segmentation_metrics(result.mask, patient.mask),
                   "deep_score": result.deep_score, "lp_dmfs": float(truth.loc[entry.patient_id, "lp_dmfs"]),
                   "time": entry.outcomes["dmfs_time"], "event": entry.outcomes["dmfs_event"] > 0,
                   "gtvp_ml": result.volumes_ml["gtvp"], "gtvn_ml": result.volumes_ml["gtvn"]}
            rows.append(row)
            print(f"{entry.patient_id}: Dice GTVp {row['dice_gtvp']:.3f} GTVn {row['dice_gtvn']:.3f} "
                  f"HD95 GTVp {row['hd95_gtvp']:.1f} mm GTVn {row['hd95_gtvn']:.1f} mm score {row['deep_score']:.3f}",
                  flush=True)
    table = pd.DataFrame(rows)
    c_deep = harrell_c(table["time"], table["event"], table["deep_score"])
    c_oracle = harrell_c(table["time"], table["event"], table["lp_dmfs"])
    from scipy.stats import spearmanr

    summary = {
        "n": n, "seed": seed, "tta": tta,
        "dice_gtvp_mean": float(np.nanmean(table["dice_gtvp"])),
        "dice_gtvn_mean": float(np.nanmean(table["dice_gtvn"])),
        "n_with_gtvn_dice": int(table["dice_gtvn"].notna().sum()),
        "hd95_gtvp_median_mm": float(np.nanmedian(table["hd95_gtvp"])),
        "hd95_gtvn_median_mm": float(np.nanmedian(table["hd95_gtvn"])),
        "c_index_deep": c_deep, "c_index_oracle": c_oracle, "c_ratio": c_deep / c_oracle,
        "spearman_deep_vs_true_lp": float(spearmanr(table["deep_score"], table["lp_dmfs"]).correlation),
        "n_events": int(table["event"].sum()),
    }
    summary["targets_met"] = {"dice_gtvp>=0.80": summary["dice_gtvp_mean"] >= 0.80,
                              "dice_gtvn>=0.70": summary["dice_gtvn_mean"] >= 0.70,
                              "c>=0.85*oracle": summary["c_ratio"] >= 0.85}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEMO_NETWORK))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", type=int, default=0)
    parser.add_argument("--saliency", action="store_true")
    parser.add_argument("--n", type=int, default=0, help="also evaluate on a fresh synthetic cohort of N patients")
    parser.add_argument("--seed", type=int, default=9999)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    model = load_network(args.bundle, device="cpu")
    results = {"threads": args.threads, "bundle": args.bundle}
    if not args.skip_timing:
        results["timing"] = time_one_patient(model, args.tta, args.saliency)
        t = results["timing"]
        print(f"one patient, 3 x {MATRIX} voxels, {args.threads} threads: {t['wall_s']:.2f} s, "
              f"peak RSS {t['peak_rss_gb']:.2f} GB (targets <= 15 s, <= 3 GB)", flush=True)
    if args.n:
        summary = evaluate_cohort(model, args.n, args.seed, args.tta)
        results["accuracy"] = summary
        print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0 if all(math.isfinite(v) for v in [results.get("timing", {}).get("wall_s", 0.0)]) else 1


if __name__ == "__main__":
    sys.exit(main())
