"""Time and memory of one fully automatic ``predict`` (segmentation, radiomics, scores, TTA 4).

Usage: python bench/bench_predict.py [--bundle DEMO_BUNDLE] [--matrix 512 512 40] [--tta 4] [--seed 5]

One SYNTHETIC three-sequence study (T1W, T2W, CET1W) resampled to a ``--matrix`` grid per sequence (same field
of view), written as NIfTI, then predicted with no contours by the shipped demo bundle (its network segments,
PyRadiomics with the bundle's paper settings, nomogram) in a fresh child process, as ``npc-prognosis predict``
runs it. Printed: wall time of the prediction, each stage's seconds (from ``prediction.json``), how many times
each sequence was bias-corrected (N4) and normalised, and the child's peak resident memory (ru_maxrss of the
child: Python, torch, MONAI, PyRadiomics included). Targets (issue 8): <= 20 s and <= 3 GB on 2 cores, each
preprocessing step once per sequence; ratios below 1 meet them. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_segment import _resampled_to_matrix  # noqa: E402

TARGET_S = 20.0
TARGET_GB = 3.0

CHILD = r"""
import collections, json, sys, time
from NPCPrognosisLib.imaging import preprocess
calls = collections.Counter()
original = preprocess.preprocess_image
def counted(image, config):
    calls[image.GetSize()] += 1  # every sequence shares the matrix, so count per call
    return original(image, config)
preprocess.preprocess_image = counted
from NPCPrognosisLib.io.images import load_patient
from NPCPrognosisLib.pipeline.models import load_bundle
from NPCPrognosisLib.pipeline.predict import predict_patient
from NPCPrognosisLib.pipeline.prediction_record import write_prediction
from NPCPrognosisLib.reporting.labels import risk_group_text
folder, bundle, tta, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
patient = load_patient("BENCH-512", {s: f"{folder}/{s}.nii.gz" for s in ("t1", "t2", "t1c")})
prediction = predict_patient(load_bundle(bundle), patient, json.load(open(f"{folder}/clinical.json")), tta=tta)
write_prediction(prediction, out)
print(json.dumps({"wall_s": time.perf_counter() - start, "preprocess_calls": sum(calls.values()),
                  "timings": prediction.timings, "risk_group": risk_group_text(prediction.to_dict()),
                  "gtvp_ml": prediction.segmentation.get("automatic_volumes_ml", {}).get("gtvp")}))
"""


def write_study(folder: Path, matrix: tuple[int, int, int], seed: int) -> None:
    import SimpleITK as sitk

    from NPCPrognosisLib.datasets.synth import synthesize_patient
    from NPCPrognosisLib.io.atomic import write_json_atomic

    patient = synthesize_patient(np.random.default_rng(seed), "BENCH-512")
    for name in ("t1", "t2", "t1c"):
        sitk.WriteImage(_resampled_to_matrix(getattr(patient, name), matrix), str(folder / f"{name}.nii.gz"))
    write_json_atomic(folder / "clinical.json", patient.clinical)


def main() -> int:
    from NPCPrognosisLib.resources import DEMO_BUNDLE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEMO_BUNDLE))
    parser.add_argument("--matrix", type=int, nargs=3, default=(512, 512, 40))
    parser.add_argument("--tta", type=int, default=4)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_study(folder, tuple(args.matrix), args.seed)
        started = time.perf_counter()
        command = [sys.executable, "-c", CHILD, str(folder), args.bundle, str(args.tta), str(folder / "out")]
        child = subprocess.run(command, capture_output=True, text=True,
                               cwd=str(Path(__file__).resolve().parent.parent))
        process_s = time.perf_counter() - started
        if child.returncode != 0:
            print(child.stderr[-3000:], file=sys.stderr)
            return 2
        result = json.loads(child.stdout.strip().splitlines()[-1])
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0 ** 2  # Linux: kilobytes
    print(f"SYNTHETIC study {args.matrix[0]}x{args.matrix[1]}x{args.matrix[2]} x 3 sequences, fully automatic predict, "
          f"TTA {args.tta}, demo bundle; child process {process_s:.1f} s including imports")
    for stage, seconds in result["timings"].items():
        print(f"  stage {stage:24s} {seconds:6.2f} s")
    print(f"preprocessing (N4 + normalisation) calls: {result['preprocess_calls']} for 3 sequences "
          f"(ratio {result['preprocess_calls'] / 3:.2f}; 1.00 = each sequence once)")
    ratio = result["wall_s"] / TARGET_S
    print(f"predict wall time {result['wall_s']:.1f} s (target {TARGET_S:.0f} s): ratio {ratio:.2f}")
    print(f"peak memory {peak_gb:.2f} GB (target {TARGET_GB:.0f} GB): ratio {peak_gb / TARGET_GB:.2f}")
    print(f"result: {result['risk_group']}, automatic GTVp {result['gtvp_ml']:.1f} mL")  # as predict prints it
    met = result["wall_s"] <= TARGET_S and peak_gb <= TARGET_GB and result["preprocess_calls"] == 3
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
