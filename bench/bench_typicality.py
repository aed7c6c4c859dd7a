"""How often segment's input checks speak, on scans as given and on scans given wrongly.

Usage:
    python bench/bench_typicality.py --manifest M [--bundle NETWORK_BUNDLE] [--n 30] [--variants plain swap ...]

For each of the first ``--n`` patients of the manifest and each variant, the network input is built exactly as
``segment`` builds it (sequences aligned on the CET1W, the network's preprocessing, its covering working grid) and
:func:`NPCPrognosisLib.deep.typicality.typicality_warnings` is applied with the bundle's record. Variants: ``plain``
(as scanned: a warning is a false alarm, or another protocol), ``noise_t1c`` (the CET1W replaced by uniform noise),
``noise_all`` (every sequence), ``swap`` (T2W and CET1W exchanged), ``t1_as_t1c`` (the T1W given as CET1W),
``t2_everywhere`` (the T2W in all three places). Prints, per variant, how many patients were warned (and by which
check) and the median of each pair's cross-correlation. The network itself is not run (the checks read only its input).
SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from NPCPrognosisLib.contract import REFERENCE_SEQUENCE, SEQUENCES  # noqa: E402
from NPCPrognosisLib.deep.data import covering_grid, grid_input  # noqa: E402
from NPCPrognosisLib.deep.segmentation import load_network  # noqa: E402
from NPCPrognosisLib.deep.typicality import cross_correlations, neighbour_correlations, typicality_warnings  # noqa: E402
from NPCPrognosisLib.imaging.preprocess import preprocess_images  # noqa: E402
from NPCPrognosisLib.io.images import align_patient, load_patient  # noqa: E402
from NPCPrognosisLib.io.manifest import read_manifest  # noqa: E402
from NPCPrognosisLib.resources import DEMO_NETWORK  # noqa: E402

VARIANTS = ("plain", "noise_t1c", "noise_all", "swap", "t1_as_t1c", "t2_everywhere")


def _noise(image: sitk.Image, rng: np.random.Generator) -> sitk.Image:
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    noise = sitk.GetImageFromArray(rng.uniform(0.0, float(array.max()), array.shape).astype(np.float32))
    noise.CopyInformation(image)
    return noise


def variant_images(images: dict, variant: str, rng: np.random.Generator) -> dict:
    if variant == "noise_t1c":
        return {**images, "t1c": _noise(images["t1c"], rng)}
    if variant == "noise_all":
        return {s: _noise(images[s], rng) for s in SEQUENCES}
    if variant == "swap":
        return {**images, "t2": images["t1c"], "t1c": images["t2"]}
    if variant == "t1_as_t1c":
        return {**images, "t1c": images["t1"]}
    if variant == "t2_everywhere":
        return {s: images["t2"] for s in SEQUENCES}
    return dict(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--bundle", default=str(DEMO_NETWORK))
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()
    model = load_network(args.bundle, device="cpu")
    record = model.content["network"].get("typicality")
    print(f"network {args.bundle}: record {'present' if record else 'ABSENT (only the noise and same-series checks)'}")
    entries = read_manifest(args.manifest, require_mask=False, require_clinical=False).entries()[: args.n]
    rng = np.random.default_rng(0)
    for variant in args.variants:
        warned, cross, kinds = 0, [], {"noise": 0, "same image": 0, "correlations": 0}
        for entry in entries:
            images = variant_images(dict(load_patient(entry.patient_id, entry.images).images), variant, rng)
            aligned = align_patient(images, None, patient_id=entry.patient_id)
            preprocessed = preprocess_images({s: aligned.images[s] for s in SEQUENCES}, model.preprocess)
            grid = covering_grid(preprocessed[REFERENCE_SEQUENCE], model.grid)[0]
            x, _ = grid_input(preprocessed, grid)
            cross.append(cross_correlations(x, grid.spacing))
            warnings = typicality_warnings(record, neighbour_correlations(preprocessed), cross[-1])
            warned += bool(warnings)
            for kind, words in (("noise", "like noise"), ("same image", "same image"),
                                ("correlations", "relate to one another")):
                kinds[kind] += any(words in w for w in warnings)
        medians = ", ".join(f"{pair} {np.median([c[pair] for c in cross]):+.2f}" for pair in cross[0])
        by_kind = ", ".join(f"{kind} {n}" for kind, n in kinds.items())
        print(f"{variant:14s} warned {warned:3d} / {len(entries)} ({warned / len(entries):.0%}; {by_kind}); "
              f"median {medians}", flush=True)


if __name__ == "__main__":
    main()
