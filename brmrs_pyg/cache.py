r"""Disk cache entries that are verified on every read: a dict of named tensors saved
atomically with a SHA-256 checksum of its contents. The graph cache and the cache of
principal bases share them."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import Tensor

from brmrs_pyg.io import atomic_torch_save

log = logging.getLogger(__name__)

T = TypeVar("T")


def tensor_checksum(tensors: dict[str, Tensor]) -> str:
    r"""SHA-256 hex digest over every tensor's name, dtype, shape and bytes, in name order.

    >>> tensor_checksum({"a": torch.zeros(2)}) == tensor_checksum({"a": torch.zeros(2)})
    True
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        h.update(value.view(-1).view(torch.uint8).numpy().data)  # a view, not a copy
    return h.hexdigest()


def write_entry(path: Path, tensors: dict[str, Tensor]) -> None:
    r"""Saves ``tensors`` with their :func:`tensor_checksum` to ``path``, atomically."""
    atomic_torch_save({"tensors": tensors, "sha256": tensor_checksum(tensors)}, path)


def read_entry(path: Path, what: str, parse: Callable[[dict[str, Tensor]], T]) -> T | None:
    r"""``parse`` of the tensors of the entry at ``path``; ``None`` when there is no entry, or
    when it cannot be trusted: unreadable, failing its checksum (flipped or truncated bytes)
    or refused by ``parse`` (any exception), which is logged as a warning naming ``what``.

    Args:
        path (Path): The entry, written by :func:`write_entry`.
        what (str): What the entry holds, for the warning (e.g. ``"graph"``).
        parse (callable): Turns the verified tensors into the cached object; raises
            ``ValueError`` when they do not fit the request (e.g. other node counts).
    """
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, weights_only=True)
        if not isinstance(entry, dict) or set(entry) != {"tensors", "sha256"}:
            raise ValueError("not a cache entry")
        if tensor_checksum(entry["tensors"]) != entry["sha256"]:
            raise ValueError("checksum mismatch: the file's contents changed after it was "
                             "written")
        return parse(entry["tensors"])
    except Exception as exc:  # any unreadable or corrupted entry is rebuilt, never trusted
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("%s cache %s is unreadable or corrupted (%s); rebuilding it", what, path,
                    reason)
        return None
