"""What every phantom family writes the same way: one random stream per patient, the images (NIfTI, or DICOM
series for one patient in ten), the manifest and truth rows, and the cohort's files (README, ``manifest.csv``,
``truth.csv``, ``pathology.csv``).

The families share this file contract and nothing else: their anatomy, image physics and outcome models stay in
their own modules, so a method measured on one family is not measured on a copy of another.
SYNTHETIC DATA - NOT CLINICAL.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.contract import SEQUENCES
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from NPCPrognosisLib.io.images import write_image_atomic
from NPCPrognosisLib.io.manifest import SYNTHETIC_MARKER

#: Columns of every phantom cohort's ``manifest.csv`` (the project's manifest contract) and ``truth.csv``.
MANIFEST_COLUMNS = (
    "patient_id", "t1", "t2", "t1c", "mask", "age", "sex", "t_stage", "n_stage", "ebv_dna", "rene", "ldh",
    "chemo", "ccnd", "dmfs_time", "dmfs_event", "os_time", "os_event", "pfs_time", "pfs_event", "ic_response",
)
TRUTH_COLUMNS = (
    "patient_id", "lp_dmfs", "lp_os", "lp_pfs", "gtvp_volume_ml", "heterogeneity", "necrosis_fraction",
    "n_nodes", "gtvn_volume_ml", "rene", "high_risk", "chemo_benefit_applied", "p_ic_response",
)


@dataclass
class SynthCohort:
    """Where a written cohort's tables are, and its patients."""

    manifest_path: Path
    truth_path: Path
    patient_ids: list[str]


#: ``draw_and_write(index, patient_id, rng, image_dir, out_dir) -> (manifest row, truth row)``: one patient drawn
#: and written by a family; module-level in the family's module so a process pool can run it.
DrawAndWrite = Callable[[int, str, np.random.Generator, Path, Path], tuple[dict[str, str], dict[str, str]]]

#: Patients 3, 13, 23, ... of a cohort are written as DICOM series folders (the rest as NIfTI files).
DICOM_EVERY, DICOM_OFFSET = 10, 3


def writes_dicom(index: int) -> bool:
    """Whether patient ``index`` (0-based) of a cohort is written as DICOM series folders (one in ten).

    Parameters
    ----------
    index : int
        Position of the patient in the cohort.

    Returns
    -------
    bool
        True for indices 3, 13, 23, ...
    """
    return int(index) % DICOM_EVERY == DICOM_OFFSET


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


def dicom_uid(rng: np.random.Generator) -> str:
    """A DICOM UID of the UUID-derived form 2.25.<128-bit integer>."""
    return "2.25." + str(int.from_bytes(rng.bytes(16), "big") >> 1)


def write_dicom_series(image: sitk.Image, folder: Path, tags: dict[str, str], series_uid: str,
                       rng: np.random.Generator) -> None:
    """One MR series, one file per slice, readable by SimpleITK's ImageSeriesReader (GDCM)."""
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    sx, sy, sz = image.GetSpacing()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetSize()[2]):
        piece = image[:, :, k:k + 1]  # a one-slice volume keeps its slice spacing in the header
        meta = dict(tags)
        meta.update({
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
            "0008|0018": dicom_uid(rng), "0020|000e": series_uid, "0020|0013": str(k + 1),
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0028|0030": f"{sy:.6f}\\{sx:.6f}", "0018|0050": f"{sz:.4f}", "0018|0088": f"{sz:.4f}",
            "0028|1052": "0", "0028|1053": "1",
        })
        for key, value in meta.items():
            piece.SetMetaData(key, value)
        with atomic_path(folder / f"IM{k + 1:04d}.dcm") as tmp:
            writer.SetFileName(str(tmp))
            writer.Execute(piece)


def write_patient_images(patient: Any, image_dir: Path, dicom: bool, rng: np.random.Generator, *,
                         manufacturer: str) -> dict[str, Path]:
    """A phantom patient's three sequences as NIfTI files or DICOM series folders (``patient.protocol`` gives
    the field strength and each sequence's TR / TE), and its mask as NIfTI; returns the paths by manifest column."""
    paths: dict[str, Path] = {}
    pid = patient.patient_id
    if dicom:
        study, frame = dicom_uid(rng), dicom_uid(rng)
        base = {
            "0008|0060": "MR", "0010|0010": f"SYNTHETIC^{pid}", "0010|0020": pid, "0020|000d": study,
            "0020|0052": frame, "0008|0070": manufacturer, "0008|1030": "SYNTHETIC - NOT CLINICAL",
            "0008|0020": "20000101", "0008|0021": "20000101", "0008|0030": "120000", "0020|0010": "1",
            "0018|0087": f"{patient.protocol['field_T']:.1f}",
        }
        for number, seq in enumerate(SEQUENCES, start=1):
            tr, te = patient.protocol["tr_te"][seq]
            tags = dict(base, **{"0008|103e": f"SYNTHETIC {seq}", "0020|0011": str(number),
                                 "0018|0080": f"{tr:.1f}", "0018|0081": f"{te:.1f}"})
            paths[seq] = image_dir / f"{pid}_{seq}"
            write_dicom_series(getattr(patient, seq), paths[seq], tags, dicom_uid(rng), rng)
    else:
        for seq in SEQUENCES:
            paths[seq] = write_image_atomic(getattr(patient, seq), image_dir / f"{pid}_{seq}.nii.gz")
    paths["mask"] = write_image_atomic(patient.mask, image_dir / f"{pid}_mask.nii.gz")
    return paths


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

    if int(n) < 1:
        raise InputError(f"cohort size must be at least 1, got {n!r}", fix="pass n >= 1")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "README.txt", readme)
    # read by train and train-net (is_synthetic_cohort): their bundles say SYNTHETIC without --synthetic
    write_json_atomic(out_dir / SYNTHETIC_MARKER, {"synthetic": True, "generator": "npc-prognosis synth",
                                                   "description": desc, "patients": int(n), "seed": int(seed)})
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
