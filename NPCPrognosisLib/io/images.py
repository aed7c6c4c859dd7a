"""Loading images and bringing a patient's sequences and mask into one physical space.

Geometry is sacred: everything downstream (radiomics, segmentation, the Slicer overlay) assumes the sequences
and mask of a patient describe the same voxels. Sequences acquired on different grids are resampled onto the
CET1W grid (the reference on which tumours are contoured); inputs that do not overlap at all are refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.contract import LABELS, REFERENCE_SEQUENCE
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.imaging.geometry import (
    crop_offset,
    geometry_differences,
    label_box,
    overlap_fraction,
    paste_into,
    resample_onto,
    same_geometry,
)
from NPCPrognosisLib.imaging.preprocess import head_threshold
from NPCPrognosisLib.io.atomic import atomic_path
from NPCPrognosisLib.io.dicom_series import (
    check_series_owners,
    check_series_slices,
    dicom_series_files,
    series_identity,
    split_series_selector,
)
from NPCPrognosisLib.io.sequence_names import check_series_sequences

log = logging.getLogger(__name__)


@dataclass
class PatientImages:
    """A patient's sequences and mask on one grid (the reference sequence's)."""

    patient_id: str
    images: dict[str, sitk.Image]
    mask: sitk.Image | None
    warnings: list[str] = field(default_factory=list)

    @property
    def reference(self) -> sitk.Image:
        if REFERENCE_SEQUENCE in self.images:
            return self.images[REFERENCE_SEQUENCE]
        return next(iter(self.images.values()))


@dataclass(frozen=True)
class ImageHeader:
    """What a header says about the grid: enough to plan a resampling without reading the voxels."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...]


def read_header(path: str | Path, *, patient_id: str | None = None, role: str = "image") -> ImageHeader:
    """The grid of an image file from its header alone (a DICOM folder is read whole)."""
    path = Path(path)
    if path.is_file():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            pass  # read_image below raises the error a user can act on
        else:
            if reader.GetDimension() == 3:
                return ImageHeader(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetDirection()))
    image = read_image(path, patient_id=patient_id, role=role)
    return ImageHeader(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetDirection()))


#: NIfTI-1 datatype codes of floating-point voxels, with their numpy types.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _file_bytes(path: Path, *, patient_id: str | None, role: str) -> bytes:
    """The file's content, decompressed to the end when gzipped: a truncated or corrupt stream fails here (SimpleITK
    reads a cut .nii.gz without complaint and fills the rest with zeros)."""
    import gzip
    import zlib

    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{role} file is truncated or corrupt ({exc})", patient_id=patient_id, path=path,
                         fix="copy or export the file again; the compressed data ends early or fails its checksum"
                         ) from None


def check_file_integrity(path: str | Path, *, patient_id: str | None = None, role: str = "image") -> None:
    """Check what a NIfTI file says against what it holds, before SimpleITK reads it.

    The header's dimensions and bits per voxel give the payload size, which must be there; floating-point voxels
    are checked for NaN/Inf in the raw payload (SimpleITK may turn them into zeros on reading). Other formats
    (NRRD, MHA, DICOM) are left to their readers.
    """
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        if name.endswith(".gz"):
            _file_bytes(path, patient_id=patient_id, role=role)
        return
    data = _file_bytes(path, patient_id=patient_id, role=role)
    if len(data) < 348:
        raise InputError(f"{role} file is too short to hold a NIfTI header ({len(data)} bytes)", patient_id=patient_id,
                         path=path, fix="copy or export the file again")
    for order in ("<", ">"):
        if int(np.frombuffer(data[:4], f"{order}i4")[0]) == 348:
            break
    else:
        return  # NIfTI-2 or not NIfTI at all: SimpleITK's reader decides
    dims = np.frombuffer(data[40:56], f"{order}i2")
    datatype = int(np.frombuffer(data[70:72], f"{order}i2")[0])
    bitpix = int(np.frombuffer(data[72:74], f"{order}i2")[0])
    offset = int(np.frombuffer(data[108:112], f"{order}f4")[0])
    count = int(np.prod([max(int(d), 1) for d in dims[1:1 + max(int(dims[0]), 1)]]))
    expected = offset + count * bitpix // 8
    if len(data) < expected:
        raise InputError(f"{role} file is truncated: the header describes {expected} bytes, the file holds "
                         f"{len(data)}", patient_id=patient_id, path=path,
                         fix="copy or export the file again; the voxel data ends early")
    if datatype in _NIFTI_FLOATS:
        voxels = np.frombuffer(data, f"{order}{_NIFTI_FLOATS[datatype]}", count=count, offset=offset)
        bad = int((~np.isfinite(voxels)).sum())
        if bad:
            raise InputError(f"{role} has {bad} NaN/infinite voxels", patient_id=patient_id, path=path,
                             fix="re-export the image; NaN usually comes from a failed conversion or registration")


