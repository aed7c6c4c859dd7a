"""DICOM series on disk: which files make the series a manifest names, and whether they form one volume.

Images and the clinic's DICOM objects (RTSTRUCT, SEG) both need the series a path names, so it is decided here,
once: ``folder`` or ``folder::selector`` (SeriesInstanceUID or words of the description), never the first series
found; and the series' files must be one evenly spaced stack of one orientation before SimpleITK stacks them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.errors import InputError

#: ``folder::selector`` picks one series of a DICOM folder holding several (SeriesInstanceUID or description).
SERIES_SEPARATOR = "::"


def split_series_selector(path: str | Path) -> tuple[Path, str | None]:
    """``"study/::T1 post"`` -> (Path("study"), "T1 post"); a plain path has no selector."""
    text = str(path)
    if SERIES_SEPARATOR in text:
        folder, selector = text.rsplit(SERIES_SEPARATOR, 1)
        return Path(folder), selector.strip() or None
    return Path(text), None


def dicom_series_files(folder: Path, selector: str | None = None, *, patient_id: str | None = None,
                       role: str = "image") -> list[str]:
    """The files of the one DICOM series meant: the only one in the folder, or the one whose SeriesInstanceUID or
    SeriesDescription equals ``selector``, or else whose SeriesDescription contains it (case-insensitive). Anything
    ambiguous is refused with the series found, never resolved by taking the first."""
    reader = sitk.ImageSeriesReader()
    uids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not uids:
        raise InputError(f"{role} folder contains no DICOM series", patient_id=patient_id, path=folder,
                         fix="point at the folder holding the series' files")
    series = {}
    for uid in uids:
        files = list(reader.GetGDCMSeriesFileNames(str(folder), uid))
        header = sitk.ImageFileReader()
        header.SetFileName(files[0])
        header.LoadPrivateTagsOff()
        header.ReadImageInformation()
        description = header.GetMetaData("0008|103e").strip() if header.HasMetaDataKey("0008|103e") else ""
        series[uid] = (description, files)
    if selector is None and len(series) == 1:
        return series[uids[0]][1]
    # a UID or a whole description first: with series "T1" and "T1 post", "T1" must name the first, not both
    chosen = [uid for uid in uids if selector is not None and (
        uid == selector or selector.strip().lower() == series[uid][0].lower())]
    if not chosen:
        chosen = [uid for uid in uids if selector is not None and selector.lower() in series[uid][0].lower()]
    listing = "; ".join(f"{uid} '{d}' ({len(f)} images)" for uid, (d, f) in series.items())
    if len(chosen) != 1:
        what = ("no series matches" if selector is not None and not chosen else
                "several series match" if selector is not None else f"the folder holds {len(series)} series")
        raise InputError(f"{role}: {what} {selector!r} ({listing})" if selector is not None else
                         f"{role}: {what} ({listing})", patient_id=patient_id, path=folder,
                         fix=f"name the series: <folder>{SERIES_SEPARATOR}<SeriesInstanceUID or words of its "
                             "description>, e.g. study/::T1 post contrast")
    return series[chosen[0]][1]


def series_identity(path: str | Path, *, patient_id: str | None = None, role: str = "image") -> dict[str, str]:
    """What the header of the DICOM series ``path`` names (a folder, optionally ``folder::selector``) says about
    whose it is and what it is, the fields it gives: ``patient`` (PatientID), ``frame`` (FrameOfReferenceUID),
    ``description``, ``protocol`` and ``sequence`` (SeriesDescription, ProtocolName, SequenceName) and
    ``contrast_agent`` (ContrastBolusAgent); empty for an image file (NIfTI, NRRD), which carries none."""
    folder, selector = split_series_selector(path)
    if not folder.is_dir():
        return {}
    header = sitk.ImageFileReader()
    header.SetFileName(dicom_series_files(folder, selector, patient_id=patient_id, role=role)[0])
    header.LoadPrivateTagsOff()
    header.ReadImageInformation()
    tags = {"patient": "0010|0020", "frame": "0020|0052", "description": "0008|103e", "protocol": "0018|1030",
            "sequence": "0018|0024", "contrast_agent": "0018|0010"}
    values = {key: header.GetMetaData(tag).strip() for key, tag in tags.items() if header.HasMetaDataKey(tag)}
    return {key: value for key, value in values.items() if value}


def check_series_owners(owners: Mapping[str, str], patient_id: str, paths: Mapping[str, str | Path | None], *,
                        foreign_ids: Collection[str] | None = ()) -> None:
    """Refuse DICOM series of another patient: series of one patient with different PatientIDs, and a series whose
    PatientID says it is someone else's.

    Which PatientID is someone else's depends on who names the patient. ``predict`` and ``segment`` of one
    patient (``foreign_ids`` None) are run at the clinic's PACS, where the ID given is the hospital's, the one the
    DICOM carries: any other PatientID is refused. A cohort's manifest may name its patients by pseudonyms while
    the DICOM still carries the hospital's IDs (a pseudonymised research cohort), so there a PatientID differing
    from the row's ID is no sign of a mix-up; one that is another row's ID (``foreign_ids``: the manifest's IDs)
    is: the row points at another patient of the same cohort. An anonymised series without PatientID passes.

    Parameters
    ----------
    owners : mapping of str to str
        Sequence name (``t1c`` first: the reference) to the PatientID its series carries, for series that have one.
    patient_id : str
        The patient's ID: ``--patient-id`` or the manifest row's.
    paths : mapping of str to path
        Sequence name to the path given, named in the error.
    foreign_ids : collection of str, optional
        PatientIDs that make a series another patient's; None: every ID but ``patient_id``. The default (none)
        checks only that the series of one patient agree.
    """
    names = list(owners)
    other = next((name for name in names if owners[name] != owners[names[0]]), None)
    if other is not None:
        raise InputError(f"the {other} series belongs to patient {owners[other]!r}, the {names[0]} series to "
                         f"{owners[names[0]]!r}", patient_id=patient_id, path=paths.get(other),
                         fix=f"give this patient's own {other} series")
    for name, found in owners.items():
        if found == patient_id:
            continue
        if foreign_ids is None:
            raise InputError(f"the {name} series belongs to patient {found!r} (its PatientID), not to {patient_id!r}",
                             patient_id=patient_id, path=paths.get(name),
                             fix=f"pass {patient_id}'s own {name} series, or --patient-id {found} if the scan is that "
                                 "patient's")
        if found in foreign_ids:
            raise InputError(f"the {name} series belongs to patient {found!r} (its PatientID), another patient of "
                             "the manifest", patient_id=patient_id, path=paths.get(name), column=name,
                             fix=f"correct the {name} path in {patient_id}'s row: it points at {found}'s series")


#: Slice gaps of one series may differ from their median by this share (rounding of the positions in the headers).
SLICE_GAP_TOLERANCE = 0.1
#: Header fields every image of one series must share.
SHARED_TAGS = ("PixelSpacing", "FrameOfReferenceUID", "PatientID")


def check_series_slices(files: list[str], *, patient_id: str | None = None, path: str | Path | None = None,
                        role: str = "image") -> None:
    """Refuse a DICOM series whose slices do not form one evenly spaced stack.

    SimpleITK's series reader assembles such a series anyway and only prints a warning: a missing slice gives the
    volume one slice less and a spacing averaged over the gap, a duplicate position (two echoes or a repeated
    acquisition under one SeriesInstanceUID) a spacing a third as large, a stray slice of another orientation a
    volume through both. Every voxel would then sit in the wrong place, so the headers are checked first: one
    orientation, pixel spacing, frame of reference and patient (:data:`SHARED_TAGS`), gaps along the slice normal
    within :data:`SLICE_GAP_TOLERANCE` of their median and no slice drifting that far from an even stack, and
    positions that step along the normal only (no gantry tilt). A single
    (multi-frame) file, or files without position tags, are left to the reader.
    """
    import pydicom

    if len(files) < 2:
        return
    positions, orientations = [], []
    shared: dict[str, dict[str, str]] = {tag: {} for tag in SHARED_TAGS}
    for name in files:
        try:
            header = pydicom.dcmread(name, stop_before_pixels=True,
                                     specific_tags=["ImagePositionPatient", "ImageOrientationPatient", *SHARED_TAGS])
            if "ImagePositionPatient" not in header or "ImageOrientationPatient" not in header:
                return
            positions.append([float(v) for v in header.ImagePositionPatient])
            orientations.append([float(v) for v in header.ImageOrientationPatient])
            for tag in SHARED_TAGS:
                value = header.get(tag)
                if value not in (None, ""):  # spacings compared as numbers: "0.90" and "0.9" are one spacing
                    text = (str([round(float(v), 4) for v in value]) if tag == "PixelSpacing" else str(value).strip())
                    shared[tag].setdefault(text, name)
        except Exception:  # noqa: BLE001 - a header pydicom cannot read is left to SimpleITK's reader, which reports it
            return
    orientation = np.asarray(orientations)
    fix = ("export the series again, whole, from the scanner or PACS; if the folder holds several volumes, give each "
           "its own folder or name the one meant with <folder>::<SeriesInstanceUID or description>")
    for tag, values in shared.items():
        if len(values) > 1:
            # the reader takes the first file's pixel spacing for every slice, and a slice of another patient or
            # frame of reference does not belong to this volume at all
            (first, first_file), (other, other_file) = list(values.items())[:2]
            raise InputError(f"{role}: the DICOM series mixes {tag} values ({Path(first_file).name}: {first}; "
                             f"{Path(other_file).name}: {other})", patient_id=patient_id, path=path, fix=fix)
    if np.abs(orientation - orientation[0]).max() > 1e-3:
        odd = int(np.argmax(np.abs(orientation - orientation[0]).max(axis=1)))
        raise InputError(f"{role}: the DICOM series mixes slice orientations ({Path(files[odd]).name} is not oriented "
                         f"as {Path(files[0]).name})", patient_id=patient_id, path=path, fix=fix)
    normal = np.cross(orientation[0, :3], orientation[0, 3:])
    points = np.asarray(positions)[np.argsort(np.asarray(positions) @ normal)]
    along = points @ normal
    distinct = len(np.unique(np.round(along, 2)))
    if distinct < len(along):
        raise InputError(f"{role}: the {len(files)} DICOM images of the series lie at {distinct} slice positions: it "
                         "holds more than one volume (echoes, time points or a repeated acquisition)",
                         patient_id=patient_id, path=path, fix=fix)
    gaps = np.diff(along)
    step = float(np.median(gaps))
    uneven = np.flatnonzero(np.abs(gaps - step) > SLICE_GAP_TOLERANCE * step)
    if uneven.size:
        k = int(uneven[0])
        what = "a slice is missing" if gaps[k] > step else "the slices are unevenly spaced"
        raise InputError(f"{role}: {what} in the DICOM series: {gaps[k]:.2f} mm between the slices at "
                         f"{along[k]:.2f} and {along[k + 1]:.2f} mm along the slice normal, where the series steps "
                         f"{step:.2f} mm ({uneven.size} such gap(s) among {len(files)} images)",
                         patient_id=patient_id, path=path, fix=fix)
    # the reader spreads the first-to-last distance evenly over the slices: gaps each within tolerance can still
    # add up to a slice far from where the grid puts it
    uniform = along[0] + np.arange(len(along)) * (along[-1] - along[0]) / (len(along) - 1)
    drift = np.abs(along - uniform)
    if drift.max() > SLICE_GAP_TOLERANCE * step:
        k = int(np.argmax(drift))
        raise InputError(f"{role}: the slices of the DICOM series are unevenly spaced: the slice at {along[k]:.2f} mm "
                         f"along the slice normal lies {drift[k]:.2f} mm from where an evenly spaced stack puts it",
                         patient_id=patient_id, path=path, fix=fix)
    # the reader places slices along the normal of the first one: a stack whose positions also step within the
    # slice plane (gantry tilt, a sheared reconstruction) would have every voxel displaced
    steps = np.diff(points, axis=0)
    sideways = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
    if sideways.max() > SLICE_GAP_TOLERANCE * step:
        raise InputError(f"{role}: the slices of the DICOM series step {sideways.max():.2f} mm sideways for every "
                         f"{step:.2f} mm along their normal (gantry tilt or a sheared stack): placed as a straight "
                         "stack, every voxel would be displaced", patient_id=patient_id, path=path,
                         fix="resample the series to a straight (untilted) stack in the scanner console or with a "
                             "tilt-correcting converter (dcm2niix corrects gantry tilt) and give that file")
