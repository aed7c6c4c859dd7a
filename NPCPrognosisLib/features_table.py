"""From a patient's files to a row of radiomics features, and from a cohort to a features table.

One patient's failure never stops a cohort: the row is skipped, the reason goes to a failures file, and the
table is written in one atomic step at the end so no half-written table is ever mistaken for a finished one.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import pandas as pd

from .atomic import write_text_atomic
from .errors import InputError
from .imageio import PatientImages, load_patient
from .manifest import IMAGE_COLUMNS, Manifest, PatientEntry
from .preprocess import PreprocessConfig, preprocess_images

log = logging.getLogger(__name__)

#: Column of the network's risk score (DeepMTS-style) when features were extracted with a network.
DEEP_SCORE = "deep_score"
_NETWORKS: Dict[str, Any] = {}


def cached_network(path: "str | Path") -> Any:
    """One loaded network per process and bundle: worker processes reuse it across patients."""
    from .segmentation import load_network

    key = str(Path(path).resolve())
    if key not in _NETWORKS:
        _NETWORKS[key] = load_network(key)
    return _NETWORKS[key]


@dataclass
class ExtractionResult:
    table: pd.DataFrame
    failures: List[Dict[str, str]] = field(default_factory=list)
    features_path: Optional[Path] = None
    failures_path: Optional[Path] = None
    meta_path: Optional[Path] = None


def patient_features(
    patient: PatientImages,
    preprocess: PreprocessConfig,
    *,
    params_path: "str | Path | None" = None,
    workers: int = 1,
    sequences: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """Preprocess a patient's aligned images and compute radiomics for every sequence x ROI."""
    from .radiomics_features import extract_patient

    if patient.mask is None:
        raise InputError("no mask: radiomics need GTVp/GTVn contours", patient_id=patient.patient_id,
                         column="mask", fix="give a mask (label 1 = GTVp, 2 = GTVn)")
    images = {k: v for k, v in patient.images.items() if sequences is None or k in sequences}
    prepared = preprocess_images(images, preprocess)
    return extract_patient(prepared, patient.mask, patient_id=patient.patient_id, params_path=params_path,
                           workers=workers)


def _one_patient(entry: PatientEntry, preprocess: Dict[str, Any], params_path: Optional[str], workers: int,
                 network: Optional[str] = None, auto_mask_dir: Optional[str] = None) -> Dict[str, Any]:
    """Worker body (module-level so process pools can pickle it). Returns features or the failure reason.

    With ``network``, the patient's deep score is added; with ``auto_mask_dir`` as well, the network's contours
    replace the manifest mask (AutoRadio) and are written there for review.
    """
    try:
        mask = None if auto_mask_dir else entry.mask
        patient = load_patient(entry.patient_id, {c: entry.images[c] for c in IMAGE_COLUMNS}, mask)
        extra: Dict[str, float] = {}
        if network:
            from .imageio import write_image_atomic
            from .segmentation import segment_patient

            result = segment_patient(cached_network(network), patient.images, patient_id=entry.patient_id)
            extra[DEEP_SCORE] = float(result.deep_score)
            patient.warnings.extend(result.warnings)
            if auto_mask_dir:
                from .imageio import check_mask

                patient.mask = check_mask(result.mask, patient_id=entry.patient_id)
                write_image_atomic(result.mask, Path(auto_mask_dir) / f"{entry.patient_id}_mask.nii.gz")
        row = patient_features(patient, PreprocessConfig.from_dict(preprocess), params_path=params_path,
                               workers=workers)
        return {"patient_id": entry.patient_id, "features": {**extra, **row}, "warnings": patient.warnings}
    except InputError as exc:
        return {"patient_id": entry.patient_id, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any library failure is reported for that patient only
        return {"patient_id": entry.patient_id, "error": f"{type(exc).__name__}: {exc}"}


def failures_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".failures.csv")


def meta_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".meta.json")


def extraction_metadata(params_path: "str | Path | None", preprocess: PreprocessConfig) -> Dict[str, Any]:
    """What a features table depends on: recorded beside it and checked again at training time."""
    from .radiomics_features import DEFAULT_PARAMS, load_settings, pyradiomics_version, settings_hash

    return {
        "pyradiomics_version": pyradiomics_version(),
        "params_file": Path(params_path or DEFAULT_PARAMS).name,
        "settings_hash": settings_hash(params_path),
        "settings": load_settings(params_path),
        "preprocessing": preprocess.to_dict(),
        "ibsi_note": "PyRadiomics deviates from IBSI in documented ways: kurtosis is not excess kurtosis, fixed "
                     "bin width bins start at 0 (not at the ROI minimum), resampling grids are corner-aligned.",
    }


