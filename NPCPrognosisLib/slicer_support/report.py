"""Export report of the Slicer panel: the patient sheet of the last prediction, and everything as JSON.

The sheet is the one ``npc-prognosis report`` writes (:mod:`NPCPrognosisLib.reporting.patient_sheet`); the panel
adds the edited-versus-automatic contour report and the images of the loaded volumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from NPCPrognosisLib.io.atomic import write_json_atomic
from NPCPrognosisLib.reporting.patient_sheet import SheetImages, write_patient_sheet


def write_report(result: Mapping[str, Any], out_dir: str | Path, images: SheetImages | None = None,
                 pdf: bool = True) -> dict[str, Path]:
    """``report.json`` (the whole job result) and the patient sheet (``patient_sheet.html``, and its PDF when
    Chromium is installed) in ``out_dir``; returns their paths (``json``, ``html``, ``pdf``)."""
    out_dir = Path(out_dir)
    paths = {"json": write_json_atomic(out_dir / "report.json", result)}
    paths.update(write_patient_sheet(result["prediction"], out_dir, images, result.get("contour_change"), pdf=pdf))
    return paths
