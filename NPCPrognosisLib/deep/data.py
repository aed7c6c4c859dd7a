"""The network's view of a patient: one working grid, preprocessed channels, seeded augmentation.

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
keyed by the configuration, so a resumed run does not redo them) it is off the training loop.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.contract import LABEL_NAMES, REFERENCE_SEQUENCE, SEQUENCES
from NPCPrognosisLib.deep.postprocess import opening_self_dice
from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.imaging.geometry import resample_onto
from NPCPrognosisLib.imaging.preprocess import PreprocessConfig, preprocess_images
from NPCPrognosisLib.io.atomic import atomic_path, patient_file
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

    def to_dict(self) -> dict[str, Any]:
        return {"source": "training images", "n_images": self.n_images, "median_spacing_mm": self.median_spacing_mm,
                "median_fov_mm": self.median_fov_mm, "voxel_budget": self.voxel_budget,
                "grid": self.grid.to_dict()}


def derive_grid(references: Sequence[ImageHeader], downsampling: int, *,
                voxel_budget: int = GRID_VOXEL_BUDGET, patch_budget: int = VOXEL_BUDGET) -> GridDerivation:
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
    grid = GridConfig(spacing=grid_spacing, size=size, patch=None if patch == size else patch)
    return GridDerivation(grid=grid, n_images=len(references),
                          median_spacing_mm=[round(float(v), 4) for v in spacing],
                          median_fov_mm=[round(float(v), 2) for v in np.median(fovs, axis=0)],
                          voxel_budget=int(voxel_budget))


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
              binary_value: float | None = None) -> CasePatient:
    """Read, align, preprocess and resample one manifest entry (or reuse its cache file)."""
    from NPCPrognosisLib.io.images import load_patient

    # the key covers the files' contents: a replaced image gets a new cache entry instead of a stale array
    key = config_key(preprocess, grid) + _content_key([entry.images.get(s) for s in SEQUENCES] + [entry.mask])
    cache = None if cache_dir is None else patient_file(cache_dir, entry.patient_id, f"_{key}.npz")
    data = np.load(cache) if cache is not None and cache.exists() else {}
    if "opening_dice" in data:  # caches written before the opening was derived are made again
        image, label, opening_dice = data["image"], data["label"], data["opening_dice"]
    else:
        patient = load_patient(entry.patient_id, entry.images, entry.mask)
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


@dataclass
class AugmentConfig:
    """MONAI augmentation: small because volumes carry prognosis (a 10% zoom is a 33% volume change)."""

    flip_lr: float = 0.5
    rotate_prob: float = 0.4
    rotate_rad: tuple[float, float, float] = (0.08, 0.08, 0.2)
    zoom_prob: float = 0.3
    zoom_range: tuple[float, float] = (0.95, 1.05)
    smooth_prob: float = 0.2
    intensity_prob: float = 0.5
    intensity_shift: float = 0.1
    intensity_scale: float = 0.1
    #: Per-sequence contrast: each channel's intensities scaled by a factor in [0.3, 1.2] independently. Scanners
    #: and contrast doses differ: a tumour that enhances weakly on one cohort's CET1W (a third of the usual
    #: contrast) was missed by a network that had only seen strong enhancement; scaling one sequence's contrast
    #: down teaches the network to read the other sequences too (nnU-Net augments contrast per channel as well).
    channel_contrast_prob: float = 0.5
    channel_contrast_range: tuple[float, float] = (0.3, 1.2)
    #: Modality dropout: in this share of samples one sequence, drawn at random, is blanked (set to 0, the mean of
    #: its z-scores), so the network learns to contour from any two of the three (HeMIS, Havaei et al. 2016).
    #: Which sequence shows a structure depends on the scanner: family-B nodes stand out on T2W, family-A nodes are
    #: iso-intense on T2W and show only on CET1W. Off by default because it did not validate across families:
    #: trained on B and tested on A (p 0.3, two runs) GTVp 0.830 in both and the far false nodes gone, against
    #: default runs that gave 0.859 and 0.771; trained on A and tested on B, GTVp 0.571 against 0.611 (README,
    #: "One training run is a noisy measurement of transfer").
    channel_drop_prob: float = 0.0
    #: Intensity remapping (Hesse et al. 2020, domain transfer across MRI protocols): in this share of samples
    #: every sequence's intensities go through its own random smooth curve, rising or falling (a falling curve
    #: inverts the sequence's contrast, as T1 and T2 weighting invert many tissues), with random bends that can
    #: flatten the contrast between two tissues. What a structure looks like on each sequence depends on the
    #: scanner and protocol (vessels enhancing on one cohort's CET1W and dark flow voids on another's; nodes bright
    #: on T2W in one family and iso-intense in the other), so the network must learn shape and context as well.
    intensity_remap_prob: float = 0.0
    #: Random shallow networks (GIN, Ouyang et al. 2022, single-source domain generalisation): in this share of
    #: samples the sequences go through a freshly drawn 4-layer convolutional network (kernels 1 or 3 voxels,
    #: 2 channels between layers, leaky ReLU, N(0, 1) weights and biases) that mixes the sequences and bends their
    #: intensities locally, blended with the original by a random weight and brought back to each sequence's mean
    #: and SD. Shapes stay, appearance is redrawn: the network cannot rely on one contrast.
    gin_prob: float = 0.0
    #: Post-contrast T1W without fat suppression: in this share of samples the tissue brightest on the
    #: pre-contrast T1W (fat; enhancing tumour is not bright there) is made bright on the CET1W too, as it is when a
    #: scanner does not suppress fat, and the CET1W is brought back to its mean and SD, so bright fat also lowers
    #: the tumour's z-score as normalisation does on such a scan. A network trained on fat-suppressed scans only
    #: missed the primary tumour on most scans without fat suppression. None (the default): decided from the
    #: training images by :func:`fat_suppression_survey` (on when almost every training CET1W is fat-suppressed).
    fat_unsuppressed_prob: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _channelwise_transform(name: str, keys: str | Sequence[str], prob: float, draw, apply):
    """A MONAI dictionary transform that draws parameters for each channel, then (with probability ``prob``)
    applies them to a copy of every image in ``keys``.

    Built on :class:`monai.transforms.RandomizableTransform`, so :meth:`Compose.set_random_state` seeds it with the
    other transforms and a resumed run redraws the same values. ``draw(R, n_channels)`` is called on every sample,
    applied or not, so the random stream does not depend on the outcome; ``apply(image, params)`` changes the
    float32 copy in place.
    """
    from monai.transforms import MapTransform, RandomizableTransform

    class ChannelwiseTransform(RandomizableTransform, MapTransform):
        def __init__(self) -> None:
            MapTransform.__init__(self, keys)
            RandomizableTransform.__init__(self, prob)
            self._params = None

        def randomize(self, n_channels: int) -> None:  # type: ignore[override]
            super().randomize(None)
            self._params = draw(self.R, n_channels)

        def __call__(self, data):
            out = dict(data)
            first = next(self.key_iterator(out))
            self.randomize(int(out[first].shape[0]))
            if not self._do_transform:
                return out
            for key in self.key_iterator(out):
                image = np.array(out[key], dtype=np.float32, copy=True)
                apply(image, self._params)
                out[key] = image
            return out

    ChannelwiseTransform.__name__ = ChannelwiseTransform.__qualname__ = name
    return ChannelwiseTransform()


def channel_drop_transform(keys: str | Sequence[str], prob: float):
    """MONAI dictionary transform blanking one random channel of ``keys`` with probability ``prob``
    (:func:`_channelwise_transform`: seeded with the others, the channel drawn on every call)."""

    def blank(image: np.ndarray, channel: int) -> None:
        image[channel] = 0

    return _channelwise_transform("RandChannelDropd", keys, prob, lambda R, n: int(R.randint(n)), blank)


def intensity_remap_transform(keys: str | Sequence[str], prob: float, control_points: tuple[int, int] = (4, 8),
                              bend: float = 0.25):
    """MONAI dictionary transform remapping each channel of ``keys`` through its own random curve (probability
    ``prob`` per sample).

    The curve is piecewise linear on ``K`` control points (``K`` drawn from ``control_points``) spread evenly over
    the channel's 0.5-99.5 percentile range: a straight line, rising or falling with equal odds, plus uniform
    bends of up to ``bend`` of the range at each point, then rescaled onto the same range (values outside it
    are held at the ends). MONAI's ``RandIntensityRemap`` implements the same idea, but draws from an unseeded
    generator of its own (a resumed run would not redraw the same curves) and builds its curve from every
    distinct intensity, which is slow on floating-point images. The same number of random values is drawn on
    every call (:func:`_channelwise_transform`).
    """
    low_k, high_k = int(control_points[0]), int(control_points[1])
    if low_k < 2 or high_k < low_k:
        raise ValueError(f"control_points must be 2 <= low <= high, got {control_points}")

    def draw(R, n_channels: int) -> list[tuple[int, bool, np.ndarray]]:
        return [(int(R.randint(low_k, high_k + 1)), bool(R.random_sample() < 0.5), R.uniform(-bend, bend, size=high_k))
                for _ in range(n_channels)]

    def remap(image: np.ndarray, curves: list[tuple[int, bool, np.ndarray]]) -> None:
        for channel, (k, falling, bends) in enumerate(curves):
            lo, hi = np.percentile(image[channel], (0.5, 99.5))
            if not hi > lo:
                continue
            line = np.linspace(0.0, 1.0, k)
            curve = (1.0 - line if falling else line) + bends[:k]
            curve = (curve - curve.min()) / max(float(np.ptp(curve)), 1e-6)
            image[channel] = np.interp(image[channel], np.linspace(lo, hi, k), lo + (hi - lo) * curve)

    return _channelwise_transform("RandIntensityRemapd", keys, prob, draw, remap)


def _with_mean_and_sd(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``values`` shifted and scaled to the mean and SD of ``like`` (constant ``values`` become its mean): an
    augmented sequence keeps the level and spread of the z-scored input it replaces."""
    spread = float(values.std())
    return (values - values.mean()) * (float(like.std()) / spread if spread > 1e-6 else 0.0) + float(like.mean())


