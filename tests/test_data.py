r"""Data layer: dataset cards (``cards.py``) and the validating MMRec reader (``mmrec.py``).

Every malformed input is built in ``tmp_path`` from the valid toy dataset below with one thing
broken, and the test checks the exact message: the file, the line / row / column, the problem.
"""
from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from brmrs_pyg.data import (DataError, InteractionData, MissingFilesError, load_card,
                            load_dataset, read_features, read_inter)
from brmrs_pyg.data.mmrec import check_files

REPO = Path(__file__).resolve().parents[1]
LFM2K_DIR = REPO.parent / "shared" / "data" / "lfm2k"

# ---------------------------------------------------------------------------------------------
# The toy dataset: 3 users, 5 items, 11 interactions (6 train, 2 valid, 3 test), two modalities.
# Row k of ROWS is on line k + 2 of the .inter file (line 1 is the header).
# ---------------------------------------------------------------------------------------------
HEADER = "userID\titemID\tx_label"
ROWS = [  # (user, item, x_label)
    (0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2),
    (1, 1, 0), (1, 2, 0), (1, 4, 1), (1, 0, 2),
    (2, 3, 0), (2, 4, 0), (2, 0, 2),
]
TEXT = np.arange(15, dtype=np.float64).reshape(5, 3) / 7.0  # float64 on disk, read as float32
IMAGE = -np.arange(10, dtype=np.float32).reshape(5, 2)
SOURCE = "Toy files from the test suite,\nsecond line of the source text."
CARD = {
    "name": "toy",
    "description": "a tiny test dataset",
    "inter": "toy.inter",
    "modalities": {"text": {"file": "text_feat.npy", "dim": 3},
                   "image": {"file": "image_feat.npy", "dim": 2}},
    "source": SOURCE,
}


def inter_text(rows=ROWS, header: str = HEADER) -> str:
    r"""An .inter file body: the header, then one tab-separated line per row."""
    return "\n".join([header] + ["\t".join(map(str, r)) for r in rows]) + "\n"


@dataclass
class Toy:
    r"""A card in ``cards_dir`` and its files in ``data_dir``."""

    cards_dir: Path
    data_dir: Path

    def card(self):
        return load_card("toy", self.cards_dir)

    def load(self, modalities: str = "") -> InteractionData:
        return load_dataset(self.card(), self.data_dir, modalities)

    def file(self, name: str) -> Path:
        return self.data_dir / name


