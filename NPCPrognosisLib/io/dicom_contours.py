"""What the clinic's two contour formats (RT Structure Set, DICOM SEG) share: ROI names mapped to GTVp/GTVn,
and the CET1W series a file written for it refers to.

Contours arrive named by whoever drew them ("GTVnx", "GTV-P", "GTVnd"...): one case-insensitive name map takes an
RTSTRUCT's ROIs, a SEG's segments and Slicer's segments to GTVp/GTVn, and what it did not use is reported. Automatic
contours written back (:mod:`~NPCPrognosisLib.io.rtstruct`, :mod:`~NPCPrognosisLib.io.dicom_seg`) reference the
source series: filed with its patient and study, on its frame of reference, one source image per slice of the mask.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib import __version__
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.dicom_series import dicom_series_files, split_series_selector

#: Default ROI names per structure (case-insensitive shell patterns, alternatives separated by '|').
#: Names of the primary's and the nodes' structures as planning systems and radiologists write them; a structure in
#: numbered or sided pieces (GTVn_L and GTVn_R, GTVn1 and GTVn2) is their union. Exact forms only: a planning
#: structure built from a GTV (GTVp_ring, GTVp_PRV, GTVn-CTV, GTVnx_exp) is not the GTV. GTVp is tried first, so GTVnx
#: (the nasopharynx's GTV) is the primary although it starts like GTVn.
_PIECES = ("", "[0-9]", "[0-9][0-9]", "[-_ ][0-9]", "[-_ ][0-9][0-9]")
_SIDES = ("[lr]", "[-_ ][lr]", "[-_ ][lr][0-9]", "[-_ ][lr][-_ ][0-9]", "[-_ ]left", "[-_ ]right")
DEFAULT_ROI_MAP = {
    "GTVp": "|".join([*(f"{stem}{piece}" for stem in ("gtvp", "gtv-p", "gtv_p", "gtvnx", "gtv-nx", "gtv_nx")
                        for piece in _PIECES), "gtv primary", "gtv_primary"]),
    "GTVn": "|".join([*(f"{stem}{piece}" for stem in ("gtvn", "gtv-n", "gtv_n", "gtvnd", "gtv-nd", "gtv_nd")
                        for piece in (*_PIECES, *_SIDES)), "gtv*node*", "gtvln", "gtv-ln"]),
}


class ContoursNotWritten(InputError):
    """The CET1W series is of a kind no DICOM SEG or RTSTRUCT is written for: the mask itself is still good."""


def dicom_modality(path: str | Path) -> str | None:
    """The Modality of a single DICOM file (``RTSTRUCT``, ``SEG``, read without pixel data); None for anything else
    (a NIfTI or NRRD file, a folder)."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        head = handle.read(132)
    if head[128:132] != b"DICM":
        return None
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", "")) or None


