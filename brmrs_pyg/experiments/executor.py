r"""Runs independent jobs (a suite's runs, a search's trial loops) on several local workers.

Each job is one ``python -m brmrs_pyg.experiments.worker`` process, started with its slot's
environment (``CUDA_VISIBLE_DEVICES`` is in place before torch starts, so a worker sees its
one GPU as ``cuda:0``) in its own process group, so that Ctrl-C reaches the parent alone
and the parent forwards exactly one SIGINT to each worker: the worker's training writes
``last.pt`` through :class:`~brmrs_pyg.interrupt.StopSignals` and exits, as a ``run.py``
process would. The job (a function and its arguments) and its return value travel as
pickle files. A worker that dies (killed, out of memory) is an :class:`Outcome` with its
exit code and no value; the other jobs go on.

This module imports no torch: the parent decides slots with :func:`plan` and only the
workers import the heavy modules.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Protocol, Sequence

from brmrs_pyg.interrupt import TrainingInterrupted, signal_name


log = logging.getLogger(__name__)

#: Seconds between two looks at the running workers.
POLL = 0.2

#: The environment variable through which a worker's parent gives its process id (see
#: :func:`.worker.stop_with_parent`).
PARENT = "BRMRS_WORKER_PARENT"


@dataclass(frozen=True)
class Slot:
    r"""One worker place: its CPU threads (``None``: the user set ``threads=``) and GPU
    (``None``: none assigned)."""

    index: int
    threads: int | None = None
    gpu: int | None = None

    def environ(self) -> dict[str, str]:
        r"""The worker's environment: this process's, with ``CUDA_VISIBLE_DEVICES`` set to
        the slot's GPU."""
        env = dict(os.environ)
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpu)
        return env