def make_dataset(tmp_path: Path, *, inter: str | bytes | list | None = None,
                 features: dict | None = None, card: dict | None = None,
                 drop: tuple[str, ...] = ()) -> Toy:
    r"""Writes the toy dataset with overrides.

    Args:
        inter: .inter content (text, raw bytes, or a list of rows); default ``ROWS``.
        features: file name -> array (saved with ``np.save``) or bytes (written raw); merged
            over the default ``text_feat.npy`` / ``image_feat.npy``.
        card: keys merged over ``CARD`` (a value of ``None`` deletes the key).
        drop: files not to write.
    """
    cards_dir, data_dir = tmp_path / "cards", tmp_path / "data"
    cards_dir.mkdir(exist_ok=True)
    data_dir.mkdir(exist_ok=True)
    raw_card = {**CARD, **(card or {})}
    raw_card = {k: v for k, v in raw_card.items() if v is not None}
    (cards_dir / "toy.yaml").write_text(yaml.safe_dump(raw_card, sort_keys=False))
    if inter is None:
        inter = ROWS
    if isinstance(inter, list):
        inter = inter_text(inter)
    files: dict[str, object] = {raw_card.get("inter", "toy.inter"): inter,
                                "text_feat.npy": TEXT, "image_feat.npy": IMAGE,
                                **(features or {})}
    for name, content in files.items():
        if name in drop:
            continue
        path = data_dir / name
        if isinstance(content, str):
            path.write_text(content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            np.save(path, content, allow_pickle=True)
    return Toy(cards_dir, data_dir)


def write_card_text(tmp_path: Path, text: str, name: str = "toy") -> Path:
    r"""Writes a raw card file ``name.yaml``; returns the cards folder."""
    cards_dir = tmp_path / "cards"
    cards_dir.mkdir(exist_ok=True)
    (cards_dir / f"{name}.yaml").write_text(text)
    return cards_dir


def edges(rows, label: int) -> torch.Tensor:
    r"""The (2, E) tensor of the rows with ``label``, in file order."""
    sel = [(u, i) for u, i, x in rows if x == label]
    return torch.tensor(sel, dtype=torch.int64).T.reshape(2, len(sel))


# ---------------------------------------------------------------------------------------------
# Happy path
# ---------------------------------------------------------------------------------------------
def test_valid_dataset_loads_with_exact_contents(tmp_path):
    data = make_dataset(tmp_path).load()
    assert (data.name, data.num_users, data.num_items) == ("toy", 3, 5)
    for label, split in ((0, "train"), (1, "valid"), (2, "test")):
        got = data.split(split)
        assert got.dtype == torch.int64
        assert torch.equal(got, edges(ROWS, label)), split
    assert data.train.shape == (2, 6) and data.valid.shape == (2, 2) and data.test.shape == (2, 3)
    assert list(data.features) == ["text", "image"]  # card order, all by default
    assert data.features["text"].dtype == torch.float32  # float64 on disk
    assert data.features["image"].dtype == torch.float32
    assert torch.equal(data.features["text"], torch.from_numpy(TEXT.astype(np.float32)))
    assert torch.equal(data.features["image"], torch.from_numpy(IMAGE))
    assert data.stats() == {
        "name": "toy", "num_users": 3, "num_items": 5, "num_interactions": 11,
        "num_train": 6, "num_valid": 2, "num_test": 3, "density": 11 / 15,
        "modalities": {"text": 3, "image": 2},
    }


def test_card_fields_and_modality_selection(tmp_path):
    toy = make_dataset(tmp_path, card={"default_modalities": ["image"],
                                       "expected": {"users": 3, "items": 5, "interactions": 11},
                                       "config": {"knn_k": 3}})
    card = toy.card()
    assert card.name == "toy" and card.inter == "toy.inter"
    assert card.source == SOURCE and card.description == "a tiny test dataset"
    assert [(m.name, m.file, m.dim) for m in card.modalities] == [
        ("text", "text_feat.npy", 3), ("image", "image_feat.npy", 2)]
    assert card.default_modalities == ("image",)
    assert card.files() == ["toy.inter", "text_feat.npy", "image_feat.npy"]
    assert card.config == {"knn_k": 3} and card.generator is None
    assert card.path == toy.cards_dir / "toy.yaml"
    assert list(toy.load().features) == ["image"]  # default_modalities
    assert list(toy.load(" text , image ").features) == ["text", "image"]
    assert list(toy.load("image,text").features) == ["image", "text"]


def test_only_selected_modality_files_are_needed(tmp_path):
    toy = make_dataset(tmp_path, drop=("image_feat.npy",))
    data = toy.load("text")
    assert list(data.features) == ["text"] and data.num_items == 5
    check_files(toy.card(), toy.data_dir, toy.card().select("text"))  # no error


def test_inter_extra_columns_any_order_crlf_and_trailing_blank_lines(tmp_path):
    header = "timestamp\tx_label\titemID\trating\tuserID"
    body = "\r\n".join([header] + [f"99{k}\t{x}\t{i}\t5\t{u}" for k, (u, i, x) in
                                   enumerate(ROWS)]) + "\r\n\r\n\n"
    toy = make_dataset(tmp_path, inter=body)
    users, items, labels = read_inter(toy.file("toy.inter"))
    assert users.dtype == items.dtype == labels.dtype == np.int64
    assert users.tolist() == [r[0] for r in ROWS]
    assert items.tolist() == [r[1] for r in ROWS]
    assert labels.tolist() == [r[2] for r in ROWS]
    assert torch.equal(toy.load().train, edges(ROWS, 0))


def test_features_with_more_rows_than_interacted_items(tmp_path, caplog):
    # items 5 and 6 have features but no interaction: they still count as items
    toy = make_dataset(tmp_path, card={"modalities": {"text": "text_feat.npy"}},
                       features={"text_feat.npy": np.ones((7, 4), dtype=np.int32)})
    with caplog.at_level(logging.WARNING, logger="brmrs_pyg.data.mmrec"):
        data = toy.load()
    assert data.num_items == 7
    assert data.features["text"].dtype == torch.float32  # integer features cast
    assert data.features["text"].shape == (7, 4)
    assert "2 items have features but no interaction" in caplog.text


# ---------------------------------------------------------------------------------------------
# Missing files
# ---------------------------------------------------------------------------------------------
def test_missing_files_lists_every_expected_file_and_the_source(tmp_path):
    toy = make_dataset(tmp_path, drop=("toy.inter", "image_feat.npy"),
                       card={"expected": {"items": 5, "interactions": 11}})
    with pytest.raises(MissingFilesError, match=re.escape(
            f"dataset 'toy': missing toy.inter, image_feat.npy in {toy.data_dir}/")) as info:
        toy.load()
    msg = str(info.value)
    assert isinstance(info.value, DataError)
    # every expected file, present or not, with its layout
    assert ("  toy.inter: tab-separated userID, itemID, x_label (0 train, 1 valid, 2 test), "
            "11 rows (missing)\n") in msg
    assert "  text_feat.npy: modality 'text', float .npy matrix of shape 5 x 3 (present)\n" in msg
    assert ("  image_feat.npy: modality 'image', float .npy matrix of shape 5 x 2 (missing)\n"
            in msg)
    assert "Problems" not in msg  # the file present is valid
    # the card's source, indented line by line
    assert ("Where to get them:\n  Toy files from the test suite,\n"
            "  second line of the source text.") in msg
    assert f"Put them in {toy.data_dir}/ or pass --data-dir DIR" in msg


def test_missing_files_without_expected_counts(tmp_path):
    toy = make_dataset(tmp_path, drop=("text_feat.npy",),
                       card={"modalities": {"text": "text_feat.npy",
                                            "image": {"file": "image_feat.npy", "dim": 2}}})
    with pytest.raises(MissingFilesError, match=re.escape("missing text_feat.npy in")) as info:
        toy.load()
    msg = str(info.value)
    # no row count without `expected`
    assert "x_label (0 train, 1 valid, 2 test) (present)\n" in msg
    assert "text_feat.npy: modality 'text', float .npy matrix of shape items x d" in msg
    assert "image_feat.npy: modality 'image', float .npy matrix of shape items x 2" in msg
    assert "Toy files from the test suite," in msg


def test_missing_files_message_validates_the_files_present(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[2][2] = 7  # line 4: unknown x_label
    toy = make_dataset(tmp_path, inter=rows, drop=("image_feat.npy",),
                       features={"text_feat.npy": np.zeros((4, 3))},
                       card={"expected": {"items": 5}})
    with pytest.raises(MissingFilesError, match=re.escape("missing image_feat.npy in")) as info:
        toy.load()
    msg = str(info.value)
    problems = msg[msg.index("Problems in the files present:\n"):msg.index("Where to get them")]
    assert problems.splitlines()[1:] == [
        f"  {toy.file('toy.inter')}, line 4: unknown x_label 7 (1 rows); expected 0 (train), "
        "1 (valid) or 2 (test)",
        f"  {toy.file('text_feat.npy')}: modality 'text' has 4 rows, the dataset card expects "
        "5 items"]


# ---------------------------------------------------------------------------------------------
# The .inter file
# ---------------------------------------------------------------------------------------------
def test_empty_inter(tmp_path):
    toy = make_dataset(tmp_path, inter="")
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}: empty file; expected a tab-separated header with "
            "columns userID, itemID, x_label")):
        toy.load()