def parse_roi_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``GTVp=GTVnx,GTVn=GTVnd|GTV_LN*`` (or a mapping) -> {structure: patterns}; defaults for what is not given."""
    mapping = dict(DEFAULT_ROI_MAP)
    if spec:
        items = spec.items() if isinstance(spec, Mapping) else (part.split("=", 1) for part in str(spec).split(","))
        for item in items:
            item = list(item)
            if len(item) != 2 or item[0].strip() not in DEFAULT_ROI_MAP:
                raise InputError(f"ROI map entry {'='.join(item)!r} is not GTVp=<names> or GTVn=<names>",
                                 column="--roi-map", fix="write e.g. --roi-map GTVp=GTVnx,GTVn=GTVnd|GTV_LN*")
            mapping[item[0].strip()] = item[1].strip()
    return mapping


def _matches(name: str, patterns: str) -> bool:
    return any(fnmatch.fnmatch(name.strip().lower(), p.strip().lower()) for p in patterns.split("|") if p.strip())


def roi_structure(name: str, mapping: Mapping[str, str]) -> str | None:
    """Which structure (``GTVp``, ``GTVn``) a ROI, SEG segment or Slicer segment of this name is, by a mapping of
    :func:`parse_roi_map`; None for neither. The one rule for every place contours arrive by name."""
    return next((structure for structure, patterns in mapping.items() if _matches(name, patterns)), None)


#: Patient and General Study attributes of type 2 (present, empty when unknown) a SEG or RTSTRUCT copies from the
#: series it was drawn on, so the PACS or planning system files it with that patient's study.
STUDY_TAGS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
              "StudyTime", "ReferringPhysicianName")
#: How every DICOM object written for a CET1W series describes itself and its maker (RT Series / SEG series,
#: General Equipment).
SERIES_DESCRIPTION = "NPCPrognosis automatic GTVp/GTVn (research software)"
#: How each structure came about, in the terms a SEG (SegmentAlgorithmType) and an RTSTRUCT (ROIGenerationAlgorithm)
#: share: the network's contour as it drew it, its contour corrected by hand, or one drawn by hand where it drew none.
ORIGINS = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
EDITED_SERIES_DESCRIPTION = "NPCPrognosis GTVp/GTVn, edited by hand (research software)"


def contour_origins(origins: Mapping[int, str] | None, labels: Sequence[int]) -> dict[int, str]:
    """Each label's origin (:data:`ORIGINS`), AUTOMATIC where none is given: what ``segment`` writes.

    A planning system and a PACS show the origin beside the structure, and a radiologist's corrected contour must not
    be filed as the network's own (nor the network's as reviewed).

    Parameters
    ----------
    origins : mapping of int to str, optional
        Label (1 = GTVp, 2 = GTVn) to one of :data:`ORIGINS`.
    labels : sequence of int
        The labels the file holds.

    Returns
    -------
    dict of int to str
    """
    given = {int(k): str(v).upper() for k, v in (origins or {}).items()}
    unknown = sorted(set(given.values()) - set(ORIGINS))
    if unknown:
        raise ValueError(f"unknown contour origin {unknown[0]!r}: use one of {', '.join(ORIGINS)}")
    return {int(label): given.get(int(label), "AUTOMATIC") for label in labels}


def series_description(origins: Mapping[int, str]) -> str:
    """The series description (64 characters at most, DICOM LO): automatic only when every structure is."""
    return SERIES_DESCRIPTION if set(origins.values()) <= {"AUTOMATIC"} else EDITED_SERIES_DESCRIPTION
EQUIPMENT = {"Manufacturer": "NPCPrognosis", "ManufacturerModelName": "NPCPrognosis", "SoftwareVersions": __version__}
#: How far (in voxels) a source image's first pixel may lie from the mask's slice it stands for.
SLICE_MATCH_TOLERANCE = 0.1


def source_images(mask: sitk.Image, source: str | Path, what: str, *, patient_id: str | None,
                  pixels: bool = True) -> tuple[list[Any], Path]:
    """The single-frame images of the CET1W series ``source`` names, checked for a SEG or RTSTRUCT (``what``) of
    ``mask``: one image per slice of the mask, with a study and a frame of reference (:data:`STUDY_TAGS` filled in
    empty where an anonymiser dropped them).

    Parameters
    ----------
    mask : SimpleITK.Image
        The labels the file is written for, on the grid the series reads as.
    source : path
        The CET1W series: a folder, or ``folder::selector``.
    what : str
        The kind of file (``DICOM SEG``, ``RTSTRUCT``), named in errors.
    patient_id : str or None
        Named in errors.
    pixels : bool
        Read the pixel data too (False: headers only, all an RTSTRUCT's references need).

    Returns
    -------
    images : list of pydicom.Dataset
        In the series' file order (headers only unless ``pixels``).
    folder : Path
        The series' folder, named in errors.
    """
    import pydicom

    folder, selector = split_series_selector(source)
    images = [pydicom.dcmread(f, stop_before_pixels=not pixels)
              for f in dicom_series_files(folder, selector, patient_id=patient_id, role="t1c")]
    if len(images) == 1 and int(images[0].get("NumberOfFrames", 1)) > 1:
        raise ContoursNotWritten(f"no {what} is written for an enhanced (multi-frame) CET1W series: its frames would "
                                 "have to be matched one by one", patient_id=patient_id, path=folder,
                                 fix=f"use the NIfTI mask, or export the CET1W as single-frame images for a {what}")
    depth = mask.GetSize()[2]
    if depth != len(images):
        raise InputError(f"the mask has {depth} slices but the series {len(images)} images",
                         patient_id=patient_id, path=folder,
                         fix=f"write the {what} from the mask segment produced for this series")
    absent = [tag for tag in ("StudyInstanceUID", "FrameOfReferenceUID") if not images[0].get(tag)]
    if absent:  # a SEG or RTSTRUCT is placed in its study and on its frame of reference: without them it cannot be made
        raise ContoursNotWritten(f"no {what} is written: the CET1W series has no {' or '.join(absent)} (anonymised?)",
                                 patient_id=patient_id, path=folder, fix="use the NIfTI mask, or export the series "
                                                                         "with its study and frame of reference")
    for image in images:  # anonymisers drop these type-2 attributes; they are copied, empty where unknown
        for tag in STUDY_TAGS:
            if tag not in image:
                setattr(image, tag, "")
    return images, folder


def _images_by_slice(mask: sitk.Image, images: Sequence[Any], *, patient_id: str | None,
                     folder: Path) -> list[Any]:
    """The source image lying on each slice of ``mask``, found by its ImagePositionPatient (not by file order):
    a contour's ContourImageSequence must name the image whose plane it was drawn on, whichever way the slices run.
    A mask whose slices the series' images do not lie on (another series' grid of as many slices) is refused."""
    origin, spacing = np.array(mask.GetOrigin()), np.array(mask.GetSpacing())
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    by_slice: dict[int, Any] = {}
    for image in images:
        index = ((np.asarray(image.ImagePositionPatient, float) - origin) @ direction) / spacing
        k = int(round(index[2]))
        if np.any(np.abs(index - [0, 0, k]) > SLICE_MATCH_TOLERANCE) or not 0 <= k < len(images) or k in by_slice:
            raise InputError(f"the image {image.SOPInstanceUID} of the series does not lie on a slice of the mask "
                             f"(its first pixel is at voxel {np.round(index, 2).tolist()} of the mask)",
                             patient_id=patient_id, path=folder,
                             fix="write the RTSTRUCT from the mask segment produced for this series")
        by_slice[k] = image
    return [by_slice[k] for k in range(len(images))]


@dataclass(frozen=True)
class StructureSetReference:
    """What an RT Structure Set is drawn on: the patient and study it belongs to, its frame of reference and, when
    the series is known, the image on each slice of the mask (PS3.3 C.8.8.5 and C.8.8.6)."""

    #: Patient and General Study attributes (StudyInstanceUID, :data:`STUDY_TAGS`, StudyDescription when the series
    #: has one), copied into the file.
    study: dict[str, Any]
    frame_of_reference_uid: str
    position_reference: str = ""
    series_instance_uid: str | None = None
    #: (SOPClassUID, SOPInstanceUID) of the image on each slice of the mask; empty when drawn on no known series.
    images: tuple[tuple[str, str], ...] = ()
    character_set: Any = None


def structure_set_reference(mask: sitk.Image, source: str | Path | None = None, *, patient_id: str | None = None,
                            frame_of_reference_uid: str | None = None) -> StructureSetReference:
    """The patient, study, frame of reference and images an RT Structure Set of ``mask`` refers to.

    Parameters
    ----------
    mask : SimpleITK.Image
        Labels on the grid :func:`~NPCPrognosisLib.io.images.read_image` reads from ``source``.
    source : path, optional
        The CET1W DICOM series (a folder, or ``folder::selector``) the mask was drawn on. Without it the structure
        set stands alone (a synthetic test input): a new study, named by ``patient_id``, and no images referenced.
    patient_id : str, optional
        The standalone structure set's PatientID and PatientName; named in errors.
    frame_of_reference_uid : str, optional
        The standalone structure set's frame of reference (new UID when unknown); a series brings its own.

    Returns
    -------
    StructureSetReference
    """
    from pydicom.uid import generate_uid

    if source is None:
        study = dict.fromkeys(STUDY_TAGS, "") | {"PatientID": str(patient_id or ""),
                                                 "PatientName": str(patient_id or ""),
                                                 "StudyInstanceUID": generate_uid()}
        return StructureSetReference(study=study, frame_of_reference_uid=frame_of_reference_uid or generate_uid())
    if frame_of_reference_uid is not None:
        raise ValueError("a structure set of a DICOM series takes the series' frame of reference: give one or the "
                         "other")
    images, folder = source_images(mask, source, "RTSTRUCT", patient_id=patient_id, pixels=False)
    first = images[0]
    return StructureSetReference(
        study={tag: first.get(tag) for tag in ("StudyInstanceUID", *STUDY_TAGS, "StudyDescription")
               if tag in first},
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        position_reference=str(first.get("PositionReferenceIndicator", "") or ""),
        series_instance_uid=str(first.SeriesInstanceUID),
        images=tuple((str(image.SOPClassUID), str(image.SOPInstanceUID))
                     for image in _images_by_slice(mask, images, patient_id=patient_id, folder=folder)),
        character_set=first.get("SpecificCharacterSet"))

