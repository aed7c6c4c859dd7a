"""The Dask cluster of ``extract --engine dask``: a client whose workers run their share of the cores.

Dask's nanny starts each worker with one BLAS/OpenMP thread (``distributed.nanny.pre-spawn-environ``) but leaves
ITK alone, and ITK starts one thread per core for every filter: ``--engine dask --workers 2`` on two cores ran two
ITK threads in each worker. The workers are limited here the way the local process pool limits its own
(:func:`~NPCPrognosisLib.processes.share_cores`), by a worker plugin, so workers that Dask starts again after a
loss are limited too. They log as the process that started them does (:class:`MainProcessLogging`), as the local
pool's workers do. Imported only by the Dask engine: it needs ``distributed``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from NPCPrognosisLib.processes import ITK_THREAD_VARIABLE, WorkerLogging, limit_threads, share_cores


class ShareCores(WorkerPlugin):
    """Limits each worker's numerical threads when it starts (or when registered on workers already running).

    ``workers`` (a local cluster's worker count, one thread each): every library gets the worker's share of this
    machine's cores, as in ``extract --engine local --workers N``. None (the workers of a remote scheduler, whose
    machines and thread counts are the cluster's): ITK gets the thread count the cluster gives OpenMP (Dask's
    nanny: 1, as each worker runs ``nthreads`` tasks at once and ITK starts its threads per filter call, so
    ``nthreads`` ITK threads per task would run ``nthreads``² on ``nthreads`` cores); BLAS, OpenMP and torch stay
    as the cluster set them.
    """

    name = "npc-prognosis-share-cores"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers

    def setup(self, worker: Any) -> None:
        if self.workers is not None:
            share_cores(self.workers)
        else:
            limit_threads(int(os.environ.get("OMP_NUM_THREADS") or 1), (ITK_THREAD_VARIABLE,))


class MainProcessLogging(WorkerPlugin):
    """Each worker logs as the process that started the run does (:class:`~NPCPrognosisLib.processes.WorkerLogging`).

    Why: a worker's root logger had no handler, so a patient's image warning came out through Python's last-resort
    handler as the bare message, without the command's ``WARNING <logger>:`` prefix, and ``--verbose`` showed none
    of the workers' INFO lines, while ``--engine local`` workers logged as the command does. Removing the plugin
    (a later run registers its own under the same name; a worker that closes) puts the worker's logging back.
    """

    name = "npc-prognosis-logging"

    def __init__(self, logs: WorkerLogging) -> None:
        self.logs = logs
        self._restore: Callable[[], None] | None = None

    def setup(self, worker: Any) -> None:
        self._restore = self.logs.apply()

    def teardown(self, worker: Any) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None


@contextlib.contextmanager
def dask_client(address: str | None = None, workers: int = 2) -> Iterator[Client]:
    """A Dask client whose workers are limited by :class:`ShareCores` and log as this process does
    (:class:`MainProcessLogging`), closed (with its local cluster) on leaving.

    Parameters
    ----------
    address : str or None
        A scheduler's address (``extract --dask-scheduler``): its workers run the tasks. None: a local cluster of
        ``workers`` processes with one thread each.
    workers : int
        The local cluster's worker processes (``extract --workers``); not used with ``address``.

    Yields
    ------
    client : distributed.Client
        Connected, the plugins registered on every worker that runs now or starts later.
    """
    cluster = None if address else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)
    client = Client(address or cluster)
    try:
        # register_plugin came with distributed 2023.9.2; register_worker_plugin before it, and was removed since
        register = getattr(client, "register_plugin", None) or client.register_worker_plugin
        register(ShareCores(None if address else workers))
        register(MainProcessLogging(WorkerLogging.of_this_process()))
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
