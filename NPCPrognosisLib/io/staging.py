"""Sets of files written whole: into a hidden staging folder, then moved into place together.

Why: a patient's contours are several files (mask, DICOM SEG, RT Structure Set, maps); written one by one over an
earlier run's, an interruption left a mix that a PACS upload or a planning import takes for one run's contours.
``segment`` (one patient or a cohort) and the Slicer panel's contour export write them here. A hard kill leaves its
staging folder behind; the next run into the folder removes it (:func:`remove_stale_staging`). Standard library
only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


#: The name every hidden staging folder starts with (:func:`files_written_whole`): ``.segment-<pid>@<host>-<8 random
#: characters>``, from which :func:`remove_stale_staging` tells a stopped run's folder from a running one's.
STAGING_PREFIX = ".segment-"
#: A staging folder's name: this version's (owner's process ID and host) or, without an owner, an earlier version's.
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(?:(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)-)?[a-z0-9_]{8}")
#: The staging folders this process has open (a thread's block in the same folder is not a stopped run's).
_OPEN_STAGING: set[Path] = set()


def _this_host() -> str:
    """This machine's name as a staging folder carries it (characters a file name can hold)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def _process_running(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (one of another user counts as running)."""
    if os.name == "nt":  # os.kill(pid, 0) would stop it there: signal 0 is CTRL_C_EVENT
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # ERROR_ACCESS_DENIED: it runs, as another user
        try:
            code = ctypes.c_ulong()
            return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_tag() -> str:
    """``<process ID>@<host>``: the owner a hidden work-in-progress name carries (a staging folder, an atomic
    write's temporary file), from which :func:`left_by_stopped_run` tells a killed run's leftover from a running
    one's."""
    return f"{os.getpid()}@{_this_host()}"


def left_by_stopped_run(path: Path, pid: int, host: str, open_here: set[Path]) -> bool:
    """Whether ``path``, named with the owner ``pid@host`` (:func:`owner_tag`), was left by a run that stopped.

    Only a process of this machine can be asked: another machine's (a cluster's worker on a shared disk) counts as
    running. A path of this process's own ID is a stopped run's only when this process has it not open
    (``open_here``): process IDs are used again (a container's run is often process 1 every time).

    Parameters
    ----------
    path : Path
        The leftover candidate.
    pid, host : int, str
        The owner its name carries.
    open_here : set of Path
        The resolved paths of this kind this process has open.

    Returns
    -------
    bool
        True when it is safe to remove: its owner no longer runs.
    """
    if host != _this_host():
        return False
    if pid == os.getpid():
        return path.resolve() not in open_here
    return not _process_running(pid)


def _stale_staging(folder: Path) -> bool:
    """Whether ``folder`` is a staging folder whose run was stopped before it could remove it.

    Only folders named as :func:`files_written_whole` names them count; of those, one of a process of this machine
    that no longer runs (or of this process, not open in it: a process ID used again), or one of a version before
    the owner was named. Another machine's (a cluster's worker on a shared disk) is left: its process cannot be
    asked.
    """
    name = _STAGING_NAME.fullmatch(folder.name)
    if name is None or not folder.is_dir() or folder.is_symlink():
        return False
    if name["pid"] is None:
        return True
    return left_by_stopped_run(folder, int(name["pid"]), name["host"], _OPEN_STAGING)


def remove_stale_staging(folder: str | Path) -> list[Path]:
    """Remove the staging folders a run stopped by a hard kill (``kill -9``, a lost job, a power cut) left in
    ``folder``, and say so.

    Why: :func:`files_written_whole` removes its hidden folder whatever stops the block, except what stops the
    process itself; the next run into the same folder found a hidden ``.segment-*`` folder with a half-written
    patient's files in it, left there for good. Only folders named as staging folders are touched, never a file or
    another folder of the user's, and never the staging folder of a run that still writes (:func:`_stale_staging`).

    Parameters
    ----------
    folder : str or Path
        A folder a run writes patients' files into.

    Returns
    -------
    list of Path
        The folders removed.
    """
    return remove_folders_left(folder, STAGING_PREFIX, _stale_staging, "hidden staging folder(s)", "run",
                               "they held files it had not finished, never put in place")


def remove_folders_left(root: str | Path, prefix: str, stale: Callable[[Path], bool], kind: str, owner: str,
                        held: str) -> list[Path]:
    """Remove the folders named ``prefix...`` in ``root`` that ``stale`` says a stopped run left, and say so.

    Why one function: the hidden staging folders (:func:`remove_stale_staging`) and the Slicer panel's job folders
    (:func:`~NPCPrognosisLib.slicer_support.jobs.remove_stale_job_folders`) are found, removed and named alike; only
    which names count and how they are told apart differ.

    Parameters
    ----------
    root : str or Path
        The folder to look in; a missing one has nothing to remove.
    prefix : str
        How the candidates' names start.
    stale : callable
        Whether a candidate was left by a run that stopped (:func:`left_by_stopped_run` on its name).
    kind, owner, held : str
        The warning's words: what the folders are ("job folder(s)"), whose ("Slicer") and what they held.

    Returns
    -------
    list of Path
        The folders removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed = sorted(path for path in root.glob(prefix + "*") if stale(path))
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    if removed:
        names = ", ".join(path.name for path in removed[:5]) + (", ..." if len(removed) > 5 else "")
        log.warning("removed %d %s that a stopped %s left in %s (%s): %s", len(removed), kind, owner, root, names,
                    held)
    return removed


@contextlib.contextmanager
def files_written_whole(finals: Sequence[Path]) -> Iterator[list[Path]]:
    """Where the block writes a set of files, moved over the earlier run's only once the block has written them all.

    An interruption then leaves the earlier run's set or this run's, never a mix. The block writes into a hidden
    folder beside the files (stale ones of a killed run are removed first, :func:`remove_stale_staging`); when it
    ends, each file it wrote replaces its final name and each final file it did not write is removed (the earlier
    run's would be read as this run's). Whatever stops the block, Ctrl-C included, removes the hidden folder and
    leaves the earlier files as they were; should the moves themselves be stopped, the earlier and this run's files
    of the set all go.

    Parameters
    ----------
    finals : sequence of Path
        The files' final names, all in one folder.

    Yields
    ------
    list of Path
        The same names in the hidden folder, in the same order, for the block to write.

    Raises
    ------
    ValueError
        ``finals`` lie in more than one folder (a file cannot be moved into place atomically across folders).
    """
    finals = [Path(path) for path in finals]
    folders = {path.parent for path in finals}
    if len(folders) != 1:
        raise ValueError(f"files written whole must share one folder, not {sorted(map(str, folders))}")
    folder = folders.pop()
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{owner_tag()}-", dir=folder))
    _OPEN_STAGING.add(staging.resolve())
    try:
        yield [staging / path.name for path in finals]
        try:
            for final in finals:
                written = staging / final.name
                if written.is_file():
                    os.replace(written, final)
                else:  # the earlier run's would be read as this run's
                    final.unlink(missing_ok=True)
        except BaseException:
            for final in finals:
                final.unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _OPEN_STAGING.discard(staging.resolve())
