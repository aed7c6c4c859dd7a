"""Time radiomics extraction of one synthetic patient, sequential vs a process pool.

Usage: python bench/bench_extract.py [--workers 2] [--params PATH] [--repeats 3]

Builds one patient (3 sequences, ~128 x 128 x 30 voxels of 1.5 x 1.5 x 4 mm, a ~20 mL primary tumour and a ~5 mL
node), runs ``extract_patient(workers=1)`` and ``extract_patient(workers=N)`` with the same settings (the paper
settings by default), prints wall times, their ratio and peak memory, and exits 1 if the two feature dicts are not
identical. Uses ``NPCPrognosisLib.datasets.synth.synthesize_patient`` when it exists and fits, a local phantom
otherwise.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from NPCPrognosisLib.radiomics import extraction as rf
from NPCPrognosisLib.resources import RADIOMICS_PARAMS

SHAPE_ZYX = (30, 128, 128)
SPACING_XYZ = (1.5, 1.5, 4.0)
SEQUENCES = ("t1", "t2", "t1c")


def _ellipsoid(shape, spacing_xyz, centre_mm, radii_mm) -> np.ndarray:
    z, y, x = np.indices(shape, dtype=np.float64)
    coords = (x * spacing_xyz[0], y * spacing_xyz[1], z * spacing_xyz[2])
    return sum(((c - c0) / r) ** 2 for c, c0, r in zip(coords, centre_mm, radii_mm)) <= 1.0


def local_phantom(seed: int = 7):
    """Head-like phantom: smooth background, textured tumour and node, z-scored x100 per sequence."""
    rng = np.random.default_rng(seed)
    # 20 mL primary: ellipsoid with radii a*b*c = 20000 / (4/3 pi)
    r = (20000.0 / (4.0 / 3.0 * math.pi * 1.2 * 0.8)) ** (1.0 / 3.0)
    primary = _ellipsoid(SHAPE_ZYX, SPACING_XYZ, (96.0, 80.0, 60.0), (1.2 * r, r, 0.8 * r))
    node_r = (5000.0 / (4.0 / 3.0 * math.pi)) ** (1.0 / 3.0)
    node = _ellipsoid(SHAPE_ZYX, SPACING_XYZ, (140.0, 120.0, 64.0), (node_r,) * 3) & ~primary
    labels = np.zeros(SHAPE_ZYX, np.uint8)
    labels[primary] = 1
    labels[node] = 2
    head = _ellipsoid(SHAPE_ZYX, SPACING_XYZ, (96.0, 96.0, 60.0), (85.0, 90.0, 70.0))

    z, y, x = np.indices(SHAPE_ZYX, dtype=np.float64)
    images = {}
    for k, (seq, contrast) in enumerate(zip(SEQUENCES, (0.6, 1.4, 2.0))):
        smooth = np.sin(x / 9.0 + k) + np.cos(y / 11.0 - k) + 0.5 * np.sin(z / 3.0)
        texture = rng.normal(0.0, 1.0, SHAPE_ZYX)
        raw = 1.0 * head + 0.3 * smooth + 0.25 * texture + contrast * (labels > 0) * (1.0 + 0.3 * texture)
        inside = raw[head]
        z_scored = (raw - inside.mean()) / inside.std() * 100.0
        images[seq] = z_scored.astype(np.float32)

    def to_image(array):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING_XYZ)
        image.SetOrigin((-96.0, -96.0, -60.0))
        return image

    return {seq: to_image(a) for seq, a in images.items()}, to_image(labels)


def _zscore_x100(image: sitk.Image) -> sitk.Image:
    """The core z-scores each sequence x100 before radiomics; the bench does it over the whole volume."""
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    out = sitk.GetImageFromArray(((array - array.mean()) / array.std() * 100.0).astype(np.float32))
    out.CopyInformation(image)
    return out


def build_patient():
    """Prefer the project's synthesizer (first seed giving a node); fall back to the local phantom."""
    try:
        from NPCPrognosisLib.datasets.synth import synthesize_patient

        for seed in range(50):
            patient = synthesize_patient(np.random.default_rng(seed), f"bench-{seed}")
            labels = set(np.unique(sitk.GetArrayFromImage(patient.mask)).tolist())
            if {1, 2} <= labels:
                images = {seq: _zscore_x100(getattr(patient, seq)) for seq in SEQUENCES}
                return (
                    images,
                    patient.mask,
                    f"NPCPrognosisLib.datasets.synth.synthesize_patient(seed={seed}), z-scored x100",
                )
        raise RuntimeError("no synthetic patient with a node in 50 seeds")
    except Exception as exc:  # noqa: BLE001 - any mismatch means "use the local phantom"
        print(f"# synth not usable ({type(exc).__name__}: {exc}); using the local phantom", file=sys.stderr)
    images, mask = local_phantom()
    return images, mask, "bench local phantom"


