"""Loading images and bringing a patient's sequences and mask into one physical space.

Geometry is sacred: everything downstream (radiomics, segmentation, the Slicer overlay) assumes the sequences
and mask of a patient describe the same voxels. Sequences acquired on different grids are resampled onto the
CET1W grid (the reference on which tumours are contoured); inputs that do not overlap at all are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.contract import LABELS, REFERENCE_SEQUENCE
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.imaging.geometry import label_box, overlap_fraction, resample_onto, same_geometry
from NPCPrognosisLib.io.atomic import atomic_path

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


def read_image(path: str | Path, *, patient_id: str | None = None, role: str = "image") -> sitk.Image:
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder as a 3D image, checking what later stages assume."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{role} file not found", patient_id=patient_id, path=path,
                         fix="check the path in the manifest (paths are relative to the manifest's folder)")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError(f"{role} folder contains no DICOM series", patient_id=patient_id, path=path)
            if len(series) > 1:
                raise InputError(f"{role} folder contains {len(series)} DICOM series", patient_id=patient_id,
                                 path=path, fix="put one series per folder")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except InputError:
        raise
    except RuntimeError as exc:
        raise InputError(f"{role} cannot be read ({str(exc).strip().splitlines()[-1]})", patient_id=patient_id,
                         path=path, fix="use NIfTI, NRRD, MHA or a folder holding one DICOM series") from None
    return check_image(image, patient_id=patient_id, path=path, role=role)


def check_image(image: sitk.Image, *, patient_id: str | None = None, path: str | Path | None = None,
                role: str = "image") -> sitk.Image:
    """Refuse what would silently corrupt features: non-3D data, vector pixels, NaN/inf voxels."""
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise InputError(f"{role} is not a 3D volume (size {image.GetSize()})", patient_id=patient_id, path=path,
                         fix="export the whole series as one 3D volume, not a single slice or a 4D/time series")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{role} has {image.GetNumberOfComponentsPerPixel()} components per voxel",
                         patient_id=patient_id, path=path, fix="use a scalar (greyscale) image")
    if role != "mask":
        array = sitk.GetArrayViewFromImage(image)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise InputError(f"{role} has {bad} NaN/infinite voxels", patient_id=patient_id, path=path,
                             fix="re-export the image; NaN usually comes from a failed conversion or registration")
    return image


def check_mask(mask: sitk.Image, *, patient_id: str | None = None, path: str | Path | None = None) -> sitk.Image:
    """A label map with only the contract's labels and a non-empty GTVp."""
    mask = sitk.Cast(mask, sitk.sitkUInt8) if mask.GetPixelID() != sitk.sitkUInt8 else mask
    values = np.unique(sitk.GetArrayViewFromImage(mask))
    allowed = {0, *LABELS.values()}
    unknown = sorted(set(values.tolist()) - allowed)
    if unknown:
        raise InputError(f"mask has label value(s) {unknown}; expected 0, 1 (GTVp) and 2 (GTVn)",
                         patient_id=patient_id, path=path, fix="relabel: primary tumour = 1, metastatic nodes = 2")
    if LABELS["gtvp"] not in values:
        raise InputError("mask has no voxel labelled 1 (GTVp is empty)", patient_id=patient_id, path=path,
                         fix="contour the primary tumour as label 1, or run automatic segmentation")
    return mask


def align_patient(
    images: Mapping[str, sitk.Image],
    mask: sitk.Image | None,
    *,
    patient_id: str,
    paths: Mapping[str, str | Path | None] | None = None,
    reference: str = REFERENCE_SEQUENCE,
) -> PatientImages:
    """Put all sequences and the mask on the reference grid, or refuse when they do not describe the same anatomy."""
    paths = dict(paths or {})
    if reference not in images:
        raise InputError(f"the reference sequence {reference!r} is missing", patient_id=patient_id,
                         fix=f"provide the {reference} image; it defines the grid of the mask and the outputs")
    ref = images[reference]
    out: dict[str, sitk.Image] = {}
    warnings: list[str] = []
    for name, image in images.items():
        image = sitk.Cast(image, sitk.sitkFloat32)
        if name != reference and not same_geometry(image, ref):
            if overlap_fraction(image, ref) < 0.5:
                raise InputError(f"{name} does not overlap the {reference} image (different patient or frame of "
                                 "reference?)",
                                 patient_id=patient_id, path=paths.get(name),
                                 fix=f"register {name} to {reference} before running, or check the file belongs "
                                     "to this patient")
            warnings.append(f"{name} was resampled onto the {reference} grid")
            image = resample_onto(image, ref)
        out[name] = image
    if mask is not None:
        mask = check_mask(mask, patient_id=patient_id, path=paths.get("mask"))
        if not same_geometry(mask, ref):
            box = label_box(mask)
            if box is None or overlap_fraction(mask, ref, box) < 0.999:
                raise InputError(
                    f"mask geometry does not match the {reference} image: its contours lie (partly) outside the image "
                    f"(mask size {mask.GetSize()} spacing {tuple(round(s, 3) for s in mask.GetSpacing())}, image size "
                    f"{ref.GetSize()} spacing {tuple(round(s, 3) for s in ref.GetSpacing())})",
                    patient_id=patient_id, path=paths.get("mask"),
                    fix=f"export the segmentation on the {reference} image's grid (Slicer: reference geometry = "
                        f"{reference})",
                )
            warnings.append(f"mask was resampled (nearest neighbour) onto the {reference} grid")
            mask = check_mask(resample_onto(mask, ref, is_label=True), patient_id=patient_id, path=paths.get("mask"))
    for text in warnings:
        log.warning("patient %s: %s", patient_id, text)
    return PatientImages(patient_id=patient_id, images=out, mask=mask, warnings=warnings)


def load_patient(
    patient_id: str,
    image_paths: Mapping[str, str | Path | None],
    mask_path: str | Path | None = None,
    *,
    reference: str = REFERENCE_SEQUENCE,
) -> PatientImages:
    """Read a patient's files and align them (see :func:`align_patient`)."""
    images = {}
    for name, path in image_paths.items():
        if path is None:
            raise InputError(f"no {name} image given", patient_id=patient_id, column=name,
                             fix=f"fill in the {name} column with a NIfTI/NRRD file or DICOM folder")
        images[name] = read_image(path, patient_id=patient_id, role=name)
    mask = None if mask_path is None else read_image(mask_path, patient_id=patient_id, role="mask")
    return align_patient(images, mask, patient_id=patient_id, paths={**image_paths, "mask": mask_path},
                         reference=reference)


def write_image_atomic(image: sitk.Image, path: str | Path) -> Path:
    """Write via a temporary file in the same folder then rename, so a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return Path(path)
