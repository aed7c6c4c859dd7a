"""The cohort manifest: one CSV row per patient, the contract between a user's data and every stage.

Users bring their own spreadsheets, so a column map lets ``MRN`` stand for ``patient_id`` without renaming
files; everything after :func:`read_manifest` sees the canonical names only.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.contract import ENDPOINTS, SEQUENCES
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.atomic import safe_name
from NPCPrognosisLib.io.clinical import (
    CLINICAL_CODINGS,
    CLINICAL_FIELDS,
    ClinicalRecord,
    encode_clinical,
    parse_clinical,
)
from NPCPrognosisLib.io.sequence_names import file_name_warnings

MASK_COLUMN = "mask"
OPTIONAL_COLUMNS = ("pfs_time", "pfs_event", "ic_response", "split", "centre")
#: Optional column naming each patient's hospital or scanner: radiomics are then harmonised across centres (ComBat)
#: when cross-validation on the training patients says it helps.
CENTRE_COLUMN = "centre"


def centre_label(value: Any) -> str | None:
    """A centre (scanner) label as the one string every stage compares; None when missing.

    ``3.0`` reads as ``3``: a number column with a gap comes out of a spreadsheet as floats, and training, the
    bundle and a new patient's ``--centre`` must name a centre the same way.
    """
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):  # list-like values: not a label, let str() show them
        pass
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].lstrip("-").isdigit():
        text = text[:-2]
    return text or None


log = logging.getLogger(__name__)

#: The file ``npc-prognosis synth`` writes beside a synthetic cohort's manifest
#: (:func:`~NPCPrognosisLib.datasets.cohort_files.write_cohort`).
SYNTHETIC_MARKER = "SYNTHETIC_COHORT.json"

@dataclass
class PatientEntry:
    """One manifest row with paths resolved against the manifest's folder."""

    patient_id: str
    images: dict[str, Path | None]
    mask: Path | None
    clinical: dict[str, Any]
    outcomes: dict[str, float | None] = field(default_factory=dict)

    def clinical_record(self) -> ClinicalRecord:
        return parse_clinical(self.clinical, self.patient_id)


@dataclass
class Manifest:
    """A validated cohort table: canonical column names, string patient IDs, the folder paths are relative to."""

    table: pd.DataFrame
    root: Path
    source: Path

    def column(self, name: str) -> str:
        """The table's column a command-line name means: itself, or the one column equal to it without surrounding
        spaces and case (the reader renamed ``Split`` to ``split``; ``--split-col Split`` still means it)."""
        if name in self.table.columns:
            return name
        same = [c for c in self.table.columns if str(c).strip().lower() == name.strip().lower()]
        return same[0] if len(same) == 1 else name

    @property
    def patient_ids(self) -> list[str]:
        return list(self.table["patient_id"])

    def entries(self) -> list[PatientEntry]:
        return [self._entry(row) for _, row in self.table.iterrows()]

    def subset(self, rows: Any) -> Manifest:
        """The patients selected by ``rows`` (a boolean mask or integer positions, repeats allowed for a bootstrap
        resample), renumbered from 0, with the same root and source so paths and messages stay right."""
        rows = np.asarray(rows)
        table = self.table[rows] if rows.dtype == bool else self.table.iloc[rows]
        return Manifest(table=table.reset_index(drop=True), root=self.root, source=self.source)

    def entry(self, patient_id: str) -> PatientEntry:
        rows = self.table[self.table["patient_id"] == patient_id]
        if rows.empty:
            raise InputError("not in the manifest", patient_id=patient_id, path=self.source)
        return self._entry(rows.iloc[0])

    def _entry(self, row: pd.Series) -> PatientEntry:
        def resolve(value: Any) -> Path | None:
            if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
                return None
            path = Path(str(value).strip())
            return path if path.is_absolute() else self.root / path

        outcomes = {}
        for endpoint in ENDPOINTS:
            for suffix in ("time", "event"):
                col = f"{endpoint}_{suffix}"
                if col in row.index and not pd.isna(row[col]):
                    outcomes[col] = float(row[col])
        return PatientEntry(
            patient_id=str(row["patient_id"]),
            images={c: resolve(row.get(c)) for c in SEQUENCES},
            mask=resolve(row.get(MASK_COLUMN)),
            clinical={c: row.get(c) for c in CLINICAL_FIELDS},
            outcomes=outcomes,
        )

    @property
    def centre_labels(self) -> list[str | None] | None:
        """Each patient's centre (``centre`` column; None where empty), or None when there is no such column."""
        if CENTRE_COLUMN not in self.table.columns:
            return None
        return [centre_label(v) for v in self.table[CENTRE_COLUMN]]

    @property
    def centres(self) -> list[str | None] | None:
        """The centre labels when they name two or more centres (what harmonisation can be trained on), else None."""
        labels = self.centre_labels
        return labels if labels is not None and len({v for v in labels if v is not None}) > 1 else None

    def clinical_table(self, ebv_fill: float | None) -> pd.DataFrame:
        """Encoded clinical covariates (every coding's columns), one row per manifest row in the same order."""
        rows = [encode_clinical(parse_clinical({c: row.get(c) for c in CLINICAL_FIELDS}, row["patient_id"]), ebv_fill)
                for _, row in self.table.iterrows()]
        return pd.DataFrame(rows, columns=list(dict.fromkeys(c for coding in CLINICAL_CODINGS.values()
                                                             for c in coding)))

    def outcome_arrays(self, endpoint: str) -> tuple[Any, Any]:
        """(time, event) numpy arrays for ``endpoint``; call :func:`check_outcomes` first."""
        return (self.table[f"{endpoint}_time"].to_numpy(float), self.table[f"{endpoint}_event"].to_numpy(float) > 0)


