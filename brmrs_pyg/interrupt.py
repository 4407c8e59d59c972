r"""Stopping training cleanly on SIGINT (Ctrl-C) or SIGTERM.

While :func:`~brmrs_pyg.train.train` runs, :class:`StopSignals` turns the first SIGINT or
SIGTERM into a request that the loop polls: training ends at the end of the step (batch) or
of the evaluation under way, ``last.pt`` is written and :class:`TrainingInterrupted` is
raised. ``run.py`` prints its one-line message and exits with ``128 + signal number`` (130
for SIGINT, 143 for SIGTERM), the status a shell gives a process killed by that signal. A
second signal aborts at once.

Handlers are installed only in the main thread (python runs signal handlers there, and
``signal.signal`` refuses other threads) and only for signals that are not ignored (a
background job of a non-interactive shell ignores SIGINT on purpose); the previous handlers
are restored when the block ends, so code around the training sees its own handlers.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

#: The signals that stop training cleanly.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: How a user continues a stopped run; the run's folder follows.
RESUME_COMMAND = "python run.py --resume"


def signal_name(signum: int) -> str:
    r"""``"SIGINT"`` for ``signal.SIGINT``; the number for a signal python does not name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class TrainingInterrupted(KeyboardInterrupt):
    r"""Training stopped on a signal; ``str()`` is the one line for the user.

    A :class:`KeyboardInterrupt`, so code that stops on Ctrl-C (a loop over runs, a notebook
    cell) stops on it as before, and ``except Exception`` does not swallow it.

    Args:
        signum (int): The signal received.
        message (str): What was stopped and how to continue, in one line.
        epoch (int, optional): The epoch ``last.pt`` holds, i.e. where a resumed run
            starts; :obj:`None` when no ``last.pt`` was written. (default: :obj:`None`)
        run_dir (Path, optional): The folder to resume (``run.py --resume run_dir``);
            :obj:`None` when the run cannot be resumed. (default: :obj:`None`)
    """

    def __init__(self, signum: int, message: str, epoch: int | None = None,
                 run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.signum = signum
        self.epoch = epoch
        self.run_dir = run_dir

    @property
    def exit_code(self) -> int:
        r"""``128 + signum``: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class StopSignals:
    r"""A context manager under which the first SIGINT or SIGTERM is only recorded (in
    :attr:`received`, for the code to poll at a safe point) and a second one raises
    :class:`TrainingInterrupted` at once, after restoring the previous handlers.

    Args:
        abort_note (str, optional): Appended to the message of that second-signal abort,
            e.g. what is left on disk. (default: ``""``)

    >>> with StopSignals() as signals:
    ...     signals.requested()
    False
    """

    def __init__(self, abort_note: str = "") -> None:
        self.abort_note = abort_note
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        r"""Whether a stop signal arrived since the block began."""
        return self.received is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                previous = signal.getsignal(signum)
                if previous is not signal.SIG_IGN:
                    self._previous[signum] = previous
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            # None: a handler set outside python, which cannot be put back; the default is
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            return
        self._restore()
        raise TrainingInterrupted(signum, f"{signal_name(signum)} again: training aborted at "
                                          f"once{self.abort_note}")
