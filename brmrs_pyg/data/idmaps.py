r"""The raw keys behind a dataset's contiguous ids, from its mapping files.

``run.py prepare`` writes ``u_id_mapping.tsv`` and ``i_id_mapping.tsv`` beside the
``.inter`` file (:mod:`brmrs_pyg.data.prepare.writer`: header ``<key column><TAB>userID``);
MMRec's own preprocessing writes ``u_id_mapping.csv`` and ``i_id_mapping.csv``, tab-separated
despite the name. Either is read here, the separator taken from the header line (a tab when
it holds one, else a comma). The id column is ``userID`` (``itemID``); the raw key is the
first other column, whatever its name (``user_id``, ``asin``, lfm2k's ``artistID``); further
columns (lfm2k's ``name`` and ``tags``) are ignored. Every id of the dataset must appear once
and every key once, or the file is refused with a :class:`DataError`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.tables import open_text, read_table

#: The mapping files of each side, in the order they are looked for.
MAP_FILES = {"user": ("u_id_mapping.tsv", "u_id_mapping.csv"),
             "item": ("i_id_mapping.tsv", "i_id_mapping.csv")}
#: The id column of each side's mapping file (the ``.inter`` file's column names).
ID_COLUMNS = {"user": "userID", "item": "itemID"}


@dataclass(frozen=True)
class IdMap:
    r"""The raw key of every id of one side (users or items) of a dataset.

    Args:
        column (str): The key column's name in the file (``asin``, ``artistID``, ...).
        keys (tuple): ``keys[i]`` is the raw key (a string) of id ``i``.
        path (Path): The mapping file.

    >>> artists = IdMap("artistID", ("80", "66"), Path("i_id_mapping.tsv"))
    >>> artists.ids_of(["66"]), artists.keys_of([0, 1])
    ([1], ['80', '66'])
    """

    column: str
    keys: tuple[str, ...]
    path: Path

    @functools.cached_property
    def _id_of(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.keys)}

    def ids_of(self, keys: Sequence[str]) -> list[int]:
        r"""The ids of raw ``keys``; a :class:`DataError` names the first unknown one."""
        missing = [k for k in keys if k not in self._id_of]
        if missing:
            raise DataError(f"unknown {self.column} {missing[0]!r}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                            + f": not in {self.path}")
        return [self._id_of[k] for k in keys]

    def keys_of(self, ids: Sequence[int]) -> list[str]:
        r"""The raw keys of ``ids`` (valid ids, :math:`0 \le i <` ``len(keys)``)."""
        return [self.keys[i] for i in ids]


class IdMaps(NamedTuple):
    r"""The id maps of a dataset folder, each :obj:`None` where the folder has no file."""

    folder: Path
    user: IdMap | None
    item: IdMap | None


def read_id_maps(folder: Path, num_users: int, num_items: int) -> IdMaps:
    r"""The user and item id maps of the dataset in ``folder`` (module docstring), checked
    against its sizes; a side without a mapping file is :obj:`None`."""
    folder = Path(folder)
    return IdMaps(folder, read_id_map(folder, "user", num_users),
                  read_id_map(folder, "item", num_items))


def read_id_map(folder: Path, side: str, count: int) -> IdMap | None:
    r"""The id map of ``side`` (``"user"`` or ``"item"``) from the first of its
    :data:`MAP_FILES` in ``folder``, which must map each id ``0 .. count-1`` once to a
    distinct key; :obj:`None` when the folder has none of the files."""
    path = next((Path(folder) / n for n in MAP_FILES[side] if (Path(folder) / n).is_file()),
                None)
    if path is None:
        return None
    with open_text(path) as handle:
        header = handle.readline()
    table = read_table(path, sep="\t" if "\t" in header else ",")
    id_column = ID_COLUMNS[side]
    others = [c for c in table.header if c != id_column]
    ids = table.column(id_column)  # a DataError names the columns when there is none
    if not others:
        raise DataError(f"{path}: no raw key column beside {id_column!r}")
    try:
        order = [int(i) for i in ids]
    except ValueError:
        raise DataError(f"{path}: column {id_column} must hold integer ids") from None
    if sorted(order) != list(range(count)):
        raise DataError(f"{path}: column {id_column} must hold each id 0..{count - 1} of the "
                        f"dataset exactly once ({len(order)} rows; the dataset has {count} "
                        f"{side}s)")
    keys = [""] * count
    for i, key in zip(order, table.column(others[0])):
        keys[i] = key
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if first.setdefault(key, i) != i:
            raise DataError(f"{path}: {others[0]} {key!r} is the key of {side} ids "
                            f"{first[key]} and {i}; each key must name one {side}")
    return IdMap(others[0], tuple(keys), path)
