"""Feature robustness: image/contour perturbations and the ICC(3,1) of every feature across them.

A radiomics feature that changes when the radiologist draws the contour one voxel wider, or when the patient
lies two degrees differently in the scanner, cannot carry a prognosis from one hospital to another. Following
Zwanenburg et al. (Sci Rep 2019, "Assessing robustness of radiomic features by image perturbation"), each
training case is perturbed by a small rigid rotation and translation, added noise at the image's own noise level
and a one-voxel erosion or dilation of the contours (the RTNV chain), the features are extracted again with the
same settings, and the agreement between the original and perturbed values of each feature over patients is
measured by the intraclass correlation ICC(3,1) (two-way mixed, consistency, single measurement; Shrout &
Fleiss 1979). Features below a threshold are not offered to the signature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.contract import LABELS


@dataclass(frozen=True)
class Perturbation:
    """One perturbation of a case; drawn once per index so every patient sees the same kind of change."""

    index: int
    #: Rotation about the GTV centroid, degrees about x, y, z (Zwanenburg: up to a few degrees).
    rotation_deg: tuple[float, float, float]
    #: Translation in mm; sub-voxel shifts change the sampling of the tumour without moving it off its anatomy.
    translation_mm: tuple[float, float, float]
    #: -1 erodes each structure by one voxel, +1 dilates it (volume adaptation), 0 leaves it.
    mask_change: int
    #: Added Gaussian noise SD as a multiple of the image's estimated noise SD.
    noise_factor: float

    def to_dict(self) -> dict:
        return asdict(self)


def perturbations(count: int, seed: int = 0) -> list[Perturbation]:
    """``count`` perturbations: alternately eroded and dilated contours, each with its own rotation and shift."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        rotation = tuple(float(v) for v in np.round(rng.uniform(-4.0, 4.0, 3), 2))
        shift = tuple(float(v) for v in np.round(rng.uniform(-1.0, 1.0, 3), 2))
        out.append(Perturbation(index=k, rotation_deg=rotation, translation_mm=shift,
                                mask_change=-1 if k % 2 == 0 else 1, noise_factor=1.0))
    return out


def noise_sd(image: sitk.Image) -> float:
    """Noise SD estimated from neighbouring-voxel differences inside the head (robust: median absolute deviation).

    The difference of two neighbours removes smooth anatomy and keeps sqrt(2) x the noise; the MAD ignores most
    edges. Only pairs inside the head (:func:`~NPCPrognosisLib.imaging.preprocess.head_mask`, eroded by a voxel so
    that no pair straddles its border) count: the air of a magnitude MR image holds Rayleigh noise, about 0.66 x
    the tissue's, and a percentile cut left enough of it in to pull the estimate 13-35 % low as the air's share of
    the field of view grew from a third to four fifths.
    """
    from NPCPrognosisLib.imaging.preprocess import head_mask

    array = sitk.GetArrayViewFromImage(image).astype(np.float64)
    mask = sitk.BinaryErode(head_mask(image), [1, 1, 1])
    head = sitk.GetArrayFromImage(mask) > 0  # a copy: a view of a temporary image would outlive its buffer
    diff = np.diff(array, axis=2)
    inside = head[:, :, 1:] & head[:, :, :-1]
    values = diff[inside] if inside.any() else diff.ravel()
    mad = np.median(np.abs(values - np.median(values)))
    return float(1.4826 * mad / np.sqrt(2.0))


def _rigid(reference: sitk.Image, mask: sitk.Image, p: Perturbation) -> sitk.Euler3DTransform:
    array = sitk.GetArrayViewFromImage(mask)
    index = np.argwhere(array > 0)
    centre_index = index.mean(axis=0)[::-1] if len(index) else np.asarray(reference.GetSize()) / 2.0
    centre = reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in centre_index])
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre)
    transform.SetRotation(*[float(np.deg2rad(a)) for a in p.rotation_deg])
    transform.SetTranslation([float(v) for v in p.translation_mm])
    return transform


