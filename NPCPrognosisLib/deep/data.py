"""The network's view of a patient: one working grid, preprocessed channels, seeded patches and batches.

Why one working grid. Scanners deliver 0.8-2 mm in-plane pixels, 3-5 mm slices, RAS or LPS, sometimes tilted. A
convolution learns patterns in voxels, so every patient is resampled (one SimpleITK resample from the aligned
CET1W grid, which also undoes flips and oblique tilts) onto an axis-aligned LPS grid with one spacing and one
box centred on the image's physical centre. ``train-net`` derives that grid from the training images
(:func:`derive_grid`: the median field of view, the median slice spacing, and the in-plane spacing that four
patches of 64 x 64 x 32 voxels allow) and stores it in the bundle, so a cohort scanned differently gets a grid
that fits it instead of a box fixed for another cohort. A patch is what one training step on 2 CPU cores
affords; training draws patches (:func:`sample_patch`) and inference stitches windows of the same size. The
class probabilities, not labels, are resampled back linearly before the argmax: taking ground-truth masks to a
3 x 3 x 4 mm grid and back keeps Dice 0.975 (GTVp) and 0.94 (GTVn) on family-B patients (0.99/0.98 at
2 x 2 x 4 mm), but family C's nodes are half as large, and on a one-patch grid of 3.3 mm the network found them
late or not at all.

Why cache. N4 and the resample cost ~1 s per patient; done once per patient and kept as arrays (and on disk,
keyed by the configuration, so a resumed run does not redo them) it is off the training loop. A cache file that
cannot be read is made again, never taken for the patient's arrays (:func:`cached_case`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.contract import LABEL_NAMES, REFERENCE_SEQUENCE, SEQUENCES
from NPCPrognosisLib.deep.postprocess import opening_self_dice
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.imaging.geometry import resample_onto
from NPCPrognosisLib.imaging.preprocess import PreprocessConfig, preprocess_images
from NPCPrognosisLib.io.atomic import atomic_path, patient_file, read_cached
from NPCPrognosisLib.io.images import ImageHeader


@dataclass
class GridConfig:
    """The working grid: LPS axis-aligned, ``spacing`` mm (x, y, z), ``size`` voxels (x, y, z).

    ``patch`` (voxels, x y z) is what one training sample and one inference window hold when the grid is larger
    than a CPU step affords: training draws patches (:func:`sample_patch`), inference stitches windows (MONAI's
    sliding-window inferer). ``None``: the whole grid is one patch.
    """

    spacing: tuple[float, float, float] = (3.0, 3.0, 4.0)
    size: tuple[int, int, int] = (64, 64, 32)
    #: Preprocessed intensities are z-scores x 100 (radiomics convention); the network sees z-scores.
    input_scale: float = 0.01
    patch: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"spacing": list(self.spacing), "size": list(self.size), "input_scale": self.input_scale}
        if self.patch is not None:
            data["patch"] = list(self.patch)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GridConfig:
        patch = data.get("patch")
        return cls(spacing=tuple(float(v) for v in data["spacing"]), size=tuple(int(v) for v in data["size"]),
                   input_scale=float(data.get("input_scale", 0.01)),
                   patch=None if patch is None else tuple(int(v) for v in patch))

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """The patch, no larger than the grid along any axis."""
        patch = self.size if self.patch is None else self.patch
        return tuple(min(int(p), int(g)) for p, g in zip(patch, self.size))

    @property
    def patched(self) -> bool:
        """Whether training and inference work on patches of the grid rather than on the whole of it."""
        return self.patch_size != tuple(int(g) for g in self.size)


#: Voxels of one training patch (and inference window) when the grid is derived from the data: what one training
#: step on 2 CPU cores affords (64 x 64 x 32, the grid the demo network was trained on).
VOXEL_BUDGET = 64 * 64 * 32
#: Voxels of the derived working grid: four patches. One patch as the whole grid put 3.3 mm between in-plane
#: voxels on a cohort scanned with a 210 mm field of view, where a 10 mm node is three voxels across; metastatic
#: nodes were then found late in training or not at all (family C, held-out GTVn Dice 0.53). Four patches halve
#: the in-plane spacing at the same cost per training step; inference stitches about nine windows.
GRID_VOXEL_BUDGET = 4 * VOXEL_BUDGET
#: Bounds on the derived field of view (mm, x y z): at least the nasopharynx and upper neck, at most a head.
FOV_LIMITS_MM = ((96.0, 96.0, 64.0), (256.0, 256.0, 192.0))
#: Images read to derive the grid: medians settle long before a whole cohort is read.
GRID_SAMPLE = 40


@dataclass
class GridDerivation:
    """How :func:`derive_grid` chose the working grid; stored in the network bundle."""

    grid: GridConfig
    n_images: int
    median_spacing_mm: list[float]
    median_fov_mm: list[float]
    voxel_budget: int
    #: Shortest and longest head-foot extent of the training scans read (mm, along each scan's own slice axis).
    height_range_mm: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": "training images", "n_images": self.n_images, "median_spacing_mm": self.median_spacing_mm,
                "median_fov_mm": self.median_fov_mm, "height_range_mm": self.height_range_mm,
                "voxel_budget": self.voxel_budget, "grid": self.grid.to_dict()}


def derive_grid(references: Sequence[ImageHeader], downsampling: int, *,
                voxel_budget: int = GRID_VOXEL_BUDGET, patch_budget: int = VOXEL_BUDGET,
                head_foot_room: bool = False) -> GridDerivation:
    """The working grid (and its training patch) from the training images' own spacing and field of view.

    The box is the median physical extent of the reference (CET1W) images along the patient axes (clipped to
    :data:`FOV_LIMITS_MM`), so it holds what the cohort's scans hold. The slice spacing is the median slice
    spacing (never finer than in-plane), and the in-plane spacing the finer of the median in-plane spacing and
    what ``voxel_budget`` allows for that box; sizes are multiples of the network's ``downsampling`` and the
    spacing is stretched so that the box is covered exactly. The patch takes every slice up to 32 (a node
    spans few slices; context across slices is cheap) and the largest square in-plane size within
    ``patch_budget``.

    Parameters
    ----------
    references : sequence of ImageHeader
        Headers of the reference sequence of (a sample of) the training patients (:func:`read_header`).
    downsampling : int
        Every grid dimension must be a multiple of this (:attr:`NetworkConfig.downsampling`).
    voxel_budget : int, default GRID_VOXEL_BUDGET
        Upper bound (up to rounding) on the number of voxels of the grid.
    patch_budget : int, default VOXEL_BUDGET
        Upper bound on the number of voxels of a training patch.
    head_foot_room : bool, default False
        Make the grid at least a patch and a half high (up to half a patch taller than the scans), so training
        patches move head-foot
        (:attr:`~NPCPrognosisLib.deep.training.TrainConfig.head_foot_room`).

    Returns
    -------
    derivation : GridDerivation
        The grid and the medians it came from.
    """
    if not references:
        raise InputError("no training image to derive the working grid from", fix="check the manifest")
    spacings, fovs = [], []
    for header in references:
        direction = np.abs(np.array(header.direction, float).reshape(3, 3))
        spacing = np.array(header.spacing, float)
        extent = np.array(header.size, float) * spacing
        axis = direction.argmax(axis=0)  # patient axis each image axis runs along
        ordered_spacing, ordered_extent = np.empty(3), np.empty(3)
        ordered_spacing[axis], ordered_extent[axis] = spacing, extent
        spacings.append(ordered_spacing)
        fovs.append(ordered_extent)
    spacing = np.median(spacings, axis=0)
    fov = np.clip(np.median(fovs, axis=0), *FOV_LIMITS_MM)

    def multiple(value: float) -> int:
        return max(downsampling, int(round(value / downsampling)) * downsampling)

    in_plane = float(min(spacing[0], spacing[1]))
    nz = multiple(fov[2] / max(float(spacing[2]), in_plane))
    per_slice = voxel_budget / nz
    target_xy = max(in_plane, math.sqrt(fov[0] * fov[1] / per_slice))
    size = (multiple(fov[0] / target_xy), multiple(fov[1] / target_xy), nz)
    grid_spacing = tuple(round(float(f / n), 4) for f, n in zip(fov, size))
    patch_z = min(nz, max(downsampling, 32 // downsampling * downsampling))
    patch_xy = max(downsampling, int(math.sqrt(patch_budget / patch_z)) // downsampling * downsampling)
    patch = (min(size[0], patch_xy), min(size[1], patch_xy), patch_z)
    if head_foot_room:
        # room for the patch to move head-foot: a patch holding every slice of the grid always sees the anatomy at
        # the same height, and the network learns that height. The grid is taller than the scans by half a patch
        # (filled with air), so training patches start anywhere in that half patch (docs, "Room to move head-foot")
        room = max(downsampling, patch_z // 2 // downsampling * downsampling)
        size = (size[0], size[1], max(nz, patch_z + room))
    grid = GridConfig(spacing=grid_spacing, size=size, patch=None if patch == size else patch)
    return GridDerivation(grid=grid, n_images=len(references),
                          median_spacing_mm=[round(float(v), 4) for v in spacing],
                          median_fov_mm=[round(float(v), 2) for v in np.median(fovs, axis=0)],
                          voxel_budget=int(voxel_budget),
                          height_range_mm=[round(float(np.min(fovs, axis=0)[2]), 2),
                                           round(float(np.max(fovs, axis=0)[2]), 2)])


def working_grid(reference: sitk.Image, grid: GridConfig) -> sitk.Image:
    """An empty image defining the working grid, centred on ``reference``'s physical centre, identity direction."""
    size = np.array(reference.GetSize(), dtype=float)
    centre = np.array(reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in (size - 1) / 2.0]))
    spacing = np.array(grid.spacing, dtype=float)
    origin = centre - spacing * (np.array(grid.size) - 1) / 2.0
    out = sitk.Image([int(v) for v in grid.size], sitk.sitkUInt8)
    out.SetSpacing([float(v) for v in spacing])
    out.SetOrigin([float(v) for v in origin])
    out.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return out


