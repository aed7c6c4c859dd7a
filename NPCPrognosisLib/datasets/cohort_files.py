"""What every phantom family writes the same way: one random stream per patient, the manifest and truth rows,
and the cohort's files (README, ``manifest.csv``, ``truth.csv``, ``pathology.csv``).

The families share this file contract and nothing else: their anatomy, image physics and outcome models stay in
their own modules, so a method measured on one family is not measured on a copy of another.
SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.atomic import atomic_path, write_text_atomic

#: ``draw_and_write(index, patient_id, rng, image_dir, out_dir) -> (manifest row, truth row)``: one patient drawn
#: and written by a family; module-level in the family's module so a process pool can run it.
DrawAndWrite = Callable[[int, str, np.random.Generator, Path, Path], tuple[dict[str, str], dict[str, str]]]


def patient_generators(n: int, seed: int) -> list[np.random.Generator]:
    """Patient i's generator from ``SeedSequence(seed).spawn(n)[i]``: a patient depends neither on how many were
    drawn before it nor on how many processes drew them."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(int(seed)).spawn(int(n))]


def _fmt(column: str, value: Any) -> str:
    if value is None:
        return ""  # missing, as a clinician's export would leave it
    if column.endswith("_time"):
        return f"{value:.2f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def patient_rows(patient_id: str, paths: Mapping[str, Path], clinical: Mapping[str, Any],
                 truth: Mapping[str, Any], out_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The manifest row (image paths relative to ``out_dir``, clinical and outcome fields) and the truth row of
    one written patient, as text."""
    row = {"patient_id": patient_id}
    row.update({k: Path(p).relative_to(out_dir).as_posix() for k, p in paths.items()})
    row.update({k: _fmt(k, v) for k, v in clinical.items()})
    return row, {k: (f"{v:.6f}" if isinstance(v, float) else str(v)) for k, v in truth.items()}


def write_cohort(draw_and_write: DrawAndWrite, n: int, seed: int, out_dir: str | Path, *, readme: str, desc: str,
                 progress: bool, id_prefix: str, workers: int):
    """Draw and write ``n`` patients of one family, then the cohort's tables.

    Parameters
    ----------
    draw_and_write : callable
        The family's ``(index, patient_id, rng, image_dir, out_dir) -> (manifest row, truth row)``.
    n : int
        Number of patients (>= 1).
    seed : int
        Cohort seed (see :func:`patient_generators`); also seeds the pathology block.
    out_dir : str or pathlib.Path
        Folder of the cohort; images go to ``out_dir/images``.
    readme : str
        Text of ``README.txt`` (the family's SYNTHETIC notice and description).
    desc : str
        Progress-bar label.
    progress : bool
        Show a progress bar.
    id_prefix : str
        Prefix of the patient IDs (``<prefix>0001``, ...).
    workers : int
        Worker processes (spawn context); the files are identical for any value.

    Returns
    -------
    SynthCohort
        Paths of the manifest and truth tables and the patient IDs.
    """
    from tqdm import tqdm

    from NPCPrognosisLib.datasets.pathology import write_pathology
    from NPCPrognosisLib.datasets.synth import MANIFEST_COLUMNS, TRUTH_COLUMNS, SynthCohort

    if int(n) < 1:
        raise InputError(f"cohort size must be at least 1, got {n!r}", fix="pass n >= 1")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "README.txt", readme)
    rngs = patient_generators(int(n), int(seed))
    ids = [f"{id_prefix}{i + 1:04d}" for i in range(int(n))]
    bar = {"total": len(ids), "desc": desc, "unit": "patient", "disable": not progress}
    if workers > 1:
        from NPCPrognosisLib.processes import worker_pool

        with worker_pool(int(workers)) as pool:
            futures = [pool.submit(draw_and_write, i, pid, rng, image_dir, out_dir)
                       for i, (pid, rng) in enumerate(zip(ids, rngs))]
            results = [f.result() for f in tqdm(futures, **bar)]
    else:
        results = [draw_and_write(i, pid, rng, image_dir, out_dir)
                   for i, (pid, rng) in tqdm(enumerate(zip(ids, rngs)), **bar)]
    manifest_path, truth_path = out_dir / "manifest.csv", out_dir / "truth.csv"
    for path, columns, rows in ((manifest_path, MANIFEST_COLUMNS, [r for r, _ in results]),
                                (truth_path, TRUTH_COLUMNS, [t for _, t in results])):
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    # the slide features a pathology pipeline would add (own random stream: nothing above changes)
    write_pathology(truth_path, out_dir / "pathology.csv", int(seed))
    return SynthCohort(manifest_path, truth_path, ids)
