"""DICOM SEG in and out (highdicom): contours to a PACS, referencing the CET1W series they were drawn
on, and a SEG (``segment``'s, Slicer's, a PACS viewer's) read back onto the CET1W slices it references.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib import __version__
from NPCPrognosisLib.contract import LABELS, SEGMENTS
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.dicom_contours import (
    EQUIPMENT,
    ContoursNotWritten,
    contour_origins,
    parse_roi_map,
    roi_structure,
    series_description,
    source_images,
)
from NPCPrognosisLib.io.dicom_series import dicom_series_files, split_series_selector


def write_seg(mask: sitk.Image, source: str | Path, path: str | Path, *, patient_id: str | None = None,
              origins: Mapping[int, str] | None = None) -> Path | None:
    """Contours as a DICOM SEG (highdicom) referencing the CET1W series they were drawn on.

    Parameters
    ----------
    mask : SimpleITK.Image
        Labels (1 = GTVp, 2 = GTVn) on the grid :func:`~NPCPrognosisLib.io.images.read_image` reads from
        ``source`` (one frame per source image, same order).
    source : path
        The CET1W series as the manifest names it: a folder, or ``folder::selector`` for one of several series.
    path : path
        The SEG file to write.
    patient_id : str, optional
        Named in errors.
    origins : mapping of int to str, optional
        How each label came about (:data:`~NPCPrognosisLib.io.dicom_contours.ORIGINS`; default AUTOMATIC, the
        network's own): the segment's SegmentAlgorithmType, and the series description.

    Returns
    -------
    pathlib.Path or None
        The file written; None when the mask holds no contour (a SEG must describe at least one segment), so
        nothing is written and a SEG an earlier run left at ``path`` is removed (it would contradict the mask).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from NPCPrognosisLib.io.atomic import atomic_path

    labels = sitk.GetArrayFromImage(mask)
    present = [s for s in SEGMENTS if (labels == s["label"]).any()]
    origin = contour_origins(origins, [s["label"] for s in present])
    if not present:
        Path(path).unlink(missing_ok=True)
        return None
    sources, folder = source_images(mask, source, "DICOM SEG", patient_id=patient_id)
    # what each segment is (a primary or a metastatic neoplasm: a morphologically abnormal structure, CID 7151) and
    # where (the nasopharynx, a lymph node): "Lymph node" as the type would describe the normal organ
    what = {"GTVp": (codes.SCT.NeoplasmPrimary, codes.SCT.Nasopharynx),
            "GTVn": (codes.SCT.NeoplasmMetastatic, codes.SCT.LymphNode)}
    descriptions = []
    for number, segment in enumerate(present, start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment["name"],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=what[segment["name"]][0], anatomic_regions=[what[segment["name"]][1]],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues(origin[segment["label"]]),
            # a contour drawn by hand names no algorithm (DICOM makes it optional only for MANUAL)
            algorithm_identification=None if origin[segment["label"]] == "MANUAL" else
            hd.AlgorithmIdentificationSequence(name="NPCPrognosis", version=__version__,
                                               family=codes.cid7162.ArtificialIntelligence)))
    pixel = np.zeros(labels.shape, np.uint8)
    for number, segment in enumerate(present, start=1):
        pixel[labels == segment["label"]] = number
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixel, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=300,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=EQUIPMENT["Manufacturer"],
            manufacturer_model_name=EQUIPMENT["ManufacturerModelName"],
            software_versions=EQUIPMENT["SoftwareVersions"], device_serial_number="0",
            series_description=series_description(origin))
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # headers highdicom cannot build a SEG from
        raise ContoursNotWritten(f"no DICOM SEG is written: the CET1W series' headers do not allow one ({exc})",
                                 patient_id=patient_id, path=folder, fix="use the NIfTI mask") from None
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return path


