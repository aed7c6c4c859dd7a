"""Segment a whole cohort: masks, a manifest pointing at them, deep scores and failures.

One patient's failure never stops the cohort; every file is written atomically.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from NPCPrognosisLib.contract import REFERENCE_SEQUENCE, SEQUENCES
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.atomic import write_text_atomic
from NPCPrognosisLib.io.dicom_contours import ContoursNotWritten
from NPCPrognosisLib.io.dicom_seg import write_seg
from NPCPrognosisLib.io.dicom_series import split_series_selector
from NPCPrognosisLib.io.images import load_patient, write_image_atomic
from NPCPrognosisLib.io.manifest import MASK_COLUMN, SYNTHETIC_MARKER, Manifest, PatientEntry
from NPCPrognosisLib.io.patient_ids import listed_ids
from NPCPrognosisLib.io.rtstruct import write_rtstruct
from NPCPrognosisLib.io.segment_outputs import SegmentOutputs
from NPCPrognosisLib.io.staging import files_written_whole

if TYPE_CHECKING:  # the network (torch) is imported where a cohort is segmented, not where contours are written
    from NPCPrognosisLib.deep.segmentation import NetworkModel

log = logging.getLogger(__name__)


#: The files a cohort run writes beside its patients' outputs (:func:`segment_cohort`).
COHORT_MANIFEST, COHORT_SCORES, COHORT_FAILURES, COHORT_WARNINGS = (
    "manifest.csv", "deep_scores.csv", "failures.csv", "cohort_warnings.txt")
#: A cohort run's tables (with the synthetic cohort's marker, copied from the input manifest's folder) in the order
#: they are written, manifest last: a ``manifest.csv`` in the folder means the run that wrote it finished.
COHORT_TABLES = (COHORT_SCORES, COHORT_FAILURES, COHORT_WARNINGS, SYNTHETIC_MARKER, COHORT_MANIFEST)


def write_cohort_warnings(folder: str | Path, warnings: Sequence[str]) -> Path | None:
    """Report the cohort check of a run's automatic contours: each warning logged and written, one a line, to
    ``cohort_warnings.txt`` in ``folder``, the folder of the contours it judges.

    Why: ``segment --manifest`` wrote its check to this file while ``extract --mask auto`` stored it in the features'
    ``.meta.json``, so after one command a user found nothing where the other had put it. Both now write it here,
    beside the automatic masks (``segment``'s output folder, ``extract``'s ``<features>_masks/``).

    Parameters
    ----------
    folder : str or Path
        The folder of the run's automatic masks.
    warnings : sequence of str
        :func:`~NPCPrognosisLib.deep.segmentation.cohort_warnings` of the run's contours.

    Returns
    -------
    Path or None
        The file written; None when there is no warning, and an earlier run's file is removed, so that the file
        exists exactly when this run's contours differ from the network's training patients.
    """
    path = Path(folder) / COHORT_WARNINGS
    if not warnings:
        path.unlink(missing_ok=True)
        return None
    write_text_atomic(path, "".join(f"{message}\n" for message in warnings))
    for message in warnings:
        log.warning("automatic contours of the cohort (%s): %s", path, message)
    return path


def cohort_folder(manifest: Manifest, out_dir: str | Path) -> Path:
    """The cohort's output folder, refused when it is the input manifest's own folder.

    There the run's ``manifest.csv`` would replace the cohort's own (or the input itself), its
    ``<patient_id>_mask.nii.gz`` the cohort's masks of that name, and a failed or interrupted run would remove them.

    Parameters
    ----------
    manifest : Manifest
        The cohort being segmented.
    out_dir : str or Path
        The folder asked for.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    InputError
        ``out_dir`` is the folder the manifest lies in.
    """
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(manifest.source).resolve().parent:
        raise InputError(f"--out {out_dir} is the folder of the manifest itself: segment writes its own "
                         f"{COHORT_MANIFEST} and <patient_id>_mask.nii.gz there, replacing the cohort's files of those "
                         "names", path=manifest.source, column="--out",
                         fix="give the cohort's masks a folder of their own, e.g. --out seg/")
    return out_dir


def cohort_outputs(manifest: Manifest, out_dir: str | Path) -> list[SegmentOutputs | Path]:
    """Everything a cohort run writes into ``out_dir``: its own tables, then each patient's files.

    Parameters
    ----------
    manifest : Manifest
        The cohort being segmented.
    out_dir : str or Path
        The cohort's output folder (:func:`cohort_folder`: not the manifest's own).

    Returns
    -------
    list of Path and SegmentOutputs
        What :func:`outputs_removed_if_failed` takes.
    """
    out_dir = cohort_folder(manifest, out_dir)
    tables: list[SegmentOutputs | Path] = [out_dir / name for name in COHORT_TABLES]
    return tables + [SegmentOutputs.of_patient(out_dir, patient_id) for patient_id in manifest.patient_ids]


def remove_outputs(*outputs: SegmentOutputs | str | Path) -> list[Path]:
    """Remove the files of ``outputs`` that exist.

    Parameters
    ----------
    *outputs : SegmentOutputs, str or Path
        A patient's files (:class:`SegmentOutputs`) or a single file (a cohort's table); missing ones are skipped.

    Returns
    -------
    list of Path
        The files removed.
    """
    removed = []
    for output in outputs:
        for path in output.files if isinstance(output, SegmentOutputs) else (Path(output),):
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


def _named(paths: list[Path]) -> str:
    """The first five names of ``paths``, for a log line."""
    return ", ".join(path.name for path in paths[:5]) + (", ..." if len(paths) > 5 else "")


@contextlib.contextmanager
def outputs_removed_if_failed(*outputs: SegmentOutputs | str | Path) -> Iterator[None]:
    """Remove the outputs of an earlier run when the run of the block fails, say which, then re-raise.

    An earlier run's files of that name would sit beside the failed run's error (and, in a cohort, beside a manifest
    row that no longer points at them), where a PACS upload or a planning import takes them as this run's contours.
    The one place a failed run's outputs go: the single-patient command uses it, and the cohort runner around loading
    the network (a bundle that fails to load fails the whole run). Ctrl-C is no failure: it removes nothing, so one
    pressed while the network loads leaves an earlier run's files whole (:func:`outputs_written_whole`).

    Parameters
    ----------
    *outputs : SegmentOutputs, str or Path
        A patient's files (:class:`SegmentOutputs`) or a single file (a cohort's table); missing ones are skipped.
    """
    try:
        yield
    except Exception:
        removed = remove_outputs(*outputs)
        if removed:
            log.warning("removed %d file(s) an earlier run left in %s, so they are not taken for the failed run's "
                        "(%s)", len(removed), removed[0].parent, _named(removed))
        raise


@contextlib.contextmanager
def outputs_written_whole(outputs: SegmentOutputs) -> Iterator[SegmentOutputs]:
    """Where the block writes a patient's files, moved over the earlier run's only once the block has written them all
    (:func:`~NPCPrognosisLib.io.staging.files_written_whole`).

    A Ctrl-C between the mask and the uncertainty map had left this run's mask beside the earlier run's map, and a
    run on a NIfTI CET1W the DICOM SEG of an earlier run on the DICOM series beside its new mask. Each final file the
    block did not write (an uncertainty map without ``--tta``, a SEG or RTSTRUCT this run could not make) is removed.
    A failure's earlier files are the caller's to remove (:func:`outputs_removed_if_failed`).

    Parameters
    ----------
    outputs : SegmentOutputs
        The patient's files.

    Yields
    ------
    SegmentOutputs
        The same names in the hidden folder, for the block to write.
    """
    with files_written_whole(outputs.files) as staged:
        yield SegmentOutputs(*staged)


def write_contours(mask: Any, reference: str | Path | None, mask_path: str | Path, seg_path: str | Path,
                   rtstruct_path: str | Path, *, patient_id: str, origins: Mapping[int, str] | None = None
                   ) -> tuple[Path, Path | None, Path | None, list[str]]:
    """Contours as the mask file and, for a DICOM CET1W, a DICOM SEG (for a PACS) and an RT Structure
    Set (for a treatment-planning system), both referencing that series.

    All or nothing: the DICOM files are written first (one that cannot be made is a warning, the mask is still
    good, and an earlier run's file of that kind is removed: it would contradict this mask), and when anything
    after them fails this run's DICOM files are removed, so a failed patient leaves no contours that its manifest
    row does not point at.

    Parameters
    ----------
    mask : SimpleITK.Image
        Labels on the CET1W grid.
    reference : str or Path or None
        The CET1W as the manifest or command line named it (DICOM files only for a DICOM series folder).
    mask_path, seg_path, rtstruct_path : str or Path
        Where the mask, the SEG and the RTSTRUCT go.
    patient_id : str
        Named in errors.
    origins : mapping of int to str, optional
        How each label came about (:data:`~NPCPrognosisLib.io.dicom_contours.ORIGINS`), written into the SEG and the
        RTSTRUCT; default AUTOMATIC (``segment``'s own contours).

    Returns
    -------
    mask_path : Path
    seg_path, rtstruct_path : Path or None
        None when that file was not written.
    warnings : list of str
        Why a SEG or RTSTRUCT was not written, where one was expected.
    """
    warnings: list[str] = []
    written: dict[str, Path | None] = {"DICOM SEG": None, "RTSTRUCT": None}
    try:
        if reference is not None and split_series_selector(reference)[0].is_dir():
            writers = {"DICOM SEG": (seg_path, lambda: write_seg(mask, reference, seg_path, patient_id=patient_id,
                                                                origins=origins)),
                       "RTSTRUCT": (rtstruct_path, lambda: write_rtstruct(mask, rtstruct_path, patient_id=patient_id,
                                                                          source=reference, origins=origins))}
            for what, (path, write) in writers.items():
                try:
                    written[what] = write()
                except ContoursNotWritten as exc:
                    warnings.append(str(exc))
                    Path(path).unlink(missing_ok=True)  # an earlier run's file would contradict this mask
            if not any(written.values()) and not warnings:
                warnings.append("no DICOM SEG or RTSTRUCT written: the mask holds no contour")
        mask_written = write_image_atomic(mask, mask_path)
    except BaseException:
        for path in written.values():
            if path is not None:
                Path(path).unlink(missing_ok=True)
        raise
    return mask_written, written["DICOM SEG"], written["RTSTRUCT"], warnings


def segment_cohort(model: NetworkModel, manifest: Manifest, out_dir: str | Path, *, tta: int = 0,
                   progress: bool = True) -> Path:
    """Segment every manifest patient; write masks, a manifest pointing at them, scores and failures.

    Image paths in the written manifest are rewritten relative to ``out_dir`` so it can be used from there; a
    patient whose images fail is listed in ``failures.csv`` with the reason and keeps an empty mask cell, and the
    cohort carries on; when every patient fails, an ``InputError`` names the first three and no table is written
    (as ``extract`` does). Only the patient ID and the three sequences are needed: a radiologist's imaging-only list
    segments as well as a full cohort manifest.

    An earlier run's tables (:data:`COHORT_TABLES`) and its files of this manifest's patients are removed before the
    first patient, and this run's tables are written when every patient is done, ``manifest.csv`` last: a run stopped
    part-way (Ctrl-C, a killed job) leaves no manifest pointing at a mix of this run's masks and an earlier run's, nor
    deep scores of masks since replaced, nor an earlier run's masks of the patients it did not reach (or that failed)
    beside this run's. Each patient's files are moved into place together once all are written
    (:func:`outputs_written_whole`). Ctrl-C ends the run with a ``KeyboardInterrupt`` whose message says what the
    folder holds (:func:`interrupted_cohort`).
    The synthetic cohort's marker is copied when the input manifest lies beside one, and is otherwise absent, so a
    model trained on the written manifest is marked synthetic exactly when its patients are
    (:func:`~NPCPrognosisLib.io.manifest.is_synthetic_cohort`).

    Parameters
    ----------
    model : NetworkModel
        The loaded network bundle.
    manifest : Manifest
        The cohort (:func:`~NPCPrognosisLib.io.manifest.read_manifest`, ``require_clinical=False``); the written
        manifest keeps its canonical column names.
    out_dir : str or Path
        Folder for ``<patient_id>_mask.nii.gz`` (and ``_seg.dcm``, ``_rtstruct.dcm`` for DICOM input), ``manifest.csv``,
        ``deep_scores.csv``, ``failures.csv`` and ``cohort_warnings.txt`` (:func:`cohort_warnings`: a structure
        found in far more or fewer patients than among the network's training patients); not the manifest's own
        folder (:func:`cohort_folder`).
    tta : int
        Test-time augmentations per patient.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        ``out_dir/manifest.csv``.
    """
    out_dir = cohort_folder(manifest, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = manifest.entries()
    items = entries
    if progress:
        from tqdm import tqdm

        items = tqdm(entries, desc="segmenting cohort", unit="patient")
    masks: dict[str, str] = {}
    failures, scores = [], []
    cohort_ids = frozenset(manifest.patient_ids)  # a series carrying another row's ID is that patient's
    try:
        earlier = remove_outputs(*cohort_outputs(manifest, out_dir))
        if earlier:
            log.info("removed %d file(s) an earlier run left in %s for this manifest (%s): this run writes its own, "
                     "the tables when every patient is done", len(earlier), out_dir, _named(earlier))
        for entry in items:
            try:
                masks[entry.patient_id], score = _segment_cohort_patient(model, entry, out_dir, cohort_ids, tta=tta)
                scores.append(score)
            except Exception as exc:  # one patient's failure never stops a cohort
                log.warning("patient %s failed: %s", entry.patient_id, exc)
                failures.append({"patient_id": entry.patient_id, "error": type(exc).__name__, "message": str(exc)})
        if not masks:  # a manifest with no mask in it, exit status 0 and "written" would read as a finished run
            first = "; ".join(f"{f['patient_id']}: {f['message']}" for f in failures[:3])
            raise InputError(f"no patient could be segmented ({len(failures)} failed; {first})", path=manifest.source,
                             fix="fix the first error above and run segment again")
        return _write_cohort_tables(model, manifest, out_dir, masks, scores, failures)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_cohort(out_dir, list(masks), len(entries))) from None


def _write_cohort_tables(model: NetworkModel, manifest: Manifest, out_dir: Path, masks: dict[str, str],
                         scores: list[dict[str, Any]], failures: list[dict[str, str]]) -> Path:
    """A finished cohort run's tables (:data:`COHORT_TABLES`), ``manifest.csv`` last; returns its path."""
    from NPCPrognosisLib.deep.segmentation import cohort_warnings

    table = manifest.table.copy()

    def relocate(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
            return value
        path = Path(str(value).strip())
        path = path if path.is_absolute() else manifest.root / path
        return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()

    for column in SEQUENCES:
        if column in table.columns:
            table[column] = table[column].map(relocate)
    table[MASK_COLUMN] = [masks.get(pid, "") for pid in table["patient_id"]]
    columns = ["patient_id", "deep_score", "deep_score_sd", "gtvp_ml", "gtvn_ml", "binary_probability", "warnings"]
    if not model.net.config.binary_head:
        columns.remove("binary_probability")
    write_text_atomic(out_dir / COHORT_SCORES, pd.DataFrame(scores, columns=columns).to_csv(index=False))
    if failures:
        write_text_atomic(out_dir / COHORT_FAILURES, pd.DataFrame(failures).to_csv(index=False))
    write_cohort_warnings(out_dir, cohort_warnings(model.content.get("network", {}).get("training_volumes_ml", {}),
                                                   [{"gtvp": s["gtvp_ml"], "gtvn": s["gtvn_ml"]} for s in scores]))
    warned = [row["patient_id"] for row in scores if row["warnings"]]
    if warned:
        log.warning("%d patient(s) with warnings about their contours (see deep_scores.csv): %s", len(warned),
                    listed_ids(warned))
    marker = Path(manifest.source).parent / SYNTHETIC_MARKER
    if marker.is_file():  # the same generated patients: a model trained on this manifest is synthetic too
        shutil.copyfile(marker, out_dir / SYNTHETIC_MARKER)
    return write_text_atomic(out_dir / COHORT_MANIFEST, table.to_csv(index=False))


def _segment_cohort_patient(model: NetworkModel, entry: PatientEntry, out_dir: Path, cohort_ids: frozenset[str], *,
                            tta: int) -> tuple[str, dict[str, Any]]:
    """One cohort patient's files, written whole (:func:`outputs_written_whole`): its mask's name and its
    ``deep_scores.csv`` row."""
    from NPCPrognosisLib.deep.segmentation import segment_patient

    outputs = SegmentOutputs.of_patient(out_dir, entry.patient_id)
    with outputs_written_whole(outputs) as staged:
        patient = load_patient(entry.patient_id, entry.images, foreign_ids=cohort_ids)
        result = segment_patient(model, patient.images, patient_id=entry.patient_id, tta=tta)
        _, _, _, dicom_warnings = write_contours(result.mask, entry.images.get(REFERENCE_SEQUENCE), staged.mask,
                                                 staged.seg, staged.rtstruct, patient_id=entry.patient_id)
    result.warnings.extend(dicom_warnings)
    return outputs.mask.name, {"patient_id": entry.patient_id, "deep_score": result.deep_score,
                               "deep_score_sd": result.deep_score_sd, "gtvp_ml": result.volumes_ml["gtvp"],
                               "gtvn_ml": result.volumes_ml["gtvn"], "binary_probability": result.binary_probability,
                               "warnings": " | ".join(result.warnings)}


def interrupted_cohort(out_dir: Path, segmented: list[str], patients: int) -> str:
    """What a cohort run stopped part-way leaves in ``out_dir``: the Ctrl-C message.

    Parameters
    ----------
    out_dir : Path
        The cohort's output folder.
    segmented : list of str
        The patients whose files this run wrote before it stopped.
    patients : int
        The manifest's patients.

    Returns
    -------
    str
    """
    named = f" ({', '.join(segmented[:5])}{', ...' if len(segmented) > 5 else ''})" if segmented else ""
    return (f"{out_dir} holds no {COHORT_MANIFEST} of this run (it is written when every patient is done) and the "
            f"files of the {len(segmented)} of {patients} patients segmented before the interruption{named}; the "
            "files an earlier run left there for this manifest's patients were removed when the run started: run the "
            "same command again to segment the whole cohort")
