"""The panel's out-of-process jobs: segmentation, radiomics and prediction from files, results to files.

Heavy work runs in ``PythonSlicer`` so the GUI never freezes; the module writes a job file, polls
``progress.json`` and reads ``result.json`` (or ``error.json``). Nothing here imports slicer, qt or vtk, and the
module-level imports are standard library only, so Slicer can load the module before heavy packages exist.

Each job has a folder of its own (:func:`new_job_folder`) holding the patient's images exported from the scene; the
panel removes it once the result is in the scene (:func:`end_job_folder`). A Slicer killed or crashed mid-job
cannot: the next job's :func:`new_job_folder` removes the folders whose Slicer no longer runs, and says which.

Run a job out of process (what the Slicer module does)::

    PythonSlicer -m NPCPrognosisLib.slicer_support.jobs job.json
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from NPCPrognosisLib.io.atomic import read_cached, remove_stale_writes, write_bytes_atomic, write_json_atomic
from NPCPrognosisLib.io.staging import left_by_stopped_run, owner_tag, remove_folders_left

#: How a job folder's name starts: ``job-<pid>@<host>-<8 random characters>``, the owner being the Slicer that made it
#: (:func:`~NPCPrognosisLib.io.staging.owner_tag`), from which :func:`remove_stale_job_folders` tells a killed
#: Slicer's folder from a running one's. Folders of versions before the owner was named (``job-<8 characters>``)
#: are left alone: one of an older Slicer still running could not be told from a killed one's.
JOB_PREFIX = "job-"
_JOB_NAME = re.compile(re.escape(JOB_PREFIX) + r"(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)-[a-z0-9_]{8}")
#: The job folders this process has made and not yet ended (a job of this Slicer is never a stopped run's).
_OPEN_JOBS: set[Path] = set()


class JobCancelled(Exception):
    """The user pressed Cancel; raised between stages."""


def new_job_folder(jobs_root: str | Path) -> Path:
    """A new folder under ``jobs_root`` for one job of this process, after removing those a killed Slicer left there.

    Parameters
    ----------
    jobs_root : str or Path
        The panel's jobs folder (created when missing).

    Returns
    -------
    Path
        The job's folder, named with its owner (:data:`JOB_PREFIX`); end it with :func:`end_job_folder`.
    """
    root = Path(jobs_root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_job_folders(root)
    folder = Path(tempfile.mkdtemp(prefix=f"{JOB_PREFIX}{owner_tag()}-", dir=root))
    _OPEN_JOBS.add(folder.resolve())
    return folder


def end_job_folder(folder: str | Path) -> None:
    """Remove a job's folder (:func:`new_job_folder`): its result is in the scene, or the job failed."""
    shutil.rmtree(folder, ignore_errors=True)
    _OPEN_JOBS.discard(Path(folder).resolve())


def remove_stale_job_folders(jobs_root: str | Path) -> list[Path]:
    """Remove the job folders of a Slicer that no longer runs from ``jobs_root``, and say so.

    Why: the panel removes a job's folder when the job ends, but a Slicer killed (``kill -9``, a crash, a power cut)
    while a job ran never did: the folder, with the patient's three sequences exported from the scene (2.4 MB for
    the sample patient), stayed under Slicer's temporary folder for good, one more per killed session. Only folders
    named by :func:`new_job_folder` whose Slicer of this machine no longer runs are removed
    (:func:`~NPCPrognosisLib.io.staging.left_by_stopped_run`).

    Parameters
    ----------
    jobs_root : str or Path
        The panel's jobs folder; a missing one has nothing to remove.

    Returns
    -------
    list of Path
        The folders removed.
    """
    return remove_folders_left(jobs_root, JOB_PREFIX, _stale_job_folder, "job folder(s)", "Slicer",
                               "the images and results of jobs it never finished")


def _stale_job_folder(folder: Path) -> bool:
    """Whether ``folder`` is a job folder (:func:`new_job_folder`) whose Slicer of this machine no longer runs."""
    name = _JOB_NAME.fullmatch(folder.name)
    return (name is not None and folder.is_dir() and not folder.is_symlink()
            and left_by_stopped_run(folder, int(name["pid"]), name["host"], _OPEN_JOBS))


def _progress_writer(out_dir: Path) -> Callable[[float, str], None]:
    """Progress goes to a small JSON file the Slicer module polls (stdout buffering would make it lag)."""
    path = out_dir / "progress.json"

    def report(fraction: float, message: str) -> None:
        write_json_atomic(path, {"fraction": float(fraction), "message": message, "time": time.time()}, indent=None)

    return report


