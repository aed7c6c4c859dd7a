"""Per-feature robustness on the training patients: perturbed re-extractions (cached) and their ICC(3,1).

It runs inside ``train`` because that is where the training patients are known and because a new user runs
nothing else: a subset of the training patients is perturbed (see :mod:`NPCPrognosisLib.radiomics.perturbation`)
and re-extracted with exactly the settings recorded beside the features table. Each perturbed extraction is
cached beside the table, keyed by everything it depends on, so a second ``train`` costs nothing. An entry is
written whole or not at all (:func:`~NPCPrognosisLib.io.atomic.write_json_atomic`); what a hard-killed run left
(a hidden unfinished file) is removed by the next run, and an entry that cannot be read is extracted again, never
taken for a finished one (:func:`stored_extraction`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.contract import SEQUENCES
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.atomic import patient_file, read_cached, remove_stale_writes, write_json_atomic
from NPCPrognosisLib.io.manifest import Manifest, PatientEntry
from NPCPrognosisLib.pipeline.extract import input_checksum
from NPCPrognosisLib.radiomics.extraction import pyradiomics_version
from NPCPrognosisLib.radiomics.features_table import feature_matrix
from NPCPrognosisLib.radiomics.perturbation import Perturbation, icc_3_1, perturbations

log = logging.getLogger(__name__)

#: Training patients perturbed (a random subset; Zwanenburg et al. found ICCs stable from a few dozen cases).
ROBUSTNESS_PATIENTS = 30
#: Perturbations per patient (one with eroded, one with dilated contours; each also rotated, shifted, noisier).
ROBUSTNESS_PERTURBATIONS = 2
#: Fewer patients than this (e.g. images moved since extraction) and no ICC is computed.
MIN_PATIENTS = 10


@dataclass
class Robustness:
    """ICC(3,1) of every radiomics feature over the perturbed training patients."""

    icc: pd.Series
    patients: int
    perturbations: list[Perturbation]
    cached: int = 0
    failed: list[str] = field(default_factory=list)

    def summary(self, threshold: float | None = None) -> dict[str, Any]:
        """What the bundle records: the method, the counts, and how many features pass ``threshold``."""
        finite = self.icc.dropna()
        block = {"method": "ICC(3,1) original vs perturbed (rotation, translation, noise, erosion/dilation)",
                 "patients": self.patients, "perturbations": [p.to_dict() for p in self.perturbations],
                 "features_measured": int(finite.size), "median_icc": float(finite.median()) if finite.size else None}
        if threshold is not None:
            block["threshold"] = threshold
            block["features_passing"] = int((finite >= threshold).sum())
        return block


#: Raised whenever the perturbations change (:mod:`NPCPrognosisLib.radiomics.perturbation`), so that perturbed
#: extractions cached by an earlier version are not mixed with new ones. 2: noise measured inside the head.
PERTURBATION_METHOD = 2


def _cache_key(entry: PatientEntry, mask: Path, meta: dict[str, Any], perturbation: Perturbation) -> str:
    """Everything a perturbed extraction depends on, the inputs by content (:func:`input_checksum`).

    The inputs were stamped by path, size and modification time: a DICOM series named ``<folder>/::<series>``
    has no such path, so every patient of such a cohort was left out and the robustness filter silently dropped
    out of the selection; and a folder's time does not change when a file in it is rewritten in place.
    """
    # the PyRadiomics that extracts the perturbed cases (the one running), and the perturbation method: either may
    # change the values under the same settings
    record = {"method": PERTURBATION_METHOD, "settings_hash": meta.get("settings_hash"),
              "pyradiomics_version": pyradiomics_version(),
              "preprocessing": meta.get("preprocessing"),
              "network_sha256": meta.get("network_sha256"),
              "resample_mask": bool(meta.get("resample_mask")), "roi_map": meta.get("roi_map"),
              "perturbation": perturbation.to_dict(), "mask": input_checksum(mask),
              "images": [input_checksum(entry.images[s]) for s in SEQUENCES]}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _perturbed_rows(entry: PatientEntry, mask: str, meta: dict[str, Any], plan: list[Perturbation],
                    cache_files: list[str], keys: list[str]) -> dict[str, Any]:
    """Worker body: one patient, every pending perturbation, each written to the cache (module-level for pools).

    The sequences are preprocessed once and perturbed afterwards: the perturbation stands for a re-scan and a
    re-contouring of the image the features are computed on, and the bias-field correction (the costly step)
    is smooth and would not change with a few degrees of rotation.
    """
    from NPCPrognosisLib.imaging.preprocess import PreprocessConfig, preprocess_images, preprocessed_as
    from NPCPrognosisLib.io.images import load_patient
    from NPCPrognosisLib.radiomics.extraction import extract_patient, settings_file
    from NPCPrognosisLib.radiomics.perturbation import perturb_case

    rows = {}
    try:
        patient = load_patient(entry.patient_id, {s: entry.images[s] for s in SEQUENCES}, mask,
                               roi_map=meta.get("roi_map"), resample_mask=bool(meta.get("resample_mask")))
        config = PreprocessConfig.from_dict(meta.get("preprocessing") or {})
        prepared = preprocess_images(patient.images, config)
        network, network_input = _deep_feature_network(meta), None
        if network is not None:
            network_input = preprocessed_as(patient.images, network.preprocess, prepared, config)
        with settings_file(meta["settings"]) as params:
            for perturbation, cache_file, key in zip(plan, cache_files, keys):
                seed = int(hashlib.sha256(f"{entry.patient_id}/{perturbation.index}".encode()).hexdigest()[:8], 16)
                images, moved = perturb_case(prepared, patient.mask, perturbation, seed)
                row = extract_patient(images, moved, patient_id=entry.patient_id, params_path=params)
                if network is not None:
                    from NPCPrognosisLib.deep.features import deep_features

                    # the same perturbation (same seed: same motion, contour change and noise draw)
                    images, moved = perturb_case(network_input, patient.mask, perturbation, seed)
                    row.update(deep_features(network, images, moved))
                write_json_atomic(Path(cache_file), {"key": key, "patient_id": entry.patient_id, "features": row})
                rows[perturbation.index] = row
    except InputError as exc:
        return {"patient_id": entry.patient_id, "rows": rows, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a patient that cannot be perturbed is left out of the ICC
        return {"patient_id": entry.patient_id, "rows": rows, "error": f"{type(exc).__name__}: {exc}"}
    return {"patient_id": entry.patient_id, "rows": rows}


def _deep_feature_network(meta: dict[str, Any]):
    """The network the table's deep features came from, when it has them and it is still the same network."""
    if not meta.get("network") or not meta.get("network_sha256"):
        return None
    from NPCPrognosisLib.deep.segmentation import cached_network
    from NPCPrognosisLib.io.bundle import network_checksum

    if network_checksum(meta["network"]) != meta["network_sha256"]:
        raise InputError("the network the deep features were extracted with has changed since", path=meta["network"],
                         fix="re-run extract --network with the current network")
    return cached_network(meta["network"])


