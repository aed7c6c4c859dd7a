"""Radiomics (and deep scores) for a whole cohort: from a manifest to a features table.

One patient's failure never stops a cohort: the row is skipped, the reason goes to a failures file, and the
table is written in one atomic step at the end so no half-written table is ever mistaken for a finished one.
A patient extracted from doubtful images (a sequence covering part of the field, another frame of reference) keeps
its row, and its warnings go to a warnings file beside the table, with those a failed patient raised before failing.
Patients run in a local process pool or, for cohorts one machine cannot handle, on a Dask cluster.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from NPCPrognosisLib.contract import SEQUENCES
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.imaging.preprocess import PreprocessConfig, preprocess_images, preprocessed_as
from NPCPrognosisLib.io.atomic import patient_file, write_json_atomic, write_text_atomic
from NPCPrognosisLib.io.bundle import network_checksum
from NPCPrognosisLib.io.dicom_series import split_series_selector
from NPCPrognosisLib.io.images import PatientImages, check_mask, load_patient
from NPCPrognosisLib.io.manifest import Manifest, PatientEntry
from NPCPrognosisLib.radiomics.features_table import (
    DEEP_SCORE,
    extraction_metadata,
    failures_path_for,
    meta_path_for,
    warnings_path_for,
)

log = logging.getLogger(__name__)


@dataclass
class ExtractionResult:
    table: pd.DataFrame
    failures: list[dict[str, str]] = field(default_factory=list)
    features_path: Path | None = None
    failures_path: Path | None = None
    meta_path: Path | None = None
    #: one row per image warning (``patient_id``, ``warning``, ``status``: ``extracted``, or ``failed`` for one raised
    #: before the patient failed), as in ``warnings_path`` (:func:`image_warnings`)
    warnings: list[dict[str, str]] = field(default_factory=list)
    warnings_path: Path | None = None


def patient_features(
    patient: PatientImages,
    preprocess: PreprocessConfig,
    *,
    params_path: str | Path | None = None,
    workers: int = 1,
    sequences: Sequence[str] | None = None,
    preprocessed: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Preprocess a patient's aligned images and compute radiomics for every sequence x ROI.

    ``preprocessed`` (the images already preprocessed with ``preprocess``) skips the preprocessing.
    """
    from NPCPrognosisLib.radiomics.extraction import extract_patient

    if patient.mask is None:
        raise InputError("no mask: radiomics need GTVp/GTVn contours", patient_id=patient.patient_id,
                         column="mask", fix="give a mask (label 1 = GTVp, 2 = GTVn)")
    names = [k for k in patient.images if sequences is None or k in sequences]
    if preprocessed is None:
        prepared = preprocess_images({k: patient.images[k] for k in names}, preprocess)
    else:
        prepared = {k: preprocessed[k] for k in names}
    return extract_patient(prepared, patient.mask, patient_id=patient.patient_id, params_path=params_path,
                           workers=workers)


