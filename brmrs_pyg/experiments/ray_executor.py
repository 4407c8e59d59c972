r"""``--executor ray``: the jobs of a suite or a search as Ray tasks, on one machine or a
cluster (extra ``ray``).

Each job is one Ray task with ``num_cpus=--cpus-per-run`` and ``num_gpus=--gpus-per-run``;
the task starts the same worker process as :class:`~.executor.LocalExecutor`
(``python -m brmrs_pyg.experiments.worker``) on the node Ray chose, with the environment Ray
gives the task (``CUDA_VISIBLE_DEVICES`` of its GPUs), so a run trains exactly as it does
under ``run.py``; the job and its return value travel through Ray as bytes. Every node must
have brmrs_pyg installed and see the run folders at the same path (a shared output
folder).

At most :attr:`RayExecutor.workers` tasks are in flight: ``--workers`` when given, else what
the cluster holds (its CPUs over ``--cpus-per-run``, its GPUs over ``--gpus-per-run``). Ray
does not retry a task: a run whose process or node dies is an :class:`~.executor.Outcome`
that says so, and the next run of the same command resumes it from its ``last.pt``. On
Ctrl-C or SIGTERM each task in flight is cancelled: it sends its worker one SIGINT, which
saves ``last.pt`` and exits, as under the local executor.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .executor import POLL, Outcome, Slot, payload, sigterm_raises, start_worker
from .runner import SuiteError

log = logging.getLogger(__name__)


class RayError(SuiteError):
    r"""Ray is missing, its cluster cannot be reached, or it cannot hold one run."""


def import_ray() -> Any:
    r"""The ``ray`` module, or a :class:`RayError` saying how to install it."""
    # Ray folds log lines that look alike from different workers into one "repeated Nx"
    # line, which would hide the per-trial progress lines of a search's workers
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
    except ImportError:
        raise RayError("--executor ray needs Ray: pip install -e '.[ray]' "
                       "(or EXTRAS=test,ray ./setup.sh)") from None
    return ray


class RayExecutor:
    r"""Runs jobs as Ray tasks, at most :attr:`workers` at a time.

    Args:
        address (str, optional): The cluster (``auto``: the one started on this machine with
            ``ray start``; ``HOST:PORT``; ``ray://HOST:PORT``); :obj:`None`: Ray's own
            default (``RAY_ADDRESS``, else a cluster started on this machine, else a Ray
            instance with this machine's cores, stopped when this process ends).
        cpus_per_run (float): CPUs each task asks for; also the run's ``threads=`` unless
            the user set ``threads=``. (default: :obj:`1`)
        gpus_per_run (float, optional): GPUs each task asks for (default: 1 when the
            cluster has GPUs and ``device`` is not ``cpu``, else 0).
        workers (int, optional): Tasks in flight at most (default: all the cluster holds).
        device (str): The runs' ``device`` key. (default: ``"auto"``)
        threads_set (bool): Whether ``threads=`` was given. (default: :obj:`False`)
        verbose (bool): Whether workers print each run's own log. (default: :obj:`False`)
    """

    inline = False

    def __init__(self, address: str | None = None, cpus_per_run: float = 1,
                 gpus_per_run: float | None = None, workers: int | None = None,
                 device: str = "auto", threads_set: bool = False, verbose: bool = False
                 ) -> None:
        if cpus_per_run <= 0 or (gpus_per_run is not None and gpus_per_run < 0):
            raise RayError(f"--cpus-per-run {cpus_per_run} / --gpus-per-run {gpus_per_run}: "
                           "CPUs must be > 0, GPUs >= 0")
        if workers is not None and workers < 1:
            raise RayError(f"--workers {workers}: at least 1")
        ray = import_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, logging_level="WARNING",
                         configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise RayError(f"--address {address}: cannot reach a Ray cluster ({exc}); "
                               "start one with `ray start --head` or leave --address out "
                               "for a local instance") from exc
        self.machines = sum(1 for node in ray.nodes() if node.get("Alive"))
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        if gpus_per_run is None:
            gpus_per_run = 1.0 if gpus >= 1 and device != "cpu" else 0.0
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        self.workers = capacity(cpus, gpus, cpus_per_run, gpus_per_run, workers)
        self.threads = None if threads_set else max(1, int(cpus_per_run))
        self.verbose = verbose
        log.info("Ray cluster: %d machine(s), %g CPUs, %g GPUs; %d runs at once, each %g CPUs "
                 "and %g GPUs", self.machines, cpus, gpus, self.workers, cpus_per_run,
                 gpus_per_run)

    def map(self, fn: Callable[..., Any], jobs: Sequence[Callable[[Slot], tuple[Any, ...]]]
            ) -> Iterator[Outcome]:
        r"""Runs ``fn(*job(slot))`` for every job as a Ray task, yielding each
        :class:`~.executor.Outcome` as its task ends (``index`` is the job's position);
        see :meth:`.executor.LocalExecutor.map`."""
        ray = import_ray()
        task = ray.remote(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                          max_retries=0)(run_job)
        pending = list(enumerate(jobs))
        free = [Slot(i, self.threads) for i in range(self.workers)]
        running: dict[Any, tuple[int, Slot, float]] = {}
        with sigterm_raises():
            try:
                while pending or running:
                    while pending and free:
                        index, job = pending.pop(0)
                        slot = free.pop(0)
                        ref = task.remote(payload(fn, job(slot), self.verbose))
                        running[ref] = (index, slot, time.perf_counter())
                    # a timeout: a wait in Ray's C++ core would hold Ctrl-C until a task ends
                    ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL)
                    if not ready:
                        continue
                    index, slot, start = running.pop(ready[0])
                    free.append(slot)
                    yield _outcome(ray, ready[0], index, time.perf_counter() - start)
            except BaseException:
                _cancel(ray, list(running))
                raise


def capacity(cpus: float, gpus: float, cpus_per_run: float, gpus_per_run: float,
             workers: int | None) -> int:
    r"""How many runs a cluster with ``cpus`` and ``gpus`` holds at once, capped at
    ``workers``; a :class:`RayError` when it cannot hold one.

    >>> capacity(16, 2, 1, 1, None), capacity(16, 0, 4, 0, None), capacity(16, 0, 1, 0, 3)
    (2, 4, 3)
    """
    fits = int(cpus // cpus_per_run)
    if gpus_per_run > 0:
        fits = min(fits, int(gpus // gpus_per_run))
    if fits < 1:
        raise RayError(f"the Ray cluster ({cpus:g} CPUs, {gpus:g} GPUs) cannot hold one run of "
                       f"{cpus_per_run:g} CPUs and {gpus_per_run:g} GPUs")
    return min(fits, workers) if workers else fits


def run_job(job: bytes) -> tuple[int, bytes | None]:
    r"""The Ray task: runs ``job`` in a worker process; returns its exit code and pickled
    return value. A cancel (Ray raises :class:`KeyboardInterrupt` here) sends the worker
    one SIGINT and waits for it to save its run."""
    with tempfile.TemporaryDirectory(prefix="brmrs-ray-") as tmp:
        proc, result = start_worker(Path(tmp) / "job", job, dict(os.environ))
        try:
            while proc.poll() is None:  # polled: Ray's cancel lands between two looks
                time.sleep(POLL)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait()
        return int(proc.returncode), result.read_bytes() if result.is_file() else None


def _outcome(ray: Any, ref: Any, index: int, seconds: float) -> Outcome:
    try:
        exitcode, value = ray.get(ref)
    except ray.exceptions.RayError as exc:
        last = [line for line in str(exc).splitlines() if line.strip()][-1:]
        reason = f"lost by Ray: {type(exc).__name__}: {''.join(last)}"
        return Outcome(index, None, -1, seconds, reason)
    return Outcome(index, None if value is None else pickle.loads(value), exitcode, seconds)


def _cancel(ray: Any, refs: list[Any]) -> None:
    r"""Cancels the tasks in flight (each stops its worker, which saves its run) and waits
    for them to end."""
    for ref in refs:
        ray.cancel(ref)
    for ref in refs:
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            pass