def read_image(path: str | Path, *, patient_id: str | None = None, role: str = "image") -> sitk.Image:
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder as a 3D image, checking what later stages assume."""
    path, selector = split_series_selector(path)
    if not path.exists():
        raise InputError(f"{role} file not found", patient_id=patient_id, path=path,
                         fix="check the path in the manifest (paths are relative to the manifest's folder)")
    try:
        if path.is_dir():
            files = dicom_series_files(path, selector, patient_id=patient_id, role=role)
            if len(files) == 1:  # an enhanced (multi-frame) series is one file: its reader places the frames
                image = sitk.ReadImage(files[0])
            else:
                check_series_slices(files, patient_id=patient_id, path=path, role=role)
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(files)
                image = reader.Execute()
        else:
            check_file_integrity(path, patient_id=patient_id, role=role)
            image = sitk.ReadImage(str(path))
    except InputError:
        raise
    except RuntimeError as exc:
        raise InputError(f"{role} cannot be read ({str(exc).strip().splitlines()[-1]})", patient_id=patient_id,
                         path=path, fix="use NIfTI, NRRD, MHA or a folder holding one DICOM series") from None
    return check_image(image, patient_id=patient_id, path=path, role=role)


#: Fewest voxels along any axis of an image.
MIN_VOXELS_PER_AXIS = 4


def check_image(image: sitk.Image, *, patient_id: str | None = None, path: str | Path | None = None,
                role: str = "image") -> sitk.Image:
    """Refuse what would silently corrupt features: non-3D data, vector pixels, NaN/inf voxels."""
    # four voxels per axis at least: the smoothing that finds the head (and any 3D filter) needs them, and a scan of
    # two or three slices holds no tumour in 3D (a mask may be a crop of its image's grid, as thin as its contours)
    least = 2 if role == "mask" else MIN_VOXELS_PER_AXIS
    if image.GetDimension() != 3 or min(image.GetSize()) < least:
        raise InputError(f"{role} is not a 3D volume (size {image.GetSize()}; at least {least} voxels along each "
                         "axis)", patient_id=patient_id, path=path,
                         fix="export the whole series as one 3D volume, not a single slice, a few slices or a 4D/time "
                             "series")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{role} has {image.GetNumberOfComponentsPerPixel()} components per voxel",
                         patient_id=patient_id, path=path, fix="use a scalar (greyscale) image")
    if role != "mask":
        array = sitk.GetArrayViewFromImage(image)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise InputError(f"{role} has {bad} NaN/infinite voxels", patient_id=patient_id, path=path,
                             fix="re-export the image; NaN usually comes from a failed conversion or registration")
        low, high = float(array.min()), float(array.max())
        if low == high:
            raise InputError(f"{role} is blank: every voxel is {low:g}", patient_id=patient_id, path=path,
                             fix="check the series (an empty or failed export); a constant image has no anatomy")
    return image


def intensity_warnings(image: sitk.Image, role: str) -> list[str]:
    """An MR magnitude image is non-negative and spans a range: many negative voxels mean a phase, difference or
    mis-scaled export; a spread that is a thousandth of the level means an almost blank series."""
    array = sitk.GetArrayViewFromImage(image)
    sample = array.ravel()[:: max(1, array.size // 200_000)].astype(np.float64)
    low, mid, high = np.percentile(sample, [1, 50, 99])
    warnings = []
    if np.mean(sample < 0) > 0.05 and sample.min() < -0.05 * max(abs(sample.max()), 1e-12):
        warnings.append(f"{role} has {np.mean(sample < 0):.0%} negative voxels: not an MR magnitude image (a phase "
                        "or difference image, or a wrong rescale slope?); check the series")
    if high - low < 1e-3 * max(abs(mid), 1.0):
        warnings.append(f"{role} is almost constant (1st-99th percentile {low:g}-{high:g}): an empty or failed "
                        "series?; check it")
    return warnings


#: Below this a GTVp is implausible for a nasopharyngeal primary and its texture features rest on too few voxels.
MIN_GTVP_ML = 0.5


def contour_warnings(mask: sitk.Image, reference: sitk.Image, source: str = "") -> list[str]:
    """What a radiologist must look at before trusting a prediction from these contours: a GTVp below
    :data:`MIN_GTVP_ML`, or a GTVp mostly in voxels darker than the head on the reference (CET1W) image."""
    warnings = []
    labels = sitk.GetArrayViewFromImage(mask)
    gtvp = labels == LABELS["gtvp"]
    voxels = int(gtvp.sum())
    if voxels == 0:
        return warnings
    volume = voxels * float(np.prod(mask.GetSpacing())) / 1000.0
    if volume < MIN_GTVP_ML:
        warnings.append(f"{source}GTVp is {volume:.2f} mL ({voxels} voxels), below the {MIN_GTVP_ML} mL of any "
                        "plausible primary: its radiomics rest on too few voxels; check the contour")
    smoothed, threshold = head_threshold(reference)
    outside = float(np.mean(sitk.GetArrayViewFromImage(smoothed)[gtvp] < threshold))
    if outside > 0.5:
        warnings.append(f"{outside:.0%} of the {source}GTVp lies in voxels darker than the head on CET1W (outside "
                        "the head?); check the contours")
    return warnings


def check_mask(mask: sitk.Image, *, patient_id: str | None = None, path: str | Path | None = None,
               automatic: bool = False) -> sitk.Image:
    """A label map with only the contract's labels and a non-empty GTVp.

    ``automatic``: the map is the segmentation network's, so an empty GTVp means the network missed the tumour and
    the advice is to contour it by hand (not to run the automatic segmentation that just ran)."""
    # The values are checked as stored, before any cast: a cast to 8 bits wraps 257 to a GTVp and truncates an
    # interpolated 1.6 to a GTVp as well, turning a wrong mask into a plausible one.
    values = np.unique(sitk.GetArrayViewFromImage(mask))
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        odd = values[~np.isfinite(values) | (values != np.round(values))]
        raise InputError(f"mask has non-integer value(s) {odd[:5].tolist()}: an interpolated or probability map, not a "
                         "label map", patient_id=patient_id, path=path,
                         fix="resample masks with nearest-neighbour interpolation (or threshold the probabilities) "
                             "and save labels 0, 1 (GTVp), 2 (GTVn)")
    allowed = {0, *LABELS.values()}
    unknown = sorted({int(v) for v in values.tolist()} - allowed)
    if len(unknown) > 10:
        # an image given as the mask (the manifest's columns shifted): its hundreds of grey values made a message of
        # thousands of characters that hid the fix
        raise InputError(f"mask has {len(unknown)} label values ({unknown[0]} to {unknown[-1]}): an image, not a label "
                         "map", patient_id=patient_id, path=path,
                         fix="give the segmentation (labels 0, 1 = GTVp, 2 = GTVn) as the mask, not an MR image (on "
                             "the command line: check the manifest's mask column)")
    if unknown:
        raise InputError(f"mask has label value(s) {unknown}; expected 0, 1 (GTVp) and 2 (GTVn)",
                         patient_id=patient_id, path=path, fix="relabel: primary tumour = 1, metastatic nodes = 2")
    mask = sitk.Cast(mask, sitk.sitkUInt8) if mask.GetPixelID() != sitk.sitkUInt8 else mask
    values = values.astype(np.uint8)
    if LABELS["gtvp"] not in values:
        if automatic:
            raise InputError("the segmentation network found no primary tumour (automatic GTVp is empty)",
                             patient_id=patient_id, path=path,
                             fix="open the images and this automatic mask in Slicer's Segment Editor, contour the "
                                 "GTVp (label 1), and use that mask instead of the automatic one")
        raise InputError("mask has no voxel labelled 1 (GTVp is empty)", patient_id=patient_id, path=path,
                         fix="contour the primary tumour as label 1, or run automatic segmentation")
    return mask


def mask_on_reference(mask: sitk.Image, ref: sitk.Image, *, patient_id: str | None = None,
                      path: str | Path | None = None, reference: str = REFERENCE_SEQUENCE,
                      resample: bool = False) -> tuple[sitk.Image, str | None]:
    """The mask on the reference image's grid, and a note when it had to be moved there.

    Accepted as is: the same grid up to floating-point noise in the header (spacing and direction within 1e-3
    relative, origin within 1e-2 of a voxel; the reference's header is then copied). Accepted exactly: a crop
    of the reference grid (same spacing and direction, origin on a reference voxel), pasted back without
    interpolation. Anything else (other spacing, shifted origin, flipped axis) is refused with the exact
    differences, unless ``resample`` asks for nearest-neighbour resampling in physical space.
    """
    if same_geometry(mask, ref):
        if mask.GetOrigin() != ref.GetOrigin() or mask.GetSpacing() != ref.GetSpacing() or \
                mask.GetDirection() != ref.GetDirection():
            mask = sitk.Image(mask)
            mask.CopyInformation(ref)
        return mask, None
    offset = crop_offset(mask, ref)
    if offset is not None:
        return (check_mask(paste_into(mask, ref, offset), patient_id=patient_id, path=path),
                f"mask covered a crop of the {reference} grid (offset {offset} voxels); placed back voxel for voxel")
    differences = geometry_differences(mask, ref)
    if not resample:
        raise InputError(f"mask is not on the {reference} image's grid: " + "; ".join(differences),
                         patient_id=patient_id, path=path,
                         fix=f"export the segmentation on the {reference} image's grid (Slicer: reference geometry = "
                             f"{reference}), or pass --resample-mask to resample it (nearest neighbour) if you are "
                             "sure it belongs to this image")
    box = label_box(mask)
    if box is None or overlap_fraction(mask, ref, box) < 0.999:
        raise InputError(f"mask contours lie (partly) outside the {reference} image (" + "; ".join(differences) + ")",
                         patient_id=patient_id, path=path,
                         fix="check that the mask belongs to this patient's image")
    resampled = check_mask(resample_onto(mask, ref, is_label=True), patient_id=patient_id, path=path)
    return resampled, (f"mask was resampled (nearest neighbour) onto the {reference} grid as asked (--resample-mask): "
                       + "; ".join(differences))


@contextlib.contextmanager
def warnings_kept_on_failure(warnings: list[str]) -> Iterator[None]:
    """Give an :class:`~NPCPrognosisLib.errors.InputError` raised inside the block the ``warnings`` gathered so far.

    Why: a patient's warnings were returned with the loaded patient only, so one refused afterwards (its mask not on
    the grid after its T2W was found to cover half of the field) lost the warnings that explain the refusal.

    Parameters
    ----------
    warnings : list of str
        The list the block appends its warnings to; read when the error is raised.

    Yields
    ------
    None
        On an InputError, ``warnings`` are put ahead of those it carries already (raised later, further in).
    """
    try:
        yield
    except InputError as exc:
        exc.warnings[:0] = warnings
        raise


def align_patient(
    images: Mapping[str, sitk.Image],
    mask: sitk.Image | None,
    *,
    patient_id: str,
    paths: Mapping[str, str | Path | None] | None = None,
    reference: str = REFERENCE_SEQUENCE,
    resample_mask: bool = False,
) -> PatientImages:
    """Put all sequences and the mask on the reference grid, or refuse when they do not describe the same anatomy.

    Sequences on other grids are resampled (logged, not warned: MR series are often acquired on different grids). A
    mask is different: it was drawn on one image, so a mask on another grid means it was exported wrongly or
    belongs to another image, and it is refused (see :func:`mask_on_reference`) unless ``resample_mask``.
    """
    paths = dict(paths or {})
    if reference not in images:
        raise InputError(f"the reference sequence {reference!r} is missing", patient_id=patient_id,
                         fix=f"provide the {reference} image; it defines the grid of the mask and the outputs")
    ref = images[reference]
    out: dict[str, sitk.Image] = {}
    warnings: list[str] = []
    covered: dict[str, np.ndarray] = {}  # which reference voxels each resampled sequence holds
    coverage_notes: dict[str, str] = {}  # the warning of each sequence covering part of the field
    with warnings_kept_on_failure(warnings):  # a refused mask keeps the coverage warnings
        for name, image in images.items():
            image = sitk.Cast(image, sitk.sitkFloat32)
            warnings += intensity_warnings(image, name)
            if name != reference and not same_geometry(image, ref):
                # The share of the smaller field of view inside the other: a T2W acquired over a wider field than the
                # CET1W covers all of it, though most of the T2W's own box lies outside (family C: 184 mm inside 236 mm
                # in plane, 46 % of the T2W's box, was refused as "does not overlap").
                if max(overlap_fraction(image, ref), overlap_fraction(ref, image)) < 0.5:
                    raise InputError(f"{name} does not overlap the {reference} image (different patient or frame of "
                                     "reference?)",
                                     patient_id=patient_id, path=paths.get(name),
                                     fix=f"register {name} to {reference} before running, or check the file belongs "
                                         "to this patient")
                # routine, not a warning: sequences of one exam are rarely on one grid (families B and C: every
                # patient's T2W), and a warning on every patient buried the ones that matter in extract's list
                log.info("%s: %s was resampled onto the %s grid", patient_id, name, reference)
                field = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
                field.CopyInformation(image)
                covered[name] = sitk.GetArrayFromImage(resample_onto(field, ref, is_label=True)) > 0
                image = resample_onto(image, ref)
                if covered[name].mean() < 1.0 - UNCOVERED_SHARE:
                    # kept without contours (a network will segment: the tumour may lie there) and while a mask may
                    # still be refused; dropped below for a mask whose every voxel lies inside the field. The share
                    # is floored: 94.9 % rounded to '95%' read as the full share the warning says is missing.
                    share = math.floor(100.0 * covered[name].mean() + 1e-9)
                    coverage_notes[name] = (
                        f"{name} covers {share}% of the {reference} field; outside it {name} has no image (read as 0): "
                        f"{name} features of a contour reaching there describe that fill, not tissue, and a "
                        "segmentation network, where one is used, sees only the other sequences there")
                    warnings.append(coverage_notes[name])
            out[name] = image
        if mask is not None:
            mask = check_mask(mask, patient_id=patient_id, path=paths.get("mask"))
            mask, note = mask_on_reference(mask, ref, patient_id=patient_id, path=paths.get("mask"),
                                           reference=reference, resample=resample_mask)
            if note:
                warnings.append(note)
            warnings += contour_warnings(mask, ref)
            contoured = sitk.GetArrayViewFromImage(mask) > 0
            for name, inside in covered.items():
                outside = int((contoured & ~inside).sum())
                if outside:  # its radiomics there would be computed on the fill value, not on tissue
                    warnings.append(f"{outside} of the {int(contoured.sum())} contoured voxels lie outside the {name} "
                                    f"field: its features describe part of the contours only, with the rest read as 0")
                elif name in coverage_notes:
                    # Nothing computed from these contours reads the fill: a warning on every such patient (a third
                    # of a family-C cohort, whose T2W covers 61-94 % of the CET1W field) buried the ones that matter
                    # in extract's list and on the patient sheet.
                    warnings.remove(coverage_notes[name])
                    log.info("%s: %s covers part of the %s field, every contoured voxel inside it", patient_id, name,
                             reference)
    for text in warnings:
        log.warning("patient %s: %s", patient_id, text)
    return PatientImages(patient_id=patient_id, images=out, mask=mask, warnings=warnings)


#: Share of the reference field a resampled sequence may leave out before it is warned about (edge slices).
UNCOVERED_SHARE = 0.05


def load_patient(
    patient_id: str,
    image_paths: Mapping[str, str | Path | None],
    mask_path: str | Path | None = None,
    *,
    reference: str = REFERENCE_SEQUENCE,
    resample_mask: bool = False,
    roi_map: str | Mapping[str, str] | None = None,
    foreign_ids: Collection[str] | None = (),
) -> PatientImages:
    """Read a patient's files and align them (see :func:`align_patient`).

    DICOM series of another patient are refused by their PatientID
    (:func:`~NPCPrognosisLib.io.dicom_series.check_series_owners`): series of one patient must agree, and one that
    carries an ID of ``foreign_ids`` (a cohort run: the manifest's IDs), or with ``foreign_ids`` None any ID but
    ``patient_id`` (one patient named by the hospital's ID), is another patient's.
    A DICOM series whose header names another sequence than its column (a ``t1`` series described as T2W) is
    refused too (:func:`~NPCPrognosisLib.io.sequence_names.check_series_sequences`), on unambiguous words only.

    The mask may be a label image, a DICOM RTSTRUCT rasterised onto the reference (CET1W) grid, or a DICOM SEG of
    the CET1W series, with ``roi_map`` naming the GTVp/GTVn ROIs or segments
    (:func:`NPCPrognosisLib.io.rtstruct.read_rtstruct`, :func:`~NPCPrognosisLib.io.dicom_seg.read_seg`); those
    that matched nothing are reported in the patient's warnings.
    """
    images = {}
    for name, path in image_paths.items():
        if path is None:
            raise InputError(f"no {name} image given", patient_id=patient_id, column=name,
                             fix=f"fill in the {name} column with a NIfTI/NRRD file or DICOM folder")
        images[name] = read_image(path, patient_id=patient_id, role=name)
    notes: list[str] = []
    identities = {}
    if any(split_series_selector(p)[0].is_dir() for p in image_paths.values()):
        identities = {name: series_identity(path, patient_id=patient_id, role=name)
                      for name, path in image_paths.items()}
    ours = identities.get(reference, {})
    owners = {name: identities[name]["patient"] for name in sorted(identities, key=lambda n: n != reference)
              if identities[name].get("patient")}
    check_series_owners(owners, patient_id, image_paths, foreign_ids=foreign_ids)
    check_series_sequences({name: identity for name, identity in identities.items()
                            if split_series_selector(image_paths[name])[0].is_dir()}, patient_id, image_paths)
    with warnings_kept_on_failure(notes):  # e.g. another frame of reference, then the contours refused
        for name, identity in identities.items():
            if name == reference:
                continue
            if ours.get("frame") and identity.get("frame") and identity["frame"] != ours["frame"]:
                # another frame of reference: scanner coordinates that need not match (another session, the patient
                # repositioned); resampling by them is right only if nothing moved
                notes.append(f"the {name} series lies in another frame of reference than the {reference} series: it "
                             "was placed by scanner coordinates; if the patient moved between the series, register "
                             "them first")
        from NPCPrognosisLib.io.dicom_contours import dicom_modality

        modality = None if mask_path is None else dicom_modality(mask_path)
        if mask_path is None:
            mask = None
        elif reference in images and modality == "SEG":
            from NPCPrognosisLib.io.dicom_seg import read_seg

            mask, report = read_seg(mask_path, images[reference], image_paths[reference], roi_map,
                                    patient_id=patient_id)
            if report["unmatched"]:
                notes.append(f"DICOM SEG segment(s) {report['unmatched']} matched neither GTVp nor GTVn and were not "
                             "used (--roi-map names them)")
        elif reference in images and modality == "RTSTRUCT":
            from NPCPrognosisLib.io.rtstruct import read_rtstruct

            mask, report = read_rtstruct(mask_path, images[reference], roi_map, patient_id=patient_id)
            frame = ours.get("frame")
            if frame is not None and report["frames_of_reference"] and frame not in report["frames_of_reference"]:
                # contours of another frame (a planning CT the MR was not resampled into, another study) would be
                # placed by coordinates that mean something else on this scan
                raise InputError(f"the RTSTRUCT's contours were drawn in frame of reference "
                                 f"{', '.join(report['frames_of_reference'])}, the {reference} series is in {frame}",
                                 patient_id=patient_id, path=mask_path,
                                 fix=f"export the structure set drawn on this {reference} series, or the {reference} "
                                     "resampled into the structure set's frame (registered in the planning system)")
            if report["unmatched"]:
                notes.append(f"RTSTRUCT ROI(s) {report['unmatched']} matched neither GTVp nor GTVn and were not used "
                             "(--roi-map names them)")
            if report["skipped_contours"]:
                notes.append(f"{report['skipped_contours']} RTSTRUCT contour(s) lie beyond the {reference}'s first "
                             "or last slice (or are not closed planar) and were skipped")
            if report["contours_between_slices"]:
                notes.append(f"the RTSTRUCT's contours lie on planes finer than the {reference} slices: each slice "
                             f"took the plane nearest its centre ({report['contours_between_slices']} contour(s) "
                             "between slices unused); check the contours on the images")
            if report["slices_from_nearest_plane"]:
                notes.append(f"the RTSTRUCT's contours lie on planes coarser than the {reference} slices: "
                             f"{report['slices_from_nearest_plane']} slice(s) between them took the nearest plane's "
                             "contours; check the contours on the images")
        else:
            mask = read_image(mask_path, patient_id=patient_id, role="mask")
        patient = align_patient(images, mask, patient_id=patient_id, paths={**image_paths, "mask": mask_path},
                                reference=reference, resample_mask=resample_mask)
    patient.warnings[:0] = notes
    return patient


def write_image_atomic(image: sitk.Image, path: str | Path) -> Path:
    """Write via a temporary file in the same folder then rename, so a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return Path(path)
