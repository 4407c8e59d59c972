r"""Amazon review data -> MMRec dataset, the way MMRec built its Baby, Sports and Clothing sets.

Raw files of the **2014** release (McAuley et al.), in one folder, for category ``<Cat>``
(e.g. ``Sports_and_Outdoors``):

- ``reviews_<Cat>_5.json.gz``: one JSON object per line with ``reviewerID``, ``asin``,
  ``overall`` (rating) and ``unixReviewTime``; or ``ratings_<Cat>.csv`` (no header:
  user, item, rating, timestamp), the file MMRec started from;
- ``meta_<Cat>.json.gz``: one *Python literal* (not JSON: single quotes) per line with
  ``asin``, ``title``, ``brand``, ``categories`` (a list of category paths) and
  ``description``;
- ``image_features_<Cat>.b``: records of a 10-byte ASIN followed by 4096 little-endian float32
  (the CNN features of each product image).

MMRec's recipe (its ``preprocessing/`` notebooks), followed here:

- 5-core filtering, contiguous ids by first appearance, per-user split (fewer than 10
  interactions: :math:`n-2` / 1 / 1; else :math:`\lfloor 0.2n \rfloor` held out, the smaller
  half valid), see :mod:`brmrs_pyg.data.prepare.interactions`;
- text: one sentence per item, ``title + " " + brand + " " + c_1 + " " + ... + c_m + " " +
  description`` with :math:`c_1 .. c_m` the item's *first* category path and line breaks
  replaced by spaces; a missing or empty field counts as ``" "`` (MMRec's ``fillna(" ")``);
  encoded with all-MiniLM-L6-v2 (384-d);
- image: the item's row of ``image_features_<Cat>.b``; an item without one gets the mean of
  the rows found for the dataset's items (stored as float32; MMRec saved float64).

The **2023** release (Hou et al.) has ``<Cat>.jsonl[.gz]`` (``user_id``, ``parent_asin``,
``rating``, ``timestamp`` in ms) and ``meta_<Cat>.jsonl[.gz]`` (JSON; ``title``, ``store``,
``categories``, ``description`` as a list). Items are ``parent_asin``; the text recipe is the
2014 one with ``store`` for the brand and all categories; there are no precomputed image
features, so images come only from image files (``images``) through an image model.
"""
from __future__ import annotations

import ast
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
from tqdm import tqdm

from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.encoders import encode_images, encode_texts, find_images
from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.data.prepare.interactions import (RawInteractions, SplitSettings,
                                                 prepare_interactions)
from brmrs_pyg.data.prepare.writer import (EncoderSettings, KeyColumns, Output, check_writable,
                                           finish, planned_files)
from brmrs_pyg.data.tables import open_text

log = logging.getLogger(__name__)

#: The categories of the standard MMRec sets and the dataset names they get.
STANDARD_NAMES = {"Baby": "baby", "Sports_and_Outdoors": "sports",
                  "Clothing_Shoes_and_Jewelry": "clothing"}
IMAGE_DIM = 4096
ASIN_BYTES = 10


@dataclass(frozen=True)
class AmazonFiles:
    r"""The raw files of one category: ``layout`` ``"2014"`` or ``"2023"``, the reviews (or
    ratings), the metadata and (2014) the image features, :obj:`None` when absent."""

    layout: Literal["2014", "2023"]
    reviews: Path
    meta: Path
    image_features: Path | None = None


def expected_files(category: str) -> dict[str, list[str]]:
    r"""File names of each layout, for messages."""
    return {"2014": [f"reviews_{category}_5.json.gz (or ratings_{category}.csv)",
                     f"meta_{category}.json.gz", f"image_features_{category}.b"],
            "2023": [f"{category}.jsonl.gz (or .jsonl)", f"meta_{category}.jsonl.gz (or .jsonl)"]}


