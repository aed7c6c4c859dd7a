"""What the radiologist's edits changed: per structure Dice and volumes, then the change of risk.

Both label maps must be on the same grid (the module exports both onto the CET1W geometry).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from NPCPrognosisLib.contract import SEGMENTS
from NPCPrognosisLib.imaging.overlap import dice


def label_statistics(labels: Any, voxel_volume_ml: float) -> dict[str, float]:
    """Volume in mL of each segment of a label map."""
    import numpy as np

    array = np.asarray(labels)
    return {s["name"]: float((array == s["label"]).sum()) * float(voxel_volume_ml) for s in SEGMENTS}


def contour_change_report(
    automatic: Any,
    edited: Any,
    voxel_volume_ml: float,
    automatic_prediction: Mapping[str, Any] | None = None,
    edited_prediction: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the user's edits changed: per structure Dice and volumes, then the change of risk score and group.

    Both label maps must be on the same grid (the module exports both onto the CET1W geometry).
    """
    import numpy as np

    auto = np.asarray(automatic)
    mine = np.asarray(edited)
    if auto.shape != mine.shape:
        raise ValueError(f"label maps differ in shape {auto.shape} vs {mine.shape}; export both on the CET1W grid")
    structures = {}
    for segment in SEGMENTS:
        a = auto == segment["label"]
        b = mine == segment["label"]
        va = float(a.sum()) * voxel_volume_ml
        vb = float(b.sum()) * voxel_volume_ml
        structures[segment["name"]] = {
            "dice": dice(a, b, empty=1.0),
            "volume_automatic_ml": va,
            "volume_edited_ml": vb,
            "volume_change_ml": vb - va,
            "volume_change_percent": (100.0 * (vb - va) / va) if va > 0 else (0.0 if vb == 0 else float("inf")),
        }
    report: dict[str, Any] = {"structures": structures}
    if automatic_prediction is not None and edited_prediction is not None:
        ra = float(automatic_prediction["risk_score"])
        rb = float(edited_prediction["risk_score"])
        report["risk"] = {
            "automatic": ra, "edited": rb, "change": rb - ra,
            "group_automatic": automatic_prediction["risk_group"], "group_edited": edited_prediction["risk_group"],
            "group_changed": automatic_prediction["risk_group"] != edited_prediction["risk_group"],
        }
    return report




def edit_origins(current: Any, automatic: Any | None) -> dict[int, str]:
    """How each structure of the current label map came about, for the SEG's and RTSTRUCT's algorithm type.

    AUTOMATIC where it is still the network's contour voxel for voxel, SEMIAUTOMATIC where the radiologist corrected
    it, MANUAL where the network drew none of it (a node added by hand, or no automatic contours at all). A planning
    system shows this beside the structure: a corrected contour filed as the network's own would hide the review.

    Parameters
    ----------
    current : array-like
        The label map exported now (1 = GTVp, 2 = GTVn).
    automatic : array-like or None
        The network's label map on the same grid; None when the segmentation never had automatic contours.

    Returns
    -------
    dict of int to str
        Label to origin, for the labels ``current`` holds.
    """
    import numpy as np

    current = np.asarray(current)
    automatic = None if automatic is None else np.asarray(automatic)
    if automatic is not None and automatic.shape != current.shape:
        raise ValueError(f"the automatic contours ({automatic.shape}) are not on the grid of the current ones "
                         f"({current.shape})")
    origins = {}
    for segment in SEGMENTS:
        mine = current == segment["label"]
        if not mine.any():
            continue
        if automatic is None or not (automatic == segment["label"]).any():
            origins[segment["label"]] = "MANUAL"
        elif np.array_equal(mine, automatic == segment["label"]):
            origins[segment["label"]] = "AUTOMATIC"
        else:
            origins[segment["label"]] = "SEMIAUTOMATIC"
    return origins
