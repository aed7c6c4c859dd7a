"""Writing outputs so that a crash or a kill never leaves a half-written file where a finished one is expected,
and the one JSON encoding every output and bundle uses.

Every file the core writes (tables, JSON, images, PNG plots, reports) goes through :func:`atomic_path`: the
writer fills a hidden temporary file in the same folder, which is flushed to disk and renamed over the target only
once complete (``os.replace`` is atomic on POSIX and Windows; without the flush, a power cut soon after could leave
the new name pointing at an empty file).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{''.join(path.suffixes)}")
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
