r"""How many CPU threads torch uses (the ``threads`` key).

torch's default is one thread per core. On a machine where another job already keeps a core
busy, that default is a trap: the parallel regions of every operation wait for the thread
that shares its core with the other job. Measured on a 2-core machine with one core kept
busy (LightGCN, s/epoch): 0.65 with torch's default against 0.29 with one thread, while on
the idle machine the default is the faster (0.14 against 0.23). So ``threads=0`` (the
default) takes the cores that are idle when the run starts, measured from the kernel's CPU
counters over a quarter of a second, and never more than torch's default; a number fixes it.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable

import torch

log = logging.getLogger(__name__)

#: Seconds over which :func:`idle_cores` watches the CPU counters.
WINDOW = 0.25
#: torch's own choice, read once: a run that took fewer threads must not lower the next
#: run's ceiling in the same process.
TORCH_DEFAULT = torch.get_num_threads()


def _cpu_times(path: str = "/proc/stat") -> tuple[int, int]:
    r"""``(idle, total)`` jiffies of all cores from the first line of ``/proc/stat``: idle
    counts idle and iowait; total the eight fields of user to steal (guest time is already
    inside user)."""
    with open(path) as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return fields[3] + fields[4], sum(fields)


def idle_cores(window: float = WINDOW,
               sample: Callable[[], tuple[int, int]] = _cpu_times) -> float | None:
    r"""How many of the machine's cores were idle over the next ``window`` seconds, or
    :obj:`None` where the counters cannot be read (not Linux)."""
    try:
        idle0, total0 = sample()
        time.sleep(window)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)


def auto_threads(default: int, idle: float | None) -> int:
    r"""The threads of ``threads=0``: the idle cores, rounded, at least 1 and at most
    ``default`` (torch's own choice); ``default`` when the idle cores are unknown."""
    if idle is None:
        return default
    return max(1, min(default, round(idle)))


def set_threads(threads: int, device: torch.device) -> int:
    r"""Sets torch's CPU threads for a run and returns their number: ``threads`` when it is
    positive, else :func:`auto_threads` of the cores idle now (on a CUDA device torch's
    default is kept: the CPU only feeds the GPU)."""
    if threads > 0:
        torch.set_num_threads(threads)
        return threads
    default = TORCH_DEFAULT
    if device.type != "cpu":
        torch.set_num_threads(default)
        return default
    idle = idle_cores()
    chosen = auto_threads(default, idle)
    torch.set_num_threads(chosen)
    if idle is not None and chosen < default:
        log.info("threads: %d (threads=0: %.1f of %d cores idle at the start, so fewer than "
                 "torch's %d; set threads=N to choose)", chosen, idle, os.cpu_count() or 1,
                 default)
    return chosen
