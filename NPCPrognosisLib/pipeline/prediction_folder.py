"""predict's output folder: whose result it holds, and the earlier outputs a new result replaces.

A prediction folder is read as one patient's result: ``prediction.json``, the images it lists, and the patient
sheet or Export report made from it. A re-run that leaves an earlier run's sheet beside its new JSON (age 105 and
DMFS 6 % on the sheet, the new values in the JSON), or a failed run that leaves another patient's result in the
folder it was given, files one patient's numbers as another's. So predict claims the folder before it starts and
clears what the new result does not replace once it is written.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from pathlib import Path

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.dicom_series import split_series_selector
from NPCPrognosisLib.pipeline.prediction_record import (
    AUTOMATIC_MASK_FILE,
    PREDICTION_FILE,
    SALIENCY_FILE,
    UNCERTAINTY_FILE,
)

#: Made from a prediction by ``report`` and the panel's Export report: wrong as soon as the prediction changes.
DERIVED_FILES = ("patient_sheet.html", "patient_sheet.pdf", "report.json", UNCERTAINTY_FILE, SALIENCY_FILE)
#: Every file a prediction folder's result consists of.
RESULT_FILES = (PREDICTION_FILE, AUTOMATIC_MASK_FILE, *DERIVED_FILES)


def result_patient(out_dir: str | Path) -> str | None:
    """The patient whose result ``out_dir`` holds (``prediction.json``'s ``patient_id``), None when it holds none;
    a JSON that cannot be read is nobody's, reported as ``"?"``."""
    file = Path(out_dir) / PREDICTION_FILE
    if not file.is_file():
        return None
    try:
        return str(json.loads(file.read_text(encoding="utf-8"))["patient_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def claim_folder(out_dir: str | Path, patient_id: str, *, overwrite: bool = False,
                 inputs: Iterable[str | Path | None] = ()) -> list[Path]:
    """Make ``out_dir`` this patient's before any work starts.

    A folder holding another patient's result is refused, so a wrong ``--out`` (or a wrong ``--patient-id``)
    costs nothing: that patient's result stays whole and named as theirs, and this run stops before it could fail
    half-way and leave it looking like this patient's. With ``overwrite`` the other patient's result is removed
    first instead, so neither a failure nor a success leaves any of it behind. This patient's own earlier result is
    left until the new one is written (:func:`remove_replaced`): a failed re-run leaves the last complete one.

    Parameters
    ----------
    out_dir : str or Path
        predict's ``--out``.
    patient_id : str
        The patient this run predicts.
    overwrite : bool
        Remove another patient's result instead of refusing the folder.
    inputs : iterable of path
        This run's input files, never removed (a mask may be the edited ``automatic_mask.nii.gz`` of the folder).

    Returns
    -------
    list of Path
        The files removed.
    """
    holder = result_patient(out_dir)
    if holder is None or holder == patient_id:
        return []
    what = ("a prediction.json that cannot be read" if holder == "?" else
            f"the result of patient {holder!r} (prediction.json and what was made from it)")
    if not overwrite:
        raise InputError(f"the output folder holds {what}, not {patient_id!r}'s", patient_id=patient_id,
                         path=out_dir, column="--out",
                         fix=f"give {patient_id} a folder of its own, or add --overwrite to replace that result")
    return _remove(out_dir, RESULT_FILES, inputs)


def remove_replaced(out_dir: str | Path, written: Collection[str], inputs: Iterable[str | Path | None] = ()
                    ) -> list[Path]:
    """Once the new result is written: remove the earlier outputs made from an earlier prediction that this run
    did not write again (:data:`DERIVED_FILES`, e.g. a patient sheet showing the earlier values).

    The automatic mask is left: for the same patient it may be the radiologist's edit of the earlier contours, and
    the new ``prediction.json`` lists the images it made, so the report does not take it for this run's.

    Parameters
    ----------
    out_dir : str or Path
        predict's ``--out``.
    written : collection of str
        File names this run wrote there.
    inputs : iterable of path
        This run's input files, never removed.

    Returns
    -------
    list of Path
        The files removed.
    """
    return _remove(out_dir, [name for name in DERIVED_FILES if name not in written], inputs)


def _remove(out_dir: str | Path, names: Iterable[str], inputs: Iterable[str | Path | None]) -> list[Path]:
    kept = {split_series_selector(p)[0].resolve() for p in inputs if p}
    removed = []
    for name in names:
        file = Path(out_dir) / name
        if file.is_file() and file.resolve() not in kept:
            file.unlink()
            removed.append(file)
    return removed
