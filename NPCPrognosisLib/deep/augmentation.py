"""Training augmentation of the network's patches (MONAI transforms, re-seeded every epoch).

Why so mild in geometry and so strong in contrast: tumour volume carries prognosis (a 10 % zoom is a 33 % volume
change), so rotations and zooms stay small; but scanners, protocols and contrast doses change how each sequence
shows a tumour, so each sequence's contrast is scaled on its own, and when (almost) every training CET1W is
fat-suppressed some samples are made to look as if it were not (:func:`fat_suppression_survey`). The transforms
the project tried and left off (modality dropout, intensity remapping, random shallow networks, vessels and lumps
of random appearance) stay available behind their probabilities, off by default, with what they did in
``docs/segmentation-network.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from NPCPrognosisLib.contract import REFERENCE_SEQUENCE, SEQUENCES
from NPCPrognosisLib.deep.data import CasePatient


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
    #: default runs that gave 0.859 and 0.771; trained on A and tested on B, GTVp 0.571 against 0.611
    #: (docs/segmentation-network.md, "One training run is a noisy measurement of transfer").
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
    #: Vessels of random appearance: in this share of samples 1-4 straight tubes (radius 1.5-7 mm, the neck's
    #: vertebral arteries to its jugular veins; within 30 degrees of the cranio-caudal axis) are drawn into the
    #: background, each sequence inside a tube shifted to a random level of its own (0.5-99.5th percentile of the
    #: patch), the label untouched. The same vessel is a dark flow void on every spin-echo sequence and bright on a
    #: gradient-echo contrast scan; a network that has seen only one appearance takes the other, a round section on
    #: each slice, for a node. Tubes teach that shape, not level, makes a vessel. Off by default: trained on
    #: family B (two seeds) family-A nodes +0.10 / +0.14 Dice and the far false nodes gone, but trained on family A
    #: and tested on B the primary -0.048 and the nodes only +0.034 (their false nodes there are round: discs and
    #: glands), and over the three runs the primary moved -0.039, +0.006, -0.048 (docs/segmentation-network.md).
    vessel_prob: float = 0.0
    #: Unlabelled lumps of random appearance: in this share of samples 1-3 ellipsoids (semi-axes 3-12 mm each,
    #: turned at random) are drawn into the background as the vessels are, each sequence at its own random level,
    #: only where a whole lump fits apart from the contours. Every neck holds lumps that are not nodes (glands,
    #: discs, muscle bellies) whose look on each sequence depends on the scanner; a network that has seen none of
    #: one kind takes it for a node when its level is node-like. Lumps of every level that are never labelled are
    #: meant to teach that level alone does not make a node. Off by default: over three training seeds in each
    #: direction between phantom families the other family's nodes moved A -> B +0.074 / +0.099 / +0.000 Dice and
    #: B -> A +0.078 / +0.068 / -0.008, the primary A -> B -0.032 / +0.015 / -0.004 and B -> A -0.001 / -0.036 /
    #: +0.002, short of the rule set before the runs (nodes up in every run, mean primary change no worse than -0.01
    #: in each direction; docs/segmentation-network.md, "Lumps apart from the contours", "A third seed").
    lump_prob: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _channelwise_transform(name: str, keys: str | Sequence[str], prob: float, draw, apply,
                           label_key: str | None = None):
    """A MONAI dictionary transform that draws parameters for each channel, then (with probability ``prob``)
    applies them to a copy of every image in ``keys``.

    Built on :class:`monai.transforms.RandomizableTransform`, so :meth:`Compose.set_random_state` seeds it with the
    other transforms and a resumed run redraws the same values. ``draw(R, n_channels)`` is called on every sample,
    applied or not, so the random stream does not depend on the outcome; ``apply(image, params)`` changes the
    float32 copy in place; with ``label_key``, ``apply(image, params, label)`` also reads (never changes) that
    entry's label map.
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
            extra = () if label_key is None else (np.asarray(out[label_key]),)
            for key in self.key_iterator(out):
                image = np.array(out[key], dtype=np.float32, copy=True)
                apply(image, self._params, *extra)
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


#: Most tubes one sample gains from :func:`vessel_transform`.
MAX_VESSELS = 4