def _one_patient(entry: PatientEntry, preprocess: dict[str, Any], params_path: str | None, workers: int,
                 network: str | None = None, auto_mask_dir: str | None = None,
                 resample_mask: bool = False, roi_map: str | None = None,
                 foreign_ids: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Worker body (module-level so process pools can pickle it). Returns features or the failure reason, either
    with the patient's image warnings (those of a failed patient raised before it failed, often why it did).

    With ``network``, the patient's deep score is added; with ``auto_mask_dir`` as well, the network's contours
    replace the manifest mask (AutoRadio) and are written there for review. ``foreign_ids`` (the manifest's other
    patients) refuse a DICOM series carrying one of them (:func:`~NPCPrognosisLib.io.images.load_patient`).
    """
    auto_volumes: dict[str, float] | None = None  # the automatic contours' volumes, for the cohort check
    patient: PatientImages | None = None
    try:
        mask = None if auto_mask_dir else entry.mask
        patient = load_patient(entry.patient_id, {c: entry.images[c] for c in SEQUENCES}, mask,
                               resample_mask=resample_mask, roi_map=roi_map, foreign_ids=foreign_ids)
        config = PreprocessConfig.from_dict(preprocess)
        extra: dict[str, float] = {}
        prepared = None
        out_of_fold = False
        if network:
            from NPCPrognosisLib.deep.features import deep_features
            from NPCPrognosisLib.deep.segmentation import (
                SYNTHETIC_NETWORK_NOTICE,
                cached_network,
                segment_preprocessed,
            )
            from NPCPrognosisLib.io.images import write_image_atomic

            model = cached_network(network)
            # N4 is the costly step: one preprocessing serves the network and the radiomics when they agree
            prepared = preprocess_images(patient.images, config)
            network_input = preprocessed_as(patient.images, model.preprocess, prepared, config)
            result = segment_preprocessed(model, network_input, patient_id=entry.patient_id)
            extra[DEEP_SCORE] = float(result.deep_score)
            out_of_fold = result.deep_score_out_of_fold
            # the demo network's notice is the network's, said once when it loads (cached_network), not an image
            # warning of every patient (train said "140 of the 140 training patients had image warnings")
            patient.warnings.extend(w for w in result.warnings if w != SYNTHETIC_NETWORK_NOTICE)
            if auto_mask_dir:
                auto_volumes = {k: float(v) for k, v in result.volumes_ml.items()}
                # written before it is checked, so an empty or odd automatic mask can be reviewed and corrected
                written = patient_file(auto_mask_dir, entry.patient_id, "_mask.nii.gz")
                write_image_atomic(result.mask, written)
                patient.mask = check_mask(result.mask, patient_id=entry.patient_id, path=written, automatic=True)
            if patient.mask is not None:
                extra.update(deep_features(model, network_input, patient.mask))
        row = patient_features(patient, config, params_path=params_path, workers=workers, preprocessed=prepared)
        return {"patient_id": entry.patient_id, "features": {**extra, **row}, "warnings": patient.warnings,
                "deep_score_out_of_fold": out_of_fold, "auto_volumes_ml": auto_volumes}
    except Exception as exc:  # noqa: BLE001 - any library failure is reported for that patient only
        # an empty automatic GTVp lands here too: its volumes still count for the cohort
        error = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
        # loaded: the patient's own warnings (the network's included); refused while loading: the loader's
        warnings = patient.warnings if patient is not None else list(getattr(exc, "warnings", []))
        return {"patient_id": entry.patient_id, "error": error, "warnings": warnings, "auto_volumes_ml": auto_volumes}


def input_checksum(path: str | Path | None) -> str | None:
    """SHA-256 of an input file, or of every file of a DICOM folder (names and contents), for the caches that
    must notice a changed input (the resume cache here, the robustness study's perturbed extractions).

    Parameters
    ----------
    path : str, Path or None
        A manifest's image or mask path: a file, a DICOM folder, or ``<folder>/::<series>`` (the folder's
        checksum and the selector).

    Returns
    -------
    checksum : str or None
        None for no path or a file that does not exist (reading it then fails with the patient named).
    """
    import hashlib

    from NPCPrognosisLib.io.bundle import sha256

    if path is None:
        return None
    path, selector = split_series_selector(path)
    if selector is not None:
        return f"{input_checksum(path)}::{selector}"
    if path.is_dir():
        digest = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{child.relative_to(path).as_posix()}:{sha256(child)}\n".encode())
        return digest.hexdigest()
    return sha256(path) if path.exists() else None


def _resumable_patient(entry: PatientEntry, cache_dir: str, settings_key: str, *args: Any) -> dict[str, Any]:
    """:func:`_one_patient`, remembered: a finished patient is written to ``cache_dir`` at once (keyed by the
    checksums of its files and the extraction settings), so a killed run, or a lost Dask worker, costs only the
    patients in flight, and a re-run with the same inputs reuses it."""
    import hashlib

    files = {name: input_checksum(p) for name, p in {**entry.images, "mask": entry.mask}.items()}
    key = hashlib.sha256(json.dumps({"settings": settings_key, "files": files}, sort_keys=True).encode()).hexdigest()
    cache = patient_file(cache_dir, entry.patient_id, ".json")
    if cache.exists():
        try:
            stored = json.loads(cache.read_text(encoding="utf-8"))
            if stored.get("key") == key and stored.get("patient_id") == entry.patient_id:
                return stored["result"]
        except (ValueError, KeyError, OSError):
            pass  # unreadable: computed again
    result = _one_patient(entry, *args)
    if "error" not in result:
        write_json_atomic(cache, {"key": key, "patient_id": entry.patient_id, "result": result})
    return result


def extract_cohort(
    manifest: Manifest,
    out: str | Path,
    *,
    workers: int = 1,
    params_path: str | Path | None = None,
    preprocess: PreprocessConfig | None = None,
    progress: bool = True,
    runner: Callable[..., list[dict[str, Any]]] | None = None,
    network: str | Path | None = None,
    auto_mask: bool = False,
    resample_mask: bool = False,
    roi_map: str | None = None,
) -> ExtractionResult:
    """Extract features for every patient of ``manifest`` and write ``out`` (CSV) with failures, image warnings
    (:func:`image_warnings`) and metadata beside it.

    ``workers`` > 1 runs patients in parallel processes (:func:`local_runner`); ``runner`` lets the Dask engine
    (or a test) replace the local pool while keeping the same per-patient function. A patient whose worker
    process dies (out of memory, a crash in a library) is listed as failed; the others carry on. ``network`` (a
    network bundle) adds each patient's deep score and deep radiomic features (:mod:`NPCPrognosisLib.deep.features`,
    on the same contours as the radiomics); ``auto_mask`` segments with it and takes radiomics from the automatic
    contours, written to ``<out stem>_masks/`` with the cohort check of ``segment --manifest`` (its
    ``cohort_warnings.txt``, :func:`~NPCPrognosisLib.pipeline.segment.write_cohort_warnings`). ``resample_mask``
    resamples masks that are not on the CET1W grid instead of refusing them
    (:func:`NPCPrognosisLib.io.images.mask_on_reference`); ``roi_map`` names the GTVp/GTVn ROIs of masks given as
    DICOM RTSTRUCT.
    """
    from tqdm import tqdm

    out = Path(out)
    preprocess = preprocess or PreprocessConfig()
    entries = manifest.entries()
    if not entries:
        raise InputError("the manifest lists no patient (a header without rows?)", path=manifest.source,
                         fix="add one row per patient")
    if auto_mask and network is None:
        raise InputError("--mask auto needs a segmentation network", column="--network",
                         fix="pass --network with a network bundle (e.g. the demo bundle's network/ folder)")
    auto_mask_dir = out.with_name(out.stem + "_masks") if auto_mask else None
    if auto_mask_dir is not None:
        auto_mask_dir.mkdir(parents=True, exist_ok=True)
    missing_mask = [] if auto_mask else [e.patient_id for e in entries if e.mask is None]
    if missing_mask:
        raise InputError(f"{len(missing_mask)} patient(s) have no mask, e.g. {missing_mask[:3]}",
                         patient_id=missing_mask[0], column="mask",
                         fix="fill in the mask column (label 1 = GTVp, 2 = GTVn)")
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = extraction_metadata(params_path, preprocess)
    settings_key = json.dumps({"radiomics": settings.get("settings_hash"),
                               "pyradiomics_version": settings.get("pyradiomics_version"),
                               "preprocessing": preprocess.to_dict(),
                               "network": None if network is None else network_checksum(network),
                               "auto_mask": bool(auto_mask), "resample_mask": bool(resample_mask),
                               "roi_map": roi_map}, sort_keys=True)
    cache_dir = out.with_name(out.name + ".partial")
    args = (str(cache_dir), settings_key, preprocess.to_dict(), None if params_path is None else str(params_path), 1,
            None if network is None else str(network), None if auto_mask_dir is None else str(auto_mask_dir),
            bool(resample_mask), roi_map, frozenset(manifest.patient_ids))
    if runner is None and workers > 1:
        runner = local_runner(workers, progress=progress)
    if runner is not None:
        results = runner(_resumable_patient, entries, *args)
    else:
        results = [_resumable_patient(e, *args) for e in tqdm(entries, desc="radiomics", unit="patient",
                                                                 disable=not progress)]

    rows, failures = [], []
    for result in results:
        if "error" in result:
            log.error("patient %s failed: %s", result["patient_id"], result["error"])
            failures.append({"patient_id": result["patient_id"], "stage": "extract", "error": result["error"]})
        else:
            rows.append({"patient_id": result["patient_id"], **result["features"]})
    warnings = image_warnings(results)
    failures_file = failures_path_for(out)
    if not rows:
        if auto_mask:  # the folder holds this run's masks (each written before it is checked), not the earlier run's
            _write_auto_contour_check(network, auto_mask_dir, results)
        # Nothing else is written: an earlier good table, its failures list and metadata stay as they were.
        first = "; ".join(f"{f['patient_id']}: {f['error']}" for f in failures[:3])
        # no warnings file either: the warnings that may explain the failures go with them
        before = "".join(f"; {w['patient_id']} warned before it failed: {w['warning']}" for w in warnings[:3])
        kept = f" (the earlier table {out} is kept)" if Path(out).is_file() else ""
        raise InputError(f"no patient could be processed ({len(failures)} failed; {first}{before})",
                         path=manifest.source, fix=f"fix the first error above and run extract again{kept}")
    failures_table = pd.DataFrame(failures, columns=["patient_id", "stage", "error"])
    write_text_atomic(failures_file, failures_table.to_csv(index=False))
    # written even when empty, as the failures are: an earlier run's warnings must not outlive its table
    write_text_atomic(warnings_path_for(out), pd.DataFrame(warnings, columns=WARNINGS_COLUMNS).to_csv(index=False))
    table = pd.DataFrame(rows)
    write_text_atomic(out, table.to_csv(index=False))
    meta = {**extraction_metadata(params_path, preprocess), "created": datetime.now(timezone.utc).isoformat(),
            "manifest": str(manifest.source), "n_patients": len(rows), "n_failed": len(failures),
            "mask": "automatic (network)" if auto_mask else "manifest",
            # how the masks were read, which the robustness study must repeat on the same contours
            "resample_mask": bool(resample_mask), "roi_map": roi_map,
            "network": None if network is None else str(network),
            "network_sha256": None if network is None else network_checksum(network),
            # which rows rest on doubtful images (each warning in the .warnings.csv): train and evaluate say so
            "patients_with_warnings": sorted({row["patient_id"] for row in warnings if row["status"] == "extracted"})}
    if network is not None:
        # the network's own training patients: their deep scores come from the head that did not see them
        meta["deep_score_out_of_fold"] = sorted(r["patient_id"] for r in results
                                                if "error" not in r and r.get("deep_score_out_of_fold"))
    write_json_atomic(meta_path_for(out), meta)
    if auto_mask:
        _write_auto_contour_check(network, auto_mask_dir, results)
    shutil.rmtree(cache_dir, ignore_errors=True)  # the table holds it all now
    return ExtractionResult(table=table, failures=failures, features_path=out, failures_path=failures_file,
                            meta_path=meta_path_for(out), warnings=warnings, warnings_path=warnings_path_for(out))


#: Columns of ``<features>.warnings.csv`` (:func:`image_warnings`).
WARNINGS_COLUMNS = ["patient_id", "warning", "status"]


def image_warnings(results: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The image warnings of the cohort's patients, one row each (``patient_id``, ``warning``, ``status``).

    Why: :func:`~NPCPrognosisLib.io.images.load_patient` only logged them, from the worker that read the patient
    and between progress-bar updates, and a patient taken from the resume cache logged nothing at all, so a cohort
    run never said that a T2W covered half of a tumour. The per-patient results (the cached ones too) carry them.
    A failed patient's warnings raised before it failed (a T2W covering half of the field, then its mask refused)
    are kept as well, marked ``failed``: they often explain the error in the failures file, which alone was kept.

    Parameters
    ----------
    results : sequence of mapping
        The per-patient results of :func:`_one_patient`; a failed one (``error``) may carry warnings too.

    Returns
    -------
    list of dict
        In cohort order, each patient's warnings in the order they were raised; ``status`` is ``extracted`` (the
        patient has a row in the table) or ``failed`` (it is in the failures file).
    """
    return [{"patient_id": result["patient_id"], "warning": str(text),
             "status": "failed" if "error" in result else "extracted"}
            for result in results for text in result.get("warnings") or []]