def test_inter_header_only(tmp_path):
    toy = make_dataset(tmp_path, inter=HEADER + "\n\n")
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}: no interactions after the header")):
        toy.load()


def test_inter_not_utf8(tmp_path):
    toy = make_dataset(tmp_path, inter=(inter_text() + "0\t\xff\t0\n").encode("latin-1"))
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}: not a UTF-8 text file (invalid start byte at byte")):
        toy.load()


def test_header_lacking_a_column(tmp_path):
    toy = make_dataset(tmp_path, inter=inter_text(header="userID\titem_id\tx_label"))
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}, line 1: header 'userID\\titem_id\\tx_label' lacks "
            "column(s) itemID; expected a tab-separated header with userID, itemID, x_label")):
        toy.load()


def test_comma_separated_header_hints_tabs(tmp_path):
    body = "userID,itemID,x_label\n" + "".join(f"{u},{i},{x}\n" for u, i, x in ROWS)
    toy = make_dataset(tmp_path, inter=body)
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}, line 1: header 'userID,itemID,x_label' lacks column(s) "
            "userID, itemID, x_label (the header looks comma-separated; columns must be "
            "tab-separated)")):
        toy.load()


def test_wrong_field_count_names_the_line(tmp_path):
    lines = inter_text().splitlines()
    lines[3] = "0\t2"  # line 4
    toy = make_dataset(tmp_path, inter="\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}, line 4: 2 tab-separated fields, the header has 3: "
            "'0\\t2'")):
        toy.load()


