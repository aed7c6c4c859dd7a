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


def image_fingerprint(image: sitk.Image) -> str:
    """SHA-256 of an image's voxels, pixel type and size: names exactly the scan or contours a result was computed
    from (an edited mask, or the same file read from another path, is told apart by content, not name).

    The grid's spacing, origin and direction are left out on purpose: NIfTI stores them in 32 bits, so a mask
    written and read back would get another fingerprint for the same contours. Where an image lies is checked
    where images are aligned (:func:`same_geometry`), not here.

    Parameters
    ----------
    image : SimpleITK.Image

    Returns
    -------
    fingerprint : str
        64 hexadecimal digits; equal for two images only when their voxels, pixel type and size are equal.
    """
    import hashlib

    digest = hashlib.sha256()
    digest.update(repr((image.GetPixelIDTypeAsString(), image.GetNumberOfComponentsPerPixel(),
                        image.GetSize())).encode())
    digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    return digest.hexdigest()


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


def geometry_differences(moving: sitk.Image, reference: sitk.Image) -> list[str]:
    """Human-readable differences between two grids (empty when they match within the tolerance)."""
    out = []
    if moving.GetSize() != reference.GetSize():
        out.append(f"size {moving.GetSize()} vs {reference.GetSize()}")
    sm, sr = np.array(moving.GetSpacing()), np.array(reference.GetSpacing())
    if not np.allclose(sm, sr, rtol=GEOMETRY_TOLERANCE, atol=0):
        out.append(f"spacing {tuple(round(float(v), 4) for v in sm)} vs {tuple(round(float(v), 4) for v in sr)} mm")
    shift = np.subtract(moving.GetOrigin(), reference.GetOrigin())
    if np.any(np.abs(shift) > GEOMETRY_TOLERANCE * sr.min() * 10):
        out.append(f"origin differs by {tuple(round(float(v), 3) for v in shift)} mm")
    dm, dr = np.array(moving.GetDirection()).reshape(3, 3), np.array(reference.GetDirection()).reshape(3, 3)
    if not np.allclose(dm, dr, atol=GEOMETRY_TOLERANCE):
        flipped = [axis for axis in range(3) if np.allclose(dm[:, axis], -dr[:, axis], atol=GEOMETRY_TOLERANCE)]
        out.append("direction differs" + (f" (axis {', '.join('xyz'[a] for a in flipped)} flipped)" if flipped
                                          else f" (largest cosine difference {np.abs(dm - dr).max():.3f})"))
    return out


def crop_offset(moving: sitk.Image, reference: sitk.Image) -> tuple[int, int, int] | None:
    """Index offset when ``moving`` is a crop of ``reference``'s grid (same spacing and direction, origin on a
    voxel of the reference, box inside it); None otherwise."""
    if not (np.allclose(moving.GetSpacing(), reference.GetSpacing(), rtol=GEOMETRY_TOLERANCE, atol=0)
            and np.allclose(moving.GetDirection(), reference.GetDirection(), atol=GEOMETRY_TOLERANCE)):
        return None
    index = np.array(reference.TransformPhysicalPointToContinuousIndex(moving.GetOrigin()))
    rounded = np.round(index)
    if np.any(np.abs(index - rounded) > 10 * GEOMETRY_TOLERANCE):
        return None
    lo = rounded.astype(int)
    hi = lo + np.array(moving.GetSize())
    if np.any(lo < 0) or np.any(hi > np.array(reference.GetSize())):
        return None
    return int(lo[0]), int(lo[1]), int(lo[2])


def paste_into(moving: sitk.Image, reference: sitk.Image, offset: tuple[int, int, int]) -> sitk.Image:
    """A crop put back on the full reference grid (zeros elsewhere), voxel for voxel: no interpolation."""
    array = np.zeros(sitk.GetArrayViewFromImage(reference).shape, sitk.GetArrayViewFromImage(moving).dtype)
    part = sitk.GetArrayFromImage(moving)
    x, y, z = offset
    array[z:z + part.shape[0], y:y + part.shape[1], x:x + part.shape[2]] = part
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(reference)
    return out
