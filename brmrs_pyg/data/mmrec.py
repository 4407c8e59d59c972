r"""Reader and validator for the MMRec data format (DESIGN.md section 2).

A dataset folder holds ``<name>.inter`` (tab-separated, header with ``userID``, ``itemID``,
``x_label``; 0 train, 1 valid, 2 test; other columns ignored) and one ``.npy`` feature matrix
per modality whose row ``i`` describes item ``i``. Every problem raises :class:`DataError`
naming the file, the line or row, and what was expected.
"""
from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from brmrs_pyg.data.cards import DatasetCard, ModalitySpec
from brmrs_pyg.data.coldstart import ColdItems, users_without_training
from brmrs_pyg.data.errors import DataError, MissingFilesError
from brmrs_pyg.data.encoders import built_features

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
SPLITS = {0: "train", 1: "valid", 2: "test"}


@dataclass
class InteractionData:
    r"""A validated dataset: interactions per split and item features per modality, and with
    the cold-start protocol (:func:`~brmrs_pyg.data.coldstart.cold_item_split`) the cold items
    of valid and test (``cold``; :obj:`None` for the dataset's given split).

    Shapes:
        - **train**, **valid**, **test**: :math:`(2, |E_{split}|)`, rows (user id, item id).
        - **features[m]**: :math:`(|\mathcal{I}|, d_m)`, float32.
    """

    name: str
    num_users: int
    num_items: int
    train: Tensor
    valid: Tensor
    test: Tensor
    features: dict[str, Tensor]
    cold: ColdItems | None = None

    def split(self, name: str) -> Tensor:
        r"""The interactions of split ``"train"``, ``"valid"`` or ``"test"``."""
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]

    def stats(self) -> dict[str, object]:
        r"""Sizes, as written to ``results.json``."""
        n = self.train.size(1) + self.valid.size(1) + self.test.size(1)
        return {
            "name": self.name, "num_users": self.num_users, "num_items": self.num_items,
            "num_interactions": n, "num_train": self.train.size(1),
            "num_valid": self.valid.size(1), "num_test": self.test.size(1),
            "density": n / (self.num_users * self.num_items),
            "modalities": {m: int(x.size(1)) for m, x in self.features.items()},
            **self._cold_stats(),
        }

    def _cold_stats(self) -> dict[str, object]:
        if self.cold is None:
            return {}
        return {"num_cold_valid_items": self.cold.valid.numel(),
                "num_cold_test_items": self.cold.test.numel(),
                "num_users_without_train": users_without_training(self)}

    def fingerprint(self) -> str:
        r"""SHA-256 hex digest of the sizes, every split, the cold items (when there are) and
        every feature matrix: equal digests mean the same data (a resumed run checks it
        against its checkpoint)."""
        h = hashlib.sha256(f"{self.num_users}|{self.num_items}".encode())
        cold = [] if self.cold is None else [("cold_valid", self.cold.valid),
                                             ("cold_test", self.cold.test)]
        for name, tensor in (("train", self.train), ("valid", self.valid), ("test", self.test),
                             *cold, *sorted(self.features.items())):
            array = tensor.contiguous().numpy()
            h.update(f"|{name}|{array.dtype}|{array.shape}|".encode())
            h.update(array.tobytes())
        return h.hexdigest()


