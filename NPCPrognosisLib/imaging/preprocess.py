"""Intensity preprocessing: N4 bias-field correction and normalisation.

MRI intensities have no physical unit: the same tumour is 300 on one scanner and 1200 on another, and a coil's
bias field brightens one side of the neck. Radiomics with a fixed bin width (25) only means something after both
are removed, so every image passes here before features are computed, with the settings recorded in the bundle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.imaging.geometry import same_geometry

NORMALISATIONS = ("zscore", "percentile", "none")
#: ``n4_max_fit_size`` of settings stored without it (bundles from before it was recorded): what they ran with.
LEGACY_N4_MAX_FIT_SIZE = 64
#: ``field_grid_mm`` of settings stored without it: smooth fields evaluated on the image's own voxels.
LEGACY_FIELD_GRID_MM = 0.0
#: The coarse grid keeps at least this many voxels per SD of the smoothing Gaussian (1.5: the Gaussian's samples
#: still sum to its integral within 1e-6, so nothing is lost to undersampling).
_VOXELS_PER_SIGMA = 1.5
#: ... and at least this many voxels along each binned axis (ITK's recursive Gaussian refuses fewer).
_MIN_COARSE_VOXELS = 4


@dataclass
class PreprocessConfig:
    """How intensities are corrected; stored in the bundle and reused unchanged at prediction time."""

    n4: bool = True
    #: N4 runs on an image shrunk by this factor; the bias field is smooth, so this costs nothing in accuracy.
    n4_shrink: int = 4
    #: ... and shrunk further where that leaves more voxels along an axis than this. The field has at most seven
    #: B-spline control points per axis (three fitting levels), so 32 samples resolve it. The fit's cost grows
    #: with its voxels: on 320 x 320 family-C scans it took 3.5-5.8 s per sequence at 64 and 0.9-1.5 s at 32,
    #: while the fitted log field moved by 0.008 RMS inside the head (its SD there: 0.09-0.15), no more than
    #: shrinking the slices or not moves it (0.005-0.017). On a known field spanning 80 % of the intensity, what is
    #: left is 0.65 % of the intensity at 32 and 0.45 % at 64 (1.4 % at 16; ``test_n4_fitted_on_32_samples...``).
    #: Bundles written before this setting existed ran with 64 and keep it (:meth:`from_dict`).
    n4_max_fit_size: int = 32
    n4_iterations: list[int] = field(default_factory=lambda: [30, 20, 10])
    #: Smooth fields (the smoothed image the head mask is cut from, the fitted bias field) are computed on a grid of
    #: about this spacing and interpolated linearly onto the image's voxels; 0 computes them on the image's own
    #: grid, as bundles written before this setting did (:meth:`from_dict`). Neither field varies over a voxel of
    #: 2 mm (the smoothing's SD is the slice thickness, 3-5 mm; the bias field's B-spline knots lie centimetres
    #: apart), and on 0.6-0.9 mm matrices the two full-resolution evaluations were a third of the preprocessing.
    #: On 16 family-C phantom scans of 6 patients (0.73-0.92 mm pixels) preprocessing took 17 % less time, and the
    #: preprocessed intensities moved by 0.003-0.013 SD at the 99th percentile of the head (at most 0.03).
    field_grid_mm: float = 2.0
    #: ``zscore``: (I - mean) / sd inside the head; ``percentile``: 1st-99th percentile to 0-1; ``none``.
    normalisation: str = "zscore"
    #: Multiplier after normalisation. 100 makes PyRadiomics' bin width 25 a quarter of a standard deviation.
    scale: float = 100.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        config = cls(**{"n4_max_fit_size": LEGACY_N4_MAX_FIT_SIZE, "field_grid_mm": LEGACY_FIELD_GRID_MM,
                        **dict(data)})
        if config.normalisation not in NORMALISATIONS:
            raise InputError(f"unknown normalisation {config.normalisation!r}",
                             fix=f"use one of {', '.join(NORMALISATIONS)}")
        return config


def coarse_factors(image: sitk.Image, spacing_mm: float) -> list[int]:
    """Per axis, how many voxels of ``image`` one voxel of a grid of about ``spacing_mm`` bins together (at least
    one: an axis already that coarse, such as the slice axis, stays as it is). A binned axis keeps at least
    :data:`_MIN_COARSE_VOXELS` voxels, what ITK's recursive Gaussian needs along every axis."""
    if spacing_mm <= 0:
        return [1] * image.GetDimension()
    return [max(1, min(n // _MIN_COARSE_VOXELS, int(spacing_mm / s)))
            for n, s in zip(image.GetSize(), image.GetSpacing())]


def to_image_grid(field: sitk.Image, image: sitk.Image) -> sitk.Image:
    """A smooth field computed on a coarse grid, interpolated linearly onto ``image``'s voxels (float32); voxels
    beyond the coarse grid's outermost centres (the edge of a binned grid) take the nearest value, not 0."""
    if same_geometry(field, image, tolerance=0.0):
        return sitk.Cast(field, sitk.sitkFloat32)
    return sitk.Resample(field, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32, True)


def head_threshold(image: sitk.Image, field_grid_mm: float = PreprocessConfig.field_grid_mm
                   ) -> tuple[sitk.Image, float]:
    """The image smoothed over its coarsest spacing, and the intensity there that separates the head from the air
    around it: half-way between the air's mean and the tissue's median, air and tissue told apart by the lower of
    two Otsu thresholds (three classes: air, tissue, the brightest tissue).

    Why not one Otsu threshold: it splits the histogram into its two most different parts, which is air from
    tissue only while air fills much of the field of view. On a tightly cropped scan whose fat is bright (a CET1W
    without fat suppression) it split the fat from everything else: the "head" shrank to the fat and the tumour's
    z-score fell from +0.6-0.8 to -0.2 to -0.55 on family-B phantom scans cropped to half their field of view.
    Why half-way and not the lower threshold itself: that one sits close to the air, so the mask would take in the
    ring of air that smoothing blurs into the head's edge; half-way between the two levels is where a blurred edge
    is.

    The smoothing and the thresholds are computed on a grid binned to about ``field_grid_mm`` (never coarser than
    :data:`_VOXELS_PER_SIGMA` voxels per SD of the Gaussian; 0: the image's own grid); the bin's box average is
    part of the blur, so the Gaussian that follows is narrowed to keep the total SD.

    Parameters
    ----------
    image : sitk.Image
        One sequence.
    field_grid_mm : float, default PreprocessConfig.field_grid_mm
        Spacing of the grid the smoothing is computed on.

    Returns
    -------
    smoothed : sitk.Image
        The image (float32) smoothed by a Gaussian of the coarsest spacing, on ``image``'s grid.
    threshold : float
        Voxels of ``smoothed`` above it are the head.
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    sigma = float(max(image.GetSpacing()))
    factors = coarse_factors(image, min(field_grid_mm, sigma / _VOXELS_PER_SIGMA))
    coarse = sitk.BinShrink(image, factors) if max(factors) > 1 else image
    # a box of k voxels of spacing s has variance s^2 (k^2 - 1) / 12
    sigmas = [math.sqrt(sigma ** 2 - s ** 2 * (k ** 2 - 1) / 12.0) for s, k in zip(image.GetSpacing(), factors)]
    smoothed = sitk.SmoothingRecursiveGaussian(coarse, sigmas)
    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(2)
    otsu.SetNumberOfHistogramBins(200)
    otsu.Execute(smoothed)
    lower = float(min(otsu.GetThresholds()))
    values = sitk.GetArrayViewFromImage(smoothed)
    air, tissue = values[values <= lower], values[values > lower]
    threshold = lower if not (air.size and tissue.size) else float(0.5 * (air.mean(dtype=np.float64)
                                                                         + np.median(tissue)))
    return to_image_grid(smoothed, image), threshold


def head_mask(image: sitk.Image, field_grid_mm: float = PreprocessConfig.field_grid_mm) -> sitk.Image:
    """Foreground (the head and neck, not the air around it) above :func:`head_threshold`, holes filled."""
    smoothed, threshold = head_threshold(image, field_grid_mm)
    mask = sitk.BinaryFillhole(sitk.Cast(smoothed > threshold, sitk.sitkUInt8))
    if sitk.GetArrayViewFromImage(mask).sum() < 0.01 * np.prod(image.GetSize()):
        # A near-empty foreground means Otsu split noise; use every voxel rather than normalise on a handful.
        mask = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
        mask.CopyInformation(image)
    return mask


def n4_correct(image: sitk.Image, mask: sitk.Image, config: PreprocessConfig) -> sitk.Image:
    """N4 on a shrunk copy, then divide the full-resolution image by the fitted bias field (evaluated on the
    ``field_grid_mm`` grid and interpolated)."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    # N4 works on log intensities: shift to strictly positive values first (scanner offsets can be negative).
    low = float(sitk.GetArrayViewFromImage(image).min())
    shift = 1.0 - low if low < 1.0 else 0.0
    positive = image + shift
    shrink = [max(1, min(config.n4_shrink, s // 8), math.ceil(s / config.n4_max_fit_size)) for s in image.GetSize()]
    small = sitk.Shrink(positive, shrink)
    small_mask = sitk.Shrink(mask, shrink)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(config.n4_iterations))
    corrector.Execute(small, small_mask)
    factors = coarse_factors(positive, config.field_grid_mm)
    reference = sitk.BinShrink(positive, factors) if max(factors) > 1 else positive
    log_bias = to_image_grid(corrector.GetLogBiasFieldAsImage(reference), positive)
    return sitk.Cast(positive / sitk.Exp(log_bias) - shift, sitk.sitkFloat32)


def normalise(image: sitk.Image, mask: sitk.Image, config: PreprocessConfig) -> sitk.Image:
    """Scale intensities by statistics of the head (``mask``); the statistics in float64, the voxels in place in
    float32 (a 512 x 512 x 40 volume would otherwise cost two float64 copies)."""
    array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    inside = array[sitk.GetArrayViewFromImage(mask) > 0].astype(np.float64)
    offset, factor = 0.0, 1.0
    if config.normalisation == "zscore":
        sd = inside.std()
        offset, factor = inside.mean(), 1.0 / (sd if sd > 0 else 1.0)
    elif config.normalisation == "percentile":
        lo, hi = np.percentile(inside, [1, 99])
        offset, factor = lo, 1.0 / (hi - lo if hi > lo else 1.0)
    array -= np.float32(offset)
    array *= np.float32(factor * config.scale)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def preprocess_image(image: sitk.Image, config: PreprocessConfig) -> sitk.Image:
    """Bias-correct and normalise one sequence; geometry is unchanged.

    On one ITK thread: ITK's multithreaded filters here sum in an order that depends on the thread count, so the
    same scan came out differing by up to 4e-3 (and 132 of 966 radiomics features by up to 5e-5 relative) on one
    core and on two. Features must not depend on the machine; this costs about a second per patient where the
    preprocessing would otherwise use several cores (extraction runs patients in parallel processes anyway).
    """
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        image = sitk.Cast(image, sitk.sitkFloat32)
        mask = head_mask(image, config.field_grid_mm)
        if config.n4:
            image = n4_correct(image, mask, config)
        return normalise(image, mask, config)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def preprocess_images(images: Mapping[str, sitk.Image], config: PreprocessConfig) -> dict[str, sitk.Image]:
    return {name: preprocess_image(image, config) for name, image in images.items()}


def preprocessed_as(images: Mapping[str, sitk.Image], config: PreprocessConfig,
                    prepared: Mapping[str, sitk.Image], prepared_with: PreprocessConfig) -> dict[str, sitk.Image]:
    """``images`` preprocessed with ``config``, reusing ``prepared`` when it was made with the same settings.

    N4 is the costly step of a patient, so the network and the radiomics share one preprocessing when their
    settings agree; a network trained with other settings gets its own, as it saw in training.

    Parameters
    ----------
    images : mapping of str to SimpleITK.Image
        The patient's original sequences.
    config : PreprocessConfig
        The settings wanted (a network's, for instance).
    prepared : mapping of str to SimpleITK.Image
        The same sequences already preprocessed with ``prepared_with``.
    prepared_with : PreprocessConfig
        The settings ``prepared`` was made with.

    Returns
    -------
    dict of str to SimpleITK.Image
        The sequences preprocessed with ``config``.
    """
    return dict(prepared) if config == prepared_with else preprocess_images(images, config)
