"""Voxel grids in physical space: comparing them, resampling between them, bounding boxes.

Geometry is sacred: everything downstream (radiomics, segmentation, the Slicer overlay) assumes the sequences
and mask of a patient describe the same voxels. One resampling function serves them all.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

#: Relative tolerance for spacing/origin/direction comparisons (1e-3 of a voxel is far below any scanner's precision).
GEOMETRY_TOLERANCE = 1e-3


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = GEOMETRY_TOLERANCE) -> bool:
    """Same voxel grid up to ``tolerance`` (relative to the voxel size for origins)."""
    if a.GetSize() != b.GetSize():
        return False
    spacing_a, spacing_b = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if not np.allclose(spacing_a, spacing_b, rtol=tolerance, atol=0):
        return False
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance):
        return False
    return bool(np.all(np.abs(np.subtract(a.GetOrigin(), b.GetOrigin())) <= tolerance * spacing_a.min() * 10))


def physical_bounds(image: sitk.Image, index_box: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box of the image (or of an index box [[lo...], [hi...]] in it)."""
    size = np.array(image.GetSize())
    lo, hi = (np.zeros(3), size - 1) if index_box is None else (index_box[0], index_box[1])
    corners = [[lo[0] if i & 1 == 0 else hi[0], lo[1] if i & 2 == 0 else hi[1], lo[2] if i & 4 == 0 else hi[2]]
               for i in range(8)]
    points = np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner]) for corner in corners])
    half = np.array(image.GetSpacing()).max() / 2
    return points.min(axis=0) - half, points.max(axis=0) + half


def overlap_fraction(moving: sitk.Image, reference: sitk.Image, index_box: np.ndarray | None = None) -> float:
    """Share of ``moving``'s physical box (or of an index box in it) that lies inside ``reference``'s box."""
    lo_m, hi_m = physical_bounds(moving, index_box)
    lo_r, hi_r = physical_bounds(reference)
    inter = np.clip(np.minimum(hi_m, hi_r) - np.maximum(lo_m, lo_r), 0, None)
    volume = np.prod(hi_m - lo_m)
    return float(np.prod(inter) / volume) if volume > 0 else 0.0


def resample_onto(image: sitk.Image, reference: sitk.Image, *, is_label: bool = False,
                  default: float = 0.0) -> sitk.Image:
    """``image`` sampled on ``reference``'s grid, in physical space (no registration).

    Parameters
    ----------
    image : SimpleITK.Image
        What to resample.
    reference : SimpleITK.Image
        The grid (size, spacing, origin, direction) to sample on.
    is_label : bool, default False
        Nearest neighbour into uint8 for label maps; linear into float32 for intensities and probabilities.
    default : float, default 0
        The value outside ``image``'s field of view.

    Returns
    -------
    image : SimpleITK.Image
        On ``reference``'s grid.
    """
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    pixel = sitk.sitkUInt8 if is_label else sitk.sitkFloat32
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default), pixel)


def label_box(mask: sitk.Image) -> np.ndarray | None:
    """Index-space bounding box [[x0,y0,z0],[x1,y1,z1]] of all non-zero labels, or None when empty."""
    array = sitk.GetArrayViewFromImage(mask)
    nz = np.nonzero(array)
    if nz[0].size == 0:
        return None
    zyx_lo = [int(a.min()) for a in nz]
    zyx_hi = [int(a.max()) for a in nz]
    return np.array([zyx_lo[::-1], zyx_hi[::-1]], dtype=float)
