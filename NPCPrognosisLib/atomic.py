"""Writing outputs so that a crash or a kill never leaves a half-written file where a finished one is expected."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: "str | Path", text: str) -> Path:
    """Write to a hidden temporary file in the same folder, then rename (atomic on POSIX and Windows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars/arrays and paths; anything else is refused (JSON only)."""
    import numpy as np

    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable; outputs and bundles hold JSON only")