@pytest.mark.parametrize("column, value", [("userID", "u7"), ("itemID", "1.5"),
                                           ("x_label", "")])
def test_non_integer_id_names_line_and_column(tmp_path, column, value):
    rows = [list(r) for r in ROWS]
    rows[4][("userID", "itemID", "x_label").index(column)] = value  # line 6
    toy = make_dataset(tmp_path, inter=rows)
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}, line 6, column {column}: expected a non-negative "
            f"integer, got {value!r}")):
        toy.load()


def test_negative_id(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[9][1] = -1  # line 11
    toy = make_dataset(tmp_path, inter=rows)
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}, line 11, column itemID: expected a non-negative "
            "integer, got '-1'")):
        toy.load()


def test_id_too_large_for_int64(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[1][0] = 10**20  # line 3
    toy = make_dataset(tmp_path, inter=rows)
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}, line 3, column userID: 100000000000000000000 does not "
            "fit a 64-bit integer")):
        toy.load()


def test_user_id_far_beyond_the_number_of_rows(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[1][0] = 10**12  # line 3: must not allocate per-user arrays of 10^12 entries
    toy = make_dataset(tmp_path, inter=rows)
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}: 999999999997 user id(s) in 0..1000000000000 have no "
            "training interaction: 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 ...")):
        toy.load()


def test_item_id_far_beyond_the_number_of_rows_without_features(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[1][1] = 10**15  # line 3
    toy = make_dataset(tmp_path, inter=rows)
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}, line 3: itemID 1000000000000000 is larger than the number "
            "of rows (11); item ids must be contiguous from 0")):
        load_dataset(replace(toy.card(), modalities=(), default_modalities=()), toy.data_dir)


def test_unknown_x_label(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[2][2] = 3  # line 4
    rows[7][2] = 7
    toy = make_dataset(tmp_path, inter=rows)
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}, line 4: unknown x_label 3 (2 rows); expected 0 (train), "
            "1 (valid) or 2 (test)")):
        toy.load()


def test_duplicate_pair_names_both_lines(tmp_path):
    rows = ROWS + [(1, 1, 2)]  # line 13 repeats line 6 (user 1, item 1, train)
    toy = make_dataset(tmp_path, inter=rows)
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}, lines 6 and 13: user 1 and item 1 appear twice (train "
            "and test); 1 duplicated pairs in all. Each pair must occur once")):
        toy.load()


@pytest.mark.parametrize("label, split", [(1, "valid"), (2, "test")])
def test_empty_split(tmp_path, label, split):
    rows = [(u, i, 0 if x == label else x) for u, i, x in ROWS]
    toy = make_dataset(tmp_path, inter=rows)
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}: the {split} split is empty (no row with x_label "
            f"{label})")):
        toy.load()


def test_users_without_training_interactions_are_listed(tmp_path):
    # user 1 has only valid/test rows; user 3 has no row at all (ids 0..4 must be contiguous)
    rows = [r for r in ROWS if r[0] != 1] + [(1, 4, 1), (1, 0, 2), (4, 1, 0)]
    toy = make_dataset(tmp_path, inter=rows)
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}: 2 user id(s) in 0..4 have no training interaction: "
            "1, 3. User ids must be contiguous")):
        toy.load()


def test_many_cold_users_are_listed_up_to_ten(tmp_path):
    rows = ROWS + [(20, 0, 0)]  # users 3..19 have no row
    toy = make_dataset(tmp_path, inter=rows)
    with pytest.raises(DataError, match=re.escape(
            "17 user id(s) in 0..20 have no training interaction: "
            "3, 4, 5, 6, 7, 8, 9, 10, 11, 12 ...")):
        toy.load()


def test_user_with_every_item_in_train(tmp_path):
    rows = [(u, i, x) for u, i, x in ROWS if u != 2] + [(2, i, 0) for i in range(5)]
    toy = make_dataset(tmp_path, inter=rows)
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}: user 2 has interacted with every item in training; "
            "no negative item can be sampled for that user")):
        toy.load()


