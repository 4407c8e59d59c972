r"""Dataset cards: ``datasets/<name>.yaml`` names a dataset's files and modalities.

A card is data, never code: a new dataset in MMRec format is a card plus its files.

.. code-block:: yaml

    name: lfm2k
    inter: lfm2k.inter               # tab-separated interactions with x_label
    modalities:                      # name -> .npy file, row i = item i ({}: none)
      text: {file: text_feat.npy, dim: 384}
      whisper: {file: whisper.npy, dim: 512}
      tags:                          # or built from item texts on first use (cached)
        dim: 384
        build: {texts: lfm2k_text.tsv, key: artistID, text: text,
                item_map: i_id_mapping.tsv, encoder: all-MiniLM-L6-v2}
    default_modalities: [text, whisper]   # optional; default: all
    expected: {users: 1858, items: 1425, interactions: 56345}  # optional checks
    config: {knn_k: 10}              # optional run-config overrides for this dataset
    source: where users get the files (shown when they are missing)
    generator: {...}                 # optional: synthetic data generated on first use
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brmrs_pyg.data.errors import DataError

_CARD_KEYS = {"name", "description", "inter", "modalities", "default_modalities", "expected",
              "config", "source", "generator"}
_EXPECTED_KEYS = {"users", "items", "interactions"}


@dataclass(frozen=True)
class TextBuild:
    r"""How a modality is built from item texts instead of read from a ``.npy`` file.

    Row :math:`i` of the modality is the sentence embedding (``encoder``, see
    :func:`brmrs_pyg.data.encoders.encode_texts`) of item :math:`i`'s text: the ``text``
    columns of ``texts`` joined by a space, on the row whose ``key`` column is the item's key.
    Without ``item_map`` the key is the item id itself (``0 .. n-1``); with it, ``item_map`` is
    a table with columns ``itemID`` and ``key`` that gives each item id its key.

    Args:
        texts (str): Table of texts in the data folder (``.tsv`` or ``.csv``, header row).
        text (tuple[str, ...]): Text column(s), joined by a space.
        key (str, optional): Column of ``texts`` naming the item. (default: ``"itemID"``)
        item_map (str, optional): Table mapping ``itemID`` to ``key``. (default: :obj:`None`)
        encoder (str, optional): Sentence encoder: a local folder, or a model name.
            (default: ``"all-MiniLM-L6-v2"``)
    """

    texts: str
    text: tuple[str, ...]
    key: str = "itemID"
    item_map: str | None = None
    encoder: str = "all-MiniLM-L6-v2"

    def files(self) -> list[str]:
        r"""The input files in the data folder."""
        return [self.texts] + ([self.item_map] if self.item_map else [])


@dataclass(frozen=True)
class ModalitySpec:
    r"""One modality: its name, its feature file (or how to build it from item texts) and,
    optionally, the expected feature width. Exactly one of ``file`` and ``build`` is set."""

    name: str
    file: str | None
    dim: int | None = None
    build: TextBuild | None = None

    def files(self) -> list[str]:
        r"""The files this modality needs in the data folder."""
        return self.build.files() if self.build is not None else [str(self.file)]


@dataclass(frozen=True)
class DatasetCard:
    r"""A parsed dataset card (see the module docstring for the YAML layout)."""

    name: str
    inter: str
    modalities: tuple[ModalitySpec, ...]
    default_modalities: tuple[str, ...]
    source: str
    path: Path
    description: str = ""
    expected: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    generator: dict[str, Any] | None = None
    #: The data folder a card was inferred from (no ``datasets/<name>.yaml``; see
    #: :func:`brmrs_pyg.data.folder.infer_card`), and what the inference left out and why.
    inferred_from: Path | None = None
    notes: tuple[str, ...] = ()

    def to_yaml(self) -> str:
        r"""The card as YAML that :func:`load_card` reads back as the same card (saved as
        ``datasets/<name>.yaml`` it makes an inferred card explicit)."""
        raw: dict[str, Any] = {"name": self.name}
        if self.description:
            raw["description"] = self.description
        raw["inter"] = self.inter
        raw["modalities"] = {m.name: _modality_yaml(m) for m in self.modalities}
        if self.default_modalities != tuple(m.name for m in self.modalities):
            raw["default_modalities"] = list(self.default_modalities)
        for key in ("expected", "config", "generator"):
            if getattr(self, key):
                raw[key] = getattr(self, key)
        raw["source"] = self.source
        return yaml.safe_dump(raw, sort_keys=False, width=96, allow_unicode=True)

    def files(self) -> list[str]:
        r"""Every file the card names, interactions first."""
        return [self.inter] + [f for m in self.modalities for f in m.files()]

    def select(self, names: str) -> tuple[ModalitySpec, ...]:
        r"""The modalities named in a comma-separated list (empty: the card's default set)."""
        wanted = [n.strip() for n in names.split(",") if n.strip()] or list(
            self.default_modalities)
        known = {m.name: m for m in self.modalities}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise DataError(f"dataset {self.name!r} has no modality {', '.join(unknown)}; "
                            f"available: {', '.join(known)}")
        return tuple(known[n] for n in wanted)


def _modality_yaml(spec: ModalitySpec) -> dict[str, Any]:
    out: dict[str, Any] = {"file": spec.file} if spec.build is None else {"build": {
        "texts": spec.build.texts, "text": list(spec.build.text), "key": spec.build.key,
        **({"item_map": spec.build.item_map} if spec.build.item_map else {}),
        "encoder": spec.build.encoder}}
    return out | ({"dim": spec.dim} if spec.dim is not None else {})


def available_cards(cards_dir: Path) -> list[str]:
    r"""Names of the cards in ``cards_dir``."""
    return sorted(p.stem for p in Path(cards_dir).glob("*.yaml"))


def load_card(name: str, cards_dir: Path) -> DatasetCard:
    r"""Reads and checks ``cards_dir/<name>.yaml``.

    Every value must have the type the layout gives it (a file name is a string, a ``dim``
    an integer, ...): nothing is converted, so a card never loads as something other than
    what it says.

    Args:
        name (str): Dataset name.
        cards_dir (Path): Folder holding the cards (the repository's ``datasets/``).
    """
    path = Path(cards_dir) / f"{name}.yaml"
    if not path.is_file():
        raise DataError(f"no dataset card {path}; available datasets: "
                        f"{', '.join(available_cards(cards_dir)) or '(none)'}. A folder in "
                        "MMRec's layout (<name>.inter and <modality>_feat.npy files) runs "
                        "without a card: --data-dir DIR")
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    unknown = set(raw) - _CARD_KEYS
    if unknown:
        raise DataError(f"{path}: unknown keys {sorted(unknown, key=str)}; valid keys: "
                        f"{sorted(_CARD_KEYS)}")
    for key in ("inter", "modalities", "source"):
        if key not in raw:
            raise DataError(f"{path}: missing required key {key!r}")
    if raw.get("name", name) != name:
        raise DataError(f"{path}: name {raw['name']!r} differs from the file name {name!r}")
    inter = _file_name(raw["inter"], "inter", path)
    for key in ("source", "description"):
        if not isinstance(raw.get(key, ""), str):
            raise DataError(f"{path}: {key} must be text, got {raw[key]!r}")
    modalities = _parse_modalities(raw["modalities"], path)
    names = [m.name for m in modalities]
    default = raw.get("default_modalities", names)
    if not isinstance(default, list) or not all(isinstance(d, str) and d in names
                                                for d in default):
        raise DataError(f"{path}: default_modalities must be a list of names from modalities "
                        f"({', '.join(names)})")
    expected = raw.get("expected") or {}
    if not isinstance(expected, dict) or set(expected) - _EXPECTED_KEYS or not all(
            type(v) is int and v >= 0 for v in expected.values()):
        raise DataError(f"{path}: expected must map some of {sorted(_EXPECTED_KEYS)} to "
                        f"non-negative integers, got {expected!r}")
    config = raw.get("config") or {}
    generator = raw.get("generator")
    if not isinstance(config, dict) or (generator is not None and not isinstance(generator, dict)):
        raise DataError(f"{path}: config and generator must be mappings")
    if generator is not None and any(m.build is not None for m in modalities):
        raise DataError(f"{path}: a generated dataset cannot have built modalities")
    return DatasetCard(name=name, inter=inter, modalities=modalities,
                       default_modalities=tuple(default), source=raw["source"].strip(),
                       path=path, description=raw.get("description", "").strip(),
                       expected=expected, config=config, generator=generator)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte "
                        f"{exc.start})") from None
    try:
        return yaml.safe_load(text)
    # PyYAML raises more than YAMLError: ValueError for an impossible date (2001-13-45),
    # RecursionError for pathologically nested input
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: not valid YAML: {reason}") from None


