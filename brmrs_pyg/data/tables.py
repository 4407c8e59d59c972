r"""Delimited text tables (``.csv``, ``.tsv``, optionally gzip-compressed) with a header row.

The separator follows the file name: ``.tsv``, ``.tab`` and ``.inter`` are tab-separated and
unquoted (a tab never occurs inside a field, quotes are ordinary characters, as in MMRec's
files); ``.csv`` is comma-separated with the usual double-quote quoting. Every problem raises
:class:`DataError` naming the file, the line and what was expected.
"""
from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from brmrs_pyg.data.errors import DataError

_TAB_SUFFIXES = {".tsv", ".tab", ".inter", ".txt"}


@dataclass
class Table:
    r"""A table read from ``path``: its header and its rows, all fields as strings.

    Shapes:
        - **rows**: one list of ``len(header)`` strings per data line.
    """

    path: Path
    header: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> list[str]:
        r"""The values of column ``name``; a :class:`DataError` lists the columns when absent."""
        return [row[self.index(name)] for row in self.rows]

    def index(self, name: str) -> int:
        r"""The position of column ``name`` in the header."""
        if name not in self.header:
            raise DataError(f"{self.path}: no column {name!r}; the header has "
                            f"{', '.join(repr(h) for h in self.header)}")
        return self.header.index(name)


def separator_of(path: Path) -> str:
    r"""``"\t"`` for ``.tsv``, ``.tab``, ``.inter``, ``.txt`` (also gzipped), else ``","``."""
    suffixes = Path(path).suffixes
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return "\t" if suffixes and suffixes[-1] in _TAB_SUFFIXES else ","


def open_text(path: Path) -> TextIO:
    r"""Opens a UTF-8 text file, transparently gunzipping a ``.gz`` one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_table(path: Path, sep: str | None = None) -> Table:
    r"""Reads a delimited table with a header row.

    Args:
        path (Path): The file (``.gz`` is decompressed).
        sep (str, optional): Field separator (default: from the file name, see
            :func:`separator_of`).
    """
    path = Path(path)
    sep = sep or separator_of(path)
    try:
        with open_text(path) as handle:
            rows = list(_rows(handle, path, sep))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except (OSError, EOFError) as exc:  # a corrupt or truncated .gz
        raise DataError(f"{path}: cannot read: {exc}") from None
    while rows and rows[-1][1] == [""]:
        rows.pop()  # trailing blank lines
    if not rows:
        raise DataError(f"{path}: empty file; expected a header row")
    header = [h.strip() for h in rows[0][1]]
    body = []
    for line, fields in rows[1:]:
        if len(fields) != len(header):
            sep_name = "tab" if sep == "\t" else repr(sep)
            raise DataError(f"{path}, line {line}: {len(fields)} {sep_name}-separated fields, "
                            f"the header has {len(header)}")
        body.append(fields)
    return Table(path=path, header=header, rows=body)


def _rows(handle: TextIO, path: Path, sep: str) -> Iterator[tuple[int, list[str]]]:
    if sep == "\t":
        for n, line in enumerate(handle, start=1):
            yield n, line.rstrip("\r\n").split("\t")
        return
    reader = csv.reader(handle, delimiter=sep)
    try:
        start = 1
        for fields in reader:
            yield start, fields or [""]
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: cannot parse: {exc}") from None
