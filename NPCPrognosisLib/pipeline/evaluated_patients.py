"""Which patients ``evaluate`` scores: the bundle's training patients left out, and the floors below which it refuses.

Why apart from the scoring: what counts as held out (IDs matched through their salted hashes, whatever the case and
leading zeros) and when a cohort is too small to say anything are the same for survival and binary endpoints, and
decide what every number of the evaluation means.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from NPCPrognosisLib.errors import InputError
from NPCPrognosisLib.io.manifest import Manifest
from NPCPrognosisLib.io.patient_ids import hash_id, id_key

#: The smallest cohort ``evaluate`` scores. Without an event no pair of patients can be compared; with one, every
#: C-index is that one patient's rank and its bootstrap resamples hold it or nothing, so the interval collapses;
#: below ten patients the four calibration groups hold one or two patients each and a C of 1.000 (1.000-1.000)
#: says nothing. External validation studies should aim at 100 events or more (Collins et al., Stat Med 2016).
MIN_PATIENTS, MIN_EVENTS = 10, 2


def check_cohort_size(time: np.ndarray, event: np.ndarray, manifest: Manifest, endpoint: str, excluded: int) -> None:
    """Refuse a cohort below :data:`MIN_PATIENTS` patients or :data:`MIN_EVENTS` events (why: at the constants).

    Parameters
    ----------
    time, event : numpy.ndarray
        The evaluated patients' follow-up (months) and event indicator.
    manifest : Manifest
        The evaluated patients (its ``source`` is named in the error).
    endpoint : str
        The survival endpoint, e.g. ``dmfs``.
    excluded : int
        How many training patients were left out, said in the error.

    Raises
    ------
    InputError
        With the counts, the floors and the fix.
    """
    n, events = len(time), int(np.sum(event))
    _refuse_too_few(n, events, manifest, excluded, counts=f"with {events} {endpoint} event(s)", validated="a model",
                    needs="events: without an event no two patients can be compared, and with fewer the C-index and "
                          "its interval are decided by one or two patients",
                    column=f"{endpoint}_event", fix_note=" (validation studies aim at 100 events or more)")


def check_binary_cohort(manifest: Manifest, endpoint: str, excluded: int) -> None:
    """Refuse a binary endpoint's cohort below :data:`MIN_PATIENTS` patients with a value, or with fewer than
    :data:`MIN_EVENTS` patients in either class: an AUC ranks positives against negatives, and with one of either
    it and its DeLong interval are one patient's rank.

    Parameters
    ----------
    manifest : Manifest
        The evaluated patients, with the endpoint's column.
    endpoint : str
        The binary endpoint, e.g. ``ic_response``.
    excluded : int
        How many training patients were left out, said in the error.

    Raises
    ------
    InputError
        With the counts per class, the floors and the fix.
    """
    from NPCPrognosisLib.pipeline.binary import endpoint_labels

    _, labels = endpoint_labels(manifest, endpoint)
    n, positives = len(labels), int(np.sum(labels))
    _refuse_too_few(n, min(positives, n - positives), manifest, excluded,
                    counts=f"with {endpoint} recorded, {positives} positive and {n - positives} negative,",
                    validated="a classifier", needs="in each class", column=endpoint)


def _refuse_too_few(n: int, scarcer: int, manifest: Manifest, excluded: int, *, counts: str, validated: str,
                    needs: str, column: str, fix_note: str = "") -> None:
    """The one floor of both kinds of endpoint: at least :data:`MIN_PATIENTS` patients and :data:`MIN_EVENTS` of
    the scarcer outcome (``scarcer``: events, or the smaller class), else an :class:`InputError` with the counts
    (``counts``), the training patients left out (``excluded``) and what is needed (``needs``, after the count)."""
    if n >= MIN_PATIENTS and scarcer >= MIN_EVENTS:
        return
    left = f" once the {excluded} training patient(s) are left out" if excluded else ""
    raise InputError(f"{n} patient(s) {counts} to evaluate{left}: too few to validate {validated} (evaluate needs at "
                     f"least {MIN_PATIENTS} patients and {MIN_EVENTS} {needs})", path=manifest.source, column=column,
                     fix=f"evaluate on a larger held-out cohort{fix_note}")


def training_included(document: dict[str, Any], manifest: Manifest, subset: str) -> int | None:
    """How many evaluated patients trained the bundle: 0 with ``auto`` (they were left out), None with ``all``
    when the bundle stores no patient IDs (unknown).

    Parameters
    ----------
    document : dict
        The bundle document (its ``training`` block holds the patient-ID hashes).
    manifest : Manifest
        The evaluated patients.
    subset : {'auto', 'all'}
        ``evaluate --subset``.

    Returns
    -------
    included : int or None
        The count recorded as ``training_patients_included``.
    """
    if subset != "all":
        return 0
    trained = trained_mask(document, manifest)
    return None if trained is None else int(trained.sum())


def included_warning(included: int | None, subset: str) -> str | None:
    """The banner of an evaluation that scores training patients as if held out (``--subset all``).

    Parameters
    ----------
    included : int or None
        :func:`training_included`'s count (None: unknown).
    subset : {'auto', 'all'}
        ``evaluate --subset``.

    Returns
    -------
    warning : str or None
        None when every evaluated patient is known to be held out.
    """
    if included:
        return (f"NOT A VALIDATION: {included} of the evaluated patients trained this bundle (--subset all); their "
                "numbers are optimistic training performance")
    if included is None and subset == "all":
        return ("--subset all and the bundle stores no training patient IDs: any training patient in this cohort is "
                "scored as if held out")
    return None


def trained_mask(document: dict[str, Any], manifest: Manifest) -> np.ndarray | None:
    """Which manifest rows the bundle was trained on (None when it stores no patient IDs).

    Parameters
    ----------
    document : dict
        The bundle document.
    manifest : Manifest
        The patients to match against the bundle's training patients.

    Returns
    -------
    trained : numpy.ndarray of bool or None
        One flag per manifest row.
    """
    return _trained(document, list(manifest.table["patient_id"]))


def _trained(document: dict[str, Any], patient_ids: list[str]) -> np.ndarray | None:
    """Which of ``patient_ids`` the bundle was trained on (None when it stores no patient IDs).

    A re-exported cohort may spell a training patient's ID otherwise ('npc0007' for 'NPC0007'). Bundles that store
    the hashes of :func:`id_key` match whatever the case and leading zeros; older ones store the hash of the ID as
    written, and are matched on the ID as written, in upper and in lower case.
    """
    training = document.get("training") or {}
    if training.get("patient_id_hashes") is None:
        return None
    salt = training.get("id_salt")
    if training.get("patient_id_key_hashes") is not None:
        keys = set(training["patient_id_key_hashes"])
        return np.array([hash_id(id_key(p), salt) in keys for p in patient_ids], bool)
    trained = set(training["patient_id_hashes"])
    return np.array([any(hash_id(spelling, salt) in trained for spelling in dict.fromkeys((p, p.upper(), p.lower())))
                     for p in map(str, patient_ids)], bool)


def untrained(document: dict[str, Any], patient_ids: list[str], subset: str) -> list[str]:
    """Those of ``patient_ids`` that the evaluation would have scored (not the bundle's training patients).

    Parameters
    ----------
    document : dict
        The bundle document.
    patient_ids : list of str
        Patients of the manifest, e.g. those without features.
    subset : {'auto', 'all'}
        ``evaluate --subset``: with ``all`` every patient would have been scored.

    Returns
    -------
    patient_ids : list of str
        Those not among the bundle's training patients (all of them when it stores no patient IDs).
    """
    trained = None if subset == "all" else _trained(document, patient_ids)
    return list(patient_ids) if trained is None else [p for p, t in zip(patient_ids, trained) if not t]


def held_out(document: dict[str, Any], manifest: Manifest, features: pd.DataFrame,
             subset: str) -> tuple[Manifest, pd.DataFrame, int]:
    """Leave out the bundle's training patients (``auto``) or keep everyone (``all``).

    Parameters
    ----------
    document : dict
        The bundle document.
    manifest, features : Manifest, pandas.DataFrame
        The patients with features, aligned row by row.
    subset : {'auto', 'all'}
        ``evaluate --subset``.

    Returns
    -------
    manifest, features : Manifest, pandas.DataFrame
        The patients to evaluate.
    excluded : int
        How many training patients were left out.

    Raises
    ------
    InputError
        For an unknown ``subset``, a bundle without patient IDs under ``auto``, or no patient left.
    """
    if subset == "all":
        return manifest, features, 0
    if subset != "auto":
        raise InputError(f"unknown subset {subset!r}", column="--subset", fix="use auto or all")
    trained = trained_mask(document, manifest)
    if trained is None:
        raise InputError("the bundle stores no training patient IDs (train --no-patient-ids), so evaluate cannot leave "
                         "the training patients out", column="--subset",
                         fix="evaluate on a cohort you know excludes them, with --subset all")
    keep = ~trained
    kept = manifest.subset(keep)
    if len(kept.table) == 0:
        raise InputError("no patient left to evaluate (all were used for training)", path=manifest.source,
                         fix="evaluate on other patients, or pass --subset all to see (optimistic) training metrics")
    return kept, features[keep].reset_index(drop=True), int((~keep).sum())