def find_files(raw_dir: Path, category: str, layout: str = "auto") -> AmazonFiles:
    r"""Locates the raw files of ``category`` in ``raw_dir`` (``layout`` ``"auto"``: 2014 when
    its reviews are there, else 2023)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"raw data folder {raw_dir} does not exist")

    def first(*names: str) -> Path | None:
        return next((raw_dir / n for n in names if (raw_dir / n).is_file()), None)

    reviews14 = first(f"reviews_{category}_5.json.gz", f"reviews_{category}_5.json",
                      f"ratings_{category}.csv")
    reviews23 = first(f"{category}.jsonl.gz", f"{category}.jsonl")
    if layout == "2014" or (layout == "auto" and reviews14 is not None):
        meta, images = (first(f"meta_{category}.json.gz", f"meta_{category}.json"),
                        first(f"image_features_{category}.b"))
        if reviews14 is not None and meta is not None:
            return AmazonFiles("2014", reviews14, meta, images)
    elif layout in ("2023", "auto"):
        meta = first(f"meta_{category}.jsonl.gz", f"meta_{category}.jsonl")
        if reviews23 is not None and meta is not None:
            return AmazonFiles("2023", reviews23, meta)
    else:
        raise DataError(f"layout must be auto, 2014 or 2023, got {layout!r}")
    wanted = expected_files(category)
    layouts = ["2014", "2023"] if layout == "auto" else [layout]
    listing = "\n".join(f"  Amazon {k}: {', '.join(wanted[k])}" for k in layouts)
    raise DataError(f"{raw_dir} lacks the raw files of category {category!r}; expected\n"
                    f"{listing}")


def _lines(path: Path, progress: bool) -> Iterator[tuple[int, str]]:
    try:
        with open_text(path) as handle:
            for n, line in enumerate(tqdm(handle, desc=path.name, unit=" lines",
                                          disable=not progress, mininterval=1.0), start=1):
                if line.strip():
                    yield n, line
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except (OSError, EOFError) as exc:  # a corrupt or truncated .gz
        raise DataError(f"{path}: cannot read: {exc}") from None


def _field(record: dict[str, Any], key: str, path: Path, line: int) -> Any:
    try:
        return record[key]
    except KeyError:
        raise DataError(f"{path}, line {line}: no field {key!r}") from None
    except TypeError:
        raise DataError(f"{path}, line {line}: expected an object, got "
                        f"{type(record).__name__}") from None


def read_reviews(path: Path, user: str, item: str, rating: str, time: str,
                 progress: bool = True) -> RawInteractions:
    r"""Reads JSON-lines reviews, one event per line, with the given field names."""
    users, items, ratings, times = [], [], [], []
    for n, line in _lines(path, progress):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {n}: not valid JSON ({exc.msg})") from None
        users.append(str(_field(record, user, path, n)))
        items.append(str(_field(record, item, path, n)))
        try:
            ratings.append(float(_field(record, rating, path, n)))
            times.append(int(_field(record, time, path, n)))
        except (TypeError, ValueError):
            raise DataError(f"{path}, line {n}: {rating} and {time} must be numbers") from None
    return RawInteractions(users=np.array(users), items=np.array(items),
                           ratings=np.array(ratings, dtype=np.float64),
                           timestamps=np.array(times, dtype=np.int64))


def read_ratings_csv(path: Path, progress: bool = True) -> RawInteractions:
    r"""Reads a 2014 ``ratings_<Cat>.csv``: no header, ``user,item,rating,timestamp``."""
    users, items, ratings, times = [], [], [], []
    for n, line in _lines(path, progress):
        fields = line.rstrip("\r\n").split(",")
        if len(fields) != 4:
            raise DataError(f"{path}, line {n}: expected 4 comma-separated fields "
                            f"(user, item, rating, timestamp), got {len(fields)}")
        try:
            ratings.append(float(fields[2]))
            times.append(int(float(fields[3])))
        except ValueError:
            raise DataError(f"{path}, line {n}: rating and timestamp must be numbers") from None
        users.append(fields[0])
        items.append(fields[1])
    return RawInteractions(users=np.array(users), items=np.array(items),
                           ratings=np.array(ratings, dtype=np.float64),
                           timestamps=np.array(times, dtype=np.int64))


def read_interactions(files: AmazonFiles, progress: bool = True) -> RawInteractions:
    r"""The review events of ``files``, whatever the layout."""
    if files.layout == "2023":
        return read_reviews(files.reviews, "user_id", "parent_asin", "rating", "timestamp",
                            progress)
    if files.reviews.name.endswith(".csv"):
        return read_ratings_csv(files.reviews, progress)
    return read_reviews(files.reviews, "reviewerID", "asin", "overall", "unixReviewTime",
                        progress)


def read_meta(path: Path, keys: Sequence[str], key_field: str, literal: bool,
              progress: bool = True) -> dict[str, dict[str, Any]]:
    r"""The metadata records of the items ``keys``, by key.

    Args:
        path (Path): Metadata file, one record per line.
        keys (Sequence[str]): The items wanted; other records are skipped unparsed.
        key_field (str): Field holding the item key (``asin``, ``parent_asin``).
        literal (bool): Lines are Python literals (2014), else JSON (2023).
        progress (bool, optional): Show a progress bar. (default: :obj:`True`)
    """
    wanted = set(keys)
    # parsing only lines that mention a wanted key skips most of a category's catalogue
    pattern = re.compile(r"""['"]%s['"]\s*:\s*['"]([^'"]*)['"]""" % re.escape(key_field))
    parse: Callable[[str], Any] = ast.literal_eval if literal else json.loads
    found: dict[str, dict[str, Any]] = {}
    for n, line in _lines(path, progress):
        if not any(m in wanted for m in pattern.findall(line)):
            continue
        try:
            record = parse(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            kind = "a Python literal" if literal else "valid JSON"
            raise DataError(f"{path}, line {n}: not {kind} ({type(exc).__name__})") from None
        key = str(_field(record, key_field, path, n))
        if key in wanted:
            found.setdefault(key, record)
    return found


def _text(value: Any) -> str:
    # MMRec wrote the metadata to CSV and read it back with pandas: a missing or empty field
    # became NaN there, then fillna(" ")
    return " " if value is None or value == "" else str(value)


def sentence_2014(meta: dict[str, Any] | None) -> str:
    r"""MMRec's text of a 2014 item: ``title brand c_1 .. c_m description`` (module docstring).

    >>> sentence_2014({"title": "Tent", "brand": "Acme",
    ...                "categories": [["Sports", "Camping"], ["Other"]], "description": "Big"})
    'Tent Acme Sports Camping Big'
    """
    meta = meta or {}
    sentence = _text(meta.get("title")) + " " + _text(meta.get("brand")) + " "
    categories = meta.get("categories")
    if isinstance(categories, list) and categories and isinstance(categories[0], list):
        sentence += "".join(f"{c} " for c in categories[0])
    sentence += _text(meta.get("description"))
    return sentence.replace("\n", " ")


def sentence_2023(meta: dict[str, Any] | None) -> str:
    r"""The 2014 recipe on a 2023 item: ``title store c_1 .. c_m d_1 .. d_l`` with every
    category and every description paragraph.

    >>> sentence_2023({"title": "Tent", "store": "Acme", "categories": ["Camping"],
    ...                "description": ["Big.", "Green."]})
    'Tent Acme Camping Big. Green.'
    """
    meta = meta or {}
    sentence = _text(meta.get("title")) + " " + _text(meta.get("store")) + " "
    categories = meta.get("categories")
    if isinstance(categories, list):
        sentence += "".join(f"{c} " for c in categories)
    description = meta.get("description")
    if isinstance(description, list):
        description = " ".join(str(d) for d in description)
    sentence += _text(description)
    return sentence.replace("\n", " ")


def item_sentences(files: AmazonFiles, item_keys: Sequence[str],
                   progress: bool = True) -> list[str]:
    r"""The text of every item, in the order of ``item_keys``."""
    literal = files.layout == "2014"
    key_field = "asin" if literal else "parent_asin"
    meta = read_meta(files.meta, item_keys, key_field, literal, progress)
    lacking = len(item_keys) - len(meta)
    if lacking:
        log.warning("%d of %d items have no metadata in %s; their text is empty", lacking,
                    len(item_keys), files.meta)
    build = sentence_2014 if literal else sentence_2023
    return [build(meta.get(k)) for k in item_keys]


def read_image_features(path: Path, item_keys: Sequence[str], dim: int = IMAGE_DIM,
                        chunk: int = 4096, progress: bool = True) -> tuple[np.ndarray, int]:
    r"""Rows of an Amazon 2014 ``image_features_<Cat>.b`` for ``item_keys``.

    The file is a sequence of records, each a 10-byte ASIN and ``dim`` little-endian float32.
    An item with no record gets the mean of the records of the dataset's items (every
    record counts, as in MMRec; an ASIN recorded twice keeps its last record).

    Returns:
        ``(features, missing)``: the :math:`(|\mathcal{I}|, d)` float32 matrix and the number
        of items filled with the mean.
    """
    record = np.dtype([("asin", f"S{ASIN_BYTES}"), ("feature", "<f4", (dim,))])
    size = Path(path).stat().st_size
    if size % record.itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole number of records of "
                        f"{ASIN_BYTES} + 4 x {dim} bytes (ASIN + float32 features)")
    records = np.memmap(path, dtype=record, mode="r") if size else np.zeros(0, record)
    row_of = {k.encode("utf-8"): i for i, k in enumerate(item_keys)}
    out = np.zeros((len(item_keys), dim), dtype=np.float32)
    have = np.zeros(len(item_keys), dtype=bool)
    total, count = np.zeros(dim, dtype=np.float64), 0
    for start in tqdm(range(0, len(records), chunk), desc=Path(path).name, unit=" chunks",
                      disable=not progress, mininterval=1.0):
        block = records[start:start + chunk]
        rows = np.array([row_of.get(bytes(a), -1) for a in block["asin"]], dtype=np.int64)
        hit = rows >= 0
        if not hit.any():
            continue
        feats = np.asarray(block["feature"][hit], dtype=np.float32)
        total += feats.sum(axis=0, dtype=np.float64)
        count += int(hit.sum())
        for row, feat in zip(rows[hit], feats):  # in file order, so a repeated ASIN's last wins
            out[row] = feat
        have[rows[hit]] = True
    if count == 0:
        raise DataError(f"{path}: none of the {len(item_keys)} items has a record")
    out[~have] = (total / count).astype(np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"{path}: the image features of the dataset's items hold NaN or inf")
    return out, int((~have).sum())


def prepare_amazon(raw_dir: Path, category: str, output: Output, layout: str = "auto",
                   split: SplitSettings = SplitSettings(),
                   encoders: EncoderSettings = EncoderSettings(),
                   images: Path | None = None) -> InteractionData:
    r"""Builds an MMRec dataset from the raw Amazon files of ``category`` (module docstring).

    Args:
        raw_dir (Path): Folder with the raw files.
        category (str): Amazon category, e.g. ``"Sports_and_Outdoors"``.
        output (Output): Dataset name, folder and card location.
        layout (str, optional): ``"auto"``, ``"2014"`` or ``"2023"``. (default: ``"auto"``)
        split (SplitSettings, optional): :math:`k`-core and split. (default: 5-core, MMRec's
            split, seed 999)
        encoders (EncoderSettings, optional): Text (and image) encoders.
        images (Path, optional): Folder of image files ``<item key>.<jpg|png|...>`` encoded
            with ``encoders.image_model`` instead of the 2014 ``.b`` features.
            (default: :obj:`None`)

    Returns:
        The dataset as read back from ``output.folder``.
    """
    files = find_files(raw_dir, category, layout)
    if images is not None and encoders.image_model is None:
        raise DataError("image files need an image model (--image-model FOLDER_OR_NAME)")
    if files.layout == "2014" and files.image_features is None and images is None:
        raise DataError(f"{raw_dir} lacks image_features_{category}.b (the 2014 image "
                        "features); add it, or give image files and an image model")
    with_image = images is not None or files.image_features is not None
    check_writable(output.folder, planned_files(output.name, ["image"] * with_image + ["text"]),
                   None, output.force)
    data = prepare_interactions(read_interactions(files, encoders.progress), split)
    log.info("%s: %d users, %d items, %d interactions (%s)", category, data.num_users,
             data.num_items, data.users.size, data.counts)
    keys = [str(k) for k in data.item_keys.tolist()]
    features: dict[str, np.ndarray] = {}
    if images is not None:
        features["image"] = encode_images(find_images(keys, images), str(encoders.image_model),
                                          encoders.batch_size, encoders.device,
                                          encoders.progress)
    elif files.image_features is not None:
        features["image"], missing = read_image_features(files.image_features, keys,
                                                         progress=encoders.progress)
        log.info("%d of %d items have no image feature; they get the mean", missing, len(keys))
    features["text"] = encode_texts(item_sentences(files, keys, encoders.progress),
                                    encoders.text_model, encoders.batch_size, encoders.device,
                                    encoders.progress)
    item_column = "asin" if files.layout == "2014" else "parent_asin"
    description = (f"Amazon {category} ({files.layout} reviews), {split.kcore}-core, per-user "
                   f"split (seed {split.seed}), prepared from the raw files by brmrs_pyg: "
                   + ("image features and " if with_image else "")
                   + f"{encoders.text_model} text features of title, brand, categories and "
                   "description.")
    source = (f"python run.py prepare amazon --category {category} --raw DIR --layout "
              f"{files.layout} --seed {split.seed}, on the raw files "
              + ", ".join(f.name for f in (files.reviews, files.meta, files.image_features)
                          if f is not None))
    return finish(output, data, features, KeyColumns(user="user_id", item=item_column),
                  description, source, keep_card=True)