def _volume_ml(mask: sitk.Image, label: int) -> float:
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    return float(np.count_nonzero(sitk.GetArrayFromImage(mask) == label)) * voxel_ml


def _identical(a: dict, b: dict) -> bool:
    if list(a) != list(b):
        return False
    for key, x in a.items():
        y = b[key]
        if not (x == y or (math.isnan(x) and math.isnan(y))):
            return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=2, help="process-pool size to compare with 1 (default 2)"
    )
    parser.add_argument("--params", default=None, help="PyRadiomics YAML (default: the paper settings)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per mode (>= 2); the best wall time is kept"
    )
    parser.add_argument(
        "--phantom", action="store_true", help="use the local ~128x128x30 phantom even if synth exists"
    )
    args = parser.parse_args(argv)

    if args.phantom:
        images, mask = local_phantom()
        source = "bench local phantom"
    else:
        images, mask, source = build_patient()
    params = Path(args.params) if args.params else RADIOMICS_PARAMS
    print(f"patient_source={source}")
    print(f"size_xyz={mask.GetSize()} spacing_mm={mask.GetSpacing()} sequences={','.join(images)}")
    print(f"gtvp_ml={_volume_ml(mask, 1):.1f} gtvn_ml={_volume_ml(mask, 2):.1f}")
    print(
        f"params={params} settings_hash={rf.settings_hash(params)[:12]} pyradiomics={rf.pyradiomics_version()}"
    )
    t0 = time.perf_counter()
    n_columns = len(rf.feature_columns(params, tuple(images)))
    print(f"feature_columns_s={time.perf_counter() - t0:.2f} n_columns={n_columns}")

    # The first parallel call pays for spawning the workers (~0.5 s each to import PyRadiomics); later calls reuse
    # the pool, as a cohort run does. Both are reported; the ratio uses the best (warm) time of each mode.
    timings = {}
    first_call = {}
    results = {}
    for workers in (1, args.workers):
        walls = []
        for _ in range(max(2, args.repeats)):
            t0 = time.perf_counter()
            result = rf.extract_patient(images, mask, patient_id="bench", params_path=params, workers=workers)
            walls.append(time.perf_counter() - t0)
            if workers in results and not _identical(results[workers], result):
                print(f"repeat with workers={workers} changed the features")
                return 1
            results[workers] = result
        timings[workers] = min(walls)
        first_call[workers] = walls[0]
        print(f"wall_s_workers_{workers}_first_call={walls[0]:.2f}")
        print(f"wall_s_workers_{workers}={timings[workers]:.2f}")

    print(f"ratio_sequential_over_parallel={timings[1] / timings[args.workers]:.2f}")
    print(f"ratio_sequential_over_parallel_first_call={timings[1] / first_call[args.workers]:.2f}")
    rf.shutdown_pools()  # workers must have exited for RUSAGE_CHILDREN to count them
    # ru_maxrss is in KiB on Linux. RUSAGE_CHILDREN = the largest single terminated worker, not a sum.
    self_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    child_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    print(f"peak_rss_self_mib={self_mib:.0f} peak_rss_largest_child_mib={child_mib:.0f}")
    same = _identical(results[1], results[args.workers])
    n_nan = sum(1 for v in results[1].values() if math.isnan(v))
    print(f"n_features={len(results[1])} n_nan={n_nan} identical={same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