def plan(workers: int | None, device: str, threads_set: bool, cores: int | None = None,
         gpus: int | None = None) -> list[Slot]:
    r"""The worker slots of ``--workers``.

    With GPUs (``gpus`` counted by torch unless given, and ``device`` not ``cpu``) the
    default is one worker per GPU, worker ``i`` on GPU ``i mod gpus``; otherwise one worker.
    Unless the user set ``threads=``, the cores are split: ``max(1, cores // workers)``
    threads each (none set for a single worker: today's behaviour).

    Args:
        workers (int, optional): ``--workers``; :obj:`None` for the default.
        device (str): The runs' ``device`` key.
        threads_set (bool): Whether ``threads=`` was given.
        cores (int, optional): CPU cores (default: :func:`os.cpu_count`).
        gpus (int, optional): GPUs (default: ``torch.cuda.device_count()``).

    >>> [s.threads for s in plan(2, "cpu", False, cores=8, gpus=0)]
    [4, 4]
    """
    if workers is not None and workers < 1:
        raise ValueError(f"--workers {workers}: at least 1")
    if gpus is None:
        gpus = 0 if device == "cpu" else _gpu_count()
    gpus = 0 if device == "cpu" else gpus
    count = workers or max(gpus, 1)
    threads = None if threads_set or count == 1 else max(1, (cores or os.cpu_count() or 1)
                                                          // count)
    return [Slot(i, threads, i % gpus if gpus else None) for i in range(count)]


def _gpu_count() -> int:
    import torch
    return torch.cuda.device_count()


@dataclass(frozen=True)
class Outcome:
    r"""How a job ended: ``value`` is what its function returned (``None`` when it raised
    or its worker died); ``exitcode`` is the worker's (negative: killed by that signal)."""

    index: int
    value: Any
    exitcode: int
    seconds: float
    #: Why the job ended when its process's exit code does not say (a lost Ray node).
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.exitcode == 0 and not self.reason

    def why(self) -> str:
        r"""The exit code in words: ``killed by SIGKILL``, ``exit code 1``."""
        if self.reason:
            return self.reason
        if self.exitcode < 0:
            return f"killed by {signal.Signals(-self.exitcode).name}"
        return f"exit code {self.exitcode}"


class Executor(Protocol):
    r"""Where the runs of a suite or a search go: :class:`LocalExecutor` or
    :class:`~.ray_executor.RayExecutor`."""

    @property
    def workers(self) -> int:
        r"""Runs at once."""

    @property
    def machines(self) -> int:
        r"""How many machines the runs may go to."""

    @property
    def inline(self) -> bool:
        r"""Whether runs go in this process, one after another, instead of :meth:`map`."""

    def map(self, fn: Callable[..., Any], jobs: Sequence[Callable[[Slot], tuple[Any, ...]]]
            ) -> Iterator[Outcome]:
        r"""Runs ``fn(*job(slot))`` for every job, yielding each :class:`Outcome` as it
        ends."""


@dataclass
class _Running:
    index: int
    slot: Slot
    proc: subprocess.Popen[bytes]
    result: Path
    start: float


class LocalExecutor:
    r"""Runs jobs at most ``len(slots)`` at a time, each in a fresh worker process.

    Args:
        slots (list): The worker places (:func:`plan`).
        verbose (bool, optional): Whether workers print each run's own log, not only the
            experiment lines and warnings. (default: :obj:`False`)
    """

    def __init__(self, slots: Sequence[Slot], verbose: bool = False) -> None:
        if not slots:
            raise ValueError("an executor needs at least one slot")
        self.slots = list(slots)
        self.verbose = verbose

    @property
    def workers(self) -> int:
        return len(self.slots)

    machines = 1

    @property
    def inline(self) -> bool:
        r"""Whether runs go in this process, one after another (a single slot)."""
        return self.workers == 1

    def map(self, fn: Callable[..., Any], jobs: Sequence[Callable[[Slot], tuple[Any, ...]]]
            ) -> Iterator[Outcome]:
        r"""Runs ``fn(*job(slot))`` for every job, yielding each :class:`Outcome` as its
        worker ends (``index`` is the job's position). ``fn`` must be importable by name
        (a module-level function). On Ctrl-C or SIGTERM each worker gets one SIGINT, the
        executor waits for them to stop and the interruption propagates."""
        with tempfile.TemporaryDirectory(prefix="brmrs-workers-") as tmp, sigterm_raises():
            pending = list(enumerate(jobs))
            free = list(self.slots)
            running: list[_Running] = []
            try:
                while pending or running:
                    while pending and free:
                        index, job = pending.pop(0)
                        running.append(self._start(Path(tmp), index, free.pop(0), fn, job))
                    for done in [r for r in running if r.proc.poll() is not None]:
                        running.remove(done)
                        free.append(done.slot)
                        yield _outcome(done)
                    time.sleep(POLL if running else 0)
            except BaseException as exc:
                _stop(running, exc.signum if isinstance(exc, TrainingInterrupted)
                      else signal.SIGINT)
                raise

    def _start(self, tmp: Path, index: int, slot: Slot, fn: Callable[..., Any],
               job: Callable[[Slot], tuple[Any, ...]]) -> _Running:
        proc, result = start_worker(tmp / str(index), payload(fn, job(slot), self.verbose),
                                    slot.environ())
        return _Running(index, slot, proc, result, time.perf_counter())


def payload(fn: Callable[..., Any], args: tuple[Any, ...], verbose: bool) -> bytes:
    r"""A job as the worker process reads it: the pickled ``(fn, args, verbose)``."""
    return pickle.dumps((fn, args, verbose))


def start_worker(stem: Path, job: bytes, env: dict[str, str]
                 ) -> tuple[subprocess.Popen[bytes], Path]:
    r"""Starts one worker process on the :func:`payload` ``job`` (written to ``stem.job``)
    in its own process group; returns it and the path its return value will have."""
    path, result = stem.with_suffix(".job"), stem.with_suffix(".out")
    path.write_bytes(job)
    proc = subprocess.Popen([sys.executable, "-m", "brmrs_pyg.experiments.worker", str(path),
                             str(result)], env={**env, PARENT: str(os.getpid())},
                            start_new_session=True)
    return proc, result


def _outcome(done: _Running) -> Outcome:
    value = pickle.loads(done.result.read_bytes()) if done.result.is_file() else None
    return Outcome(done.index, value, int(done.proc.returncode),
                   time.perf_counter() - done.start)


def _stop(running: list[_Running], signum: int) -> None:
    r"""The parent's signal, once, to each worker (it saves its run and exits), then waits;
    a second Ctrl-C while waiting sends it again, which aborts them at once."""
    for r in running:
        _signal(r.proc, signum)
    try:
        for r in running:
            r.proc.wait()
    except KeyboardInterrupt:
        for r in running:
            _signal(r.proc, signum)
        for r in running:
            r.proc.wait()
        raise


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    r"""While workers run, SIGTERM stops the parent as Ctrl-C does (its workers then get
    SIGTERM) instead of killing it and leaving them orphaned; main thread only."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return

    def raise_interrupted(signum: int, frame: FrameType | None) -> None:
        raise TrainingInterrupted(signum, f"{signal_name(signum)}: workers stopped")

    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.poll() is None:
        proc.send_signal(signum)


def seconds_per_run(spent: Sequence[float], workers: int) -> list[float]:
    r"""Run durations as the wall time they cost with ``workers`` running at once, for
    :func:`~.runner.eta`."""
    return [s / workers for s in spent]
