"""DICOM RT Structure Sets in and out.

Contours drawn in a treatment-planning system arrive as an RT Structure Set: closed planar polygons in patient
coordinates (mm, LPS, the same physical space as SimpleITK), one list per ROI. They are rasterised here onto the CET1W
grid with pydicom and matplotlib's polygon test (a voxel is inside when its centre is; polygons of one ROI on one slice
combine even-odd, so holes stay holes), and mapped to GTVp/GTVn by the ROI name map of
:mod:`~NPCPrognosisLib.io.dicom_contours`. Automatic contours go back to a planning system as an RT Structure Set
(pydicom) referencing the source series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.contract import LABELS, SEGMENTS
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.dicom_contours import (
    EQUIPMENT,
    StructureSetReference,
    contour_origins,
    parse_roi_map,
    roi_structure,
    series_description,
    structure_set_reference,
)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def _contour_index(points_lps: np.ndarray, reference: sitk.Image) -> tuple[np.ndarray | None, str | None]:
    """A polygon's points as continuous (i, j, k) indices of ``reference``, or None and why not: ``"tilted"`` when
    it is not parallel to the slices (its k spreads over more than half a slice), ``"outside"`` when it lies beyond
    the first or last slice."""
    spacing = np.array(reference.GetSpacing())
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    index = ((points_lps - np.array(reference.GetOrigin())) @ direction) / spacing
    depth = reference.GetSize()[2]
    if np.ptp(index[:, 2]) > 0.5:
        return None, "tilted"
    if not -0.5 <= float(index[:, 2].mean()) < depth - 0.5:
        return None, "outside"
    return index, None


def _fill(index: np.ndarray, layer: np.ndarray) -> None:
    """XOR one closed polygon (continuous indices) into one slice ``layer`` (y, x): even-odd, so holes drawn as
    inner polygons of the same plane come out."""
    from matplotlib.path import Path as Polygon

    lo = np.maximum(np.floor(index[:, :2].min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(index[:, :2].max(axis=0)).astype(int), [layer.shape[1] - 1, layer.shape[0] - 1])
    if np.any(hi < lo):
        return
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
    inside = Polygon(index[:, :2]).contains_points(np.column_stack([ii.ravel(), jj.ravel()]))
    layer[lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] ^= inside.reshape(ii.shape)


#: Polygons whose mean slice positions lie this close (in reference slices) are on one contour plane: the points
#: are rounded in the file, so the outline and the hole of one plane can average a hundredth of a slice apart.
PLANE_TOLERANCE = 0.05


def _contour_planes(polygons: list[np.ndarray]) -> tuple[np.ndarray, float | None]:
    """The positions of the planes the contours were drawn on, in reference slices, ascending, and their typical
    spacing (None for one plane).

    Polygons share a plane when the slice depths their points span overlap, or lie within :data:`PLANE_TOLERANCE`
    of each other (grouped, not rounded, so no plane splits in two): contours drawn on a series tilted a degree or
    two against this one put an outline and its hole a tenth of a slice apart, but the outline spans the hole's depth.
    """
    if not polygons:
        return np.empty(0), None
    spans = sorted((float(index[:, 2].mean()), float(index[:, 2].min()), float(index[:, 2].max()))
                   for index in polygons)
    groups: list[list[float]] = []
    reach = -np.inf
    for mean, low, high in spans:
        if groups and low - PLANE_TOLERANCE <= reach:
            groups[-1].append(mean)
            reach = max(reach, high)
        else:
            groups.append([mean])
            reach = high
    planes = np.array([np.mean(group) for group in groups])
    return planes, (float(np.median(np.diff(planes))) if len(planes) > 1 else None)


def _rasterise_planes(polygons: list[np.ndarray], layer: np.ndarray, planes: np.ndarray,
                      step: float | None) -> tuple[int, int]:
    """Each slice of ``layer`` (z, y, x) takes the polygons of the contour plane nearest its centre.

    ``planes`` and their ``step`` are the structure set's (all its ROIs, :func:`_contour_planes`): a plane without a
    contour of this ROI is still a plane, so a slice nearest to it stays empty. A slice takes a plane within half a
    slice when the planes are one slice apart, else within half the planes' spacing: each plane stands for the slab
    around it (half-open, so planes half a slice off the slice centres give no slice twice), as nearest-neighbour
    resampling of a label map reads it. Coarser planes (contours drawn every third slice, or on
    a planning CT's thicker slices) then fill the slices between them. Finer planes (a planning CT's 1 mm slices on
    a 3 mm MR) give a slice several planes: XOR across them would cancel an even number of copies of one outline,
    and their union would thicken the structure by up to a slice, so the nearest plane samples the structure at the
    slice centre.

    Returns
    -------
    unused, filled_between : int
        Polygons on planes no slice took, and slices filled from a plane more than half a slice away.
    """
    if not polygons:
        return 0, 0
    # planes one slice apart: each slice takes the plane within half a slice; finer or coarser planes: a slice
    # takes the plane whose slab (half the planes' spacing each side) holds its centre
    reach = 0.5 if step is None or abs(step - 1.0) <= 2 * PLANE_TOLERANCE else step / 2
    on_plane: dict[int, list[np.ndarray]] = {}
    for index in polygons:
        on_plane.setdefault(int(np.argmin(np.abs(planes - index[:, 2].mean()))), []).append(index)
    used: set[int] = set()
    filled_between = 0
    for k in range(layer.shape[0]):
        nearest = int(np.argmin(np.abs(planes - k)))
        offset = float(planes[nearest]) - k
        if nearest not in on_plane or not -reach <= offset < reach:
            continue
        used.add(nearest)
        filled_between += abs(offset) > 0.5
        for index in on_plane[nearest]:
            _fill(index, layer[k])
    return sum(len(group) for j, group in on_plane.items() if j not in used), filled_between


def read_rtstruct(path: str | Path, reference: sitk.Image, roi_map: str | Mapping[str, str] | None = None, *,
                  patient_id: str | None = None) -> tuple[sitk.Image, dict[str, Any]]:
    """An RT Structure Set as a label map (1 = GTVp, 2 = GTVn) on ``reference``'s grid.

    Parameters
    ----------
    path : path
        The RTSTRUCT file.
    reference : SimpleITK.Image
        The CET1W image whose grid receives the contours.
    roi_map : str or mapping, optional
        Which ROI names are GTVp and GTVn (see :func:`~NPCPrognosisLib.io.dicom_contours.parse_roi_map`).

    Returns
    -------
    mask : SimpleITK.Image
        uint8 labels on the reference grid.
    report : dict
        ``matched`` {structure: [ROI names]}, ``unmatched`` [ROI names no structure took], ``skipped_contours``
        (polygons beyond the first or last slice, or not closed planar; polygons not parallel to the slices stop the
        read), ``contours_between_slices`` (polygons
        of contour planes finer than the grid that no slice took: each slice takes the plane nearest its centre),
        ``slices_from_nearest_plane`` (slices between coarser contour planes, filled from the nearest one),
        ``frames_of_reference`` (the FrameOfReferenceUIDs the used ROIs were drawn in).
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a damaged file
        raise InputError(f"RTSTRUCT cannot be read ({exc})", patient_id=patient_id, path=path,
                         fix="export the structure set again") from None
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise InputError(f"not an RTSTRUCT (modality {ds.get('Modality', '?')})", patient_id=patient_id, path=path,
                         fix="pass the RT Structure Set file exported with the plan")
    mapping = parse_roi_map(roi_map)
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in ds.get("StructureSetROISequence", [])}
    shape = sitk.GetArrayViewFromImage(reference).shape
    labels = np.zeros(shape, np.uint8)
    matched: dict[str, list[str]] = {s["name"]: [] for s in SEGMENTS}
    unmatched, between = [], 0
    skipped = {s["name"]: 0 for s in SEGMENTS}  # contours beyond the first or last slice (or not closed planar)
    tilted = {s["name"]: 0 for s in SEGMENTS}
    rois: list[tuple[str, list[np.ndarray]]] = []
    by_label = {s["label"]: s["name"] for s in SEGMENTS}
    for roi in ds.get("ROIContourSequence", []):
        name = names.get(int(roi.ReferencedROINumber), f"ROI {roi.ReferencedROINumber}")
        structure = roi_structure(name, mapping)
        if structure is None:
            unmatched.append(name)
            continue
        matched[structure].append(name)
        polygons = []
        for contour in roi.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) not in ("CLOSED_PLANAR", "") \
                    or len(points) < 3:
                skipped[structure] += 1
                continue
            index, why = _contour_index(points, reference)
            if why == "tilted":
                tilted[structure] += 1
            elif why == "outside":
                skipped[structure] += 1
            else:
                polygons.append(index)
        rois.append((structure, polygons))
    if not matched["GTVp"]:
        raise InputError(f"no ROI of the structure set is GTVp (ROIs: {sorted(names.values())})",
                         patient_id=patient_id, path=path,
                         fix="name the primary's ROI with --roi-map GTVp=<its name> (e.g. GTVp=GTV_T)")
    crossing = {structure: n for structure, n in tilted.items() if n}
    if crossing:
        # a tilted outline dropped beside its hole kept would leave the hole as the structure: none is guessed
        raise InputError(f"{', '.join(f'{n} {s} contour(s)' for s, n in crossing.items())} are not parallel to the "
                         "slices of the image (each spreads over more than half a slice): the structure set was "
                         "drawn on another orientation or on a series tilted against this one",
                         patient_id=patient_id, path=path,
                         fix="export the structure set drawn on this CET1W series, or resample it onto this series "
                             "in the planning system first")
    planes, step = _contour_planes([index for _structure, polygons in rois for index in polygons])
    filled = 0
    for structure, polygons in rois:
        layer = np.zeros(shape, bool)
        unused, between_slices = _rasterise_planes(polygons, layer, planes, step)
        between, filled = between + unused, filled + between_slices
        label = LABELS["gtvp"] if structure == "GTVp" else LABELS["gtvn"]
        labels[layer & ((labels == 0) | (label == LABELS["gtvp"]))] = label  # GTVp wins where they overlap
    if not (labels == LABELS["gtvp"]).any() and skipped["GTVp"]:
        # every contour of the primary was off the slices: "GTVp is empty" would send the user to contour it again
        raise InputError(f"none of the GTVp contours ({', '.join(matched['GTVp'])}) lies on a slice of the image: "
                         f"{skipped['GTVp']} contour(s) lie beyond its first or last slice",
                         patient_id=patient_id, path=path,
                         fix="export the structure set drawn on this CET1W series, or a CET1W covering the tumour")
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(reference)
    used = {name for names_ in matched.values() for name in names_}
    frames = {str(roi.ReferencedFrameOfReferenceUID) for roi in ds.get("StructureSetROISequence", [])
              if str(roi.ROIName) in used and roi.get("ReferencedFrameOfReferenceUID")}
    report = {"matched": matched, "unmatched": unmatched, "skipped_contours": sum(skipped.values()),
              "contours_between_slices": between, "slices_from_nearest_plane": filled,
              "labels": {str(k): v for k, v in by_label.items()},
              "frames_of_reference": sorted(frames)}
    return mask, report