def covering_grid(reference: sitk.Image, grid: GridConfig,
                  height_range_mm: Sequence[float] | None = None) -> tuple[GridConfig, str | None]:
    """The working grid for inference on ``reference``: grown to hold the whole scan, and what is still left out.

    The trained grid is the training scans' median field of view, centred on each scan: a longer scan (one that
    also covers the lower neck) would put the nasopharynx or the lower nodes outside it, and everything outside
    would be labelled background without a word. A network that works on patches segments a grid of any size
    (windows are stitched), so its grid grows on each axis to the scan's extent, up to :data:`FOV_LIMITS_MM`'s
    largest box or the trained grid if that is larger; a whole-grid network keeps its grid. Whatever the grid
    still does not hold is named in the returned warning (None when it holds the scan).

    A network whose training patches held every slice of its box learned at which height of the box the anatomy
    lies, so a scan taller or shorter than its training scans (``height_range_mm``, recorded in the bundle; for older
    bundles within :data:`HEIGHT_TOLERANCE` of the box) is named in the warning as well.
    """
    size = np.array(reference.GetSize(), dtype=float)
    corners = np.array([reference.TransformContinuousIndexToPhysicalPoint(
        [float(c) for c in np.where(np.array(bits, bool), size - 0.5, -0.5)]) for bits in np.ndindex(2, 2, 2)])
    extent = corners.max(axis=0) - corners.min(axis=0)
    spacing, trained = np.array(grid.spacing, float), np.array(grid.size, int)
    out = grid
    if grid.patched:
        cover = np.minimum(extent, np.maximum(np.array(FOV_LIMITS_MM[1]), trained * spacing))
        # head-foot the grid follows the scan (at least one window): a grid trained with head-foot room is taller
        # than the scans so that training patches could move, and windows over its air would only cost time
        floor = np.array([trained[0], trained[1], int(grid.patch_size[2])])
        grown = np.maximum(floor, np.ceil(cover / spacing - 1e-6).astype(int))
        if not np.array_equal(grown, trained):
            out = GridConfig(spacing=grid.spacing, size=tuple(int(v) for v in grown), input_scale=grid.input_scale,
                             patch=grid.patch)
    held = np.array(out.size, float) * spacing
    short = extent - held > spacing  # more than a voxel of the scan outside the grid on this axis
    messages = []
    if short.any():
        axes = ", ".join(f"{name} {e:.0f} mm of which {h:.0f} mm" for name, e, h, s in
                         zip(("left-right", "front-back", "head-foot"), extent, held, short) if s)
        messages.append(f"the CET1W covers more than the network segments ({axes}, about the scan's centre): nothing "
                        "outside is contoured; check that the tumour and nodes lie inside, or crop the scan")
    if int(grid.patch_size[2]) == int(trained[2]):
        # every training patch held every slice, so the network learned at which height of its box the anatomy
        # lies; a scan covering more or less of the neck moves the anatomy in the box (a phantom scan 6 slices longer:
        # GTVp Dice 0.93 -> 0.66, 12 longer: the primary drawn 89 mm from the tumour). The scan's own height, along
        # its slice axis: a tilted scan's box is taller than the scan
        direction = np.abs(np.array(reference.GetDirection(), float).reshape(3, 3))
        axis = int(direction[2].argmax())
        height = float(reference.GetSize()[axis] * reference.GetSpacing()[axis])
        trained_height = float(trained[2] * spacing[2])
        low, high = ((float(height_range_mm[0]) * (1 - HEIGHT_MARGIN), float(height_range_mm[1]) * (1 + HEIGHT_MARGIN))
                     if height_range_mm else
                     (trained_height * (1 - HEIGHT_TOLERANCE), trained_height * (1 + HEIGHT_TOLERANCE)))
        if not low <= height <= high:
            advice = (f"check the contours, or crop the scan head-foot to about {trained_height:.0f} mm around the "
                      "nasopharynx" if height > high else "check the contours")
            messages.append(f"the CET1W is {height:.0f} mm long head-foot and the network's training scans "
                            f"{low:.0f}-{high:.0f} mm: this network learned where in its training scans the tumour "
                            f"lies, and may contour the wrong place; {advice}")
    return out, "; ".join(messages) or None


