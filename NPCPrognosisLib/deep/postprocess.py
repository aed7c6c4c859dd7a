"""Post-processing of the network's labels: the primary as one compact mass, nodes above a volume floor.

Why an opening of the primary. A network trained on one scanner family and run on another overcalled the
primary along the enhancing mucosa that lines the airway next to it (2-4 mm thick, as bright as tumour on CET1W
and T2W in one family; trained on family B and tested on 30 family-A patients: sensitivity 0.975, precision 0.66,
false voxels up to 25-29 mm from the tumour). A morphological opening in millimetres removes every part of the
contour thinner than twice its radius. It acts on the largest component of the raw labels and keeps every thick
part of it (one primary, never a piece chosen over the tumour for its size); what a tumour's own contours lose to
it is measured on the training patients, and the radius is the largest whose loss stays within what the bundle
records (:func:`choose_opening_radius`). Distances are Euclidean in mm (scipy's exact transform on the image's
spacing), so a 4 mm slice is never eroded by a 3 mm radius: on thick slices the opening acts in plane.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.imaging.overlap import dice

#: Distances within this of the radius count as on the ball: 3 x 0.8 mm and 4 x 0.8 mm are 4.0 mm apart only up to
#: rounding, and the result must not depend on which way the rounding went.
_TIE_MM = 1e-6
#: Radii (mm) tried when the opening is derived from the training contours.
OPENING_RADII_MM: tuple[float, ...] = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0)


def _crop(mask: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """The mask's bounding box and the mask cut to it with one voxel of background around it: an opening never
    leaves the box, and the background layer keeps the distance transforms exact."""
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
    return box, np.pad(mask[box], 1)


def _openings(crop: np.ndarray, spacing_zyx: Sequence[float], radii: Sequence[float]):
    """The padded crop opened by each radius (one distance transform to the background serves them all)."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(crop, sampling=spacing_zyx)
    for radius in radii:
        if radius <= 0:
            yield crop.copy()
            continue
        radius = radius + _TIE_MM  # a voxel centre exactly on the ball's surface is inside it
        core = depth > radius
        yield ((ndimage.distance_transform_edt(~core, sampling=spacing_zyx) <= radius) & crop if core.any()
               else np.zeros_like(crop))