def run_job(job: Mapping[str, Any], progress: Callable[[float, str], None] | None = None,
            cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
    """One step of the panel (``segment``, ``extract``, ``predict`` or ``contours``) from files, results written to
    files.

    The same function serves the out-of-process runner (``main``) and the in-process path of headless tests,
    so both give identical numbers. ``job`` keys: action, out_dir, patient_id, images {t1, t2, t1c: path},
    mask (path), bundle (dir), network (dir), clinical (form or record dict), features (path of a previous
    extract's features.json, reused when the mask is unchanged), tta (int), extra_features (``name=path``
    tables of a fusion bundle's other modalities); for ``contours`` (images {t1c: the CET1W's DICOM series
    folder}), seg and rtstruct (where the DICOM SEG and RT Structure Set go, see :func:`dicom_contours`) and origins
    ({label: AUTOMATIC, SEMIAUTOMATIC or MANUAL}).
    """
    import SimpleITK as sitk

    from NPCPrognosisLib.io.images import align_patient, read_image, write_image_atomic

    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_writes(out_dir)  # a folder used again after a job in it was killed mid-write
    progress = progress or _progress_writer(out_dir)
    patient_id = str(job.get("patient_id") or "patient")

    def step(fraction: float, message: str) -> None:
        if cancelled is not None and cancelled():
            raise JobCancelled(message)
        progress(fraction, message)

    action = job["action"]
    step(0.02, "reading images")
    images = {name: read_image(path, patient_id=patient_id, role=name) for name, path in job["images"].items()}
    result: dict[str, Any] = {"action": action, "patient_id": patient_id}
    if action == "segment":
        from NPCPrognosisLib.deep import segmentation

        step(0.10, "loading the segmentation network")
        model = segmentation.load_network(job["network"])
        step(0.20, "segmenting GTVp and GTVn")
        seg = segmentation.segment_patient(model, images, patient_id=patient_id, tta=int(job.get("tta", 0)))
        write_image_atomic(sitk.Cast(seg.mask, sitk.sitkUInt8), out_dir / "mask.nii.gz")
        result.update({"mask": str(out_dir / "mask.nii.gz"), "deep_score": _maybe_float(seg.deep_score),
                       "deep_score_sd": _maybe_float(seg.deep_score_sd), "volumes_ml": dict(seg.volumes_ml),
                       "warnings": list(seg.warnings)})
        if getattr(seg, "uncertainty", None) is not None:
            write_image_atomic(seg.uncertainty, out_dir / "uncertainty.nii.gz")
            result["uncertainty"] = str(out_dir / "uncertainty.nii.gz")
    elif action in ("extract", "predict"):
        from NPCPrognosisLib.pipeline.models import load_bundle
        from NPCPrognosisLib.pipeline.predict import predict_patient

        step(0.05, "checking the model bundle")
        bundle = load_bundle(job["bundle"])
        mask = read_image(job["mask"], patient_id=patient_id, role="mask") if job.get("mask") else None
        patient = align_patient(images, mask, patient_id=patient_id)
        if patient.mask is None:
            raise ValueError("no segmentation given: run Segment or choose a segmentation with GTVp (and GTVn)")
        step(0.15, "radiomics (N4 bias correction, normalisation, PyRadiomics)")
        features_path = cached_features(bundle, patient, job.get("features"), out_dir / "features.json")
        features = json.loads(features_path.read_bytes())["features"]
        result["features"] = str(features_path)
        result["feature_columns"] = list(bundle.document.get("feature_columns") or sorted(features))
        if action == "predict":
            step(0.70, "nomogram and risk group")
            from NPCPrognosisLib.io.extra_features import read_extra_blocks
            from NPCPrognosisLib.slicer_support.form import clinical_form_to_values
            from NPCPrognosisLib.slicer_support.formatting import benefit_summary

            clinical = clinical_form_to_values(job.get("clinical") or {})
            extras = read_extra_blocks(job.get("extra_features") or [])
            prediction = predict_patient(bundle, patient, clinical, features=features, extras=extras).to_dict()
            result["prediction"] = prediction
            if job.get("reference_mask"):
                step(0.75, "radiomics of the automatic contours (for the change report)")
                reference = align_patient(
                    images, read_image(job["reference_mask"], patient_id=patient_id, role="mask"),
                    patient_id=patient_id)
                # Unedited contours are the automatic ones: their radiomics are the ones just computed.
                previous = job.get("reference_features")
                if not previous or not Path(previous).exists():
                    previous = str(features_path)
                reference_path = cached_features(bundle, reference, previous, out_dir / "reference_features.json")
                reference_features = json.loads(reference_path.read_bytes())["features"]
                result["reference_features"] = str(reference_path)
                result["reference_prediction"] = predict_patient(bundle, reference, clinical,
                                                                 features=reference_features, extras=extras).to_dict()
            result["uncertainty"] = prediction["uncertainty"]
            result["curves"] = prediction["survival_curves"]
            result["benefit"] = benefit_summary(prediction)
    elif action == "contours":
        step(0.30, "writing the contours as DICOM SEG and RT Structure Set")
        origins = {int(label): origin for label, origin in (job.get("origins") or {}).items()}
        result.update(dicom_contours(job["mask"], job["images"]["t1c"], images["t1c"], job["seg"], job["rtstruct"],
                                     out_dir, patient_id=patient_id, origins=origins))
    else:
        raise ValueError(f"unknown job action {action!r}; use segment, extract, predict or contours")
    step(1.0, "done")
    write_json_atomic(out_dir / "result.json", result, indent=1)
    return result


def dicom_contours(mask_path: str | Path, series: str | Path, reference: Any, seg_path: str | Path,
                   rtstruct_path: str | Path, out_dir: Path, *, patient_id: str,
                   origins: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The panel's (corrected) contours as a DICOM SEG and an RT Structure Set referencing the CET1W series, written
    by the same function as ``npc-prognosis segment`` (:func:`~NPCPrognosisLib.pipeline.segment.write_contours`).

    Parameters
    ----------
    mask_path : str or Path
        Labels (1 = GTVp, 2 = GTVn) exported on the CET1W volume's grid.
    series : str or Path
        Folder holding the CET1W's DICOM files (the instances the volume was loaded from).
    reference : SimpleITK.Image
        The CET1W as :func:`~NPCPrognosisLib.io.images.read_image` reads ``series``: the SEG's frames and the
        structure set's slices are that grid's.
    seg_path, rtstruct_path : str or Path
        Where the DICOM SEG and the RT Structure Set go, in one folder: they replace an earlier export's there
        together, once both are written (:func:`~NPCPrognosisLib.io.staging.files_written_whole`), so a failure
        part-way leaves the earlier pair whole, never a half-written file or this export's SEG beside the last
        one's RTSTRUCT.
    out_dir : Path
        The job's folder (the mask file the writer keeps beside them goes there).
    patient_id : str
        Named in errors.
    origins : mapping of int to str, optional
        How each label came about (AUTOMATIC, SEMIAUTOMATIC: corrected by hand, MANUAL: drawn by hand), so the
        planning system shows a corrected contour as such.

    Returns
    -------
    dict
        ``seg`` and ``rtstruct`` (path, or None when that one could not be made) and ``warnings`` (why not).

    Raises
    ------
    InputError
        The volume no longer lies on its series' voxels (resampled or cropped after loading).
    ValueError
        Neither file could be made (the reasons named): a DICOM export the user asked for is never a silent no-op.
    """
    from NPCPrognosisLib.errors import InputError
    from NPCPrognosisLib.io.images import mask_on_reference, read_image
    from NPCPrognosisLib.io.staging import files_written_whole
    from NPCPrognosisLib.pipeline.segment import write_contours

    mask = read_image(mask_path, patient_id=patient_id, role="mask")
    try:
        mask, _ = mask_on_reference(mask, reference, patient_id=patient_id, path=series)
    except InputError as exc:  # its fix names the command line's --resample-mask, which the panel has not
        raise InputError(f"the CET1W volume does not lie on the voxels of the DICOM series it was loaded from "
                         f"({exc.problem})", patient_id=patient_id, path=series,
                         fix="load the CET1W series again through the DICOM module and export the contours on that "
                             "volume, not on a resampled, cropped or transformed copy") from None
    finals = [Path(seg_path), Path(rtstruct_path)]
    # both replace an earlier export's together or not at all: never this export's SEG beside the last one's RTSTRUCT
    with files_written_whole(finals) as (staged_seg, staged_rtstruct):
        _, seg, rtstruct, warnings = write_contours(mask, series, out_dir / "mask.nii.gz", staged_seg,
                                                    staged_rtstruct, patient_id=patient_id, origins=origins)
    if seg is None and rtstruct is None:  # an earlier export's files are gone with it: they are not these contours
        raise ValueError("no DICOM SEG or RT Structure Set was written: " + "; ".join(warnings))
    return {"seg": None if seg is None else str(finals[0]), "rtstruct": None if rtstruct is None else str(finals[1]),
            "warnings": list(warnings)}


def patient_fingerprint(patient: Any) -> str:
    """SHA-256 of a patient's label map and sequences, voxels and geometry: equal fingerprints give equal radiomics.

    The images count as much as the contours: selecting another T2W volume, or re-loading a corrected series, must
    not reuse the radiomics of the one before.
    """
    import hashlib

    import SimpleITK as sitk

    digest = hashlib.sha256()
    images = getattr(patient, "images", None) or {}
    for name, image in [("mask", patient.mask), *sorted(images.items())]:
        digest.update(name.encode())
        digest.update(sitk.GetArrayFromImage(image).tobytes())  # a copy, never a view of a temporary image
        digest.update(repr((image.GetPixelIDValue(), image.GetSize(), [round(v, 6) for v in image.GetOrigin()],
                            [round(v, 6) for v in image.GetSpacing()],
                            [round(v, 6) for v in image.GetDirection()])).encode())
    return digest.hexdigest()


def bundle_identity(bundle: Any) -> str:
    """Where the bundle is and what it holds: a bundle retrained in place (other radiomics settings, another
    signature) is another bundle, so its path alone must not let earlier radiomics be reused."""
    from NPCPrognosisLib.io.bundle import MANIFEST_FILE, sha256

    document = Path(bundle.path) / MANIFEST_FILE
    return f"{Path(bundle.path).resolve()}#{sha256(document) if document.exists() else 'no-document'}"


def cached_features(bundle: Any, patient: Any, previous: str | Path | None, out_path: Path) -> Path:
    """Radiomics of ``patient`` - reused from ``previous`` when it was made with the same bundle, images and contours.

    Radiomics of three sequences take minutes; Predict after Extract (or after an edit that was undone) must not
    recompute them, but any change of contour, image or bundle must. A ``previous`` that cannot be read is computed
    again: it failed every later job of the segmentation with a JSON error.
    """
    fingerprint = patient_fingerprint(patient)
    bundle_id = bundle_identity(bundle)
    def same_inputs(path: Path) -> bool:
        stored = json.loads(path.read_bytes())
        return stored.get("inputs_fingerprint") == fingerprint and stored.get("bundle") == bundle_id

    if previous and read_cached(previous, same_inputs, patient.patient_id, "the earlier radiomics",
                                "they are computed again"):
        return Path(previous)
    features = bundle_features(bundle, patient)
    return write_json_atomic(out_path, {"patient_id": patient.patient_id, "bundle": bundle_id,
                                        "inputs_fingerprint": fingerprint, "features": features}, indent=1)


def keep_features(path: str | Path, cache: str | Path) -> Path:
    """Copy a job's radiomics (:func:`cached_features`) to the segmentation's cache file outside the job folder.

    Why: the panel copied it with ``shutil.copyfile``, so a Slicer killed mid-copy left a cut-off file that every later
    Extract or Predict of the segmentation read first. Now written whole (atomically), and a killed Slicer's unfinished
    copies in the cache's folder are removed first (:func:`~NPCPrognosisLib.io.atomic.remove_stale_writes`).

    Parameters
    ----------
    path : str or Path
        The job's features file.
    cache : str or Path
        The segmentation's (left as it is when it is ``path`` itself: the job reused it).

    Returns
    -------
    Path
        ``cache``.
    """
    cache = Path(cache)
    if Path(path).resolve() != cache.resolve():
        remove_stale_writes(cache.parent)
        write_bytes_atomic(cache, Path(path).read_bytes())
    return cache


def bundle_features(bundle: Any, patient: Any) -> dict[str, float]:
    """Radiomics with exactly the bundle's settings (imported when a job runs, not when Slicer loads the module)."""
    from NPCPrognosisLib.pipeline.predict import bundle_features as extract

    return extract(bundle, patient)


def _maybe_float(value: Any) -> float | None:
    return None if value is None else float(value)


def main(argv: list[str] | None = None) -> int:
    """``python -m NPCPrognosisLib.slicer_support.jobs job.json``: exit 0 with result.json, 2 with error.json."""
    from NPCPrognosisLib.errors import BundleError, InputError

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m NPCPrognosisLib.slicer_support.jobs job.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_bytes())
    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if job.get("log_file"):
        # Everything (ITK, PyRadiomics, tqdm) goes to the log at the descriptor level, so a parent that reads the
        # pipe only at the end can never be blocked by a full pipe.
        log = open(job["log_file"], "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        run_job(job)
    except (InputError, BundleError, ImportError, ValueError) as exc:
        write_json_atomic(out_dir / "error.json", {"error": str(exc), "type": type(exc).__name__})
        print(f"NPCPrognosis {job.get('action')}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
