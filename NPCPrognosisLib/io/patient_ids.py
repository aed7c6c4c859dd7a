"""Patient identifiers: salted slow hashes in bundles instead of the IDs themselves, and IDs as messages list them.

A bundle (statistical or network) must know which patients trained it, so ``evaluate`` can leave them out and
the network can score its own training patients out of fold, without carrying identifiers that travel with it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache

#: PBKDF2 rounds per patient-ID hash: trying every 7-digit record number costs 10^7 x this many HMACs per bundle.
ID_HASH_ROUNDS = 20_000
#: How a bundle describes its ID hashes (stored beside them as ``id_hash``).
ID_HASH_METHOD = f"PBKDF2-HMAC-SHA256, {ID_HASH_ROUNDS} rounds"
#: The ``id_hash`` of a record whose hashes are of :func:`id_key` (a re-exported spelling still matches); a record
#: written before keys were hashed says :data:`ID_HASH_METHOD`, and its hashes are of the ID as written.
ID_KEY_HASH_METHOD = f"{ID_HASH_METHOD} of id_key (trimmed, case-folded, leading zeros dropped)"


def listed_ids(patient_ids: Sequence[str], limit: int = 10) -> str:
    """'P1, P2, P3 ...': the first ``limit`` IDs of a message's list, and ' ...' when there are more (a cohort's
    warning names the patients to look at without printing hundreds of them)."""
    ids = [str(p) for p in patient_ids]
    return ", ".join(ids[:limit]) + (" ..." if len(ids) > limit else "")


def new_id_salt() -> str:
    """A random salt for one bundle: the same record number hashes differently in every bundle."""
    import secrets

    return secrets.token_hex(16)


@lru_cache(maxsize=100_000)  # evaluate and predict look the same patients up once per model
def hash_id(patient_id: str, salt: str | None = None) -> str:
    """Bundles record which patients trained them without carrying identifiers.

    With the bundle's random ``salt``, a slow keyed hash (PBKDF2-HMAC-SHA256); bundles written before salts existed
    (``salt`` None) used one public salt. Short record numbers can still be tried one by one at a cost; for IDs that
    must not be recoverable at all, ``train --no-patient-ids`` stores none.
    """
    if salt is None:
        return hashlib.sha256(("npc-prognosis:" + str(patient_id)).encode()).hexdigest()[:16]
    return hashlib.pbkdf2_hmac("sha256", str(patient_id).encode(), bytes.fromhex(salt), ID_HASH_ROUNDS).hex()[:32]


def id_key(patient_id: str) -> str:
    """The spelling two exports of one record number share: trimmed, case-folded, leading zeros of every digit run
    dropped ('NPC0007 ' and 'npc7' both give 'npc7').

    A cohort re-exported by another system or through a spreadsheet often changes exactly these, and ``evaluate``
    must still recognise a training patient. Two different patients whose IDs differ only so would share a key:
    the cost is one held-out patient left out of the evaluation (and counted), never a training patient scored.
    """
    return re.sub(r"\d+", lambda digits: str(int(digits.group())), str(patient_id).strip().casefold())


def loose_id_key(patient_id: str) -> str:
    """:func:`id_key` with every space also dropped ('RLX 0004' and 'rlx4' both give 'rlx4'): the one rule by which
    a message names an ID that another table writes another way (:func:`respelled_ids`).

    Why not :func:`id_key` itself: bundles hash :func:`id_key`, and a training patient 'RLX 0004' recorded under it
    must still be found by it; this key only points at a likely typo, it never joins two rows.
    """
    return id_key(re.sub(r"\s+", "", str(patient_id)))


def respelled_ids(missing: Sequence[str], other_ids: Sequence[str], own_ids: Sequence[str] = ()
                  ) -> list[tuple[str, str]]:
    """The IDs of one table that have no row in another table but do have one under another spelling.

    Parameters
    ----------
    missing : sequence of str
        IDs of the first table (e.g. the manifest) without a row in the other.
    other_ids : sequence of str
        Every ID of the other table (e.g. the features table).
    own_ids : sequence of str, optional
        Every ID of the first table: an ID of the other table that the first writes exactly belongs to that patient
        and is no other spelling of a missing one.

    Returns
    -------
    list of (str, str)
        (missing ID, the other table's ID with the same :func:`loose_id_key`), in the order of ``missing``.
    """
    own = {str(p) for p in own_ids} | {str(p) for p in missing}
    by_key = {loose_id_key(r): str(r) for r in other_ids if str(r) not in own}
    return [(str(p), by_key[loose_id_key(p)]) for p in missing if loose_id_key(p) in by_key]


def recorded_hash(patient_id: str, salt: str | None, id_hash: str | None) -> str:
    """The hash a record describing its hashes as ``id_hash`` would hold for ``patient_id``.

    Records that say :data:`ID_KEY_HASH_METHOD` hashed :func:`id_key`, so 'npc-007' finds 'NPC-7'; older records
    hashed the ID as written, and only that spelling can be looked up in them.
    """
    return hash_id(id_key(patient_id) if id_hash == ID_KEY_HASH_METHOD else patient_id, salt)