def read_inter(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Reads an MMRec ``.inter`` file.

    UTF-8 (a byte-order mark is allowed), lines end with ``\n`` or ``\r\n``, fields are
    tab-separated and may be padded with spaces; the header names ``userID``, ``itemID`` and
    ``x_label`` once each, in any order, among any other columns.

    Returns:
        ``(users, items, labels)``, int64 arrays of equal length.
    """
    path = Path(path)
    lines = _read_lines(path)
    header = [name.strip(" ") for name in lines[0].split("\t")]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        hint = ""
        for sep, sep_name in ((",", "comma"), (";", "semicolon"), (" ", "space")):
            if sep in lines[0] and "\t" not in lines[0]:
                hint = f" (the header looks {sep_name}-separated; columns must be tab-separated)"
                break
        raise DataError(f"{path}, line 1: header {lines[0]!r} lacks column(s) "
                        f"{', '.join(missing)}{hint}; expected a tab-separated header with "
                        f"{', '.join(REQUIRED_COLUMNS)}")
    repeated = [c for c in REQUIRED_COLUMNS if header.count(c) > 1]
    if repeated:
        raise DataError(f"{path}, line 1: column(s) {', '.join(repeated)} appear more than once "
                        f"in the header {lines[0]!r}; which one holds the ids is ambiguous")
    cols = [header.index(c) for c in REQUIRED_COLUMNS]
    rows = lines[1:]
    while rows and not rows[-1].strip():
        rows.pop()
    if not rows:
        raise DataError(f"{path}: no interactions after the header")
    values = np.empty((len(rows), 3), dtype=np.int64)
    width = len(header)
    for n, line in enumerate(rows):
        fields = line.split("\t")
        if len(fields) != width:
            raise DataError(f"{path}, line {n + 2}: {len(fields)} tab-separated fields, the "
                            f"header has {width}: {line[:80]!r}")
        for j, c in enumerate(cols):
            values[n, j] = _parse_id(fields[c], path, n + 2, header[c])
    bad = np.flatnonzero(~np.isin(values[:, 2], list(SPLITS)))
    if bad.size:
        raise DataError(f"{path}, line {bad[0] + 2}: unknown x_label {values[bad[0], 2]} "
                        f"({bad.size} rows); expected 0 (train), 1 (valid) or 2 (test)")
    return values[:, 0], values[:, 1], values[:, 2]


def _read_lines(path: Path) -> list[str]:
    r"""The lines of a UTF-8 text file, split on ``\n`` only (``str.splitlines`` would also
    split on form feeds and Unicode separators, shifting every reported line number)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte "
                        f"{exc.start})") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    if not lines[0].strip():
        raise DataError(f"{path}: empty file; expected a tab-separated header with columns "
                        f"{', '.join(REQUIRED_COLUMNS)}")
    if text and not text.endswith("\n"):
        log.warning("%s: the last line (line %d) has no line break; if the file was cut short, "
                    "its last row may be incomplete", path, len(lines))
    return lines


def _parse_id(field: str, path: Path, line: int, column: str) -> int:
    # only spaces are padding: str.strip() would also drop form feeds and Unicode separators
    text = field.strip(" ")
    if not (text.isascii() and text.isdigit()):
        raise DataError(f"{path}, line {line}, column {column}: expected a non-negative "
                        f"integer, got {text[:40]!r}")
    # checked on the digits: int() refuses strings over 4300 digits with a ValueError
    if len(text.lstrip("0")) > 19 or int(text) >= 2**63:
        raise DataError(f"{path}, line {line}, column {column}: {text[:40]} does not fit a "
                        f"64-bit integer")
    return int(text)