#: Share of the trained box's height by which a scan may differ before a network trained on whole-height patches is
#: warned about, for bundles that do not record their training scans' heights (padded by 6 slices, about 20 %, the
#: phantom scans lost 0.03-0.11 of their GTVp Dice).
HEIGHT_TOLERANCE = 0.15
#: Margin around the training scans' recorded height range.
HEIGHT_MARGIN = 0.05


def to_array_xyz(image: sitk.Image) -> np.ndarray:
    """SimpleITK arrays are (z, y, x); the network works in (x, y, z) so sizes read like the grid config."""
    return np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)))


def from_array_xyz(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.CopyInformation(like)
    return image


def network_input(preprocessed: Mapping[str, sitk.Image], grid_image: sitk.Image, grid: GridConfig) -> np.ndarray:
    """(3, X, Y, Z) float32 on the working grid; outside the scanned field is filled with the image's air level."""
    channels = []
    for name in SEQUENCES:
        image = preprocessed[name]
        air = float(np.percentile(sitk.GetArrayViewFromImage(image), 1))
        channels.append(to_array_xyz(resample_onto(image, grid_image, default=air)) * grid.input_scale)
    return np.stack(channels).astype(np.float32)


def grid_input(preprocessed: Mapping[str, sitk.Image], grid: GridConfig) -> tuple[np.ndarray, sitk.Image]:
    """Preprocessed sequences on the CET1W grid -> (network input array, working-grid image)."""
    missing = [s for s in SEQUENCES if s not in preprocessed]
    if missing:
        raise InputError(f"sequence(s) {missing} missing for the segmentation network",
                         fix="provide t1, t2 and t1c (the network was trained on all three)")
    grid_image = working_grid(preprocessed[REFERENCE_SEQUENCE], grid)
    return network_input(preprocessed, grid_image, grid), grid_image


def prepare_images(images: Mapping[str, sitk.Image], preprocess: PreprocessConfig,
                   grid: GridConfig) -> tuple[np.ndarray, sitk.Image]:
    """Aligned raw sequences -> preprocessed -> (network input array, working-grid image)."""
    return grid_input(preprocess_images({s: images[s] for s in SEQUENCES if s in images}, preprocess), grid)


def config_key(preprocess: PreprocessConfig, grid: GridConfig) -> str:
    text = json.dumps({"p": preprocess.to_dict(), "g": grid.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _content_key(paths: Sequence[Path | None]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        path = None if path is None else Path(path)
        if path is not None and path.is_file():
            digest.update(path.read_bytes())
        elif path is not None and path.is_dir():  # DICOM folder: names, sizes and times of its files
            digest.update(repr(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                      for p in path.iterdir())).encode())
        else:
            digest.update(repr(path).encode())
    return digest.hexdigest()[:8]


@dataclass
class CasePatient:
    """One training case on the working grid."""

    patient_id: str
    image: np.ndarray  # (3, X, Y, Z) float32
    label: np.ndarray  # (1, X, Y, Z) uint8
    time: float
    event: bool
    binary: float = float("nan")
    #: Dice of the patient's GTVp, in its own geometry, with itself opened by each of
    #: :data:`~NPCPrognosisLib.deep.postprocess.OPENING_RADII_MM` (None without a GTVp): what the bundle's opening of
    #: automatic primaries is chosen from (:func:`~NPCPrognosisLib.deep.postprocess.choose_opening_radius`).
    gtvp_opening_dice: tuple[float, ...] | None = None


def load_case(entry: Any, endpoint: str, preprocess: PreprocessConfig, grid: GridConfig,
              cache_dir: Path | None = None, binary_column: str | None = None,
              binary_value: float | None = None, foreign_ids: frozenset[str] = frozenset()) -> CasePatient:
    """Read, align, preprocess and resample one manifest entry (or reuse its cache file); a DICOM series carrying
    one of ``foreign_ids`` (the manifest's IDs) is another patient's and refused."""
    from NPCPrognosisLib.io.images import load_patient

    # the key covers the files' contents: a replaced image gets a new cache entry instead of a stale array
    key = config_key(preprocess, grid) + _content_key([entry.images.get(s) for s in SEQUENCES] + [entry.mask])
    cache = None if cache_dir is None else patient_file(cache_dir, entry.patient_id, f"_{key}.npz")
    stored = cached_case(cache, entry.patient_id)
    if stored is not None:
        image, label, opening_dice = stored
    else:
        patient = load_patient(entry.patient_id, entry.images, entry.mask, foreign_ids=foreign_ids)
        if patient.mask is None:
            raise InputError("no mask: the segmentation network trains on contoured patients",
                             patient_id=entry.patient_id, column="mask", fix="add the mask path to the manifest")
        image, grid_image = prepare_images(patient.images, preprocess, grid)
        label = to_array_xyz(resample_onto(patient.mask, grid_image, is_label=True))[None]
        gtvp = sitk.GetArrayViewFromImage(patient.mask) == LABEL_NAMES["gtvp"]
        opening_dice = np.asarray(opening_self_dice(gtvp, patient.mask.GetSpacing()[::-1]) if gtvp.any() else [])
        if cache is not None:
            with atomic_path(cache) as tmp:
                np.savez(tmp, image=image, label=label, opening_dice=opening_dice)
    return CasePatient(entry.patient_id, image.astype(np.float32), label.astype(np.uint8),
                       float(entry.outcomes[f"{endpoint}_time"]), bool(entry.outcomes[f"{endpoint}_event"] > 0),
                       float("nan") if binary_value is None else float(binary_value),
                       tuple(float(v) for v in opening_dice) if len(opening_dice) else None)


def cached_case(cache: Path | None, patient_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A patient's preprocessed arrays from its cache file: (image, label, opening Dice), or None to make them.

    Why: the cache outlives the run that wrote it; a file that is not whole (a full disk, a partial copy) made
    ``train-net`` stop with a zip error at every run until it was found and deleted. It is now made again and
    replaced, with a warning naming it. A cache written before the opening was derived is made again too.

    Parameters
    ----------
    cache : Path or None
        The patient's cache file (:func:`load_case` names it); None or missing: not cached.
    patient_id : str
        Named in the warning.

    Returns
    -------
    tuple of numpy.ndarray or None
        The three arrays, read whole.
    """
    def read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        with np.load(path) as data:
            if "opening_dice" not in data:
                return None
            return data["image"], data["label"], data["opening_dice"]

    return read_cached(cache, read, patient_id, "the preprocessing cache file", "the patient is prepared again and "
                       "the file replaced")


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 31-bit seed per (run seed, epoch, purpose): a resumed run redraws exactly what the original drew."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(1)[0] & 0x7FFFFFFF)


#: Share of training patches placed to hold a contoured voxel (nnU-Net's foreground oversampling); the rest lie
#: anywhere in the grid, so the network also sees the neck and skull base far from any tumour.
FOREGROUND_PATCH_SHARE = 0.67


def sample_patch(label: np.ndarray, patch: Sequence[int], rng: np.random.Generator,
                 foreground_share: float = FOREGROUND_PATCH_SHARE) -> tuple[tuple[slice, ...], bool]:
    """Where one training patch lies in a case's grid, and whether it was placed on a contoured voxel.

    With probability ``foreground_share`` a structure present in ``label`` is drawn (each structure equally
    often, so the small nodes are drawn as often as the primary), then one of its voxels, and the patch is
    placed so that voxel falls anywhere inside it with equal chance; otherwise the patch lies anywhere. The same
    number of random values is drawn either way, so the stream does not depend on the images.

    Parameters
    ----------
    label : ndarray of shape (1, X, Y, Z)
        The case's labels on the working grid.
    patch : sequence of int
        Patch size (x, y, z), no larger than the grid.
    rng : numpy.random.Generator
        The epoch's patch stream.
    foreground_share : float, default FOREGROUND_PATCH_SHARE
        Share of patches placed on a contoured voxel.

    Returns
    -------
    slices : tuple of slice
        The patch's (x, y, z) slices.
    anchored : bool
        True when the patch was placed on a contoured voxel.
    """
    shape = label.shape[1:]
    u_fg, u_class, u_voxel = rng.random(3)
    offsets = rng.random(3)
    classes = [int(v) for v in np.unique(label) if v > 0]
    anchored = bool(classes) and u_fg < foreground_share
    slices = []
    if anchored:
        voxels = np.argwhere(label[0] == classes[min(int(u_class * len(classes)), len(classes) - 1)])
        anchor = voxels[min(int(u_voxel * len(voxels)), len(voxels) - 1)]
    for ax in range(3):
        size, room = int(patch[ax]), int(shape[ax]) - int(patch[ax])
        if anchored:  # the anchor at a uniform position inside the patch, the patch inside the grid
            start = int(anchor[ax]) - min(int(offsets[ax] * size), size - 1)
        else:
            start = int(offsets[ax] * (room + 1))
        start = max(0, min(start, room))
        slices.append(slice(start, start + size))
    return tuple(slices), anchored


def box_slices(centre: Sequence[float], box: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """A box of ``box`` voxels (clipped to ``shape``) centred on the voxel index ``centre``, shifted to lie inside
    a grid of ``shape``."""
    slices = []
    for ax in range(len(shape)):
        size = min(int(box[ax]), int(shape[ax]))
        start = max(0, min(int(round(float(centre[ax]) - (size - 1) / 2.0)), int(shape[ax]) - size))
        slices.append(slice(start, start + size))
    return tuple(slices)


def centred_patch(label: np.ndarray, patch: Sequence[int]) -> tuple[slice, ...]:
    """The patch centred on the contours' bounding box (the grid's centre without contours), inside the grid:
    the fixed view of a validation case checked after every epoch."""
    shape = label.shape[1:]
    found = np.argwhere(label[0] > 0)
    centre = ((found.min(0) + found.max(0)) / 2.0) if found.size else (np.array(shape) - 1) / 2.0
    return box_slices(centre, patch, shape)


def event_balanced_batches(events: Sequence[bool], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffle, then deal events round-robin over the batches before the censored cases.

    The Cox partial likelihood of a batch without an event is zero (no gradient); spreading events evenly, as
    DeepMTS balances events and censored cases, gives every step a risk set to learn from.
    """
    rng = np.random.default_rng(seed)
    idx_event = [int(i) for i in rng.permutation(np.flatnonzero(np.asarray(events, bool)))]
    idx_cens = [int(i) for i in rng.permutation(np.flatnonzero(~np.asarray(events, bool)))]
    n = len(events)
    n_batches = max(1, int(np.ceil(n / batch_size)))
    batches: list[list[int]] = [[] for _ in range(n_batches)]
    for k, i in enumerate(idx_event):
        batches[k % n_batches].append(i)
    k = 0
    for i in idx_cens:
        while len(batches[k % n_batches]) >= batch_size:
            k += 1
        batches[k % n_batches].append(i)
        k += 1
    order = rng.permutation(n_batches)
    return [batches[j] for j in order if batches[j]]