def _file_name(value: Any, what: str, path: Path) -> str:
    r"""A file name from a card: non-empty text without NUL (which no file system accepts)."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise DataError(f"{path}: {what} must be a file name (text), got {value!r}")
    return value


def _parse_modalities(raw: Any, path: Path) -> tuple[ModalitySpec, ...]:
    # an empty mapping is a dataset of interactions only: the models that use no item
    # features run on it, the others refuse (brmrs_pyg.pipeline.build_model)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: modalities must map each modality name to its .npy file "
                        "({} for a dataset without item features)")
    specs = []
    for name, value in raw.items():
        if not isinstance(name, str) or not name.strip() or "," in name:
            raise DataError(f"{path}: modality name {name!r} must be text without commas")
        if isinstance(value, str):
            value = {"file": value}
        if (not isinstance(value, dict) or ("file" in value) == ("build" in value)
                or set(value) - {"file", "dim", "build"}):
            raise DataError(f"{path}: modality {name!r} must be a file name, "
                            "{file: NAME, dim: INT} or {build: {...}, dim: INT}")
        dim = value.get("dim")
        if dim is not None and (type(dim) is not int or dim < 1):
            raise DataError(f"{path}: modality {name!r}: dim must be a positive integer, got "
                            f"{dim!r}")
        build = _parse_build(value["build"], name, path) if "build" in value else None
        file = (_file_name(value["file"], f"modality {name!r}: file", path)
                if "file" in value else None)
        specs.append(ModalitySpec(name=name, file=file, dim=dim, build=build))
    return tuple(specs)


_BUILD_KEYS = {"texts", "text", "key", "item_map", "encoder"}


def _parse_build(raw: Any, name: str, path: Path) -> TextBuild:
    where = f"{path}: modality {name!r}: build"
    if not isinstance(raw, dict) or not {"texts", "text"} <= set(raw) or set(raw) - _BUILD_KEYS:
        raise DataError(f"{where} must map texts and text (and optionally key, item_map, "
                        f"encoder); valid keys: {sorted(_BUILD_KEYS)}")
    text = raw["text"]
    columns = tuple(text) if isinstance(text, list) else (text,)
    if not columns or not all(isinstance(c, str) and c for c in columns):
        raise DataError(f"{where}: text must be a column name or a list of column names")
    values = {k: raw[k] for k in ("texts", "key", "item_map", "encoder") if k in raw}
    if not all(isinstance(v, str) and v for v in values.values()):
        raise DataError(f"{where}: texts, key, item_map and encoder must be non-empty strings")
    return TextBuild(text=columns, **values)
