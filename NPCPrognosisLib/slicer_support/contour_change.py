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