def test_card_expected_counts_mismatch(tmp_path):
    toy = make_dataset(tmp_path, card={"expected": {"users": 4, "items": 5,
                                                    "interactions": 1200}})
    with pytest.raises(DataError, match=re.escape(
            f"dataset 'toy' does not match its card {toy.cards_dir / 'toy.yaml'} (users: card "
            "expects 4, files have 3; interactions: card expects 1,200, files have 11); the "
            "files are a different version of the data set, or the card is wrong")):
        toy.load()


# ---------------------------------------------------------------------------------------------
# Feature files
# ---------------------------------------------------------------------------------------------
def test_item_id_out_of_range_of_feature_rows(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[6][1] = 6  # line 8
    rows[9][1] = 5  # line 11
    toy = make_dataset(tmp_path, inter=rows)
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}, line 8: item id 6 is out of range: the feature files "
            "have 5 rows (items 0..4)")):
        toy.load()


def test_feature_files_disagree_on_rows(tmp_path):
    toy = make_dataset(tmp_path, features={"image_feat.npy": np.zeros((6, 2), np.float32)})
    with pytest.raises(DataError, match=re.escape(
            f"{toy.data_dir}: feature files disagree on the number of items: text_feat.npy has "
            "5 rows, image_feat.npy has 6 rows")):
        toy.load()


@pytest.mark.parametrize("shape", [(5,), (5, 3, 1), (0, 3), (5, 0)])
def test_feature_file_not_2d(tmp_path, shape):
    toy = make_dataset(tmp_path, features={"text_feat.npy": np.zeros(shape)})
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('text_feat.npy')}: modality 'text' must be a 2-D matrix (items x "
            f"features) with at least one row and one column, got shape {shape}")):
        toy.load()


def test_feature_width_differs_from_card_dim(tmp_path):
    toy = make_dataset(tmp_path, features={"image_feat.npy": np.zeros((5, 4), np.float32)})
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('image_feat.npy')}: modality 'image' has 4 columns, the dataset card "
            "says 2")):
        toy.load()


def test_nan_feature_names_the_row(tmp_path):
    text = TEXT.copy()
    text[3, 1] = np.nan
    toy = make_dataset(tmp_path, features={"text_feat.npy": text})
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('text_feat.npy')}: modality 'text' has NaN or inf in 1 rows, first row "
            "3 (item 3)")):
        toy.load()


def test_inf_feature_names_the_first_row(tmp_path):
    image = IMAGE.copy()
    image[4, 0] = np.inf
    image[1, 1] = -np.inf
    toy = make_dataset(tmp_path, features={"image_feat.npy": image})
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('image_feat.npy')}: modality 'image' has NaN or inf in 2 rows, first "
            "row 1 (item 1)")):
        toy.load()


def test_float64_overflowing_float32_is_inf(tmp_path):
    text = TEXT.copy()
    text[2, 0] = 1e300  # finite in float64, inf once cast to float32
    toy = make_dataset(tmp_path, features={"text_feat.npy": text})
    with pytest.raises(DataError, match=re.escape("NaN or inf in 1 rows, first row 2 (item 2)")):
        toy.load()


@pytest.mark.parametrize("array, dtype", [(np.full((5, 3), "a"), "<U1"),
                                          (np.ones((5, 3), dtype=bool), "bool"),
                                          (np.ones((5, 3), dtype=np.complex64), "complex64")])
def test_non_numeric_feature_dtype(tmp_path, array, dtype):
    toy = make_dataset(tmp_path, features={"text_feat.npy": array})
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('text_feat.npy')}: modality 'text' has dtype {dtype}; expected "
            "numbers")):
        toy.load()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize("content, detail", [
    (b"", "No data left in file"),
    (b"this is not an npy file", "pickled"),
    (_npy_bytes(np.zeros((5, 3)))[:-8], "shorter than its header says (truncated?)"),
    (None, "it holds Python objects (a pickled object array), not numbers"),
    (b"PK\x03\x04", "File is not a zip file"),
])
def test_corrupt_npy(tmp_path, content, detail):
    if content is None:  # an object array, saved with pickle
        content = np.array([[object()] * 3] * 5, dtype=object)
    toy = make_dataset(tmp_path, features={"text_feat.npy": content})
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('text_feat.npy')}: cannot read modality 'text' as a .npy array: ")) as info:
        toy.load()
    assert detail in str(info.value)


