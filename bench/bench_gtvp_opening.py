"""Paired Dice of automatic primaries with and without the opening, on masks a network has already written.

Usage: python bench/bench_gtvp_opening.py --manifest TEST.csv --masks SEG_DIR [--train-manifest TRAIN.csv]
       [--radii 0 3 3.5] [--json OUT.json]

``SEG_DIR`` holds ``<patient_id>_mask.nii.gz`` as ``segment --manifest`` writes them with a bundle made before
the opening (its GTVp reduced to the largest component only); ``TEST.csv`` gives each patient's ground-truth mask
(column ``mask``). Each automatic GTVp is post-processed again as ``segment`` does now
(:func:`NPCPrognosisLib.deep.postprocess.postprocess_labels`) with each radius, and its Dice against the truth is
paired with the radius-0 Dice on the same patient. With ``--train-manifest`` (the network's training manifest) the
radius ``train-net`` would record is derived from those patients' masks with the shipped rule and added. Prints,
per radius, the mean and median Dice, the mean paired difference with its 95 % interval over patients, and the
worst single-patient change. Nothing is retrained: post-processing acts after the network, and the written masks
already hold the largest raw component of GTVp, which is what ``segment`` opens.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _read_labels(path: str):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def derived_radius(train_manifest: str) -> dict:
    """The radius the shipped rule picks from a training manifest's GTVp contours."""
    from NPCPrognosisLib.deep.postprocess import choose_opening_radius, opening_self_dice
    from NPCPrognosisLib.deep.training import TrainConfig
    from NPCPrognosisLib.io.manifest import read_manifest

    rows = []
    for entry in read_manifest(train_manifest, require_clinical=False).entries():
        image, labels = _read_labels(entry.mask)
        if (labels == 1).any():
            rows.append(opening_self_dice(labels == 1, image.GetSpacing()[::-1]))
    return choose_opening_radius(rows, TrainConfig().gtvp_opening_keep_dice)


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import SimpleITK as sitk

    from NPCPrognosisLib.deep.postprocess import postprocess_labels
    from NPCPrognosisLib.imaging.overlap import dice
    from NPCPrognosisLib.io.manifest import read_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="test manifest with ground-truth masks")
    parser.add_argument("--masks", required=True, help="folder of <patient_id>_mask.nii.gz written by segment")
    parser.add_argument("--train-manifest", default=None, help="the network's training manifest (adds its radius)")
    parser.add_argument("--radii", type=float, nargs="+", default=[0.0, 2.0, 3.0, 4.0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    radii = sorted(set(args.radii) | {0.0})
    derivation = None
    if args.train_manifest:
        derivation = derived_radius(args.train_manifest)
        radii = sorted(set(radii) | {derivation["radius_mm"]})
    scores: dict[float, list[float]] = {r: [] for r in radii}
    for entry in read_manifest(args.manifest, require_clinical=False).entries():
        _, truth = _read_labels(entry.mask)
        predicted, labels = _read_labels(Path(args.masks) / f"{entry.patient_id}_mask.nii.gz")
        truth = truth == 1
        for radius in radii:
            rules = {"gtvp_opening_mm": radius, "gtvp_largest_component": True, "gtvn_min_ml": 0.0}
            gtvp = sitk.GetArrayFromImage(postprocess_labels(labels, rules, predicted)) == 1
            scores[radius].append(dice(gtvp, truth))
    base = np.asarray(scores[0.0])
    report = {"n": int(base.size), "derivation": derivation, "radii": {}}
    for radius in radii:
        values = np.asarray(scores[radius])
        diff = values - base
        half = 1.96 * float(diff.std(ddof=1)) / math.sqrt(diff.size) if diff.size > 1 else float("nan")
        report["radii"][str(radius)] = {"mean": round(float(values.mean()), 4),
                                        "median": round(float(np.median(values)), 4),
                                        "paired_mean": round(float(diff.mean()), 4), "paired_ci95_half": round(half, 4),
                                        "worst_patient_change": round(float(diff.min()), 4)}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