def open_mask(mask: np.ndarray, spacing_zyx: Sequence[float], radius_mm: float) -> np.ndarray:
    """Morphological opening of a binary mask by a ball of ``radius_mm``, in physical distance.

    Parameters
    ----------
    mask : ndarray of bool, shape (z, y, x)
        The structure.
    spacing_zyx : sequence of 3 float
        Voxel spacing in mm, in array order.
    radius_mm : float
        Ball radius; 0 returns the mask unchanged.

    Returns
    -------
    opened : ndarray of bool
        Voxels of ``mask`` within ``radius_mm`` of a voxel that lies deeper than ``radius_mm`` inside it (a
        subset of ``mask``; empty when no part of the mask is that thick).
    """
    mask = np.asarray(mask, dtype=bool)
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    box, crop = _crop(mask)
    out = np.zeros_like(mask)
    out[box] = next(_openings(crop, spacing_zyx, [radius_mm]))[1:-1, 1:-1, 1:-1]
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a binary mask (the mask itself when it has at most one)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n <= 1:
        return np.asarray(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


def opening_self_dice(mask: np.ndarray, spacing_zyx: Sequence[float],
                      radii: Sequence[float] = OPENING_RADII_MM) -> list[float]:
    """Dice of one contour's largest component with that component opened (as at inference), per radius.

    Parameters
    ----------
    mask : ndarray of bool, shape (z, y, x)
        A patient's GTVp in its own geometry (not empty).
    spacing_zyx : sequence of 3 float
        Voxel spacing in mm, in array order.
    radii : sequence of float
        Opening radii in mm.

    Returns
    -------
    dice : list of float
        One value per radius; 0 where the opening leaves nothing.
    """
    _, crop = _crop(largest_component(np.asarray(mask, dtype=bool)))
    return [dice(opened, crop) for opened in _openings(crop, spacing_zyx, radii)]


def choose_opening_radius(self_dice: Sequence[Sequence[float]], keep_dice: float,
                          radii: Sequence[float] = OPENING_RADII_MM) -> dict[str, Any]:
    """The largest opening radius that the cohort's own GTVp contours survive.

    The radius chosen is the largest whose mean self-Dice (:func:`opening_self_dice`) over the training patients
    stays at or above ``keep_dice``, all smaller radii included. A cohort contoured with thin, mucosa-hugging
    primaries (early T1 tumours) thus gets a small radius or none.

    Parameters
    ----------
    self_dice : sequence of sequences of float
        One row per patient with a GTVp, one value per radius.
    keep_dice : float
        Mean self-Dice a radius must keep.
    radii : sequence of float
        The radii of the rows, ascending, in mm.

    Returns
    -------
    derivation : dict
        ``radius_mm`` (the choice; 0 without patients), ``radii`` and ``mean_dice`` (per radius), ``keep_dice``,
        ``n`` (patients) and ``source``.
    """
    mean = np.mean(np.asarray(self_dice, dtype=float), axis=0) if len(self_dice) else np.zeros(len(radii))
    chosen = 0.0
    for radius, value in zip(radii, mean):
        if value < keep_dice:
            break
        chosen = float(radius)
    return {"radius_mm": chosen, "radii": [float(r) for r in radii],
            "mean_dice": [round(float(v), 5) for v in mean], "keep_dice": float(keep_dice),
            "n": len(self_dice), "source": "training contours (GTVp)"}


def _pieces(mask: np.ndarray, voxel_ml: float, min_ml: float) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected labels of ``mask`` and, per label (0 = background, never kept), whether the piece holds at
    least ``min_ml``: the one rule by which segment drops small nodes and nodes are counted."""
    from scipy import ndimage

    components, _ = ndimage.label(mask)
    keep = np.bincount(components.ravel()) >= int(math.ceil(float(min_ml) / float(voxel_ml)))
    keep[0] = False
    return components, keep


def elongation(mask: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """How much longer a structure is than it is wide: the square root of the ratio of the two largest principal
    variances of its voxels in mm.

    Each voxel counts as a uniform box (its centre's coordinates plus the box's own variance, spacing^2 / 12), so
    a single voxel or a thin slab is not called elongated for its sampling. An ellipsoid with semi-axes ``a >= b
    >= c`` gives ``a / b``, the long-to-short axis ratio radiologists read nodes by; a cylinder of length ``L``
    and radius ``r`` gives ``L / (r * sqrt(3))``.

    Parameters
    ----------
    mask : ndarray of bool, shape (z, y, x)
        The structure (not empty).
    spacing_zyx : sequence of 3 float
        Voxel spacing in mm, in array order.

    Returns
    -------
    ratio : float
        1 for a ball, larger the longer and thinner the structure.
    """
    step = np.asarray(spacing_zyx, dtype=float)
    points = np.argwhere(np.asarray(mask, dtype=bool)) * step
    spread = np.cov(points.T) if len(points) > 1 else np.zeros((3, 3))
    variances = np.sort(np.linalg.eigvalsh(spread + np.diag(step**2 / 12.0)))[::-1]
    return float(np.sqrt(variances[0] / variances[1]))


def count_components(mask: np.ndarray, voxel_ml: float, min_ml: float = 0.0) -> int:
    """Separate pieces of ``mask`` of at least ``min_ml``, by the rule :func:`postprocess_labels` keeps nodes by:
    the training patients' node count and a segmented patient's are counted the same way."""
    return int(_pieces(mask, voxel_ml, min_ml)[1].sum())


def postprocess_labels(labels: np.ndarray, postprocessing: Mapping[str, Any], like: sitk.Image) -> sitk.Image:
    """Apply the bundle's post-processing to argmax labels on the reference grid.

    Parameters
    ----------
    labels : ndarray of int, shape (z, y, x)
        0 background, 1 GTVp, 2 GTVn, on the grid of ``like``.
    postprocessing : mapping
        The bundle's ``postprocessing`` block: ``gtvp_opening_mm`` (0 or absent: none; bundles before it have
        none), ``gtvp_largest_component``, ``gtvn_min_ml`` and ``gtvn_max_elongation`` (0 or absent: none).
    like : SimpleITK.Image
        The reference image whose geometry the mask takes.

    Returns
    -------
    mask : SimpleITK.Image
        UInt8 label map in the geometry of ``like``. The primary is the largest component of the raw labels with
        its thin parts removed; every thick part of it stays, even where the opening splits it (keeping only the
        largest piece then dropped the tumour for a thicker false piece in 3 of 200 patients). A primary thinner
        everywhere than the opening is kept as it was rather than erased. Node pieces under ``gtvn_min_ml`` and
        pieces longer than ``gtvn_max_elongation`` times their width (:func:`elongation`: a vessel's section
        on every slice, not a node) are dropped.
    """
    spacing_zyx = tuple(float(s) for s in like.GetSpacing()[::-1])
    gtvp = labels == 1
    radius = float(postprocessing.get("gtvp_opening_mm", 0.0) or 0.0)
    if postprocessing.get("gtvp_largest_component", True) and gtvp.any():
        gtvp = largest_component(gtvp)
    if radius > 0 and gtvp.any():
        opened = open_mask(gtvp, spacing_zyx, radius)
        gtvp = opened if opened.any() else gtvp
    gtvn = labels == 2
    min_ml = float(postprocessing.get("gtvn_min_ml", 0.0))
    max_elongation = float(postprocessing.get("gtvn_max_elongation", 0.0) or 0.0)
    if (min_ml > 0 or max_elongation > 0) and gtvn.any():
        components, keep = _pieces(gtvn, float(np.prod(spacing_zyx)) / 1000.0, min_ml)
        if max_elongation > 0:
            from scipy import ndimage

            for piece, box in enumerate(ndimage.find_objects(components), start=1):
                if box is not None and keep[piece]:
                    keep[piece] = elongation(components[box] == piece, spacing_zyx) <= max_elongation
        gtvn = keep[components]
    out = sitk.GetImageFromArray(gtvp.astype(np.uint8) + 2 * gtvn.astype(np.uint8))  # argmax labels never overlap
    out.CopyInformation(like)
    return out