def test_read_features_directly(tmp_path):
    path = tmp_path / "f.npy"
    np.save(path, np.arange(6, dtype=np.int64).reshape(3, 2))
    out = read_features(path, "m")
    assert out.dtype == np.float32 and out.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert read_features(path, "m", dim=2).shape == (3, 2)
    with pytest.raises(DataError, match=re.escape(f"{path}: modality 'm' has 2 columns, the "
                                                  "dataset card says 5")):
        read_features(path, "m", dim=5)


def test_unknown_modality_in_selection(tmp_path):
    toy = make_dataset(tmp_path)
    with pytest.raises(DataError, match=re.escape(
            "dataset 'toy' has no modality audio, video; available: text, image")):
        toy.load("text,audio,video")


# ---------------------------------------------------------------------------------------------
# Dataset cards
# ---------------------------------------------------------------------------------------------
GOOD_CARD = ("inter: toy.inter\nmodalities:\n  text: {file: t.npy, dim: 4}\n"
             "source: somewhere\n")


def test_unknown_card_name_lists_available_cards(tmp_path):
    cards_dir = write_card_text(tmp_path, GOOD_CARD, name="beta")
    write_card_text(tmp_path, GOOD_CARD, name="alpha")
    with pytest.raises(DataError, match=re.escape(
            f"no dataset card {cards_dir / 'gamma.yaml'}; available datasets: alpha, beta")):
        load_card("gamma", cards_dir)
    with pytest.raises(DataError, match=re.escape("available datasets: (none)")):
        load_card("gamma", tmp_path / "empty")


def test_repo_cards_are_listed_for_an_unknown_name():
    with pytest.raises(DataError, match=r"available datasets: .*lfm2k.*synthetic"):
        load_card("no_such_dataset", REPO / "datasets")


def test_card_invalid_yaml(tmp_path):
    cards_dir = write_card_text(tmp_path, "inter: [unclosed\nsource: x\n")
    with pytest.raises(DataError, match=re.escape(
            f"{cards_dir / 'toy.yaml'}: not valid YAML: ")):
        load_card("toy", cards_dir)


@pytest.mark.parametrize("text, kind", [("", "NoneType"), ("- a\n- b\n", "list")])
def test_card_not_a_mapping(tmp_path, text, kind):
    cards_dir = write_card_text(tmp_path, text)
    with pytest.raises(DataError, match=re.escape(
            f"{cards_dir / 'toy.yaml'}: expected a mapping of keys, got {kind}")):
        load_card("toy", cards_dir)


def test_card_unknown_key(tmp_path):
    cards_dir = write_card_text(tmp_path, GOOD_CARD + "modality: text\nurl: x\n")
    with pytest.raises(DataError, match=re.escape(
            f"{cards_dir / 'toy.yaml'}: unknown keys ['modality', 'url']; valid keys: "
            "['config', 'default_modalities', 'description', 'expected', 'generator', "
            "'inter', 'modalities', 'name', 'source']")):
        load_card("toy", cards_dir)


