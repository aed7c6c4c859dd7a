"""Agreement of two contours: Dice and the 95th-percentile Hausdorff distance.

One Dice for the whole product (network validation, segmentation benchmarks, the Slicer contour-change report),
so a number printed during training means the same as the one the radiologist sees.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from NPCPrognosisLib.contract import LABELS


def dice(a: Any, b: Any, *, empty: float = float("nan")) -> float:
    """Dice overlap 2|A∩B| / (|A| + |B|) of two boolean masks of the same shape.

    Parameters
    ----------
    a, b : array-like of bool
        The two masks.
    empty : float, default NaN
        The value when both masks are empty. Undefined (NaN) by default, so cohort means skip node-negative
        patients predicted node-negative instead of counting them as perfect; the contour-change report passes
        1.0, because an edit that left a structure absent changed nothing.

    Returns
    -------
    dice : float
        In [0, 1], or ``empty``.
    """
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape {a.shape} vs {b.shape}; put both on the same grid first")
    total = int(a.sum()) + int(b.sum())
    return float(empty) if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def segmentation_metrics(pred: Any, truth: Any) -> dict[str, float]:
    """Dice and HD95 (mm) per structure of two label maps on the same grid.

    Parameters
    ----------
    pred, truth : SimpleITK.Image
        Label maps (1 = GTVp, 2 = GTVn) with the same geometry; HD95 uses their spacing (MONAI's implementation).

    Returns
    -------
    metrics : dict
        ``dice_gtvp``, ``dice_gtvn``, ``hd95_gtvp``, ``hd95_gtvn``; NaN where undefined (a structure absent from
        both for Dice, from either for HD95).
    """
    import SimpleITK as sitk
    import torch
    from monai.metrics import compute_hausdorff_distance

    p, t = sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(truth)
    spacing = list(pred.GetSpacing())[::-1]
    out = {}
    for name, label in LABELS.items():
        a, b = p == label, t == label
        out[f"dice_{name}"] = dice(a, b)
        if a.any() and b.any():
            with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument its own metric passes
                warnings.simplefilter("ignore", FutureWarning)
                hd = compute_hausdorff_distance(torch.from_numpy(a[None, None]), torch.from_numpy(b[None, None]),
                                                percentile=95, spacing=spacing)
            out[f"hd95_{name}"] = float(hd.reshape(-1)[0])
        else:
            out[f"hd95_{name}"] = float("nan")
    return out