def is_synthetic_cohort(manifest: Manifest) -> bool:
    """Whether the manifest lies beside :data:`SYNTHETIC_MARKER`, in a folder ``synth`` wrote; said in the log.

    ``train`` and ``train-net`` then mark their bundle synthetic without ``--synthetic``, so no sheet of a model
    trained on generated patients reads as research software for real ones. A file beside the manifest rather
    than a column in it: the manifest contract stays as it is, and a manifest derived inside the cohort's folder
    (censored at 40 months, a subset) is marked too, as its rows are the same generated patients.
    """
    marker = Path(manifest.source).parent / SYNTHETIC_MARKER
    if not marker.is_file():
        return False
    log.warning("%s lies beside %s (a cohort npc-prognosis synth generated): the model is marked SYNTHETIC, not "
                "for clinical use", Path(manifest.source).name, marker.name)
    return True


def load_column_map(spec: str | None) -> dict[str, str]:
    """A column map from ``canonical=theirs,...`` or a JSON file ``{"patient_id": "MRN", ...}``."""
    if not spec:
        return {}
    path = Path(spec)
    if path.suffix.lower() == ".json" and path.exists():
        try:
            mapping = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"column map is not valid JSON ({exc})", path=path, column="--column-map",
                             fix='write a JSON object such as {"patient_id": "MRN", "t1c": "T1C_path"}') from None
    else:
        mapping = {}
        for part in spec.split(","):
            if "=" not in part:
                raise InputError(f"column map entry {part!r} is not canonical=theirs", column="--column-map",
                                 fix="write e.g. --column-map patient_id=MRN,t1c=T1C_path or pass a JSON file")
            canonical, theirs = part.split("=", 1)
            mapping[canonical.strip()] = theirs.strip()
    if not isinstance(mapping, dict):
        raise InputError("column map must be a JSON object", path=spec)
    return {str(k): str(v) for k, v in mapping.items()}


