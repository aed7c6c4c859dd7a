"""Errors a user can act on.

A cohort of hundreds of patients fails one row at a time; an error that names the patient, the file or column
and the fix saves the user a debugging session, so every input check in the core raises :class:`InputError`.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input, described so a clinician or researcher can fix it without reading the code."""

    def __init__(
        self,
        problem: str,
        *,
        patient_id: str | None = None,
        path: str | None = None,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.patient_id = patient_id
        self.path = None if path is None else str(path)
        self.column = column
        self.fix = fix
        #: Warnings about the patient raised before this error (a sequence covering half of the field, another frame
        #: of reference), often what explains it; kept out of the message and added by the loader that raised them
        #: (:func:`NPCPrognosisLib.io.images.warnings_kept_on_failure`), so a cohort run can list them.
        self.warnings: list[str] = []
        super().__init__(self._compose())

    def _compose(self) -> str:
        where = []
        if self.patient_id is not None:
            where.append(f"patient {self.patient_id!r}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.path is not None:
            where.append(f"file {self.path!r}")
        text = (", ".join(where) + ": " if where else "") + self.problem
        if self.fix:
            text += f". Fix: {self.fix}"
        return text


class BundleError(RuntimeError):
    """A model bundle that cannot be trusted (wrong format version, checksum mismatch, missing file)."""


class TrainingFailedError(InputError):
    """A training run that learned nothing usable: no bundle is written (the message says what to try)."""