def gin_transform(keys: str | Sequence[str], prob: float, n_layers: int = 4, hidden: int = 2,
                  kernels: tuple[int, ...] = (1, 3)):
    """MONAI dictionary transform passing the channels of ``keys`` through a random shallow convolutional network
    (global intensity non-linear augmentation, GIN; Ouyang et al. 2022), with probability ``prob`` per sample.

    The network has ``n_layers`` convolutions (each kernel size drawn from ``kernels``; ``hidden`` channels
    between layers; weights and biases N(0, 1); leaky ReLU after all but the last), is drawn afresh for each
    sample from a seed taken from the transform's own seeded stream (:func:`_channelwise_transform`), and its
    output is blended with the input by a weight drawn from U(0, 1). Each output channel is then given the mean
    and SD of the input channel it replaces, so the augmented sample has the level and spread of the z-scored
    inputs the network sees at inference. Runs in PyTorch on the CPU (about 0.08 s per sample on 64 x 64 x 32).
    """
    import torch
    import torch.nn.functional as F

    def draw(R, n_channels: int) -> tuple[int, float]:
        return int(R.randint(0, 2**31 - 1)), float(R.uniform(0.0, 1.0))

    def apply(image: np.ndarray, params: tuple[int, float]) -> None:
        seed, alpha = params
        generator = torch.Generator().manual_seed(seed)
        x = torch.from_numpy(image)[None]
        n_channels = x.shape[1]
        y = x
        for layer in range(n_layers):
            out_channels = n_channels if layer == n_layers - 1 else hidden
            k = kernels[int(torch.randint(len(kernels), (1,), generator=generator))]
            weight = torch.randn((out_channels, y.shape[1], k, k, k), generator=generator)
            bias = torch.randn((out_channels,), generator=generator)
            y = F.conv3d(y, weight, bias, padding=k // 2)
            if layer < n_layers - 1:
                y = F.leaky_relu(y)
        mixed = (alpha * y + (1.0 - alpha) * x)[0].numpy()
        for channel in range(n_channels):
            image[channel] = _with_mean_and_sd(mixed[channel], image[channel])

    return _channelwise_transform("RandGINd", keys, prob, draw, apply)


def fat_unsuppressed_transform(keys: str | Sequence[str], prob: float, *, quantile: tuple[float, float] = (0.80, 0.95),
                               strength: tuple[float, float] = (0.5, 1.2), channels: Sequence[str] = SEQUENCES):
    """MONAI dictionary transform making a fat-suppressed CET1W look as if fat had not been suppressed (probability
    ``prob`` per sample).

    Fat is the brightest tissue of a (never fat-suppressed) pre-contrast T1W, and on a CET1W without fat
    suppression it is as bright as enhancing tissue. Fat membership is ``(t1 - q) / (t1_99.5 - q)`` clipped to
    0-1, with ``q`` the sample's T1W quantile drawn from ``quantile``; the CET1W gains ``s`` times that membership
    times its own 99.5th-percentile-to-median span (``s`` from ``strength``), and is then brought back to its
    mean and SD, as z-scoring does to a scan with bright fat. ``channels`` names the channel order.
    """
    t1, t1c = list(channels).index("t1"), list(channels).index(REFERENCE_SEQUENCE)

    def draw(R, n_channels: int) -> tuple[float, float]:
        return float(R.uniform(*quantile)), float(R.uniform(*strength))

    def apply(image: np.ndarray, params: tuple[float, float]) -> None:
        q, s = params
        low, high = np.quantile(image[t1], (q, 0.995))
        if not high > low:
            return
        fat = np.clip((image[t1] - low) / (high - low), 0.0, 1.0)
        median, bright = np.quantile(image[t1c], (0.5, 0.995))
        image[t1c] = _with_mean_and_sd(image[t1c] + np.float32(s * (bright - median)) * fat, image[t1c])

    return _channelwise_transform("RandFatUnsuppressedd", keys, prob, draw, apply)


#: Within the tissue (T1W above its median), a CET1W correlating with the T1W above this is taken as not
#: fat-suppressed: the two share TR/TE and differ only by the contrast agent, so without fat suppression they agree
#: everywhere but in enhancing tissue (phantom families: 0.97-0.99 without, at most 0.57 with fat suppression).
UNSUPPRESSED_R = 0.8
#: The fat augmentation is switched on when fewer than this share of the training scans lack fat suppression (a
#: cohort holding both kinds teaches both), at this probability.
UNSUPPRESSED_SHARE = 0.1
FAT_AUGMENT_PROB = 0.3


def cet1w_t1w_correlation(image: np.ndarray, channels: Sequence[str] = SEQUENCES) -> float:
    """Pearson r of CET1W and T1W over the voxels where the T1W is above its median (the tissue, not the air)."""
    t1, t1c = image[list(channels).index("t1")], image[list(channels).index(REFERENCE_SEQUENCE)]
    tissue = t1 > np.median(t1)
    if tissue.sum() < 3 or not (t1[tissue].std() > 0 and t1c[tissue].std() > 0):
        return float("nan")
    return float(np.corrcoef(t1[tissue], t1c[tissue])[0, 1])


def fat_suppression_survey(images: Sequence[np.ndarray]) -> dict[str, Any]:
    """How many training CET1W scans look fat-suppressed, and so whether to train with
    :func:`fat_unsuppressed_transform`; stored in the bundle.

    Parameters
    ----------
    images : sequence of ndarray of shape (3, X, Y, Z)
        The training patients' preprocessed working-grid inputs (channels in :data:`SEQUENCES` order).

    Returns
    -------
    survey : dict
        ``n``, ``n_unsuppressed`` (CET1W-T1W tissue correlation above :data:`UNSUPPRESSED_R`), the median
        correlation and ``augment_prob``: :data:`FAT_AUGMENT_PROB` when fewer than :data:`UNSUPPRESSED_SHARE` of
        the scans lack fat suppression, else 0.
    """
    r = np.array([cet1w_t1w_correlation(image) for image in images], float)
    n_unsuppressed = int(np.sum(r > UNSUPPRESSED_R))
    share = n_unsuppressed / max(len(r), 1)
    return {"source": "training images", "n": len(r), "n_unsuppressed": n_unsuppressed,
            "median_r": float(np.nanmedian(r)) if np.isfinite(r).any() else None, "threshold_r": UNSUPPRESSED_R,
            "augment_prob": FAT_AUGMENT_PROB if share < UNSUPPRESSED_SHARE else 0.0}


def train_transforms(config: AugmentConfig):
    """Built once per run; re-seeded per epoch with :meth:`Compose.set_random_state`."""
    from monai import transforms as T

    keys = ("image", "label")
    return T.Compose([
        T.RandFlipd(keys, prob=config.flip_lr, spatial_axis=0),
        T.RandRotated(keys, range_x=config.rotate_rad[0], range_y=config.rotate_rad[1],
                      range_z=config.rotate_rad[2], prob=config.rotate_prob, mode=("bilinear", "nearest"),
                      padding_mode="border"),
        T.RandZoomd(keys, prob=config.zoom_prob, min_zoom=config.zoom_range[0], max_zoom=config.zoom_range[1],
                    mode=("trilinear", "nearest"), keep_size=True, padding_mode="edge"),
        T.RandGaussianSmoothd("image", prob=config.smooth_prob, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0),
                              sigma_z=(0.25, 0.6)),
        T.RandScaleIntensityd("image", factors=config.intensity_scale, prob=config.intensity_prob),
        T.RandScaleIntensityd("image", factors=tuple(f - 1.0 for f in config.channel_contrast_range),
                              prob=config.channel_contrast_prob, channel_wise=True),
        T.RandShiftIntensityd("image", offsets=config.intensity_shift, prob=config.intensity_prob),
        # only when asked for: a transform at prob 0 would still draw, changing nothing but the random stream
        *[make("image", prob) for make, prob in ((channel_drop_transform, config.channel_drop_prob),
                                                 (intensity_remap_transform, config.intensity_remap_prob),
                                                 (gin_transform, config.gin_prob),
                                                 (fat_unsuppressed_transform, config.fat_unsuppressed_prob))
           if prob],
    ])


def augment(transforms, case: CasePatient, slices: tuple[slice, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One augmented training sample of ``case``: the patch at ``slices`` (the whole grid when None)."""
    from monai.utils import convert_to_numpy

    view = (slice(None),) + tuple(slices) if slices is not None else (slice(None),)
    out = transforms({"image": case.image[view].copy(), "label": case.label[view].copy()})
    return (convert_to_numpy(out["image"]).astype(np.float32),
            np.rint(convert_to_numpy(out["label"])).astype(np.int64))