def read_manifest(
    path: str | Path,
    column_map: Mapping[str, str] | None = None,
    *,
    require_images: bool = True,
    require_mask: bool = False,
    require_clinical: bool = True,
) -> Manifest:
    """Read and validate a cohort manifest.

    Checks what the calling stage relies on (unique IDs, image columns present, clinical codes valid) up front, so
    a 500-patient run does not fail on row 437 for a typo; outcome columns are checked per endpoint by
    :func:`check_outcomes`, since prediction cohorts have none.

    Parameters
    ----------
    path : str or Path
        The cohort CSV; image and mask paths in it are relative to its folder.
    column_map : mapping of str to str, optional
        Canonical column name to the user's own (see :func:`load_column_map`).
    require_images : bool
        The three sequence columns must be present; image file names that name another sequence than their column
        (``P001_T2.nii.gz`` under ``t1``) are warned about, once per column
        (:func:`~NPCPrognosisLib.io.sequence_names.file_name_warnings`).
    require_mask : bool
        The ``mask`` column must be present.
    require_clinical : bool
        The clinical columns must be present and every row's codes valid. Stages that never read them (the
        network's training and segmentation) pass False, so an imaging-only cohort (images, masks, outcomes) is
        not refused for lacking, say, LDH; their values are then not checked either.

    Returns
    -------
    Manifest
        The table with canonical column names and string patient IDs.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("manifest file not found", path=path, fix="pass the path of the cohort CSV")
    # the ID and centre columns are read as text whatever their names: an MRN keeps its leading zeros and gets no
    # '.0' (it must match the features and extra tables, read as text), and a centre column with one gap is not
    # read as 1.0, 2.0 (it must name the centres as training did)
    table = _read_table(path, column_map or {})

    required = ["patient_id"]
    if require_clinical:
        required += [*CLINICAL_FIELDS[:2], "t_stage", "n_stage", "rene", "ldh"]
    if require_images:
        required += list(SEQUENCES)
    if require_mask:
        required.append(MASK_COLUMN)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputError(f"missing column(s) {missing}; the manifest's columns are {list(table.columns)}", path=path,
                         fix="add them or map your own names with --column-map canonical=yours")

    ids = table["patient_id"].fillna("").astype(str).str.strip()
    if ids.eq("").any():
        raise InputError(f"empty patient_id in row {int(ids.eq('').idxmax()) + 2}", path=path, column="patient_id")
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise InputError(f"duplicate patient IDs {dup}", patient_id=dup[0], path=path, column="patient_id",
                         fix="each patient must appear once; merge or rename the repeated rows")
    # masks, sheets and SEG files are named after the IDs: two IDs that make one file name would overwrite each
    # other's output and point both patients at one file (case folded: Windows and macOS disks ignore case)
    stems = ids.map(lambda pid: safe_name(pid).lower())
    clash = stems[stems.duplicated(keep=False)]
    if len(clash):
        same = ids[stems == clash.iloc[0]].tolist()
        raise InputError(f"patient IDs {same} give the same file name '{safe_name(same[0])}' (characters other than "
                         "letters, digits, '.', '_' and '-' become '_', and case is ignored)", patient_id=same[0],
                         path=path, column="patient_id", fix="rename one of them so that they differ in letters or "
                                                             "digits")
    table = table.assign(patient_id=ids)
    _check_outcome_cells(table, path)
    if require_images:
        rows = [(row["patient_id"], {c: row[c] if isinstance(row[c], str) else None for c in SEQUENCES})
                for _, row in table.iterrows()]
        for message in file_name_warnings(rows):
            warnings.warn(f"{message} ({path})", UserWarning, stacklevel=2)
    if require_clinical:
        for _, row in table.iterrows():
            try:
                parse_clinical({c: row.get(c) for c in CLINICAL_FIELDS}, row["patient_id"])
            except InputError as exc:  # the record's own rules (chemo = 0 with a dose, ...), named in this file
                raise InputError(exc.problem, patient_id=exc.patient_id, path=path, column=exc.column,
                                 fix=exc.fix) from None
        _check_ebv_unit(table, path)
    return Manifest(table=table.reset_index(drop=True), root=path.parent.resolve(), source=path)


#: Every column name a stage reads: a header that differs from one of these only in case or surrounding spaces
#: ("EBV_DNA", "sex ") is taken as that column, where a misspelled optional column would be silently absent.
KNOWN_COLUMNS = ("patient_id", *SEQUENCES, MASK_COLUMN, *CLINICAL_FIELDS, *OPTIONAL_COLUMNS,
                 *(f"{endpoint}_{suffix}" for endpoint in ENDPOINTS for suffix in ("time", "event")))


def _read_table(path: Path, column_map: Mapping[str, str]) -> pd.DataFrame:
    """The CSV with its own column names mapped to the canonical ones, refusing what would be read wrongly:
    another separator, another encoding, a column twice (pandas would rename the second ``age.1`` and use the
    first), two columns mapped to one name."""
    fix = "save the table as 'CSV UTF-8 (comma delimited)'"
    try:
        header = [name.strip() or f"Unnamed: {k}" for k, name in  # a header cell "NA" is a name, not a blank
                  enumerate(pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0])]
        # the ID and centre columns are read as text whatever their names: an MRN keeps its leading zeros and gets
        # no '.0' (it must match the features and extra tables, read as text), and a centre column with one gap is
        # not read as 1.0, 2.0 (it must name the centres as training did)
        text = {raw for raw in pd.read_csv(path, nrows=0, index_col=False).columns
                if raw.strip() in {column_map.get(name, name).strip() for name in ("patient_id", CENTRE_COLUMN)}
                or raw.strip().lower() in ("patient_id", CENTRE_COLUMN)}
        # index_col=False: rows one cell longer than the header (a trailing comma) must not push the IDs into the
        # index and every column one place left
        table = pd.read_csv(path, dtype={raw: str for raw in text}, index_col=False)
    except UnicodeDecodeError as exc:
        raise InputError(f"is not UTF-8 text ({exc.reason} at byte {exc.start})", path=path, fix=fix) from None
    except Exception as exc:  # noqa: BLE001 - pandas raises several types for malformed CSV
        raise InputError(f"cannot be read as CSV ({exc})", path=path, fix=fix) from None
    if len(header) == 1 and any(mark in header[0] for mark in (";", "\t", "|")):
        raise InputError(f"the table has one column, {header[0][:60]!r}: its values are not separated by commas",
                         path=path, fix=fix)
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise InputError(f"column(s) {repeated} appear more than once", path=path,
                         fix="keep one column of each name")
    table.columns = header
    if column_map:
        reverse = {theirs.strip(): canonical for canonical, theirs in column_map.items()}
        unknown = [theirs for theirs in reverse if theirs not in table.columns]
        if unknown:
            raise InputError(f"column map names column(s) {unknown} that the manifest does not have", path=path,
                             fix=f"the manifest's columns are {list(table.columns)}")
        table = table.rename(columns=reverse)
    lower = {str(c).lower(): c for c in table.columns}
    table = table.rename(columns={lower[name]: name for name in KNOWN_COLUMNS
                                  if name not in table.columns and name in lower})
    clash = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if clash:
        raise InputError(f"two columns would both be read as {clash} (the column map names one the table already has)",
                         path=path, fix="map each canonical name to one column, or rename the table's own column")
    return table


def _check_outcome_cells(table: pd.DataFrame, path: Path) -> None:
    """Every filled outcome cell is a number (or TRUE/FALSE for an event) and no follow-up time is in days
    (:func:`_check_follow_up_unit`): checked for every endpoint the table has, since a later stage reads any of
    them (the robustness study reads the whole row)."""
    for column in [c for c in table.columns if c.endswith(("_time", "_event")) and c.rsplit("_", 1)[0] in ENDPOINTS]:
        values = table[column]
        if values.dtype == bool:
            continue
        numbers = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & numbers.isna() & values.astype(str).str.strip().ne("")
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{column} is {values.iloc[first]!r}, not a number",
                             patient_id=table["patient_id"].iloc[first], path=path, column=column,
                             fix="months as a plain number (time) and 0/1 (event); leave the cell empty if unknown")
        if column.endswith("_time"):
            _check_follow_up_unit(numbers, table["patient_id"], path, column)


#: EBV DNA is a count in copies/mL (0 below detection, then hundreds to millions): a cohort whose values all lie at
#: or below this is coded otherwise (log10 copies, or 0/1 for detectable).
EBV_CODED_MAX = 10.0


def _check_ebv_unit(table: pd.DataFrame, path: Path) -> None:
    """Refuse an EBV DNA column in log10 copies or as a 0/1 flag, which would be read as a handful of copies/mL."""
    if "ebv_dna" not in table.columns:
        return
    values = pd.to_numeric(table["ebv_dna"], errors="coerce").dropna()
    if len(values) >= 10 and 0 < values.max() <= EBV_CODED_MAX:  # all 0: undetectable throughout, possible
        raise InputError(f"ebv_dna of all {len(values)} patients with a value lies between {values.min():g} and "
                         f"{values.max():g}: these look like log10 copies or a detectable (1) / undetectable (0) flag, "
                         "not copies/mL", path=path, column="ebv_dna",
                         fix="give plasma EBV DNA in copies/mL (e.g. 10 ** value for log10 copies), or leave the "
                             "cells empty when only a flag is known")


def endpoint_name(manifest: Manifest, endpoint: str, option: str = "--endpoint") -> str:
    """The endpoint a command-line name means, checked before any work: a survival endpoint whatever its case
    (``DMFS`` is ``dmfs``), or a 0/1 column of the manifest (returned as given, for the binary models).

    Why: any name that is not a survival endpoint is read as a binary column, so ``--endpoint dmfs_event`` trained
    a classifier of the event indicator (a patient censored after two months counted as free of metastasis: a
    silent wrong analysis), and ``DMFS`` or a typo such as ``dfs`` were answered "no column for the binary
    endpoint", which names neither the survival endpoints nor the fix.

    Parameters
    ----------
    manifest : Manifest
        The cohort the endpoint is read from.
    endpoint : str
        The name the user gave.
    option : str
        The command-line option that gave it, named in the error.

    Returns
    -------
    endpoint : str
        ``dmfs``, ``os`` or ``pfs``, or the binary column's name as given.

    Raises
    ------
    InputError
        For an outcome's time or event column, and for a name that is neither a survival endpoint nor a column.
    """
    plain = endpoint.strip().lower()
    if plain in ENDPOINTS:
        return plain
    survival = ", ".join(ENDPOINTS)
    for name in ENDPOINTS:
        if plain in (f"{name}_time", f"{name}_event"):
            raise InputError(f"{endpoint!r} is a column of the survival endpoint {name}, not an endpoint: a 0/1 "
                             "model of it would count a patient censored early as free of the event",
                             path=manifest.source, column=option,
                             fix=f"{option} {name} (its time and event columns are read together)")
    if manifest.column(endpoint) not in manifest.table.columns:
        raise InputError(f"unknown endpoint {endpoint!r}: neither a survival endpoint ({survival}) nor a column of "
                         "the manifest", path=manifest.source, column=option,
                         fix=f"use {survival}, or name a 0/1 column of the manifest such as ic_response")
    return endpoint


def check_outcomes(manifest: Manifest, endpoint: str, patient_ids: Sequence[str] | None = None) -> None:
    """Every (selected) row has a usable time and event for ``endpoint``.

    Training on a guessed outcome is worse than failing.
    """
    if endpoint not in ENDPOINTS:
        raise InputError(f"unknown endpoint {endpoint!r}", fix=f"use one of {', '.join(ENDPOINTS)}")
    table = manifest.table
    if patient_ids is not None:
        table = table[table["patient_id"].isin(list(patient_ids))]
    for col in (f"{endpoint}_time", f"{endpoint}_event"):
        if col not in table.columns:
            raise InputError(f"no {col} column for endpoint {endpoint}", path=manifest.source, column=col,
                             fix=f"add {endpoint}_time (months) and {endpoint}_event (0/1)")
    for _, row in table.iterrows():
        time, event = row[f"{endpoint}_time"], row[f"{endpoint}_event"]
        for column, value in ((f"{endpoint}_time", time), (f"{endpoint}_event", event)):
            if not pd.isna(value) and pd.isna(pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]):
                raise InputError(f"{column} is {value!r}, not a number", patient_id=row["patient_id"],
                                 path=manifest.source, column=column,
                                 fix="months as a number (time) and 0/1 (event); leave the cell empty if unknown")
        time, event = pd.to_numeric(pd.Series([time, event]), errors="coerce").tolist()
        if pd.isna(time) or pd.isna(event):
            raise InputError(f"missing {endpoint} outcome", patient_id=row["patient_id"], path=manifest.source,
                             column=f"{endpoint}_time" if pd.isna(time) else f"{endpoint}_event",
                             fix="fill in follow-up time and event, or leave the patient out of this cohort")
        if not 0 < float(time) < math.inf:
            raise InputError(f"{endpoint}_time must be a positive number of months, got {time}",
                             patient_id=row["patient_id"], path=manifest.source, column=f"{endpoint}_time",
                             fix="months from the start of treatment to the event or the last follow-up")
        if float(event) not in (0.0, 1.0):
            raise InputError(f"{endpoint}_event must be 0 or 1, got {event}", patient_id=row["patient_id"],
                             path=manifest.source, column=f"{endpoint}_event",
                             fix=f"1 = {endpoint} event, 0 = censored (a competing event, e.g. death before "
                                 "relapse, is censored here)")
    _check_follow_up_unit(table[f"{endpoint}_time"], table["patient_id"], manifest.source, f"{endpoint}_time")


def _check_follow_up_unit(times: pd.Series, patient_ids: pd.Series, path: Path, column: str) -> None:
    """Refuse follow-up times given in days, where they would be read as months (30 times too long).

    The whole column in days shows in its median (beyond :data:`MAX_MEDIAN_FOLLOW_UP`); some rows in days (one
    centre's export pasted into a table in months) show only row by row, as times no patient can have (beyond
    :data:`MAX_FOLLOW_UP`). Both name the fix; the rows are listed so the user knows which to convert.

    Refused, not warned: read as months, days make every number downstream wrong without a sign (the 60-month
    survival of the nomogram, the benefit and the calibration would be read at 60 days, the baseline hazard
    stretched 30 times), and a warning scrolls past. Follow-up in years only warns (:func:`follow_up_warning`):
    its 3- and 5-year figures come out as not estimable, which the reports show, not as wrong numbers.
    """
    times = pd.to_numeric(times, errors="coerce")
    known = times.dropna()
    if len(known) >= 10 and known.median() > MAX_MEDIAN_FOLLOW_UP:
        raise InputError(f"the median {column} is {known.median():g} months ({known.median() / 12:.0f} years): "
                         "these look like days", path=path, column=column,
                         fix="give follow-up in months (days / 30.44)")
    beyond = (np.isfinite(times) & (times > MAX_FOLLOW_UP)).to_numpy()  # infinite: refused by check_outcomes
    if beyond.any():
        ids, values = list(patient_ids[beyond]), list(times[beyond])
        shown = ", ".join(f"{pid} ({value:g})" for pid, value in zip(ids[:5], values[:5]))
        more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
        raise InputError(f"{len(ids)} patient(s) have a {column} beyond {MAX_FOLLOW_UP:g} months "
                         f"({MAX_FOLLOW_UP / 12:.0f} years), longer than any NPC patient can have been followed: "
                         f"{shown}{more}; these rows look like days", patient_id=ids[0], path=path, column=column,
                         fix="give these patients' follow-up in months (days / 30.44), as the other rows are")


def follow_up_warning(manifest: Manifest, endpoint: str) -> str | None:
    """A warning when the follow-up is so short that it was probably given in years (``train`` and ``evaluate``
    print it once; :func:`check_outcomes` runs in every refit)."""
    times = pd.to_numeric(manifest.table[f"{endpoint}_time"], errors="coerce")
    if len(times) >= 10 and times.max() <= SHORTEST_LONGEST_FOLLOW_UP:
        return (f"the longest {endpoint}_time is {times.max():g} months: if these are years, give months (years x "
                "12); 3- and 5-year survival cannot be estimated on this follow-up")
    return None


#: A median follow-up beyond 20 years is no NPC cohort's: times in days are 30 times their months.
MAX_MEDIAN_FOLLOW_UP = 240.0
#: No patient's follow-up can exceed 40 years: MRI staging of NPC (the images this model reads) became routine in
#: the 1990s, so no patient imaged that way has been followed that long. A time in days passes this ceiling once the
#: real follow-up exceeds 16 months (480 days); a shorter one in days cannot be told from months, row by row.
MAX_FOLLOW_UP = 480.0
#: A cohort whose longest follow-up is at most this many months was probably given in years.
SHORTEST_LONGEST_FOLLOW_UP = 10.0
