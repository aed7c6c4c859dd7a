"""Intensity preprocessing: N4 bias-field correction and normalisation.

MRI intensities have no physical unit: the same tumour is 300 on one scanner and 1200 on another, and a coil's
bias field brightens one side of the neck. Radiomics with a fixed bin width (25) only means something after both
are removed, so every image passes here before features are computed, with the settings recorded in the bundle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping

import numpy as np
import SimpleITK as sitk

from .errors import InputError

NORMALISATIONS = ("zscore", "percentile", "none")


@dataclass
class PreprocessConfig:
    """How intensities are corrected; stored in the bundle and reused unchanged at prediction time."""

    n4: bool = True
    #: N4 runs on an image shrunk by this factor; the bias field is smooth, so this costs nothing in accuracy.
    n4_shrink: int = 4
    n4_iterations: List[int] = field(default_factory=lambda: [30, 20, 10])
    #: ``zscore``: (I - mean) / sd inside the head; ``percentile``: 1st-99th percentile to 0-1; ``none``.
    normalisation: str = "zscore"
    #: Multiplier after normalisation. 100 makes PyRadiomics' bin width 25 a quarter of a standard deviation.
    scale: float = 100.0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PreprocessConfig":
        config = cls(**dict(data))
        if config.normalisation not in NORMALISATIONS:
            raise InputError(f"unknown normalisation {config.normalisation!r}",
                             fix=f"use one of {', '.join(NORMALISATIONS)}")
        return config


def head_mask(image: sitk.Image) -> sitk.Image:
    """Foreground (the head and neck, not the air around it) by Otsu thresholding, holes filled."""
    smoothed = sitk.SmoothingRecursiveGaussian(image, float(max(image.GetSpacing())))
    mask = sitk.OtsuThreshold(smoothed, 0, 1, 200)
    mask = sitk.BinaryFillhole(mask)
    if sitk.GetArrayViewFromImage(mask).sum() < 0.01 * np.prod(image.GetSize()):
        # A near-empty foreground means Otsu split noise; use every voxel rather than normalise on a handful.
        mask = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
        mask.CopyInformation(image)
    return mask


def n4_correct(image: sitk.Image, mask: sitk.Image, config: PreprocessConfig) -> sitk.Image:
    """N4 on a shrunk copy, then divide the full-resolution image by the fitted bias field."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    # N4 works on log intensities: shift to strictly positive values first (scanner offsets can be negative).
    low = float(sitk.GetArrayViewFromImage(image).min())
    shift = 1.0 - low if low < 1.0 else 0.0
    positive = image + shift
    shrink = [max(1, min(config.n4_shrink, s // 8)) for s in image.GetSize()]
    small = sitk.Shrink(positive, shrink)
    small_mask = sitk.Shrink(mask, shrink)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(config.n4_iterations))
    corrector.Execute(small, small_mask)
    log_bias = corrector.GetLogBiasFieldAsImage(positive)
    return sitk.Cast(positive / sitk.Exp(log_bias) - shift, sitk.sitkFloat32)


def normalise(image: sitk.Image, mask: sitk.Image, config: PreprocessConfig) -> sitk.Image:
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    inside = array[sitk.GetArrayViewFromImage(mask) > 0]
    if config.normalisation == "zscore":
        sd = inside.std()
        array = (array - inside.mean()) / (sd if sd > 0 else 1.0)
    elif config.normalisation == "percentile":
        lo, hi = np.percentile(inside, [1, 99])
        array = (array - lo) / (hi - lo if hi > lo else 1.0)
    out = sitk.GetImageFromArray((array * config.scale).astype(np.float32))
    out.CopyInformation(image)
    return out


def preprocess_image(image: sitk.Image, config: PreprocessConfig) -> sitk.Image:
    """Bias-correct and normalise one sequence; geometry is unchanged."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    mask = head_mask(image)
    if config.n4:
        image = n4_correct(image, mask, config)
    return normalise(image, mask, config)


def preprocess_images(images: Mapping[str, sitk.Image], config: PreprocessConfig) -> Dict[str, sitk.Image]:
    return {name: preprocess_image(image, config) for name, image in images.items()}