def _adapt_volume(mask: sitk.Image, change: int) -> sitk.Image:
    """Erode or dilate each structure by one voxel; a structure that erosion would erase is kept as it was.

    Radiologists contour slice by slice, so on thick slices (more than 1.5 x the in-plane spacing) the change is
    in-plane only: a whole slice more or less is a different contour, not a variation of the same one.
    """
    if change == 0:
        return mask
    spacing = mask.GetSpacing()
    radius = [1, 1, 0 if spacing[2] > 1.5 * min(spacing[0], spacing[1]) else 1]
    result = sitk.GetArrayFromImage(mask)
    for label in LABELS.values():
        structure = sitk.Equal(mask, int(label))
        if not sitk.GetArrayViewFromImage(structure).any():
            continue
        changed = (sitk.BinaryErode(structure, radius) if change < 0
                   else sitk.BinaryDilate(structure, radius))
        changed_array = sitk.GetArrayViewFromImage(changed).astype(bool)
        if not changed_array.any():
            continue
        if change < 0:
            result[(result == label) & ~changed_array] = 0
        else:
            result[changed_array & (result == 0)] = label  # dilation never eats another structure
    out = sitk.GetImageFromArray(result)
    out.CopyInformation(mask)
    return out


def perturb_case(images: dict[str, sitk.Image], mask: sitk.Image, p: Perturbation,
                 seed: int) -> tuple[dict[str, sitk.Image], sitk.Image]:
    """The case as it might have been scanned and contoured again: same grid, moved, noisier, re-contoured.

    Images and mask move together (the contour follows the anatomy); images are resampled with B-splines and the
    mask with nearest neighbour, onto the original grid. ``seed`` makes the added noise reproducible per patient.
    """
    reference = next(iter(images.values()))
    transform = _rigid(reference, mask, p)
    rng = np.random.default_rng(seed)
    moved = {}
    for name, image in images.items():
        image = sitk.Cast(image, sitk.sitkFloat32)
        out = sitk.Resample(image, image, transform, sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
        if p.noise_factor > 0:
            sd = p.noise_factor * noise_sd(image)
            array = sitk.GetArrayFromImage(out)
            array += rng.normal(0.0, sd, array.shape).astype(np.float32)
            noisy = sitk.GetImageFromArray(array)
            noisy.CopyInformation(out)
            out = noisy
        moved[name] = out
    moved_mask = sitk.Resample(mask, mask, transform, sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    return moved, _adapt_volume(moved_mask, p.mask_change)


def icc_3_1(values: np.ndarray) -> np.ndarray:
    """ICC(3,1) of every feature: ``values`` is patients x conditions x features (NaN rows are left out).

    (MS_rows - MS_error) / (MS_rows + (k - 1) MS_error) from the two-way ANOVA without replication; a feature
    that does not vary between patients (MS_rows = MS_error = 0) gets NaN, as it carries no information.

    Parameters
    ----------
    values : numpy.ndarray, shape (n_patients, n_conditions, n_features)
        The original and perturbed values of each feature for each patient.

    Returns
    -------
    icc : numpy.ndarray, shape (n_features,)
        NaN where fewer than three patients have the feature under every condition.
    """
    values = np.asarray(values, float)
    if values.ndim == 2:
        values = values[:, :, None]
    _, k, n_features = values.shape
    out = np.full(n_features, np.nan)
    complete = ~np.isnan(values).any(axis=1)  # patients x features
    for pattern in np.unique(complete, axis=1).T:
        columns = np.flatnonzero((complete == pattern[:, None]).all(axis=0))
        x = values[pattern][:, :, columns]
        n = x.shape[0]
        if n < 3:
            continue
        grand = x.mean(axis=(0, 1))
        ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum(axis=0)
        ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum(axis=0)
        ss_total = ((x - grand) ** 2).sum(axis=(0, 1))
        ms_rows = ss_rows / (n - 1)
        ms_error = np.maximum(ss_total - ss_rows - ss_cols, 0.0) / ((n - 1) * (k - 1))
        denominator = ms_rows + (k - 1) * ms_error
        with np.errstate(divide="ignore", invalid="ignore"):
            out[columns] = np.where(denominator > 0, (ms_rows - ms_error) / denominator, np.nan)
    return out