def vessel_transform(keys: str | Sequence[str], prob: float, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                     radius_mm: tuple[float, float] = (1.5, 7.0), max_tilt_rad: float = 0.52,
                     label_key: str = "label"):
    """MONAI dictionary transform drawing 1 to :data:`MAX_VESSELS` straight tubes of random appearance into the
    background of ``keys`` (probability ``prob`` per sample).

    Each tube passes through a uniformly drawn point of the patch, within ``max_tilt_rad`` of the slice axis (the
    neck's vessels run cranio-caudally), with a radius drawn from ``radius_mm`` (``spacing``: the grid's voxel
    size in mm, x y z) and a one-voxel partial-volume edge. Inside it every channel is shifted, by the tube's
    weight, from its mean there to its own random level (a quantile of that channel in the patch drawn from
    0.005-0.995), so the texture stays and only the level changes; channels are drawn independently, which gives
    dark flow voids, vessels bright on one sequence only and everything between. Voxels of, or next to, a labelled
    structure are left as they were, so the labels stay true. The same number of random values is drawn on every
    call (:func:`_channelwise_transform`).
    """
    from scipy.ndimage import binary_dilation

    step = np.asarray(spacing, float)
    low_r, high_r = float(radius_mm[0]), float(radius_mm[1])
    if not 0 < low_r <= high_r:
        raise ValueError(f"radius_mm must be 0 < low <= high, got {radius_mm}")

    def draw(R, n_channels: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        count = int(R.randint(1, MAX_VESSELS + 1))
        return (count, R.uniform(0.0, 1.0, size=(MAX_VESSELS, 3)), R.uniform(0.0, max_tilt_rad, size=MAX_VESSELS),
                R.uniform(0.0, 2 * np.pi, size=MAX_VESSELS), R.uniform(low_r, high_r, size=MAX_VESSELS),
                R.uniform(0.005, 0.995, size=(MAX_VESSELS, n_channels)))

    def apply(image: np.ndarray, params, label: np.ndarray) -> None:
        count, where, tilt, azimuth, radius, levels = params
        shape = image.shape[1:]
        keep_out = binary_dilation(np.asarray(label).reshape(shape) > 0, iterations=1)
        axes = np.meshgrid(*[np.arange(n, dtype=np.float32) * np.float32(s) for n, s in zip(shape, step)],
                           indexing="ij", sparse=True)
        edge = float(step[:2].min())
        for k in range(count):
            centre = where[k] * (np.asarray(shape) - 1) * step
            axis = np.array([np.sin(tilt[k]) * np.cos(azimuth[k]), np.sin(tilt[k]) * np.sin(azimuth[k]),
                             np.cos(tilt[k])])
            offset = [a - np.float32(c) for a, c in zip(axes, centre)]
            along = sum(o * np.float32(u) for o, u in zip(offset, axis))
            distance = np.sqrt(np.maximum(sum(o * o for o in offset) - along * along, 0.0))
            weight = np.clip((radius[k] + edge / 2 - distance) / edge, 0.0, 1.0).astype(np.float32)
            weight[keep_out] = 0.0
            _shift_to_levels(image, weight, levels[k])

    return _channelwise_transform("RandVesselsd", keys, prob, draw, apply, label_key=label_key)


#: Most lumps one sample gains from :func:`lump_transform`.
MAX_LUMPS = 3


def lump_transform(keys: str | Sequence[str], prob: float, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                   semi_axis_mm: tuple[float, float] = (3.0, 12.0), label_key: str = "label"):
    """MONAI dictionary transform drawing 1 to :data:`MAX_LUMPS` ellipsoids of random appearance into the
    background of ``keys`` (probability ``prob`` per sample).

    Each ellipsoid is centred on a uniformly drawn point of the patch, its three semi-axes drawn independently
    from ``semi_axis_mm`` (round, flat and elongated lumps alike) and its orientation uniformly over rotations
    (Shoemake's quaternion), with a one-voxel partial-volume edge. Inside, every channel is shifted to its own
    random level exactly as in :func:`vessel_transform`. A lump that would reach a labelled voxel or its neighbour
    is not drawn at all: cut off at the contour it would be tissue of any look continuous with the tumour and
    labelled background. Across phantom families, lumps cut off that way (the first version) lost the other
    family's nodes in one training run of four (-0.079) and moved its primary by -0.028 on average; whole lumps, over
    six runs (three seeds each way), lost at most 0.008 on the nodes and moved the primary by -0.009 on average
    (docs/segmentation-network.md, "Lumps apart from the contours", "A third seed").
    """
    from scipy.ndimage import binary_dilation

    step = np.asarray(spacing, float)
    low, high = float(semi_axis_mm[0]), float(semi_axis_mm[1])
    if not 0 < low <= high:
        raise ValueError(f"semi_axis_mm must be 0 < low <= high, got {semi_axis_mm}")

    def draw(R, n_channels: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        count = int(R.randint(1, MAX_LUMPS + 1))
        return (count, R.uniform(0.0, 1.0, size=(MAX_LUMPS, 3)), R.uniform(low, high, size=(MAX_LUMPS, 3)),
                R.uniform(0.0, 1.0, size=(MAX_LUMPS, 3)), R.uniform(0.005, 0.995, size=(MAX_LUMPS, n_channels)))

    def apply(image: np.ndarray, params, label: np.ndarray) -> None:
        count, where, semi_axes, turn, levels = params
        shape = image.shape[1:]
        keep_out = binary_dilation(np.asarray(label).reshape(shape) > 0, iterations=1)
        edge = float(step[:2].min())
        for k in range(count):
            centre = where[k] * (np.asarray(shape) - 1) * step
            # only the box around the lump is computed: the rest of the patch keeps weight 0
            reach = semi_axes[k].max() + edge
            box = tuple(slice(max(int(np.floor((c - reach) / s)), 0), min(int(np.ceil((c + reach) / s)) + 1, n))
                        for c, s, n in zip(centre, step, shape))
            offset = np.meshgrid(*[np.arange(b.start, b.stop, dtype=np.float32) * np.float32(s) - np.float32(c)
                                   for b, s, c in zip(box, step, centre)], indexing="ij", sparse=True)
            rotation = _uniform_rotation(turn[k])
            # coordinates along the ellipsoid's own axes, scaled so its surface is at radius 1
            radius = np.sqrt(sum((sum(o * np.float32(rotation[i, j]) for j, o in enumerate(offset))
                                  / np.float32(semi_axes[k, i])) ** 2 for i in range(3)))
            weight = np.clip((1.0 - radius) * np.float32(semi_axes[k].min() / edge) + 0.5, 0.0, 1.0)
            if keep_out[box][weight > 0].any():
                continue  # whole or not at all: never tissue continuous with a contoured structure
            full = np.zeros(shape, np.float32)
            full[box] = weight
            _shift_to_levels(image, full, levels[k])

    return _channelwise_transform("RandLumpsd", keys, prob, draw, apply, label_key=label_key)


def _uniform_rotation(u: np.ndarray) -> np.ndarray:
    """Rotation matrix drawn uniformly over all rotations from three uniform numbers in [0, 1) (Shoemake 1992)."""
    a, b = np.sqrt(1.0 - u[0]), np.sqrt(u[0])
    x, y, z, w = a * np.sin(2 * np.pi * u[1]), a * np.cos(2 * np.pi * u[1]), b * np.sin(2 * np.pi * u[2]), \
        b * np.cos(2 * np.pi * u[2])
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _shift_to_levels(image: np.ndarray, weight: np.ndarray, levels: np.ndarray) -> None:
    """Shift every channel of ``image`` inside ``weight`` from its mean there to the quantile ``levels[channel]``
    of that channel, by the weight (texture kept, partial-volume edge); nothing when no voxel is more than half
    inside."""
    inside = weight > 0.5
    if not inside.any():
        return
    for channel in range(image.shape[0]):
        level = np.quantile(image[channel], levels[channel])
        image[channel] += weight * np.float32(level - image[channel][inside].mean())


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


def train_transforms(config: AugmentConfig, spacing: Sequence[float] = (1.0, 1.0, 1.0)):
    """Built once per run; re-seeded per epoch with :meth:`Compose.set_random_state`. ``spacing``: the working
    grid's voxel size (mm), which sizes the drawn vessels."""
    from monai import transforms as T

    keys = ("image", "label")
    return T.Compose([
        T.RandFlipd(keys, prob=config.flip_lr, spatial_axis=0),
        T.RandRotated(keys, range_x=config.rotate_rad[0], range_y=config.rotate_rad[1],
                      range_z=config.rotate_rad[2], prob=config.rotate_prob, mode=("bilinear", "nearest"),
                      padding_mode="border"),
        T.RandZoomd(keys, prob=config.zoom_prob, min_zoom=config.zoom_range[0], max_zoom=config.zoom_range[1],
                    # "nearest-exact": torch's "nearest" samples half a voxel off "trilinear", so zoomed labels sat
                    # 0.4-0.6 voxel beside their image (Dice image / label 0.86-0.88 on an ellipsoid)
                    mode=("trilinear", "nearest-exact"), keep_size=True, padding_mode="edge"),
        # only when asked for (as the transforms at the end): vessels before the blur and the contrast changes
        *([vessel_transform("image", config.vessel_prob, spacing=spacing)] if config.vessel_prob else []),
        *([lump_transform("image", config.lump_prob, spacing=spacing)] if config.lump_prob else []),
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
