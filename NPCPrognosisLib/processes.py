"""Worker processes: one way to start them everywhere (radiomics, cohort extraction, synthesis)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import sys
from pathlib import Path


def worker_python(executable: str | None = None) -> str | None:
    """The interpreter spawned workers must run.

    spawn starts ``sys.executable``; inside Slicer that is the application itself (SlicerApp-real), which would
    open a new Slicer window per worker. Slicer ships ``PythonSlicer`` next to it, which is the right choice.
    """
    exe = Path(executable or sys.executable or "")
    if exe.name.lower().startswith("python"):
        return str(exe)
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = exe.parent / name
        if candidate.is_file():
            return str(candidate)
    return None


def spawn_context() -> multiprocessing.context.SpawnContext:
    """The multiprocessing context of every worker pool in the project.

    spawn, not fork: forking a process that already runs threads (Qt/VTK in Slicer, ITK, or torch's OpenMP pool
    once a network has run) can deadlock the child. The interpreter is the one of ``worker_python``.
    """
    context = multiprocessing.get_context("spawn")
    python = worker_python()
    if python is not None and Path(python) != Path(sys.executable):
        context.set_executable(python)
    return context
