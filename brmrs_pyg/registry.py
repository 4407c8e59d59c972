r"""A small name -> object registry, used for models and backbones.

>>> from brmrs_pyg.registry import Registry
>>> FUSIONS = Registry("fusion")
>>> @FUSIONS.register("mean")
... class Mean: ...
>>> FUSIONS.get("Mean") is Mean
True
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    r"""A name that is not registered; the message lists the registered names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def normalize_name(name: str) -> str:
    r"""Lower-cases a name and drops ``-``, ``_`` and spaces (``"Light-GCN"`` -> ``"lightgcn"``)."""
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


class Registry(Generic[T]):
    r"""Maps normalised names to registered objects (classes, usually).

    Registering a name twice raises; looking up an unknown name raises
    :class:`UnknownNameError` (a :class:`KeyError`) that lists every registered name.

    Args:
        kind (str): What is registered (``"model"``, ``"backbone"``), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        r"""Decorator that registers its argument under ``name``."""
        key = normalize_name(name)

        def decorator(obj: T) -> T:
            if key in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        r"""Returns the object registered under ``name`` (normalised)."""
        key = normalize_name(name)
        if key not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._items[key]

    def names(self) -> list[str]:
        r"""The registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return normalize_name(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