def read_seg(path: str | Path, reference: sitk.Image, series: str | Path,
             roi_map: str | Mapping[str, str] | None = None, *,
             patient_id: str | None = None) -> tuple[sitk.Image, dict[str, Any]]:
    """A DICOM SEG (``segment``'s, Slicer's, a PACS viewer's) as a label map (1 = GTVp, 2 = GTVn) on the CET1W grid.

    Each frame is placed on the CET1W slice whose SOPInstanceUID it references, so a SEG of another series is
    refused rather than laid onto this one by position in the file; slices without a frame are empty.

    Parameters
    ----------
    path : path
        The SEG file.
    reference : SimpleITK.Image
        The CET1W image, as :func:`~NPCPrognosisLib.io.images.read_image` read it from ``series``.
    series : path
        The CET1W DICOM series (a folder, or ``folder::selector``).
    roi_map : str or mapping, optional
        Which segment labels are GTVp and GTVn (:func:`~NPCPrognosisLib.io.dicom_contours.parse_roi_map`).
    patient_id : str, optional
        Named in errors.

    Returns
    -------
    mask : SimpleITK.Image
    report : dict
        ``matched`` {structure: [segment labels]} and ``unmatched`` [segment labels no structure took].
    """
    import highdicom as hd
    import pydicom

    path = Path(path)
    folder, selector = split_series_selector(series)
    if not folder.is_dir():
        raise InputError("a DICOM SEG is placed by the DICOM images it was drawn on, and the CET1W given is not a "
                         "DICOM series", patient_id=patient_id, path=path,
                         fix="give the CET1W as the DICOM series folder the SEG was drawn on, or the mask as a label "
                             "image (NIfTI/NRRD: 1 = GTVp, 2 = GTVn)")
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001 - highdicom and pydicom raise many types for a damaged file
        raise InputError(f"DICOM SEG cannot be read ({exc})", patient_id=patient_id, path=path,
                         fix="export the segmentation again") from None
    slices = [str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
              for f in dicom_series_files(folder, selector, patient_id=patient_id, role="t1c")]
    depth = sitk.GetArrayViewFromImage(reference).shape[0]
    if len(slices) != depth:  # an enhanced (multi-frame) CET1W is one image: its frames are not matched here
        raise InputError(f"a DICOM SEG is read onto single-frame images, one per slice; the CET1W series holds "
                         f"{len(slices)} image(s) for {depth} slices (an enhanced, multi-frame series)",
                         patient_id=patient_id, path=path,
                         fix="give the mask as a label image (NIfTI/NRRD), or the CET1W as single-frame images")
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    foreign = referenced - set(slices)
    if foreign:
        raise InputError(f"the DICOM SEG was drawn on other images: {len(foreign)} of the {len(referenced)} images it "
                         "references are not in the CET1W series", patient_id=patient_id, path=path,
                         fix="give the SEG drawn on this CET1W series (or that series as the CET1W)")
    mapping = parse_roi_map(roi_map)
    matched: dict[str, list[str]] = {s["name"]: [] for s in SEGMENTS}
    unmatched = []
    labels = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
    for item in seg.SegmentSequence:
        name = str(item.SegmentLabel)
        structure = roi_structure(name, mapping)
        if structure is None:
            unmatched.append(name)
            continue
        matched[structure].append(name)
        volume = seg.get_pixels_by_source_instance(source_sop_instance_uids=slices,
                                                   segment_numbers=[int(item.SegmentNumber)], combine_segments=True,
                                                   assert_missing_frames_are_empty=True)
        label = LABELS["gtvp"] if structure == "GTVp" else LABELS["gtvn"]
        labels[(volume > 0) & ((labels == 0) | (label == LABELS["gtvp"]))] = label  # GTVp wins where they overlap
    if not matched["GTVp"]:
        raise InputError(f"no segment of the DICOM SEG is GTVp (segments: {sorted(unmatched)})",
                         patient_id=patient_id, path=path,
                         fix="name the primary's segment with --roi-map GTVp=<its label> (e.g. GTVp=GTV_T)")
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    return image, {"matched": matched, "unmatched": unmatched}
