r"""How a training process takes memory from the C allocator.

A training step allocates and frees the same few node-sized tables again and again (a
propagation's output, its gradient, the zero-filled gradient of a row lookup). With glibc's
default settings, a freed table at the top of the heap is returned to the kernel once more
than twice the last such table is free, and the next step's table is faulted back in, page
by page: on Sports-size data (54k nodes x 64) a LightGCN step spent a sixth of its CPU time
in the kernel doing that. :func:`reuse_freed_memory` makes glibc keep freed memory for
the next allocation instead. It changes no value that is computed; the process's peak
memory stays what it was, but memory freed after the peak is kept until the process ends.

A user who sets glibc's variables (:data:`USER_SETTINGS`) keeps them; note that setting any
one of them also stops glibc's own adjustment of the mapping threshold, so that every table
gets a fresh mapping: with ``MALLOC_TOP_PAD_`` alone set, a Sports-size epoch took 2.8x as
long for LightGCN and BR-MRS (docs/benchmarks.md, "Memory reuse").
"""
from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations above this still get their own mapping, returned to the kernel when freed:
#: glibc's own ceiling for the threshold on 64-bit systems (32 MiB).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap is never handed back (the largest ``int``).
TRIM_THRESHOLD = 2**31 - 1
#: Environment variables by which a user sets glibc's own choice; any of them set: hands off.
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "MALLOC_MMAP_MAX_")


def _libc() -> Any | None:
    r"""The C library the process runs with (its global symbols), if it has ``mallopt``."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # Windows has no process-wide handle
        return None
    return libc if hasattr(libc, "mallopt") else None


def reuse_freed_memory(libc: Any | None = None) -> bool:
    r"""On glibc (Linux), keeps the memory a process frees for its next allocations: no
    trimming of the heap's top, and the mapping threshold fixed at 32 MiB (not raised and
    lowered as tables come and go). Returns whether it did: not where the C library has
    no ``mallopt`` (macOS, Windows, musl builds answer 0), nor where the user set any of
    :data:`USER_SETTINGS` in the environment, whose choice is kept.

    ``libc`` is the C library to set (default: the process's own); for tests."""
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    libc = _libc() if libc is None else libc
    if libc is None:
        return False
    done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not done:
        log.debug("mallopt refused the settings: glibc's defaults are kept")
    return done


def rows_per_block(rows: int, row_bytes: int, cpu: bool = True) -> int:
    r"""How many of ``rows`` to make at once when a block of rows of ``row_bytes`` each is
    made and freed again and again (the scores of a chunk of users against every item):
    ``rows`` on a GPU, and on a CPU as many as keep a block at or under
    :data:`MMAP_THRESHOLD` (at least one). Such a block comes from the heap and takes the
    previous block's freed memory; a larger one gets a mapping of its own, which the kernel
    fills with zero pages at every block. On Sports-size data (18,357 items, one thread) a
    full-ranking evaluation took 4.9 s in chunks of 4,096 users (300 MB of scores each) and
    3.8 s in chunks of 448 (33 MB), the same arithmetic (docs/benchmarks.md, "Evaluation
    chunks").

    >>> rows_per_block(4096, 4 * 18357)
    456
    >>> rows_per_block(4096, 4 * 18357, cpu=False), rows_per_block(4096, 4 * 1000)
    (4096, 4096)
    """
    if not cpu:
        return rows
    return max(1, min(rows, MMAP_THRESHOLD // max(row_bytes, 1)))