def _slice_polygons(slice_mask: np.ndarray) -> list[np.ndarray]:
    """Closed polygons (x, y in voxel indices) around the voxels of one slice, through the edge midpoints."""
    import contourpy

    padded = np.pad(slice_mask.astype(float), 1)
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    return [line - 1.0 for line in generator.lines(0.5) if len(line) >= 3]


#: Referenced SOP Class of an RT Structure Set's RTReferencedStudySequence (Detached Study Management, PS3.3 C.8.8.5).
DETACHED_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"


def _image_items(images: Sequence[tuple[str, str]]) -> Any:
    """A ContourImageSequence naming ``images`` ((SOPClassUID, SOPInstanceUID) each)."""
    import pydicom
    from pydicom.sequence import Sequence as DicomSequence

    items = []
    for sop_class, sop_instance in images:
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        items.append(item)
    return DicomSequence(items)


def _referenced_frame(reference: StructureSetReference) -> Any:
    """The Structure Set's ReferencedFrameOfReferenceSequence: the frame and, for a known series, the study, the
    series and every image of it (what a planning system attaches the structure set to)."""
    import pydicom
    from pydicom.sequence import Sequence as DicomSequence

    frame = pydicom.Dataset()
    frame.FrameOfReferenceUID = reference.frame_of_reference_uid
    if reference.images:
        series = pydicom.Dataset()
        series.SeriesInstanceUID = reference.series_instance_uid
        series.ContourImageSequence = _image_items(reference.images)
        study = pydicom.Dataset()
        study.ReferencedSOPClassUID = DETACHED_STUDY_SOP_CLASS
        study.ReferencedSOPInstanceUID = reference.study["StudyInstanceUID"]
        study.RTReferencedSeriesSequence = DicomSequence([series])
        frame.RTReferencedStudySequence = DicomSequence([study])
    return DicomSequence([frame])


