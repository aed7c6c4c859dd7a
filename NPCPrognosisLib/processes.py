"""Worker processes: one way to start them everywhere (radiomics, cohort extraction, synthesis)."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import pickle
import sys
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


#: Thread-count variables read by the numerical libraries a worker may load (OpenMP, OpenBLAS, MKL, ITK).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")

#: ITK's own: read once, when a filter first asks for the default (so after ``import SimpleITK`` still works).
ITK_THREAD_VARIABLE = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


def limit_threads(threads: int, variables: tuple[str, ...] = THREAD_VARIABLES) -> int:
    """Give this process's numerical libraries ``threads`` threads each, whether they are loaded yet or not.

    Libraries loaded later read the environment variables; those already loaded are told directly (BLAS and
    OpenMP through threadpoolctl, SimpleITK's default for new filters, torch's intra-op pool), since a variable
    set after they started is never read again.

    Parameters
    ----------
    threads : int
        Threads per library; below 1 counts as 1.
    variables : tuple of str
        Which of :data:`THREAD_VARIABLES` to set: :data:`ITK_THREAD_VARIABLE` alone limits ITK only and leaves
        BLAS, OpenMP and torch as they are.

    Returns
    -------
    threads : int
        The thread count set.
    """
    threads = max(1, int(threads))
    for name in variables:
        os.environ[name] = str(threads)
    if ITK_THREAD_VARIABLE in variables and "SimpleITK" in sys.modules:
        sys.modules["SimpleITK"].ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if set(variables) - {ITK_THREAD_VARIABLE}:
        if "numpy" in sys.modules:
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    return threads


def share_cores(workers: int) -> int:
    """Limit this process's numerical threads to its share of the cores when ``workers`` processes run at once.

    Without it every worker starts a BLAS/OpenMP/ITK thread per core: two workers on two cores run four busy
    threads, and the spinning threads cost more than they compute (two outer folds of the nested cross-validation
    took 65 s instead of 49 s). Returns the thread count set (:func:`limit_threads`).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return limit_threads(cores // max(1, int(workers)))


@dataclass(frozen=True)
class WorkerLogging:
    """How the main process prints log records and Python warnings, repeated in each spawned worker.

    Why: a spawned worker starts with logging unconfigured, so its records went to Python's last-resort handler:
    ``extract --workers 2`` printed a patient's image warning as the bare message, without the CLI's
    ``WARNING <logger>: `` prefix, and dropped the workers' INFO and DEBUG records under ``--verbose``.

    Attributes
    ----------
    level : int
        The main process's root logger level.
    formatter : logging.Formatter or None
        The formatter of its console handler (:func:`console_handler`); None when it has none, or one that cannot
        be sent to a worker: the worker keeps Python's default then, as the main process does without a handler.
    formatwarning : callable or None
        ``warnings.formatwarning`` (the CLI shows a warning's text only, without file and source line); None when
        it cannot be sent to a worker.
    """

    level: int
    formatter: logging.Formatter | None
    formatwarning: Callable[..., str] | None

    @classmethod
    def of_this_process(cls) -> WorkerLogging:
        """The logging of the process that starts the workers, as it is now."""
        handler = console_handler()
        formatter = None if handler is None else handler.formatter or logging.Formatter()
        return cls(level=logging.getLogger().level, formatter=_sendable(formatter),
                   formatwarning=_sendable(warnings.formatwarning))

    def apply(self) -> Callable[[], None]:
        """Set this (worker) process's root logger and warnings display to match.

        Returns
        -------
        callable
            Puts back what this process had before: a Dask worker outlives the run whose logging it took
            (:class:`~NPCPrognosisLib.pipeline.dask_cluster.MainProcessLogging`).
        """
        root = logging.getLogger()
        level, formatwarning = root.level, warnings.formatwarning
        handler = None
        if self.formatwarning is not None:
            warnings.formatwarning = self.formatwarning
        if self.formatter is not None:
            handler = logging.StreamHandler()  # stderr: a spawned worker writes to its parent's
            handler.setFormatter(self.formatter)
            root.addHandler(handler)
            root.setLevel(self.level)

        def restore() -> None:
            warnings.formatwarning = formatwarning
            if handler is not None:
                root.removeHandler(handler)
                root.setLevel(level)

        return restore


def console_handler() -> logging.Handler | None:
    """The root logger's handler that prints to the terminal (the CLI's ``logging.basicConfig``), or None."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout,
                                                                               sys.__stderr__, sys.__stdout__):
            return handler
    return None


def _sendable(value: Any) -> Any:
    """``value`` when it can be pickled to a spawned worker (a formatter or function of a module), else None."""
    try:
        pickle.dumps(value)
    except (pickle.PicklingError, TypeError, AttributeError):
        return None
    return value


def exit_with_parent() -> bool:
    """End this worker process as soon as the process that started it ends; True when a watch was started.

    Why: a spawned worker outlived a ``kill -9`` of its run. It finished the patient it held, wrote it to the cache,
    then blocked for good on handing back the result nobody read (``train``'s robustness workers and ``train-net``'s
    preprocessing workers, killed mid-run on 12 patients: each pair stayed asleep, holding its memory, until killed by
    hand). A thread waits on the parent's sentinel (closed when the parent ends, by a kill too) and ends the worker
    at once: an unfinished write it leaves is named with its owner, so the next run removes it
    (:func:`~NPCPrognosisLib.io.atomic.remove_stale_writes`).
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return False

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)  # no clean-up: the parent that would wait for it is gone

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
    return True


def _start_worker(workers: int, initializer: Callable[[], None] | None, logs: WorkerLogging) -> None:
    exit_with_parent()
    logs.apply()
    share_cores(workers)
    if initializer is not None:
        initializer()


class WorkerPool(ProcessPoolExecutor):
    """A process pool that stops when its ``with`` block is left by an exception.

    The standard ``with`` block waits for every queued task: Ctrl-C during ``extract --workers 2`` went on
    extracting the rest of the cohort (6 of 10 patients, 20 s) before stopping, and a cohort of hundreds would
    keep running for hours. Now any exception drops the tasks not started; Ctrl-C (``KeyboardInterrupt``) also
    ends the tasks running, since each worker has already been handed its next task (the tasks of the cohort stages
    write their results atomically, so an ended task leaves nothing half-written).
    """

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            terminate = getattr(self, "terminate_workers", None)  # Python 3.14+
            if terminate is not None:
                terminate()
                return False
            for process in list((self._processes or {}).values()):  # what terminate_workers does
                process.terminate()
        self.shutdown(wait=True, cancel_futures=exc_type is not None)
        return False


def worker_pool(workers: int, initializer: Callable[[], None] | None = None) -> WorkerPool:
    """The process pool of every parallel stage: spawned workers (:func:`spawn_context`) that end with the process
    that started them (:func:`exit_with_parent`), each logging as the main process does (:class:`WorkerLogging`) and
    limited to its share of the cores (:func:`share_cores`), then running ``initializer`` (a module-level
    function); leaving its ``with`` block by an exception cancels the tasks not yet started (:class:`WorkerPool`)."""
    return WorkerPool(max_workers=workers, mp_context=spawn_context(), initializer=_start_worker,
                      initargs=(int(workers), initializer, WorkerLogging.of_this_process()))