@pytest.mark.parametrize("key", ["inter", "modalities", "source"])
def test_card_missing_required_key(tmp_path, key):
    raw = yaml.safe_load(GOOD_CARD)
    del raw[key]
    cards_dir = write_card_text(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(DataError, match=re.escape(
            f"{cards_dir / 'toy.yaml'}: missing required key {key!r}")):
        load_card("toy", cards_dir)


def test_card_name_differs_from_file_name(tmp_path):
    cards_dir = write_card_text(tmp_path, "name: other\n" + GOOD_CARD)
    with pytest.raises(DataError, match=re.escape(
            f"{cards_dir / 'toy.yaml'}: name 'other' differs from the file name 'toy'")):
        load_card("toy", cards_dir)


@pytest.mark.parametrize("modalities", ["[t.npy]", "3", "{text: {dim: 4}}",
                                        "{text: {file: t.npy, width: 4}}", "{text: 3}"])
def test_card_bad_modality_spec(tmp_path, modalities):
    cards_dir = write_card_text(tmp_path, f"inter: a\nsource: b\nmodalities: {modalities}\n")
    expected = ("modalities must map each modality name to its .npy file"
                if modalities in ("[t.npy]", "3") else
                "modality 'text' must be a file name, {file: NAME, dim: INT} or "
                "{build: {...}, dim: INT}")
    with pytest.raises(DataError, match=re.escape(f"{cards_dir / 'toy.yaml'}: {expected}")):
        load_card("toy", cards_dir)


@pytest.mark.parametrize("dim", ["0", "-3", "2.5", "big"])
def test_card_bad_modality_dim(tmp_path, dim):
    cards_dir = write_card_text(
        tmp_path, f"inter: a\nsource: b\nmodalities: {{text: {{file: t.npy, dim: {dim}}}}}\n")
    with pytest.raises(DataError, match=re.escape(
            f"{cards_dir / 'toy.yaml'}: modality 'text': dim must be a positive integer")):
        load_card("toy", cards_dir)


@pytest.mark.parametrize("default", ["text", "[text, audio]"])
def test_card_bad_default_modalities(tmp_path, default):
    cards_dir = write_card_text(tmp_path, GOOD_CARD + f"default_modalities: {default}\n")
    with pytest.raises(DataError, match=re.escape(
            f"{cards_dir / 'toy.yaml'}: default_modalities must be a list of names from "
            "modalities (text)")):
        load_card("toy", cards_dir)


@pytest.mark.parametrize("expected", ["[1, 2]", "{users: 3, rows: 4}", "{users: many}",
                                      "{users: true}", "{users: -1}"])
def test_card_bad_expected(tmp_path, expected):
    cards_dir = write_card_text(tmp_path, GOOD_CARD + f"expected: {expected}\n")
    with pytest.raises(DataError, match=re.escape(
            f"{cards_dir / 'toy.yaml'}: expected must map some of ['interactions', 'items', "
            "'users'] to non-negative integers, got ")):
        load_card("toy", cards_dir)


@pytest.mark.parametrize("extra", ["config: [1]\n", "generator: 3\n"])
def test_card_config_and_generator_must_be_mappings(tmp_path, extra):
    cards_dir = write_card_text(tmp_path, GOOD_CARD + extra)
    with pytest.raises(DataError, match=re.escape(
            f"{cards_dir / 'toy.yaml'}: config and generator must be mappings")):
        load_card("toy", cards_dir)


def test_repo_cards_all_parse():
    names = sorted(p.stem for p in (REPO / "datasets").glob("*.yaml"))
    assert {"lfm2k", "synthetic"} <= set(names)
    for name in names:
        card = load_card(name, REPO / "datasets")
        assert card.name == name and card.source and card.files()[0] == card.inter


# ---------------------------------------------------------------------------------------------
# Regressions: inputs on which tests/test_fuzz_data.py found an escape (an exception other
# than DataError, or a silent wrong load) before the reader was fixed
# ---------------------------------------------------------------------------------------------
def test_header_naming_a_column_twice_is_ambiguous(tmp_path):
    toy = make_dataset(tmp_path, inter="userID\tuserID\titemID\tx_label\n0\t1\t0\t0\n")
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}, line 1: column(s) userID appear more than once")):
        read_inter(toy.file("toy.inter"))


def test_id_with_thousands_of_digits(tmp_path):
    # int() refuses strings over 4300 digits with a bare ValueError
    toy = make_dataset(tmp_path, inter=inter_text() + "1" * 5000 + "\t0\t0\n")
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('toy.inter')}, line 13, column userID: 1111")):
        read_inter(toy.file("toy.inter"))


@pytest.mark.parametrize("separator", ["\x0c", "\x85", "\u2028", "\x1e"])
def test_unicode_line_separators_do_not_shift_line_numbers(tmp_path, separator):
    # str.splitlines() splits on these, which made the reported line wrong
    rows = inter_text().split("\n")
    rows[3] = rows[3].replace("\t", "\t" + separator, 1)
    toy = make_dataset(tmp_path, inter="\n".join(rows))
    with pytest.raises(DataError, match=re.escape(f"{toy.file('toy.inter')}, line 4, column ")):
        read_inter(toy.file("toy.inter"))


def test_byte_order_mark_and_spaces_in_header_are_accepted(tmp_path):
    toy = make_dataset(tmp_path, inter="\ufeffuserID \t itemID\tx_label\r\n"
                       + inter_text().split("\n", 1)[1])
    users, items, labels = read_inter(toy.file("toy.inter"))
    assert list(zip(users, items, labels)) == ROWS


