r"""Own data -> MMRec dataset folder and card: a new dataset needs files, not code.

Inputs:

- an interactions table (``.csv`` or ``.tsv``, header row) with a user column, an item column
  and optionally a timestamp and a rating column;
- per-item texts: a table with the item column and one or more text columns, encoded into
  the modality ``text`` (all-MiniLM-L6-v2 unless told otherwise);
- and/or feature matrices, each a modality: a table with the item column and numeric columns,
  or a ``.npy`` matrix whose rows follow a keys file (one item key per line);
- and/or a folder of item images ``<item key>.<jpg|png|...>`` encoded by an image model into
  the modality ``image``.

The interactions go through :func:`~brmrs_pyg.data.prepare.interactions.prepare_interactions`
(duplicates dropped, optional :math:`k`-core, contiguous ids, MMRec's per-user split, at
random or by time). An item without a text gets the empty text; an item without a feature row
(or image) gets the mean row of the others, as MMRec fills missing Amazon image features.
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.encoders import encode_images, encode_texts, find_images
from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.data.prepare.interactions import (RawInteractions, SplitSettings,
                                                 prepare_interactions)
from brmrs_pyg.data.prepare.writer import (EncoderSettings, KeyColumns, Output, check_writable,
                                           finish, planned_files)
from brmrs_pyg.data.tables import Table, read_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CsvColumns:
    r"""Column names of the interactions table; ``time`` and ``rating`` are optional."""

    user: str = "user"
    item: str = "item"
    time: str | None = None
    rating: str | None = None


@dataclass(frozen=True)
class ItemSources:
    r"""Per-item inputs of :func:`convert_csv` (each optional, at least one needed).

    Args:
        texts (Path, optional): Table with the item column and text columns.
        text_columns (tuple[str, ...], optional): Text columns, joined by a space
            (default: every column but the item column).
        features (dict[str, Path], optional): Modality -> feature table or ``.npy`` matrix.
        feature_keys (Path, optional): Item key of each ``.npy`` row, one per line.
        images (Path, optional): Folder of item images.
    """

    texts: Path | None = None
    text_columns: tuple[str, ...] = ()
    features: dict[str, Path] = field(default_factory=dict)
    feature_keys: Path | None = None
    images: Path | None = None

    def modalities(self) -> list[str]:
        r"""The modalities these sources give, in card order."""
        return (list(self.features) + ["image"] * (self.images is not None)
                + ["text"] * (self.texts is not None))


def _timestamp(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return int(float(text))
    except ValueError:
        pass
    stamp = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return int(stamp.timestamp())


def read_interaction_table(path: Path, columns: CsvColumns) -> RawInteractions:
    r"""The events of an interactions table (timestamps: integers, decimals or ISO dates)."""
    table = read_table(path)
    users, items = table.column(columns.user), table.column(columns.item)
    for name, values in ((columns.user, users), (columns.item, items)):
        empty = next((n for n, v in enumerate(values) if not v.strip()), None)
        if empty is not None:
            raise DataError(f"{path}, line {empty + 2}: empty {name}")
    times = ratings = None
    if columns.time is not None:
        times = np.array(_numbers(table, columns.time, _timestamp), dtype=np.int64)
    if columns.rating is not None:
        ratings = np.array(_numbers(table, columns.rating, float), dtype=np.float64)
    return RawInteractions(users=np.array(users), items=np.array(items), ratings=ratings,
                           timestamps=times)


def _numbers(table: Table, column: str, parse: Callable[[str], float]) -> list[float]:
    out = []
    for n, value in enumerate(table.column(column)):
        try:
            out.append(parse(value))
        except (ValueError, OverflowError):
            raise DataError(f"{table.path}, line {n + 2}, column {column}: cannot read "
                            f"{value!r} as a number or date") from None
    return out


def item_texts_from_table(path: Path, item_column: str, text_columns: Sequence[str],
                          item_keys: Sequence[str]) -> list[str]:
    r"""The text of each of ``item_keys`` (text columns joined by a space; absent: ``""``)."""
    table = read_table(path)
    key_index = table.index(item_column)
    columns = list(text_columns) or [c for c in table.header if c != item_column]
    if not columns:
        raise DataError(f"{path}: no text column besides {item_column!r}")
    indices = [table.index(c) for c in columns]
    by_key = {row[key_index]: " ".join(row[i] for i in indices) for row in table.rows}
    missing = sum(k not in by_key for k in item_keys)
    if missing:
        log.warning("%d of %d items have no text in %s; they get the empty text", missing,
                    len(item_keys), path)
    return [by_key.get(k, "") for k in item_keys]


def feature_rows(path: Path, item_column: str, keys_file: Path | None
                 ) -> tuple[list[str], np.ndarray]:
    r"""``(row keys, matrix)`` of a feature table or of a ``.npy`` matrix with a keys file."""
    if path.suffix == ".npy":
        if keys_file is None:
            raise DataError(f"{path}: a .npy feature matrix needs --feature-keys FILE (the item "
                            "key of each row, one per line)")
        try:
            matrix = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path}: cannot read as a .npy array: {exc}") from None
        keys = [line.strip() for line in Path(keys_file).read_text(encoding="utf-8").splitlines()
                if line.strip()]
        if matrix.ndim != 2 or matrix.shape[0] != len(keys):
            raise DataError(f"{path}: shape {matrix.shape}; expected a 2-D matrix with one row "
                            f"per key of {keys_file} ({len(keys)})")
        return keys, np.asarray(matrix, dtype=np.float64)
    table = read_table(path)
    key_index = table.index(item_column)
    values = [[v for j, v in enumerate(row) if j != key_index] for row in table.rows]
    try:
        matrix = np.array(values, dtype=np.float64).reshape(len(values), -1)
    except ValueError:
        raise DataError(f"{path}: every column but {item_column!r} must hold numbers") from None
    return [row[key_index] for row in table.rows], matrix


def align_rows(row_keys: Sequence[str], matrix: np.ndarray, item_keys: Sequence[str],
               what: str) -> np.ndarray:
    r"""Row :math:`i` = the row of ``item_keys[i]``; items without one get the mean row of the
    dataset's items that have one.

    >>> align_rows(["b", "a"], np.array([[1.0], [3.0]]), ["a", "c", "b"], "f").tolist()
    [[3.0], [2.0], [1.0]]
    """
    position = {k: n for n, k in enumerate(row_keys)}
    rows = np.array([position.get(k, -1) for k in item_keys], dtype=np.int64)
    have = rows >= 0
    if not have.any():
        raise DataError(f"{what}: no row for any item of the dataset (are the keys the raw "
                        "item keys of the interactions?)")
    if not np.isfinite(matrix[rows[have]]).all():
        raise DataError(f"{what}: NaN or inf in the rows of the dataset's items")
    out = np.empty((len(item_keys), matrix.shape[1]), dtype=np.float32)
    out[have] = matrix[rows[have]]
    out[~have] = matrix[rows[have]].mean(axis=0)
    if not have.all():
        log.warning("%s: %d of %d items have no row; they get the mean row", what,
                    int((~have).sum()), len(item_keys))
    return out


def convert_csv(interactions: Path, columns: CsvColumns, sources: ItemSources, output: Output,
                split: SplitSettings = SplitSettings(kcore=0),
                encoders: EncoderSettings = EncoderSettings(),
                command: str = "") -> InteractionData:
    r"""Converts own data into an MMRec dataset folder and its card (module docstring).

    Args:
        interactions (Path): The interactions table.
        columns (CsvColumns): Its column names.
        sources (ItemSources): Per-item texts, feature matrices and/or images.
        output (Output): Dataset name, folder and card location.
        split (SplitSettings, optional): :math:`k`-core and split. (default: no
            :math:`k`-core, MMRec's random per-user split, seed 999)
        encoders (EncoderSettings, optional): Text and image encoders.
        command (str, optional): The command line, recorded in the card's ``source``.

    Returns:
        The dataset as read back from ``output.folder``.
    """
    modalities = sources.modalities()
    if not modalities:
        raise DataError("a dataset needs at least one modality: give item texts, a feature "
                        "matrix or item images")
    if sources.images is not None and encoders.image_model is None:
        raise DataError("item images need an image model (--image-model FOLDER_OR_NAME)")
    if "image" in sources.features and sources.images is not None:
        raise DataError("modality 'image' is given both as a feature matrix and as images")
    check_writable(output.folder, planned_files(output.name, modalities), output.card,
                   output.force)
    data = prepare_interactions(read_interaction_table(interactions, columns), split)
    keys = [str(k) for k in data.item_keys.tolist()]
    features: dict[str, np.ndarray] = {}
    for modality, path in sources.features.items():
        row_keys, matrix = feature_rows(Path(path), columns.item, sources.feature_keys)
        features[modality] = align_rows(row_keys, matrix, keys, str(path))
    if sources.images is not None:
        features["image"] = encode_images(find_images(keys, sources.images),
                                          str(encoders.image_model), encoders.batch_size,
                                          encoders.device, encoders.progress)
    if sources.texts is not None:
        texts = item_texts_from_table(sources.texts, columns.item, sources.text_columns, keys)
        features["text"] = encode_texts(texts, encoders.text_model, encoders.batch_size,
                                        encoders.device, encoders.progress)
    description = (f"Converted from {Path(interactions).name}: "
                   + (f"{split.kcore}-core, " if split.kcore > 1 else "")
                   + f"per-user split {'by time' if split.by_time else 'at random'} "
                   f"(seed {split.seed}); modalities {', '.join(modalities)}.")
    source = f"converted by: {command}" if command else f"converted from {interactions}"
    return finish(output, data, features, KeyColumns(user=columns.user, item=columns.item),
                  description, source, keep_card=False)
