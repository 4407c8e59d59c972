r"""The worker process of :class:`~.executor.LocalExecutor` and of each Ray task:
``python -m brmrs_pyg.experiments.worker JOB RESULT``.

Reads the pickled ``(function, arguments, verbose)`` of ``JOB``, runs it with the terminal
showing the experiment lines (or, ``verbose``, every log line), and pickles the return
value into ``RESULT`` (renamed into place, so a worker that dies leaves none). Exit codes:
0 done, ``128 + signal`` when stopped by SIGINT/SIGTERM (``last.pt`` written by the run),
1 on an error (its traceback on stderr). On Linux a worker whose parent dies (the ``run.py``
that started it, or the Ray worker of its task, killed) gets SIGTERM, so it saves its run and
exits instead of training on unseen, next to the run that a re-run starts in its folder.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import Sequence

from .executor import PARENT


def main(argv: Sequence[str]) -> int:
    r"""Runs the job of ``argv = [JOB, RESULT]``; returns the exit code."""
    from brmrs_pyg.interrupt import TrainingInterrupted

    from .cli import ExperimentLinesOnly
    # the signal mask is inherited, and Ray's workers block SIGINT: unblocked, Ctrl-C and
    # a cancel reach the run (which saves last.pt) instead of waiting until it ends
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    stop_with_parent()
    job, result = Path(argv[0]), Path(argv[1])
    fn, args, verbose = pickle.loads(job.read_bytes())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(ExperimentLinesOnly())
    try:
        value = fn(*args)
    except KeyboardInterrupt as exc:
        logging.getLogger(__name__).warning("worker %d stopped: %s", os.getpid(), exc)
        return exc.exit_code if isinstance(exc, TrainingInterrupted) else 128 + signal.SIGINT
    tmp = result.with_name(result.name + ".tmp")
    tmp.write_bytes(pickle.dumps(value))
    os.replace(tmp, result)
    return 0


def stop_with_parent() -> None:
    r"""Asks Linux for SIGTERM when the parent process ends (``PR_SET_PDEATHSIG``); if it
    ended already (before this call), SIGTERM now. Elsewhere nothing."""
    parent = os.environ.get(PARENT)
    if not sys.platform.startswith("linux") or parent is None:
        return
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
