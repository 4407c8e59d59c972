r"""Atomic writes: a file is written beside its target and renamed over it, so a reader (or a
crash) never sees a half-written result, checkpoint, cache entry or table.

Every file the package writes goes through :func:`atomic_open` (directly or through one of
the helpers below). The temporary file is flushed and ``fsync``-ed before the rename, so after
a crash or power loss the target holds either the old complete file or the new complete one;
when writing fails (a full disk, an exception while serialising), the temporary file is
removed and the target is left as it was.

A process killed while writing (SIGKILL, a power cut) cannot remove its temporary file; the
next atomic write of the same target does (:func:`remove_stale_temporaries`). It removes only
files named as this module names the target's temporary files, written on this machine by a
process that is no longer running: never a user's file, never the file of a live writer.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np
import torch


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    r"""Opens a temporary file beside ``path``; when the block ends without an exception, the
    file is synced to disk and renamed over ``path``, otherwise it is deleted.

    Args:
        path (Path): The target file; its folder is created when missing.
        mode (str, optional): ``"w"`` (text, UTF-8, ``\n`` line ends) or ``"wb"`` (bytes).
            (default: ``"w"``)

    >>> import tempfile
    >>> with atomic_open(Path(tempfile.mkdtemp()) / "a.txt") as handle:
    ...     _ = handle.write("complete or absent")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    # a unique name in the same folder: the rename stays on one file system, and two writers of
    # the same target (two threads, two processes, two machines) never share a temporary
    # file; mode 0o666 lets the umask decide the permissions, as for any file the user creates
    tmp = path.with_name(f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        handle: IO[Any] = (os.fdopen(fd, "w", encoding="utf-8", newline="\n") if mode == "w"
                           else os.fdopen(fd, "wb"))
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@functools.lru_cache(maxsize=1)
def _host() -> str:
    # this machine's name as it appears in temporary names: letters, digits and '-' only
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def remove_stale_temporaries(path: Path) -> list[Path]:
    r"""Removes the temporary files of ``path`` that an interrupted :func:`atomic_open` left
    behind: files beside ``path`` named ``.<name>.<host>.<pid>.<8 hex digits>.tmp``, where
    ``<host>`` is this machine and process ``<pid>`` no longer runs. Any other file, a
    temporary file of a live process (another writer of the same target) and one from another
    machine sharing the folder are left alone; so is everything on Windows, where no process
    can be checked without side effects. Returns the files removed.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / ".notes.txt.tmp").write_text("a user's file")
    >>> remove_stale_temporaries(folder / "notes.txt")
    []
    """
    path = Path(path)
    if os.name == "nt":
        return []
    ours = re.compile(rf"\.{re.escape(path.name)}\.{re.escape(_host())}\.(\d+)"
                      r"\.[0-9a-f]{8}\.tmp")
    removed = []
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            match = ours.fullmatch(entry.name)
            if match and entry.is_file(follow_symlinks=False) and not process_running(int(match[1])):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def process_running(pid: int) -> bool:
    r"""Whether process ``pid`` of this machine may still be running (this process counts as
    running; so does any answer that is not a clear "no such process")."""
    # signal 0 checks that the process exists without touching it (POSIX only); unsure
    # answers count as running, so the file is kept
    if pid == os.getpid():
        return True  # another thread of this process may be writing the target
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


class FileLock:
    r"""An exclusive lock on ``path`` among this machine's processes (``flock``), held from
    creation until :meth:`release` (idempotent) or the end of a ``with`` block. The file is
    created if missing and left in place: removing it would let two processes lock two
    different files of the same name."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle: IO[str] | None = path.open("a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not every platform can open a folder (Windows cannot)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    r"""Writes ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: Path, obj: Any) -> None:
    r"""Writes ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]],
                     delimiter: str = ",") -> None:
    r"""Writes a table as CSV (or TSV with ``delimiter="\t"``) to ``path`` atomically: for
    result tables such as a suite's summary, which a reader must never see half written.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "table.csv"
    >>> atomic_write_csv(path, ["model", "recall@20"], [["lightgcn", 0.41]])
    >>> path.read_text()
    'model,recall@20\nlightgcn,0.41\n'
    """
    with atomic_open(path, "w") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def atomic_torch_save(obj: Any, path: Path) -> None:
    r"""``torch.save`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    r"""``np.save`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    r"""``np.savez`` of named arrays to ``path`` atomically (read back with ``np.load``)."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, allow_pickle=False, **arrays)


def atomic_copy(source: Path, path: Path) -> None:
    r"""Copies ``source`` to ``path`` atomically (its bytes only, not its metadata)."""
    with atomic_open(path, "wb") as handle, open(source, "rb") as src:
        shutil.copyfileobj(src, handle)