def _auto_contour_cohort_warnings(network: str | Path, results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cohort check of ``segment --manifest`` (:func:`NPCPrognosisLib.deep.segmentation.cohort_warnings`) on
    the automatic contours of an AutoRadio extraction, for
    :func:`~NPCPrognosisLib.pipeline.segment.write_cohort_warnings`."""
    from NPCPrognosisLib.deep.segmentation import cohort_warnings
    from NPCPrognosisLib.io.bundle import read_bundle

    volumes = [r["auto_volumes_ml"] for r in results if r.get("auto_volumes_ml") is not None]
    # the bundle's JSON only: the workers loaded the network, this process need not build it again
    training = read_bundle(network).get("network", {}).get("training_volumes_ml", {})
    return cohort_warnings(training, volumes)


def _write_auto_contour_check(network: str | Path, auto_mask_dir: Path, results: Sequence[Mapping[str, Any]]) -> None:
    """The cohort check of this run's automatic contours (:func:`_auto_contour_cohort_warnings`) beside them, as
    ``segment --manifest`` writes it beside its own; an earlier run's ``cohort_warnings.txt`` is replaced or removed.

    Why: it is written when every patient failed too. The run then raises without a table, but its masks are in the
    folder already (each written before it is checked) and the earlier run's check, left beside them, described
    contours that were no longer there.
    """
    from NPCPrognosisLib.pipeline.segment import write_cohort_warnings

    write_cohort_warnings(auto_mask_dir, _auto_contour_cohort_warnings(network, results))


def _lost_patient(entry: PatientEntry, exc: BaseException) -> dict[str, Any]:
    """The failure row of a patient whose worker process died (or whose task could not run at all)."""
    error = InputError(f"its worker process died while extracting this patient ({type(exc).__name__}); the other "
                       "patients were not affected", patient_id=entry.patient_id,
                       fix="this is usually a lack of memory: run extract again with fewer --workers (finished "
                           "patients are reused), or check this patient's image sizes")
    return {"patient_id": entry.patient_id, "error": str(error), "auto_volumes_ml": None}


def local_runner(workers: int, progress: bool = False) -> Callable[..., list[dict[str, Any]]]:
    """A runner that maps patients over ``workers`` local processes (:func:`~NPCPrognosisLib.processes.worker_pool`).

    A worker process that dies (the out-of-memory killer, a crash inside a library) breaks the whole pool, and
    every patient not yet finished fails with it, so which one killed it is unknown: those patients are run
    again one at a time, each in a fresh process, and only the one whose process dies again is listed as failed.
    Before, the first such death stopped the whole cohort with ``BrokenProcessPool`` and no patient named.
    """

    def run(function: Callable[..., dict[str, Any]], entries: Sequence[PatientEntry],
            *args: Any) -> list[dict[str, Any]]:
        from concurrent.futures.process import BrokenProcessPool

        from tqdm import tqdm

        from NPCPrognosisLib.processes import worker_pool

        results: list[dict[str, Any] | None] = [None] * len(entries)
        with tqdm(total=len(entries), desc="radiomics", unit="patient", disable=not progress) as bar:
            with worker_pool(workers) as pool:
                futures = [pool.submit(function, entry, *args) for entry in entries]
                for index, future in enumerate(futures):
                    try:
                        results[index] = future.result()
                        bar.update()
                    except BrokenProcessPool:
                        pass  # in doubt: run again below
            in_doubt = [i for i, result in enumerate(results) if result is None]
            if in_doubt:
                log.warning("a worker process died: the %d patient(s) it left unfinished run again one at a time, "
                            "to find the one that killed it", len(in_doubt))
            for index in in_doubt:
                with worker_pool(1) as pool:
                    try:
                        results[index] = pool.submit(function, entries[index], *args).result()
                    except BrokenProcessPool as exc:
                        results[index] = _lost_patient(entries[index], exc)
                bar.update()
        return results

    return run


def dask_runner(address: str | None = None, progress: bool = False,
                workers: int = 2) -> Callable[..., list[dict[str, Any]]]:
    """A runner that maps patients over a Dask cluster: ``address`` of a scheduler (whose workers run), or a local
    cluster of ``workers`` processes (``extract --engine dask --workers N``; the local cluster had two whatever
    ``--workers`` said). Either way the workers' numerical threads are limited
    (:class:`~NPCPrognosisLib.pipeline.dask_cluster.ShareCores`)."""

    def run(function: Callable[..., dict[str, Any]], entries: Sequence[PatientEntry],
            *args: Any) -> list[dict[str, Any]]:
        from dask.distributed import as_completed
        from tqdm import tqdm

        from NPCPrognosisLib.pipeline.dask_cluster import dask_client

        # distributed logs each nanny, connection and retirement at INFO (33 lines for 3 patients): shown with
        # --verbose only, as the command's own INFO lines are (set after the import, which sets its own level)
        if not logging.getLogger().isEnabledFor(logging.INFO):
            logging.getLogger("distributed").setLevel(logging.WARNING)
        with dask_client(address, workers) as client:
            futures = client.map(function, list(entries), *[[a] * len(entries) for a in args], pure=False)
            order = {future.key: i for i, future in enumerate(futures)}
            results: list[dict[str, Any] | None] = [None] * len(futures)
            # Recorded as they complete (each patient is also written to the resume cache by the worker), so a
            # lost worker or a killed client costs only the patients in flight; Dask re-runs a lost worker's tasks.
            for future in tqdm(as_completed(futures), total=len(futures), desc="radiomics (dask)", unit="patient",
                               disable=not progress):
                index = order[future.key]
                try:
                    results[index] = future.result()
                except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: this patient's task killed its workers
                    results[index] = _lost_patient(entries[index], exc)
            return results

    return run