def read_features(path: Path, name: str, dim: int | None = None) -> np.ndarray:
    r"""Loads one modality's ``.npy`` matrix as float32 and checks shape and values.

    The file is memory-mapped first, so a header that promises more data than the file holds
    (a truncated download) is reported without allocating the promised size.
    """
    path = Path(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc)
        if "mmap length is greater than file size" in reason:
            reason = "the file is shorter than its header says (truncated?)"
        elif "Python objects" in reason:
            reason = "it holds Python objects (a pickled object array), not numbers"
        raise DataError(f"{path}: cannot read modality {name!r} as a .npy array: "
                        f"{reason}") from None
    if not isinstance(array, np.ndarray):  # np.load opens .npz archives too
        array.close()
        raise DataError(f"{path}: modality {name!r} is an .npz archive; expected one matrix "
                        "saved with np.save")
    if array.ndim != 2 or 0 in array.shape:
        raise DataError(f"{path}: modality {name!r} must be a 2-D matrix (items x features) "
                        f"with at least one row and one column, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{path}: modality {name!r} has dtype {array.dtype}; expected numbers")
    if dim is not None and array.shape[1] != dim:
        raise DataError(f"{path}: modality {name!r} has {array.shape[1]} columns, the dataset "
                        f"card says {dim}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, reported below
        array = np.array(array, dtype=np.float32, order="C")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise DataError(f"{path}: modality {name!r} has NaN or inf in {rows.size} rows, first "
                        f"row {rows[0]} (item {rows[0]})")
    return array


def check_files(card: DatasetCard, data_dir: Path, modalities: tuple[ModalitySpec, ...]) -> None:
    r"""Raises :class:`MissingFilesError` when a file is absent, listing every expected file
    with its layout and whether it is there; the files that are there are validated and their
    problems listed too, so one message says everything that stands between the user and a
    run."""
    needed = [card.inter] + [f for m in modalities for f in m.files()]
    missing = [f for f in needed if not _is_file(data_dir / f, card)]
    if not missing:
        return
    lines, problems = [], []
    for file, layout, check in _expected_files(card, modalities):
        present = (data_dir / file).is_file()
        lines.append(f"  {file}: {layout} ({'present' if present else 'missing'})")
        if present and check is not None:
            try:
                check(data_dir / file)
            except DataError as exc:
                problems.append(f"  {exc}")
    raise MissingFilesError(
        f"dataset {card.name!r}: missing {', '.join(missing)} in {data_dir}/"
        + ("" if data_dir.is_dir() else " (no such folder)") + "\n"
        f"Expected files:\n" + "\n".join(lines) + "\n"
        + ("Problems in the files present:\n" + "\n".join(problems) + "\n" if problems else "")
        + "Where to get them:\n  " + card.source.replace("\n", "\n  ") + "\n"
        f"Put them in {data_dir}/ or pass --data-dir DIR pointing at a folder that has them.")


def _is_file(path: Path, card: DatasetCard) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, ...
        raise DataError(f"{card.path}: cannot look up {path}: {exc}") from None


def _expected_files(card: DatasetCard, modalities: tuple[ModalitySpec, ...]
                    ) -> list[tuple[str, str, Callable[[Path], object] | None]]:
    r"""``(file, layout, validator or None)`` for every file the card needs."""
    rows = card.expected.get("items")
    out: list[tuple[str, str, Callable[[Path], object] | None]] = [(
        card.inter, "tab-separated userID, itemID, x_label (0 train, 1 valid, 2 test)"
        + (f", {card.expected['interactions']:,} rows" if "interactions" in card.expected
           else ""), read_inter)]
    for m in modalities:
        if m.build is not None:
            b = m.build
            out.append((b.texts, f"texts of modality {m.name!r}: a table with columns {b.key} "
                        f"and {', '.join(b.text)}", None))
            if b.item_map:
                out.append((b.item_map, f"item map of modality {m.name!r}: a table with "
                            f"columns itemID and {b.key}", None))
            continue
        shape = f"{rows if rows else 'items'} x {m.dim if m.dim else 'd'}"
        out.append((str(m.file), f"modality {m.name!r}, float .npy matrix of shape {shape}",
                    partial(_check_matrix, name=m.name, dim=m.dim, rows=rows)))
    return out


def _check_matrix(path: Path, name: str, dim: int | None, rows: int | None) -> None:
    array = read_features(path, name, dim)
    if rows is not None and array.shape[0] != rows:
        raise DataError(f"{path}: modality {name!r} has {array.shape[0]} rows, the dataset "
                        f"card expects {rows} items")


def load_dataset(card: DatasetCard, data_dir: Path, modalities: str = "",
                 cache_dir: Path | None = None, with_features: bool = True) -> InteractionData:
    r"""Reads and validates a dataset described by ``card`` from ``data_dir``.

    Args:
        card (DatasetCard): The dataset card.
        data_dir (Path): Folder with the card's files.
        modalities (str, optional): Comma-separated subset of modalities (default: the
            card's default set).
        cache_dir (Path, optional): Where modalities built from texts are cached
            (default: :obj:`None`, built on every load).
        with_features (bool, optional): :obj:`False` reads no feature file, for models that use
            none (the item count is then the interactions'). (default: :obj:`True`)
    """
    data_dir = Path(data_dir)
    specs = card.select(modalities) if with_features else ()
    check_files(card, data_dir, specs)
    inter_path = data_dir / card.inter
    users, items, labels = read_inter(inter_path)
    features = {m.name: _modality(m, data_dir, cache_dir) for m in specs}
    num_users = int(users.max()) + 1
    if not features:
        _check_item_range(items, inter_path)
    num_items = _num_items(items, features, inter_path, data_dir, specs)
    _check_expected(card, num_users, num_items, len(users))
    _check_pairs(users, items, labels, num_items, inter_path)
    _check_users(users, labels, num_users, num_items, inter_path)
    edges = {s: torch.from_numpy(np.stack([users[labels == k], items[labels == k]]))
             for k, s in SPLITS.items()}
    return InteractionData(name=card.name, num_users=num_users, num_items=num_items,
                           train=edges["train"], valid=edges["valid"], test=edges["test"],
                           features={m: torch.from_numpy(x) for m, x in features.items()})


def _modality(spec: ModalitySpec, data_dir: Path, cache_dir: Path | None) -> np.ndarray:
    if spec.build is None:
        return read_features(data_dir / str(spec.file), spec.name, spec.dim)
    array = built_features(spec.name, spec.build, data_dir, cache_dir)
    if spec.dim is not None and array.shape[1] != spec.dim:
        raise DataError(f"modality {spec.name!r} built with {spec.build.encoder} has "
                        f"{array.shape[1]} columns, the dataset card says {spec.dim}")
    return array


def _num_items(items: np.ndarray, features: dict[str, np.ndarray], inter_path: Path,
               data_dir: Path, specs: tuple[ModalitySpec, ...]) -> int:
    num_items = int(items.max()) + 1
    if not features:
        return num_items
    row_counts = {m.file or f"modality {m.name!r} (built)": features[m.name].shape[0]
                  for m in specs}
    if len(set(row_counts.values())) > 1:
        raise DataError(f"{data_dir}: feature files disagree on the number of items: "
                        + ", ".join(f"{f} has {r} rows" for f, r in row_counts.items()))
    rows = next(iter(row_counts.values()))
    if rows < num_items:
        line = int(np.argmax(items >= rows)) + 2
        raise DataError(f"{inter_path}, line {line}: item id {items[line - 2]} is out of range: "
                        f"the feature files have {rows} rows (items 0..{rows - 1})")
    if rows > num_items:
        log.warning("%s: %d items have features but no interaction", data_dir, rows - num_items)
    return rows


def _check_item_range(items: np.ndarray, path: Path) -> None:
    # Without feature files nothing else bounds the item ids; contiguous ids cannot exceed the
    # number of rows, and a stray huge id would overflow the pair keys below.
    if int(items.max()) >= items.size:
        line = int(np.argmax(items)) + 2
        raise DataError(f"{path}, line {line}: itemID {items.max()} is larger than the number of "
                        f"rows ({items.size}); item ids must be contiguous from 0")


def _check_expected(card: DatasetCard, num_users: int, num_items: int, n: int) -> None:
    found = {"users": num_users, "items": num_items, "interactions": n}
    wrong = [f"{k}: card expects {v:,}, files have {found[k]:,}"
             for k, v in card.expected.items() if found[k] != v]
    if wrong:
        raise DataError(f"dataset {card.name!r} does not match its card {card.path} ("
                        + "; ".join(wrong) + "); the files are a different version of the "
                        "data set, or the card is wrong. To run on these files as they are, "
                        "give them a name without a card: --dataset my_"
                        f"{card.name} --data-dir DIR (an MMRec folder is read without a card)")


def _check_pairs(users: np.ndarray, items: np.ndarray, labels: np.ndarray, num_items: int,
                 path: Path) -> None:
    keys = users * num_items + items
    order = np.argsort(keys, kind="stable")
    dup = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if dup.size:
        a, b = order[dup[0]], order[dup[0] + 1]
        raise DataError(f"{path}, lines {a + 2} and {b + 2}: user {users[a]} and item {items[a]} "
                        f"appear twice ({SPLITS[labels[a]]} and {SPLITS[labels[b]]}); "
                        f"{dup.size} duplicated pairs in all. Each pair must occur once")
    for k, split in SPLITS.items():
        if not (labels == k).any():
            raise DataError(f"{path}: the {split} split is empty (no row with x_label {k})")


def _check_users(users: np.ndarray, labels: np.ndarray, num_users: int, num_items: int,
                 path: Path) -> None:
    # O(rows) whatever the largest id, so a stray huge id cannot trigger a huge allocation
    train_users, train_degree = np.unique(users[labels == 0], return_counts=True)
    if train_users.size < num_users:
        cold = _first_missing(train_users, num_users, 10)
        count = num_users - train_users.size
        listed = ", ".join(map(str, cold)) + (" ..." if count > 10 else "")
        raise DataError(f"{path}: {count} user id(s) in 0..{num_users - 1} have no training "
                        f"interaction: {listed}. User ids must be contiguous and every user "
                        f"needs at least one x_label 0 row")
    full = np.flatnonzero(train_degree >= num_items)
    if full.size:
        raise DataError(f"{path}: user {train_users[full[0]]} has interacted with every item in "
                        f"training; no negative item can be sampled for that user")


def _first_missing(present: np.ndarray, stop: int, limit: int) -> list[int]:
    r"""The first ``limit`` integers of ``0..stop-1`` absent from sorted unique ``present``."""
    bounds = np.concatenate([[-1], present, [stop]])
    missing: list[int] = []
    for gap in np.flatnonzero(np.diff(bounds) > 1):
        first, end = int(bounds[gap]) + 1, int(bounds[gap + 1])
        missing.extend(range(first, min(end, first + limit - len(missing))))
        if len(missing) == limit:
            break
    return missing