def cache_dir_for(features_path: str | Path) -> Path:
    """``<features>_robustness``: the folder beside the features table that caches its perturbed extractions."""
    path = Path(features_path)
    return path.with_name(path.stem + "_robustness")


def stored_extraction(file: Path, key: str, patient_id: str) -> dict[str, Any] | None:
    """The cached perturbed extraction of ``patient_id`` in ``file`` when it was made under ``key``, else None.

    Why: the cache outlives the run that wrote it; a file that is not a whole entry (cut short by a full disk, copied
    in part, edited) made ``train`` stop with a JSON traceback at every run until the file was found and deleted. It is
    now extracted again and replaced, with a warning naming it.

    Parameters
    ----------
    file : Path
        The entry's file (missing: not cached).
    key : str
        What the extraction must have been made under (:func:`_cache_key`).
    patient_id : str
        Named in the warning.

    Returns
    -------
    dict or None
        The entry's feature values, or None to extract them (again).
    """
    def read(path: Path) -> Any:
        stored = json.loads(path.read_bytes())
        return stored["features"] if stored.get("key") == key else None

    features = read_cached(file, read, patient_id, "the cached perturbed extraction", "it is extracted again and "
                           "replaced")
    if features is not None and not isinstance(features, dict):
        log.warning("patient %s: the cached perturbed extraction %s holds no feature values; it is extracted again "
                    "and replaced", patient_id, file)
        return None
    return features


