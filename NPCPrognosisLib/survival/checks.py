"""Input checks of survival data, in one place for every model and metric.

A bad outcome column (text, negative times, events coded 1/2) gives the same clear error, naming the patient and
the fix, whether it reaches the Cox fit, a metric or a plot, instead of a cryptic message from a library.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from NPCPrognosisLib.errors import InputError


def row_location(ids: np.ndarray | None, row: int) -> dict:
    """Error-location kwargs: the patient id when known, otherwise the row number in the problem text."""
    if ids is not None:
        return {"patient_id": str(ids[row])}
    return {}


def check_survival_arrays(
    time: Any,
    event: Any,
    *,
    ids: np.ndarray | None = None,
    time_name: str = "time",
    event_name: str = "event",
) -> tuple:
    """Validate follow-up time and event indicator; return (time float64, event bool).

    Shared by the Cox fit and the evaluation metrics so a bad outcome column produces the same clear error
    everywhere instead of a cryptic sksurv message.
    """
    t = np.asarray(time)
    e = np.asarray(event)
    if t.ndim != 1 or e.ndim != 1 or t.shape != e.shape:
        raise InputError(
            f"{time_name} and {event_name} must be 1-D arrays of equal length, got shapes {t.shape} and {e.shape}",
            fix="pass one value per patient",
        )
    try:
        t = t.astype(float)
    except (TypeError, ValueError):
        raise InputError(
            "follow-up time must be numeric", column=time_name, fix="convert to months"
        ) from None
    bad = np.flatnonzero(~np.isfinite(t))
    if len(bad):
        raise InputError(
            f"missing or non-finite follow-up time in row {bad[0]}",
            column=time_name,
            fix="fill in the follow-up time or drop the patient",
            **row_location(ids, int(bad[0])),
        )
    bad = np.flatnonzero(t < 0)
    if len(bad):
        raise InputError(
            f"negative follow-up time {t[bad[0]]} in row {bad[0]}",
            column=time_name,
            fix="time must be measured from diagnosis/treatment start and be >= 0",
            **row_location(ids, int(bad[0])),
        )
    if e.dtype == bool:
        ev = e
    else:
        try:
            ef = e.astype(float)
        except (TypeError, ValueError):
            raise InputError(
                "event indicator must be 0/1 (or True/False)",
                column=event_name,
                fix="code event=1, censored=0",
            ) from None
        bad = np.flatnonzero(~np.isin(ef, (0.0, 1.0)))
        if len(bad):
            raise InputError(
                f"event indicator {e[bad[0]]!r} in row {bad[0]} is not 0/1",
                column=event_name,
                fix="code event=1, censored=0 (missing status: drop the patient)",
                **row_location(ids, int(bad[0])),
            )
        ev = ef.astype(bool)
    return t, ev