def write_rtstruct(mask: sitk.Image, path: str | Path, *, patient_id: str, source: str | Path | None = None,
                   frame_of_reference_uid: str | None = None, names: Mapping[int, str] | None = None,
                   origins: Mapping[int, str] | None = None) -> Path | None:
    """The label map as an RT Structure Set (one ROI per label it holds, one closed polygon per island and slice).

    With ``source`` it is the structure set a planning system imports onto the CET1W series: the patient and
    study copied from the series' images, its frame of reference, the series and every image of it referenced, and
    each contour naming the image it lies on. The series is taken as :func:`~NPCPrognosisLib.io.dicom_seg.write_seg`
    takes it, and refused for the same reasons (:class:`~NPCPrognosisLib.io.dicom_contours.ContoursNotWritten` for an
    enhanced series or one without study or frame-of-reference UID, :class:`~NPCPrognosisLib.errors.InputError` for a
    mask of another series). The structure set is UNAPPROVED: a
    clinician reviews automatic contours before they are used.

    Parameters
    ----------
    mask : SimpleITK.Image
        Labels (1 = GTVp, 2 = GTVn) on the image grid; contours are written in its physical space.
    path : path
        The RTSTRUCT file to write.
    patient_id : str
        Named in errors; without ``source`` also written as PatientID and PatientName.
    source : path, optional
        The CET1W DICOM series the mask was drawn on (a folder, or ``folder::selector``).
    frame_of_reference_uid : str, optional
        Without ``source``: the image series' frame of reference (new UID when unknown).
    names : mapping of int to str, optional
        ROI name per label (default GTVp, GTVn).
    origins : mapping of int to str, optional
        How each label came about (:data:`~NPCPrognosisLib.io.dicom_contours.ORIGINS`; default AUTOMATIC, the
        network's own): the ROI's ROIGenerationAlgorithm, and the series description.

    Returns
    -------
    pathlib.Path or None
        The file written; None when the mask holds no contour (an empty structure set would import as structures
        contoured and found empty), so nothing is written and a file an earlier run left at ``path`` is removed.
    """
    import datetime

    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from NPCPrognosisLib.io.atomic import atomic_path

    labels = sitk.GetArrayViewFromImage(mask)
    if not labels.any():
        Path(path).unlink(missing_ok=True)
        return None
    reference = structure_set_reference(mask, source, patient_id=patient_id,
                                        frame_of_reference_uid=frame_of_reference_uid)
    names = dict(names or {s["label"]: s["name"] for s in SEGMENTS})
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    if reference.character_set:
        ds.SpecificCharacterSet = reference.character_set
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for tag, value in reference.study.items():  # Patient and General Study modules
        setattr(ds, tag, value)
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), 301  # RT Series module
    # a ROI without contours would import as a structure contoured and empty (SlicerRT logs an error and skips it)
    present = [(label, name) for label, name in sorted(names.items()) if (labels == label).any()]
    origin = contour_origins(origins, [label for label, _ in present])
    ds.SeriesDate, ds.SeriesTime, ds.SeriesDescription = date, time, series_description(origin)
    ds.OperatorsName = ""
    for tag, value in EQUIPMENT.items():
        setattr(ds, tag, value)
    ds.FrameOfReferenceUID = reference.frame_of_reference_uid
    ds.PositionReferenceIndicator = reference.position_reference
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "NPCPrognosis", date, time
    ds.InstanceNumber = 1
    ds.ReferencedFrameOfReferenceSequence = _referenced_frame(reference)
    ds.ApprovalStatus = "UNAPPROVED"
    rois, contours, observations = [], [], []
    for number, (label, name) in enumerate(present, start=1):
        roi = pydicom.Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = reference.frame_of_reference_uid
        roi.ROIGenerationAlgorithm = origin[label]
        rois.append(roi)
        items = []
        for k in range(labels.shape[0]):
            for polygon in _slice_polygons(labels[k] == label):
                physical = [mask.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(k)))
                            for x, y in polygon[:-1]]  # closed: the last point repeats the first
                item = pydicom.Dataset()
                if reference.images:
                    item.ContourImageSequence = _image_items([reference.images[k]])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(physical)
                item.ContourData = [f"{v:.4f}" for point in physical for v in point]
                items.append(item)
        roi_contour = pydicom.Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = [int(255 * c) for c in next(
            (s["color"] for s in SEGMENTS if s["label"] == label), (1.0, 1.0, 0.0))]
        roi_contour.ContourSequence = DicomSequence(items)
        contours.append(roi_contour)
        observation = pydicom.Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.ROIObservationLabel = name
        observation.RTROIInterpretedType, observation.ROIInterpreter = "GTV", ""
        observations.append(observation)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return path