def feature_robustness(manifest: Manifest, features: pd.DataFrame, meta: dict[str, Any],
                       features_path: str | Path, *, n_patients: int = ROBUSTNESS_PATIENTS,
                       n_perturbations: int = ROBUSTNESS_PERTURBATIONS, seed: int = 0,
                       workers: int = 2) -> Robustness | None:
    """ICC(3,1) of every feature of ``features`` (rows aligned with ``manifest``), or None when it cannot be
    measured (no extraction metadata beside the table, too few readable patients); the reason is logged.

    Parameters
    ----------
    manifest : Manifest
        The training patients (their image and mask files).
    features : pandas.DataFrame
        Their rows of the features table, in manifest order.
    meta : dict
        The table's metadata (settings, preprocessing, mask source): perturbed cases are extracted the same way.
    features_path : str or Path
        The features table; the cache lives beside it.
    n_patients, n_perturbations : int
        How many training patients are perturbed, and how many times each.
    seed : int
        Chooses the patients and the perturbations.
    workers : int
        Parallel extraction processes.

    Returns
    -------
    robustness : Robustness or None
    """
    if not meta.get("settings") or n_patients <= 0 or n_perturbations <= 0:
        if n_patients > 0 and n_perturbations > 0:
            log.warning("feature robustness not measured: %s has no extraction metadata beside it",
                        features_path)
        return None
    if meta.get("pyradiomics_version") not in (None, pyradiomics_version()):
        log.warning("%s was extracted with PyRadiomics %s and its perturbed copies are extracted with %s: the ICCs "
                    "mix two versions; extract the table again with this one", features_path,
                    meta["pyradiomics_version"], pyradiomics_version())
    automatic = str(meta.get("mask", "")).startswith("automatic")
    mask_dir = Path(features_path).with_name(Path(features_path).stem + "_masks")
    rng = np.random.default_rng(seed + 104729)
    chosen = np.sort(rng.choice(len(manifest.table), size=min(n_patients, len(manifest.table)), replace=False))
    cache = cache_dir_for(features_path)
    cache.mkdir(parents=True, exist_ok=True)
    remove_stale_writes(cache)  # a hard-killed run's unfinished entries (warned, named)
    plan = perturbations(n_perturbations, seed)
    jobs, rows, cached, failed = [], {}, 0, []
    ids = manifest.table["patient_id"].to_numpy()
    for i in chosen:
        entry = manifest.entry(ids[i])
        mask = patient_file(mask_dir, entry.patient_id, "_mask.nii.gz") if automatic else entry.mask
        try:
            keys = [_cache_key(entry, Path(mask), meta, p) for p in plan]
        except (OSError, TypeError) as exc:
            log.warning("patient %s could not be perturbed: %s", entry.patient_id, exc)
            failed.append(entry.patient_id)
            continue
        name = hashlib.sha256(entry.patient_id.encode()).hexdigest()[:16]
        pending = []
        for p, key in zip(plan, keys):
            file = cache / f"{name}-{p.index}.json"
            stored = stored_extraction(file, key, entry.patient_id)
            if stored is not None:
                rows[(entry.patient_id, p.index)] = stored
                cached += 1
            else:
                pending.append((p, str(file), key))
        if pending:
            jobs.append((entry, str(mask), meta, *[list(column) for column in zip(*pending)]))
    if jobs:
        log.info("feature robustness: %d patient(s) to perturb (%d extractions cached)", len(jobs), cached)
        if workers > 1 and len(jobs) > 1:
            from NPCPrognosisLib.processes import worker_pool

            with worker_pool(workers) as pool:
                results = list(pool.map(_perturbed_rows, *zip(*jobs)))
        else:
            results = [_perturbed_rows(*job) for job in jobs]
        for result in results:
            rows.update({(result["patient_id"], index): row for index, row in result["rows"].items()})
            if "error" in result:
                failed.append(result["patient_id"])
                log.warning("patient %s could not be perturbed: %s", result["patient_id"], result["error"])
    complete = [ids[i] for i in chosen if all((ids[i], p.index) in rows for p in plan)]
    if len(complete) < MIN_PATIENTS:
        log.warning("feature robustness not measured: only %d patient(s) could be perturbed", len(complete))
        return None
    matrix = feature_matrix(features)
    original = matrix.set_axis(ids)
    stack = [original.loc[complete].to_numpy(float)]
    for p in plan:
        perturbed = pd.DataFrame([rows[(pid, p.index)] for pid in complete]).reindex(columns=matrix.columns)
        stack.append(perturbed.to_numpy(float))
    icc = icc_3_1(np.stack(stack, axis=1))
    return Robustness(icc=pd.Series(icc, index=matrix.columns), patients=len(complete), perturbations=plan,
                      cached=cached, failed=sorted(set(failed)))