def test_missing_final_line_break_is_reported(tmp_path, caplog):
    toy = make_dataset(tmp_path, inter=inter_text().rstrip("\n"))
    with caplog.at_level(logging.WARNING):
        read_inter(toy.file("toy.inter"))
    assert f"{toy.file('toy.inter')}: the last line (line 12) has no line break" in caplog.text


def test_npz_archive_instead_of_npy(tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, TEXT)
    toy = make_dataset(tmp_path, features={"text_feat.npy": buffer.getvalue()})
    with pytest.raises(DataError, match=re.escape(
            f"{toy.file('text_feat.npy')}: modality 'text' is an .npz archive")):
        toy.load()


def test_npy_header_promising_more_than_the_file_holds(tmp_path):
    # np.load allocated the promised 74.5 GiB (MemoryError) before finding the file too short
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }"
    header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    raw = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    toy = make_dataset(tmp_path, features={"text_feat.npy": raw + bytes(64)})
    with pytest.raises(DataError, match=re.escape("shorter than its header says (truncated?)")):
        toy.load()


@pytest.mark.parametrize("card_text, message", [
    (b"inter: \xff\n", "not a UTF-8 text file"),
    (GOOD_CARD.encode() + b"description: 2001-13-45\n", "not valid YAML: month must be"),
    (GOOD_CARD.encode() + b"1: a\nfoo: b\n", "unknown keys [1, 'foo']"),
    (GOOD_CARD.encode().replace(b"toy.inter", b"null"), "inter must be a file name (text), "
                                                         "got None"),
    (GOOD_CARD.encode().replace(b"toy.inter", b"5"), "inter must be a file name (text), got 5"),
    (GOOD_CARD.encode().replace(b"somewhere", b"null"), "source must be text, got None"),
    (GOOD_CARD.encode().replace(b"t.npy", b'"a\\0b"'), "modality 'text': file must be a file "
                                                        "name (text), got 'a\\x00b'"),
    (GOOD_CARD.encode().replace(b"dim: 4", b"dim: true"), "dim must be a positive integer, "
                                                           "got True"),
    (GOOD_CARD.encode() + b"default_modalities: [[text]]\n", "default_modalities must be a "
                                                              "list of names"),
    (GOOD_CARD.encode() + b"expected: {users: true}\n", "to non-negative integers, got "
                                                         "{'users': True}"),
])
def test_card_values_are_never_coerced(tmp_path, card_text, message):
    cards_dir = tmp_path / "cards"
    cards_dir.mkdir()
    (cards_dir / "toy.yaml").write_bytes(card_text)
    with pytest.raises(DataError, match=re.escape(f"{cards_dir / 'toy.yaml'}: ") + ".*"
                       + re.escape(message)):
        load_card("toy", cards_dir)


def test_file_name_too_long_for_the_file_system(tmp_path):
    toy = make_dataset(tmp_path, card={"modalities": {"text": {"file": "x" * 300 + ".npy"}}})
    with pytest.raises(DataError, match=re.escape(f"{toy.card().path}: cannot look up ")):
        toy.load()


# ---------------------------------------------------------------------------------------------
# The real Last.fm-2K data (shared/data/lfm2k beside the checkout)
# ---------------------------------------------------------------------------------------------
needs_lfm2k = pytest.mark.skipif(
    not (LFM2K_DIR / "lfm2k.inter").is_file(),
    reason=f"real dataset not present: {LFM2K_DIR} has no lfm2k.inter")


@needs_lfm2k
def test_lfm2k_real_data():
    card = load_card("lfm2k", REPO / "datasets")
    data = load_dataset(card, LFM2K_DIR)
    stats = data.stats()
    assert (data.num_users, data.num_items) == (1858, 1425)
    assert (stats["num_train"], stats["num_valid"], stats["num_test"]) == (44327, 4799, 7219)
    assert stats["num_interactions"] == 56345
    assert stats["modalities"] == {"text": 384, "whisper": 512}
    assert all(x.dtype == torch.float32 and x.shape[0] == 1425 for x in data.features.values())
    assert int(data.train[0].max()) == 1857 and int(data.train[1].max()) <= 1424
    # all three modalities on request
    data3 = load_dataset(card, LFM2K_DIR, "text,whisper,vggish")
    assert list(data3.features) == ["text", "whisper", "vggish"]
    assert data3.features["vggish"].shape == (1425, 128)
    assert data3.features["vggish"].dtype == torch.float32
    assert torch.equal(data3.train, data.train)
