"""The features table contract: one row per patient, one column per feature, metadata beside it.

What produced a table (PyRadiomics version, settings hash, preprocessing) is recorded in ``<name>.meta.json``
and checked again when a model is trained on it or a bundle reads it; the patients that could not be extracted are
in ``<name>.failures.csv``, and the patients' image warnings in ``<name>.warnings.csv``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.contract import ROIS, SEQUENCES
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.imaging.preprocess import PreprocessConfig
from NPCPrognosisLib.io.extra_features import EXTRA_PREFIX
from NPCPrognosisLib.io.manifest import Manifest
from NPCPrognosisLib.io.patient_ids import listed_ids

log = logging.getLogger(__name__)

#: Column of the network's risk score (DeepMTS-style) when features were extracted with a network.
DEEP_SCORE = "deep_score"


def failures_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".failures.csv")


def meta_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".meta.json")


def warnings_path_for(out: Path) -> Path:
    """``<name>.warnings.csv``: each patient's image warnings (a sequence covering part of the CET1W field, contours
    outside it, another frame of reference), one row per warning, so that a clinician reviewing a cohort learns which
    rows rest on doubtful images without reading the run's log; ``status`` ``failed`` marks the warnings a failed
    patient raised before it failed (``extracted``: the patient has a row)."""
    return out.with_name(out.stem + ".warnings.csv")


def extraction_metadata(params_path: str | Path | None, preprocess: PreprocessConfig) -> dict[str, Any]:
    """What a features table depends on: recorded beside it and checked again at training time."""
    from NPCPrognosisLib.radiomics.extraction import load_settings, pyradiomics_version, settings_hash
    from NPCPrognosisLib.resources import RADIOMICS_PARAMS

    return {
        "pyradiomics_version": pyradiomics_version(),
        "params_file": Path(params_path or RADIOMICS_PARAMS).name,
        "settings_hash": settings_hash(params_path),
        "settings": load_settings(params_path),
        "preprocessing": preprocess.to_dict(),
        "ibsi_note": "PyRadiomics deviates from IBSI in documented ways: kurtosis is not excess kurtosis, fixed "
                     "bin width bins start at 0 (not at the ROI minimum), resampling grids are corner-aligned.",
    }


#: What a bundle records of the features table it was trained on (``bundle.json`` ``radiomics``).
RADIOMICS_RECORD = ("pyradiomics_version", "params_file", "settings_hash", "settings", "ibsi_note")


def check_settings(record: dict[str, Any], meta: dict[str, Any], source: str | Path) -> None:
    """Refuse a features table (its ``meta``) made with other radiomics settings than the table a model was trained
    on (``record``, the bundle's ``radiomics``): the same column name would mean another thing. Only what both sides
    recorded is compared: a user's own table without a sidecar is not refused."""
    expected, found = record.get("settings_hash"), meta.get("settings_hash")
    if expected and found and expected != found:
        raise InputError(f"features were extracted with radiomics settings {found[:12]} but the bundle expects "
                         f"{expected[:12]}", path=source,
                         fix="re-extract with the bundle's parameter file (see bundle.json 'radiomics')")


def read_features(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
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
    for column in [c for c in table.columns if c != "patient_id"]:
        values = table[column]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        numbers = pd.to_numeric(values, errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy() & values.notna().to_numpy())
        if len(bad):
            row = int(bad[0])
            raise InputError(f"non-numeric value {values.iloc[row]!r} in the features table ({len(bad)} cell(s) in "
                             "this column)", patient_id=str(table["patient_id"].iloc[row]), path=path,
                             column=str(column), fix="features are numbers; leave a cell empty when a value is missing")
        table[column] = numbers
    meta_file = meta_path_for(path)
    try:
        meta = json.loads(meta_file.read_bytes()) if meta_file.exists() else {}
    except ValueError as exc:
        raise InputError(f"the features table's metadata is not valid JSON ({exc})", path=meta_file,
                         fix="re-run extract, or delete the .meta.json file of a table made elsewhere") from None
    return table, meta


def image_warnings_note(meta: dict[str, Any], patient_ids: Sequence[str], features_path: str | Path,
                        who: str) -> str | None:
    """A warning that some of the patients a model is trained or evaluated on were extracted from doubtful images.

    Why: the warnings were written once, beside the table (``extract``'s ``.warnings.csv``); a model fitted on those
    rows weeks later is where the doubt matters, so ``train`` and ``evaluate`` repeat the count.

    Parameters
    ----------
    meta : dict
        The features table's metadata (:func:`read_features`); a table without ``patients_with_warnings`` (made
        before extract recorded them, or elsewhere) gives no note.
    patient_ids : sequence of str
        The patients used (training or evaluated).
    features_path : str or Path
        The features table, to name its warnings file.
    who : str
        What the patients are, e.g. ``"training"``.

    Returns
    -------
    str or None
        The note, or None when none of them has a warning.
    """
    warned = set(meta.get("patients_with_warnings") or [])
    hit = [p for p in map(str, patient_ids) if p in warned]
    if not hit:
        return None
    return (f"{len(hit)} of the {len(patient_ids)} {who} patients had image warnings at extraction (listed in "
            f"{warnings_path_for(Path(features_path))}): {listed_ids(hit)}")


def read_manifest_features(manifest: Manifest, table: pd.DataFrame) -> tuple[Manifest, pd.DataFrame, list[str]]:
    """Patients present in both, in manifest order, and the IDs lacking features (failed or not extracted)."""
    have = set(table["patient_id"])
    lacking = [p for p in manifest.patient_ids if p not in have]
    kept = manifest.subset(manifest.table["patient_id"].isin(have).to_numpy())
    features = table.set_index("patient_id").loc[kept.table["patient_id"]].reset_index()
    return kept, features, lacking


def respelled_ids_note(lacking: Sequence[str], table_ids: Sequence[str], manifest_ids: Sequence[str]) -> str | None:
    """What to say when patients the manifest lists without features have a row under another spelling of their ID.

    Why: a manifest that writes 'RLX 0004' where extract wrote 'RLX0004' (a re-typed or re-exported manifest) left
    the patient out as 'no features', which reads like a failed extraction; the note names the row it probably is
    (the same ID once spaces, case and leading zeros are ignored:
    :func:`~NPCPrognosisLib.io.patient_ids.loose_id_key`) and the fix. IDs are never joined by this rule: two
    patients may differ only so.

    Parameters
    ----------
    lacking : sequence of str
        Manifest IDs without a row in the features table (:func:`read_manifest_features`).
    table_ids : sequence of str
        The features table's ``patient_id`` column.
    manifest_ids : sequence of str
        Every ID of the manifest (a table row that one of them writes exactly is that patient's).

    Returns
    -------
    str or None
        e.g. "1 of the patients without features has a row in the features table under another spelling of the
        ID: 'RLX 0004' is 'RLX0004' there (...)"; None when none has.
    """
    from NPCPrognosisLib.io.patient_ids import respelled_ids

    pairs = respelled_ids(lacking, [str(r) for r in table_ids], manifest_ids)
    if not pairs:
        return None
    shown = listed_ids([f"{p!r} is {r!r} there" for p, r in pairs], 5)
    has = "has" if len(pairs) == 1 else "have"
    return (f"{len(pairs)} of the patients without features {has} a row in the features table under another spelling "
            f"of the ID: {shown} (the same ID once spaces, case and leading zeros are ignored). Fix: write the IDs in "
            "the manifest as the features table does, or re-run extract on this manifest")


@dataclass(frozen=True)
class FeatureFamily:
    """Where a radiomics column comes from: ``t1c_gtvp_wavelet-LLH_glcm_Contrast`` -> t1c, gtvp, wavelet-LLH."""

    sequence: str
    roi: str
    image_type: str
    feature_class: str


@functools.lru_cache(maxsize=65_536)  # a pure function of the name, asked per column per refit
def feature_family(column: str) -> FeatureFamily | None:
    """The sequence, ROI, image type and class of a radiomics column; None for a flag such as ``gtvn_present``."""
    parts = column.split("_", 3)
    if len(parts) < 4 or parts[0] not in SEQUENCES or parts[1] not in ROIS:
        return None
    return FeatureFamily(sequence=parts[0], roi=parts[1], image_type=parts[2], feature_class=parts[3].split("_")[0])


#: Prefix of the network's deep radiomic features (``deep_<roi>_<layer>_<k>``, see
#: :mod:`NPCPrognosisLib.deep.features`): features like any other, but computed by a network, not PyRadiomics.
DEEP_PREFIX = "deep_"


def is_deep_feature(column: str) -> bool:
    """A deep radiomic column (``deep_gtvp_bottleneck_3``), not the deep risk score."""
    return column.startswith(DEEP_PREFIX) and column.count("_") >= 3


def feature_roi(column: str) -> str | None:
    """The ROI a PyRadiomics or deep radiomic column was measured in (``gtvp``); None for other columns."""
    if is_deep_feature(column):
        return column.split("_")[1]
    family = feature_family(column)
    return None if family is None else family.roi


#: Columns of a features table that are not radiomics: the ID and the network's deep risk score.
NON_RADIOMICS = ("patient_id", DEEP_SCORE)


def feature_matrix(features: pd.DataFrame) -> pd.DataFrame:
    """The radiomics columns only (``<roi>_present`` flags count as features; the deep score and other
    modalities' joined columns, ``extra:<block>:<column>``, do not)."""
    return features[[c for c in features.columns if c not in NON_RADIOMICS and not str(c).startswith(EXTRA_PREFIX)]]


#: The ROIs whose volume the ``volume`` models use (the binary endpoints' logistic model and the survival
#: endpoints' Cox reference), and the features-table columns it comes from, preferred first (any sequence:
#: PyRadiomics' shape features depend on the mask alone; the voxel count is the mask's own volume, the mesh volume
#: a close second).
VOLUME_ROIS = ("gtvp", "gtvn")
VOLUME_FEATURES = ("original_shape_VoxelVolume", "original_shape_MeshVolume")
#: Prefix of the log-volume columns of :func:`tumour_volumes`.
LOG_VOLUME_PREFIX = "log_volume_"
#: The log-volume column of each ROI of :data:`VOLUME_ROIS` (what models, selection and reports name them by).
LOG_VOLUME_COLUMNS = {roi: f"{LOG_VOLUME_PREFIX}{roi}_ml" for roi in VOLUME_ROIS}


def volume_columns(features: pd.DataFrame) -> dict[str, str]:
    """Where the tumour volumes are in a features table.

    Returns
    -------
    columns : dict
        Per ROI of :data:`VOLUME_ROIS` the column holding its volume (mm^3); empty without a GTVp volume (a table
        of the user's own making), where there is no ``volume`` model.
    """
    found = {}
    for roi in VOLUME_ROIS:
        for feature in VOLUME_FEATURES:
            columns = sorted(c for c in features.columns if c.endswith(f"_{roi}_{feature}"))
            if columns:
                found[roi] = columns[0]
                break
    return found if "gtvp" in found else {}


def tumour_volumes(features: pd.DataFrame) -> pd.DataFrame:
    """log(1 + volume in mL) of every ROI of :data:`VOLUME_ROIS` when the table has a GTVp volume (columns
    :data:`LOG_VOLUME_PREFIX` + ROI + ``_ml``); an empty cell (no node contoured), or a table without a column for
    the ROI, is 0 mL.

    Why the logarithm: tumour volumes span two orders of magnitude and act on the risk per doubling, not per
    millilitre; log(1 + mL) keeps a patient without nodes at 0. Why every ROI: a model fitted on a table with node
    volumes must still find its factor in a patient's table without them.

    Returns
    -------
    volumes : DataFrame
        ``log_volume_<roi>_ml`` per ROI, one row per row of ``features``; no columns without a GTVp volume.
    """
    columns = volume_columns(features)
    if not columns:
        return pd.DataFrame(index=range(len(features)))
    return pd.DataFrame({name: np.log1p(features[columns[roi]].to_numpy(float) / 1000.0)
                         if roi in columns else np.zeros(len(features))
                         for roi, name in LOG_VOLUME_COLUMNS.items()}).fillna(0.0)
