r"""Writes a prepared dataset: an MMRec folder and its dataset card, every file atomically.

Folder layout (MMRec's, plus the two mapping files of its preprocessing):

.. code-block:: text

    <name>.inter        userID, itemID, [rating], [timestamp], x_label (tab-separated)
    u_id_mapping.tsv    <raw user column>, userID: the raw key of every user id
    i_id_mapping.tsv    <raw item column>, itemID: the raw key of every item id
    <modality>_feat.npy one float32 matrix per modality, row i = item i
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from brmrs_pyg.data.cards import load_card
from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.encoders import DEFAULT_TEXT_MODEL
from brmrs_pyg.data.mmrec import InteractionData, load_dataset
from brmrs_pyg.data.prepare.interactions import PreparedInteractions
from brmrs_pyg.io import atomic_save_npy, atomic_write_text


@dataclass(frozen=True)
class Output:
    r"""Where a prepared dataset goes: ``folder`` for its files, ``cards_dir/<name>.yaml`` for
    its card; ``force`` allows overwriting."""

    name: str
    folder: Path
    cards_dir: Path
    force: bool = False

    @property
    def card(self) -> Path:
        return self.cards_dir / f"{self.name}.yaml"


@dataclass(frozen=True)
class EncoderSettings:
    r"""Feature encoders of a preparation.

    Args:
        text_model (str, optional): Sentence encoder, see
            :func:`~brmrs_pyg.data.encoders.resolve_text_model`.
            (default: ``"all-MiniLM-L6-v2"``)
        image_model (str, optional): ``transformers`` image model for image files (local
            folder or hub name); needed only with image files. (default: :obj:`None`)
        device (str, optional): Torch device of the encoders. (default: ``"cpu"``)
        batch_size (int, optional): Texts or images encoded at once. (default: :obj:`64`)
        progress (bool, optional): Show progress bars. (default: :obj:`True`)
    """

    text_model: str = DEFAULT_TEXT_MODEL
    image_model: str | None = None
    device: str = "cpu"
    batch_size: int = 64
    progress: bool = True


@dataclass(frozen=True)
class KeyColumns:
    r"""Header names of the raw user and item keys in the mapping files."""

    user: str = "user_id"
    item: str = "item_id"


def feature_file(modality: str) -> str:
    r"""The file name of a modality's matrix: ``<modality>_feat.npy`` (MMRec's names for
    ``image`` and ``text``)."""
    return f"{modality}_feat.npy"


def planned_files(name: str, modalities: list[str]) -> list[str]:
    r"""Every file :func:`write_dataset` writes for ``name`` with ``modalities``."""
    return ([f"{name}.inter", "u_id_mapping.tsv", "i_id_mapping.tsv"]
            + [feature_file(m) for m in modalities])


def check_writable(folder: Path, files: list[str], card: Path | None, force: bool) -> None:
    r"""Refuses to overwrite existing outputs unless ``force``."""
    existing = [str(Path(folder) / f) for f in files if (Path(folder) / f).exists()]
    if card is not None and card.exists():
        existing.append(str(card))
    if existing and not force:
        raise DataError(f"would overwrite {', '.join(existing)}; remove them or pass --force")


def write_dataset(folder: Path, name: str, data: PreparedInteractions,
                  features: dict[str, np.ndarray], keys: KeyColumns) -> list[Path]:
    r"""Writes ``data`` and ``features`` (modality -> matrix with one row per item) into
    ``folder``; returns the paths written."""
    folder = Path(folder)
    for modality, matrix in features.items():
        if matrix.ndim != 2 or matrix.shape[0] != data.num_items:
            raise ValueError(f"modality {modality!r}: {matrix.shape} is not (items, d) with "
                             f"{data.num_items} items")
    written = [folder / f"{name}.inter", folder / "u_id_mapping.tsv",
               folder / "i_id_mapping.tsv"]
    atomic_write_text(written[0], _inter_text(data))
    atomic_write_text(written[1], _mapping_text(keys.user, "userID", data.user_keys))
    atomic_write_text(written[2], _mapping_text(keys.item, "itemID", data.item_keys))
    for modality, matrix in features.items():
        written.append(folder / feature_file(modality))
        atomic_save_npy(written[-1], np.ascontiguousarray(matrix, dtype=np.float32))
    return written


def _inter_text(data: PreparedInteractions) -> str:
    columns: list[tuple[str, list[Any]]] = [("userID", data.users.tolist()),
                                            ("itemID", data.items.tolist())]
    if data.ratings is not None:
        columns.append(("rating", data.ratings.tolist()))
    if data.timestamps is not None:
        columns.append(("timestamp", data.timestamps.tolist()))
    columns.append(("x_label", data.labels.tolist()))
    lines = ["\t".join(name for name, _ in columns)]
    lines += ["\t".join(map(str, row)) for row in zip(*(values for _, values in columns))]
    return "\n".join(lines) + "\n"


def _mapping_text(key_column: str, id_column: str, keys: np.ndarray) -> str:
    bad = [k for k in keys.tolist() if any(c in str(k) for c in "\t\r\n")]
    if bad:
        raise DataError(f"raw {key_column} {bad[0]!r} holds a tab or line break; it cannot be "
                        "written to a tab-separated mapping file")
    lines = [f"{key_column}\t{id_column}"] + [f"{k}\t{i}" for i, k in enumerate(keys.tolist())]
    return "\n".join(lines) + "\n"


def write_card(path: Path, name: str, description: str, data: PreparedInteractions,
               dims: dict[str, int], source: str) -> None:
    r"""Writes the dataset card ``path`` (``datasets/<name>.yaml``) of a prepared dataset."""
    card = {
        "name": name,
        "description": description,
        "inter": f"{name}.inter",
        "modalities": {m: {"file": feature_file(m), "dim": d} for m, d in dims.items()},
        "expected": {"users": data.num_users, "items": data.num_items,
                     "interactions": int(data.users.size)},
        "source": source,
    }
    atomic_write_text(Path(path), yaml.safe_dump(card, sort_keys=False, width=96,
                                                 allow_unicode=True))


def finish(output: Output, data: PreparedInteractions, features: dict[str, np.ndarray],
           keys: KeyColumns, description: str, source: str, keep_card: bool) -> InteractionData:
    r"""Writes the dataset and, unless ``keep_card`` and a card exists already, its card; then
    reads it back through the validating reader, so what was written is what runs."""
    write_dataset(output.folder, output.name, data, features, keys)
    if not (keep_card and output.card.exists()):
        write_card(output.card, output.name, description, data,
                   {m: int(x.shape[1]) for m, x in features.items()}, source)
    return load_dataset(load_card(output.name, output.cards_dir), output.folder)
