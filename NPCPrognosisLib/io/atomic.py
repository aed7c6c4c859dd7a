"""Writing outputs so that a crash or a kill never leaves a half-written file where a finished one is expected,
and the one JSON encoding every output and bundle uses.

Every file the core writes (tables, JSON, images, PNG plots, reports) goes through :func:`atomic_path`: the
writer fills a hidden temporary file in the same folder, which is flushed to disk and renamed over the target only
once complete (``os.replace`` is atomic on POSIX and Windows; without the flush, a power cut soon after could leave
the new name pointing at an empty file). What only a hard kill leaves (the hidden temporary file, a bundle's hidden
folder) the next command into the same output folder removes: :func:`remove_stale_writes`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from NPCPrognosisLib.io.staging import left_by_stopped_run, owner_tag

log = logging.getLogger(__name__)

#: A work-in-progress name of this version: ``.<final name>.<pid>@<host>-<8 random characters>.tmp<suffixes>``, an
#: :func:`atomic_path` file or a :func:`~NPCPrognosisLib.io.bundle.write_bundle` folder. Names of versions before
#: the owner was named (``.<name>.<pid>-<hex>.tmp...``) do not match and are left alone: they carry no host, so one
#: that a run of an older install on another machine sharing the disk is still writing could not be told from a
#: killed run's, and removing it would make that run fail as it renames the file.
_WORK_IN_PROGRESS = re.compile(r"\..+\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)-[a-z0-9_]{8}\.tmp(?:\..*)?",
                               re.DOTALL)
#: The temporary files this process is writing (another thread's write in the same folder is not a killed run's).
_OPEN_WRITES: set[Path] = set()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write to; renamed to ``path`` when the block ends without an exception.

    Parameters
    ----------
    path : str or pathlib.Path
        The final file. Its folder is created. The temporary name keeps the file's suffixes, so writers that
        choose a format by extension (SimpleITK, matplotlib) still see ``.nii.gz`` or ``.png``.

    Yields
    ------
    tmp : pathlib.Path
        Where the caller writes. Removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one temporary name per writer: two processes writing the same target (a shared cache) must not remove or
    # rename each other's half-written file
    # the owner (process and host) in the name tells a hard-killed writer's leftover from a running writer's file
    # (remove_stale_writes)
    tmp = path.with_name(f"{work_in_progress_prefix(path)}{secrets.token_hex(4)}.tmp{''.join(path.suffixes)}")
    _OPEN_WRITES.add(tmp.resolve())
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        _OPEN_WRITES.discard(tmp.resolve())


def work_in_progress_prefix(final: str | Path) -> str:
    """``.<name>.<pid>@<host>-``: how a hidden work-in-progress file or folder for ``final`` starts.

    Followed by 8 random characters and ``.tmp`` (an :func:`atomic_path` file; a folder by
    ``tempfile.mkdtemp(prefix=..., suffix=".tmp")``), so that :func:`remove_stale_writes` knows a killed run's.
    """
    return f".{Path(final).name}.{owner_tag()}-"


@contextlib.contextmanager
def work_in_progress_folder(final: str | Path) -> Iterator[Path]:
    """A hidden folder beside ``final`` to build it in (``write_bundle``); removed when the block ends unless the
    block renamed it.

    Named as an :func:`atomic_path` file and held open by this process meanwhile, so that
    :func:`remove_stale_writes` removes it after a hard kill but never while it is written.

    Parameters
    ----------
    final : str or Path
        The folder it will become. Its parent must exist.

    Yields
    ------
    tmp : pathlib.Path
        The hidden folder.
    """
    import tempfile

    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=work_in_progress_prefix(final), suffix=".tmp", dir=final.parent))
    _OPEN_WRITES.add(tmp.resolve())
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _OPEN_WRITES.discard(tmp.resolve())


def _stale_write(path: Path) -> bool:
    """Whether ``path`` is a work-in-progress file or folder of this version whose writer no longer runs."""
    name = _WORK_IN_PROGRESS.fullmatch(path.name)
    if name is None or path.is_symlink():
        return False
    return left_by_stopped_run(path, int(name["pid"]), name["host"], _OPEN_WRITES)


def remove_stale_writes(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Remove what writes stopped by a hard kill (``kill -9``, a lost job, a power cut) left in ``folder``, and
    say so.

    Why: :func:`atomic_path` removes its temporary file whatever stops the block, except what stops the process
    itself; a killed run left a hidden ``.<name>.<pid>@<host>-<hex>.tmp...`` file (``write_bundle`` a hidden
    folder) there for good, often as large as a finished image. Each command calls this once per output folder
    before it writes (``cli.main``), and each cache's user once per run (the robustness study's
    ``<features>_robustness``, ``train-net``'s ``<out>.work``, a panel job's folder), not each write: a write cannot
    afford to list its folder. Only names of this
    version's work in progress are touched, never a file of the user's, never one whose writer still runs or runs
    on another machine (:func:`~NPCPrognosisLib.io.staging.left_by_stopped_run`).

    Parameters
    ----------
    folder : str or Path
        An output folder; a missing one has nothing to remove.
    recursive : bool
        Also the folders below it: for an output folder the command owns (per-patient and figure folders), not for
        a folder the user chose to hold one output file.

    Returns
    -------
    list of Path
        The files and folders removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale: list[Path] = []
    for parent, folders, files in os.walk(folder) if recursive else [next(os.walk(folder))]:
        stale += [Path(parent, name) for name in files if _stale_write(Path(parent, name))]
        found = [name for name in folders if _stale_write(Path(parent, name))]
        stale += [Path(parent, name) for name in found]
        folders[:] = [name for name in folders if name not in found]  # removed whole, not walked into
    stale.sort()
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if stale:
        names = ", ".join(str(path.relative_to(folder)) for path in stale[:5]) + (", ..." if len(stale) > 5 else "")
        log.warning("removed %d hidden unfinished file(s) that a stopped run left in %s (%s): writes cut short by a "
                    "hard kill, never put in place", len(stale), folder, names)
    return stale


T = TypeVar("T")


def read_cached(path: str | Path | None, read: Callable[[Path], T | None], patient_id: str, what: str,
                then: str) -> T | None:
    """What ``read`` makes of a patient's cache file, or None to compute it again: the file is missing, ``read``
    said it does not apply, or it cannot be read (then with a warning naming the patient and the file).

    Why one function: a cache outlives the run that wrote it, and a file that is not whole (a full disk, a partial
    copy, an edit) stopped every later run with a JSON or zip error until someone found and deleted it: the robustness
    study's perturbed extractions, ``train-net``'s preprocessed arrays and the Slicer panel's radiomics alike.

    Parameters
    ----------
    path : str, Path or None
        The cache file; None or missing: not cached.
    read : callable
        Reads the file; returns None when its content was made under other settings.
    patient_id : str
        Named in the warning.
    what, then : str
        The warning's words: what the file is ("the cached perturbed extraction") and what happens instead.

    Returns
    -------
    object or None
        ``read``'s result, or None.
    """
    if path is None or not Path(path).exists():
        return None
    try:
        return read(Path(path))
    except (OSError, ValueError, EOFError, TypeError, KeyError, AttributeError, zipfile.BadZipFile) as exc:
        log.warning("patient %s: %s %s cannot be read (%s: %s); %s", patient_id, what, path, type(exc).__name__, exc,
                    then)
        return None


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def jsonable(value: Any) -> Any:
    """``value`` made of JSON types: numpy scalars and arrays become numbers and lists, paths strings, and
    non-finite floats ``null`` (NaN is not JSON; a reader in another language would choke on it).

    Anything else that JSON cannot hold is refused: outputs and bundles hold JSON only, never pickles.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalar or array
        return jsonable(value.tolist())
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable; outputs and bundles hold JSON only")


def to_json(value: Any, indent: int | None = 2) -> str:
    """The project's JSON text of ``value`` (see :func:`jsonable`)."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False)


def write_json_atomic(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    """``to_json(value)`` written atomically to ``path``."""
    return write_text_atomic(path, to_json(value, indent) + "\n")


def safe_name(patient_id: str) -> str:
    """A file-name stem from a patient ID that stays inside its folder: separators, '..', drive letters and
    control characters are replaced, so '../x' or '/etc/x' cannot write outside the output folder."""
    import re

    text = re.sub(r"[^A-Za-z0-9._-]", "_", str(patient_id)).strip(".")
    return text[:120] or "patient"


def patient_file(folder: str | Path, patient_id: str, suffix: str) -> Path:
    """``folder/<safe patient ID><suffix>``, checked to lie inside ``folder``."""
    folder = Path(folder).resolve()
    path = (folder / f"{safe_name(patient_id)}{suffix}").resolve()
    if path.parent != folder:  # pragma: no cover - safe_name already prevents it; a second line of defence
        raise ValueError(f"output for patient {patient_id!r} would leave {folder}")
    return path