def extract_cohort(
    manifest: Manifest,
    out: "str | Path",
    *,
    workers: int = 1,
    params_path: "str | Path | None" = None,
    preprocess: Optional[PreprocessConfig] = None,
    progress: bool = True,
    runner: Optional[Callable[..., List[Dict[str, Any]]]] = None,
    network: "str | Path | None" = None,
    auto_mask: bool = False,
) -> ExtractionResult:
    """Extract features for every patient of ``manifest`` and write ``out`` (CSV) with failures and metadata beside it.

    ``workers`` > 1 runs patients in parallel processes; ``runner`` lets the Dask engine (or a test) replace
    the local pool while keeping the same per-patient function. ``network`` (a network bundle) adds each
    patient's deep score; ``auto_mask`` segments with it and takes radiomics from the automatic contours,
    written to ``<out stem>_masks/``.
    """
    from tqdm import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    preprocess = preprocess or PreprocessConfig()
    entries = manifest.entries()
    if auto_mask and network is None:
        raise InputError("--mask auto needs a segmentation network", column="--network",
                         fix="pass --network with a network bundle (e.g. Resources/DemoNetwork)")
    auto_mask_dir = out.with_name(out.stem + "_masks") if auto_mask else None
    if auto_mask_dir is not None:
        auto_mask_dir.mkdir(parents=True, exist_ok=True)
    missing_mask = [] if auto_mask else [e.patient_id for e in entries if e.mask is None]
    if missing_mask:
        raise InputError(f"{len(missing_mask)} patient(s) have no mask, e.g. {missing_mask[:3]}",
                         patient_id=missing_mask[0], column="mask",
                         fix="fill in the mask column (label 1 = GTVp, 2 = GTVn)")
    args = (preprocess.to_dict(), None if params_path is None else str(params_path), 1,
            None if network is None else str(network), None if auto_mask_dir is None else str(auto_mask_dir))
    if runner is not None:
        results = runner(_one_patient, entries, *args)
    elif workers > 1:
        from .processes import spawn_context

        with ProcessPoolExecutor(max_workers=workers, mp_context=spawn_context()) as pool:
            futures = [pool.submit(_one_patient, e, *args) for e in entries]
            results = [f.result() for f in tqdm(futures, desc="radiomics", unit="patient", disable=not progress)]
    else:
        results = [_one_patient(e, *args) for e in tqdm(entries, desc="radiomics", unit="patient",
                                                           disable=not progress)]

    rows, failures = [], []
    for result in results:
        if "error" in result:
            log.error("patient %s failed: %s", result["patient_id"], result["error"])
            failures.append({"patient_id": result["patient_id"], "stage": "extract", "error": result["error"]})
        else:
            rows.append({"patient_id": result["patient_id"], **result["features"]})
    failures_file = failures_path_for(out)
    write_text_atomic(failures_file, pd.DataFrame(failures, columns=["patient_id", "stage", "error"]).to_csv(index=False))
    if not rows:
        if out.exists():
            out.unlink()
        raise InputError(f"no patient could be processed ({len(failures)} failed); see {failures_file}",
                         path=manifest.source, fix="fix the first error listed in the failures file")
    table = pd.DataFrame(rows)
    write_text_atomic(out, table.to_csv(index=False))
    meta = {**extraction_metadata(params_path, preprocess), "created": datetime.now(timezone.utc).isoformat(),
            "manifest": str(manifest.source), "n_patients": len(rows), "n_failed": len(failures),
            "mask": "automatic (network)" if auto_mask else "manifest",
            "network": None if network is None else str(network)}
    write_text_atomic(meta_path_for(out), json.dumps(meta, indent=2))
    return ExtractionResult(table=table, failures=failures, features_path=out, failures_path=failures_file,
                            meta_path=meta_path_for(out))


def read_features(path: "str | Path") -> "tuple[pd.DataFrame, Dict[str, Any]]":
    """A features table and its metadata (empty dict when the sidecar is missing, e.g. a user's own table)."""
    path = Path(path)
    if not path.exists():
        raise InputError("features table not found", path=path, fix="run `npc-prognosis extract` first")
    table = pd.read_csv(path, dtype={"patient_id": str})
    if "patient_id" not in table.columns:
        raise InputError("features table has no patient_id column", path=path)
    dup = table["patient_id"][table["patient_id"].duplicated()].tolist()
    if dup:
        raise InputError(f"duplicate patient IDs {dup[:3]} in the features table", patient_id=dup[0], path=path)
    meta_file = meta_path_for(path)
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    return table, meta


def dask_runner(address: Optional[str] = None) -> Callable[..., List[Dict[str, Any]]]:
    """A runner that maps patients over a Dask cluster (``address`` of a scheduler, or a local cluster)."""

    def run(function: Callable[..., Dict[str, Any]], entries: Sequence[PatientEntry], *args: Any) -> List[Dict[str, Any]]:
        from dask.distributed import Client, LocalCluster

        cluster = None if address else LocalCluster(n_workers=2, threads_per_worker=1, processes=True)
        client = Client(address or cluster)
        try:
            futures = client.map(function, list(entries), *[[a] * len(entries) for a in args], pure=False)
            return client.gather(futures)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()

    return run


def read_manifest_features(manifest: Manifest, table: pd.DataFrame) -> "tuple[Manifest, pd.DataFrame, List[str]]":
    """Patients present in both, in manifest order, and the IDs lacking features (failed or not extracted)."""
    have = set(table["patient_id"])
    lacking = [p for p in manifest.patient_ids if p not in have]
    kept = manifest.table[manifest.table["patient_id"].isin(have)].reset_index(drop=True)
    features = table.set_index("patient_id").loc[kept["patient_id"]].reset_index()
    return Manifest(table=kept, root=manifest.root, source=manifest.source), features, lacking


#: Columns of a features table that are not radiomics: the ID and the network's deep risk score.
NON_RADIOMICS = ("patient_id", DEEP_SCORE)


def feature_matrix(features: pd.DataFrame) -> pd.DataFrame:
    """The radiomics columns only (``<roi>_present`` flags count as features; the deep score does not)."""
    return features[[c for c in features.columns if c not in NON_RADIOMICS]]
