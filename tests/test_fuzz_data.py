r"""Property-based tests (hypothesis) of the MMRec reader and the dataset cards.

Every input, however broken, must end in one of two ways: a load whose result equals a direct
parse of the input, or the project's own :class:`DataError` whose message names the file.
Anything else (a ``ValueError`` from numpy, a ``UnicodeDecodeError``, a YAML error, a silent
wrong value) fails the property.

The examples are derandomised (hypothesis seeds each property from the test itself, so a
failure reproduces instead of flaking in CI) and bounded; ``BRMRS_FUZZ_SCALE=20 pytest
tests/test_fuzz_data.py`` tries 20 times as many. The number of inputs tried per property,
and how many loaded or raised DataError, is printed at the end of the session
(``conftest.FUZZ``).
"""
from __future__ import annotations

import io
import itertools
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from brmrs_pyg.data import DataError, load_card, load_dataset, read_features, read_inter

from conftest import FUZZ

SCALE = float(os.environ.get("BRMRS_FUZZ_SCALE", "1"))
REQUIRED = ("userID", "itemID", "x_label")


def fuzz(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


_counter = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def fresh(workdir: Path) -> Path:
    folder = workdir / f"ex{next(_counter)}"
    folder.mkdir()
    return folder


def outcome(prop: str, call, *paths: object):
    r"""Runs ``call``; returns its result, or ``None`` after a DataError naming one of
    ``paths``. Any other exception propagates and fails the property."""
    try:
        result = call()
    except DataError as exc:
        FUZZ[prop, "DataError"] += 1
        assert any(str(p) in str(exc) for p in paths), f"message names no file: {exc}"
        return None
    FUZZ[prop, "loaded"] += 1
    return result


# ---------------------------------------------------------------------------------------------
# .inter files
# ---------------------------------------------------------------------------------------------
LAYOUTS = [REQUIRED, ("userID", "itemID", "rating", "timestamp", "x_label"),
           ("x_label", "itemID", "userID"), ("timestamp", "userID", "itemID", "x_label")]
rows_st = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 2),
                             st.integers(0, 10**10), st.integers(0, 5)), min_size=1, max_size=25)


@st.composite
def inter_files(draw) -> tuple[bytes, list[tuple[int, int, int]]]:
    r"""A valid .inter file (layout, line ends, final newline drawn) and its (u, i, x) rows."""
    layout = draw(st.sampled_from(LAYOUTS))
    rows = draw(rows_st)
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    lines = ["\t".join(layout)]
    for u, i, x, ts, rating in rows:
        value = {"userID": u, "itemID": i, "x_label": x, "timestamp": ts, "rating": rating}
        lines.append("\t".join(str(value[c]) for c in layout))
    text = eol.join(lines) + (eol if draw(st.booleans()) else "")
    return text.encode(), [(u, i, x) for u, i, x, _, _ in rows]


def reference_parse(raw: bytes) -> list[tuple[int, int, int]]:
    r"""The direct reading of the format: UTF-8 (a BOM allowed), lines split on ``\n`` only,
    tab-separated, fields padded with spaces only, header names located once each."""
    lines = [line.rstrip("\r") for line in raw.decode("utf-8-sig").split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    header = [h.strip(" ") for h in lines[0].split("\t")]
    cols = [header.index(c) for c in REQUIRED]
    return [tuple(int(line.split("\t")[c].strip(" ")) for c in cols) for line in lines[1:]]


def read_rows(path: Path) -> list[tuple[int, int, int]]:
    users, items, labels = read_inter(path)
    for array in (users, items, labels):
        assert array.dtype == np.int64 and array.shape == users.shape
    return list(zip(users.tolist(), items.tolist(), labels.tolist()))


def check_inter(prop: str, workdir: Path, raw: bytes) -> list[tuple[int, int, int]] | None:
    path = fresh(workdir) / "x.inter"
    path.write_bytes(raw)
    rows = outcome(prop, lambda: read_rows(path), path)
    if rows is not None:
        assert rows == reference_parse(raw)
    return rows


@settings(fuzz(150), suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
@given(file=inter_files(), data=st.data())
def test_truncated_inter(workdir, caplog, file, data):
    raw, rows = file
    line_ends = [k + 1 for k, byte in enumerate(raw) if byte == ord("\n")]
    cut = data.draw(st.one_of(st.integers(0, len(raw)), st.sampled_from(line_ends or [0])))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="brmrs_pyg"):
        got = check_inter("read_inter: truncated", workdir, raw[:cut])
    if got is not None and got != rows[:len(got)]:
        # a cut inside the last field can leave a valid but different row: only a missing
        # final line break shows it, and the reader says so
        assert "has no line break" in caplog.text


@fuzz(100)
@given(file=inter_files(), sep=st.sampled_from([",", ";", " ", "|", ", "]),
       where=st.sampled_from(["all", "header", "rows", "one"]), data=st.data())
def test_wrong_delimiter_in_inter(workdir, file, sep, where, data):
    raw, _ = file
    text = raw.decode()
    header, _, body = text.partition("\n")
    if where == "all":
        text = text.replace("\t", sep)
    elif where == "header":
        text = header.replace("\t", sep) + "\n" + body
    elif where == "rows":
        text = header + "\n" + body.replace("\t", sep)
    else:
        tabs = [k for k, ch in enumerate(text) if ch == "\t"]
        k = data.draw(st.sampled_from(tabs))
        text = text[:k] + sep + text[k + 1:]
    rows = check_inter("read_inter: wrong delimiter", workdir, text.encode())
    if where != "rows" or body.strip():
        assert rows is None, "a file with a wrong delimiter was read"


header_names = st.one_of(
    st.sampled_from([*REQUIRED, "rating", "timestamp", "userid", "USERID", "item_id", "",
                     " userID", "x_label ", "\ufeffuserID", "user ID"]),
    st.text(st.characters(blacklist_characters="\t\n\r"), max_size=8))


@st.composite
def headers(draw) -> list[str]:
    r"""A valid layout with up to three mutations: a name replaced, duplicated or dropped."""
    header = list(draw(st.permutations([*REQUIRED, "rating"])))
    for _ in range(draw(st.integers(0, 3))):
        k = draw(st.integers(0, len(header) - 1))
        action = draw(st.sampled_from(["replace", "duplicate", "drop"]))
        if action == "replace":
            header[k] = draw(header_names)
        elif action == "duplicate":
            header.insert(draw(st.integers(0, len(header))), header[k])
        elif len(header) > 1:
            del header[k]
    return header


@fuzz(150)
@given(header=headers(),
       cells=st.lists(st.lists(st.integers(0, 2), min_size=8, max_size=8), min_size=1,
                      max_size=6))
def test_bad_header_in_inter(workdir, header, cells):
    lines = ["\t".join(header)] + ["\t".join(map(str, row[:len(header)])) for row in cells]
    raw = ("\n".join(lines) + "\n").encode()
    rows = check_inter("read_inter: bad header", workdir, raw)
    names = [h.strip(" ") for h in header]
    names[0] = names[0].lstrip("\ufeff")
    exactly_once = all(names.count(c) == 1 for c in REQUIRED)
    assert (rows is not None) == exactly_once


tricky_ids = st.sampled_from(["-1", "1.0", "1e3", "0x10", "٣", "²", "", " ", "nan", "inf",
                              "9" * 19, "9" * 25, "1" * 5000, "+3", "3 4", "\x0c3", "3\x85",
                              "\u20283", "\x1e3", "\u30003", " 7 ", "007", "0" * 30 + "5"])


@fuzz(200)
@given(file=inter_files(),
       value=st.one_of(tricky_ids, st.text(st.characters(blacklist_characters="\t\n\r"),
                                           max_size=12),
                       st.integers(0, 40).map(lambda n: f"{' ' * (n % 3)}{n}"),
                       st.integers().map(str), st.floats().map(str)),
       data=st.data())
def test_non_numeric_ids_in_inter(workdir, file, value, data):
    raw, rows = file
    lines = raw.decode().split("\n")
    n = data.draw(st.integers(1, len(rows)))
    fields = lines[n].rstrip("\r").split("\t")
    header = lines[0].rstrip("\r").split("\t")
    column = data.draw(st.sampled_from(REQUIRED))
    fields[header.index(column)] = value
    lines[n] = "\t".join(fields) + ("\r" if lines[n].endswith("\r") else "")
    got = check_inter("read_inter: non-numeric id", workdir, "\n".join(lines).encode())
    text = value.strip(" ")
    valid = (text.isascii() and text.isdigit() and len(text.lstrip("0")) <= 19
             and int(text) < 2**63) and (
        column != "x_label" or int(text) in (0, 1, 2))
    assert (got is not None) == valid


@fuzz(200)
@given(raw=st.one_of(st.binary(max_size=200),
                     st.text(max_size=200).map(str.encode),
                     st.lists(st.sampled_from(["userID", "itemID", "x_label", "\t", "\n", "\r",
                                               "0", "1", "2", "17", "-", " ", "\ufeff", "\x85"]),
                              max_size=40).map(lambda parts: "".join(parts).encode())))
def test_random_bytes_as_inter(workdir, raw):
    check_inter("read_inter: random bytes", workdir, raw)


# ---------------------------------------------------------------------------------------------
# .npy feature files
# ---------------------------------------------------------------------------------------------
DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8,
          np.uint64, np.bool_, np.complex64, ">f4", "<i2"]


@st.composite
def feature_arrays(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=5),
                           hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)))
    finite = dtype.kind in "fc" and draw(st.booleans())
    return draw(hnp.arrays(dtype, shape, elements=st.floats(-6e4, 6e4, width=16)
                           if finite else None))


def check_features(prop: str, workdir: Path, raw: bytes, dim: int | None
                   ) -> np.ndarray | None:
    path = fresh(workdir) / "feat.npy"
    path.write_bytes(raw)
    return outcome(prop, lambda: read_features(path, "text", dim), path)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


@fuzz(200)
@given(array=feature_arrays(), dim=st.one_of(st.none(), st.integers(0, 6)))
def test_feature_shapes_dtypes_and_values(workdir, array, dim):
    got = check_features("read_features: shapes, dtypes, values", workdir, npy_bytes(array),
                         dim)
    with np.errstate(over="ignore", invalid="ignore"):
        as_float = (array.astype(np.float32) if array.dtype.kind in "fiu" else None)
    valid = (array.ndim == 2 and array.shape[0] >= 1 and array.shape[1] >= 1
             and as_float is not None and bool(np.isfinite(as_float).all())
             and dim in (None, array.shape[1]))
    assert (got is not None) == valid
    if got is not None:
        assert got.dtype == np.float32 and np.array_equal(got, as_float)


@fuzz(100)
@given(array=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1,
                                                     max_side=6),
                        elements=st.floats(-1e3, 1e3, width=32)),
       data=st.data())
def test_truncated_npy(workdir, array, data):
    raw = npy_bytes(array)
    cut = data.draw(st.integers(0, len(raw) - 1))
    assert check_features("read_features: truncated", workdir, raw[:cut], None) is None


def zipped(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, array)
    return buffer.getvalue()


@fuzz(150)
@given(raw=st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: b"\x93NUMPY\x01\x00" + b),
    st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b),
    st.just(zipped(np.ones((3, 2)))),
    st.just(npy_bytes(np.array([{"a": 1}], dtype=object), allow_pickle=True)),
    st.just(npy_bytes(np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]))),
    st.text(max_size=100).map(str.encode)))
def test_random_bytes_as_npy(workdir, raw):
    assert check_features("read_features: random bytes", workdir, raw, None) is None


# ---------------------------------------------------------------------------------------------
# Dataset cards
# ---------------------------------------------------------------------------------------------
VALID_CARD = {
    "name": "toy", "description": "a card", "inter": "toy.inter",
    "modalities": {"text": {"file": "text_feat.npy", "dim": 3}, "image": "image_feat.npy"},
    "default_modalities": ["text"], "expected": {"users": 3, "items": 5},
    "config": {"knn_k": 3}, "source": "the tests",
}
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=False),
              st.text(max_size=10), st.sampled_from(["toy.inter", "text", "image", "a\0b",
                                                      "x" * 300, "2001-13-45", "../up.npy"])),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.one_of(st.text(max_size=6), st.integers(0, 3)),
                                             children, max_size=3)),
    max_leaves=8)
card_paths = [("name",), ("inter",), ("source",), ("description",), ("modalities",),
              ("modalities", "text"), ("modalities", "text", "file"),
              ("modalities", "text", "dim"), ("modalities", "image"), ("default_modalities",),
              ("expected",), ("expected", "users"), ("config",), ("generator",), ("extra",)]


@st.composite
def mutated_cards(draw) -> dict:
    card = yaml.safe_load(yaml.safe_dump(VALID_CARD))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(card_paths))
        node = card
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if draw(st.booleans()) and path[-1] in node:
            del node[path[-1]]
        else:
            node[path[-1]] = draw(yaml_values)
    return card


def check_card_matches(card, raw: dict) -> None:
    r"""A card that loaded holds exactly what its YAML says, not a coerced version of it."""
    assert card.inter == raw["inter"] and card.source == raw["source"].strip()
    assert card.name == raw.get("name", "toy") == "toy"
    specs = {m.name: m for m in card.modalities}
    assert list(specs) == list(raw["modalities"])
    for name, value in raw["modalities"].items():
        value = {"file": value} if isinstance(value, str) else value
        assert specs[name].file == value["file"] and specs[name].dim == value.get("dim")
    assert list(card.default_modalities) == raw.get("default_modalities", list(specs))
    assert card.expected == (raw.get("expected") or {})
    assert all(type(v) is int and v >= 0 for v in card.expected.values())
    assert card.config == (raw.get("config") or {}) and card.generator == raw.get("generator")


def check_card(prop: str, workdir: Path, raw_text: bytes) -> object:
    folder = fresh(workdir)
    (folder / "toy.yaml").write_bytes(raw_text)
    return outcome(prop, lambda: load_card("toy", folder), folder / "toy.yaml")


@fuzz(200)
@given(raw=mutated_cards())
def test_mutated_cards(workdir, raw):
    card = check_card("load_card: mutated fields", workdir, yaml.safe_dump(raw).encode())
    if card is not None:
        check_card_matches(card, raw)


@fuzz(150)
@given(raw=st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.lists(st.sampled_from(["name: toy\n", "inter: a\n", "modalities: {t: f.npy}\n",
                              "source: s\n", "  - ", ": ", "{", "[", "!!python/object:os.system",
                              "date: 2001-13-45\n", "x: &a [*a]\n", "? [a, b]\n: c\n",
                              "\t", "\"\\0\"", "1: 2\n", "\xff"]),
             max_size=10).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass"))))
def test_random_text_as_card(workdir, raw):
    check_card("load_card: random text", workdir, raw)


# ---------------------------------------------------------------------------------------------
# Whole datasets: interactions and features together
# ---------------------------------------------------------------------------------------------
MUTATIONS = ["label 3", "duplicate pair", "cold user", "empty split", "user gap",
             "item beyond rows", "few feature rows", "rows differ", "wrong dim", "nan feature",
             "inf feature", "zero columns", "user with every item"]


@st.composite
def datasets(draw) -> tuple[list[tuple[int, int, int]], dict[str, np.ndarray], list[str]]:
    r"""A valid dataset (every user trains, every split filled, pairs unique, item ids below
    the feature rows) and up to two mutations from :data:`MUTATIONS`."""
    num_users, num_items = draw(st.integers(1, 5)), draw(st.integers(5, 7))
    rows = []
    for u in range(num_users):
        items = draw(st.permutations(range(num_items)))[:draw(st.integers(1, 3))]
        rows += [(u, i, 0) for i in items]
    for label in (1, 2):
        u = draw(st.integers(0, num_users - 1))
        free = [i for i in range(num_items) if (u, i) not in {(a, b) for a, b, _ in rows}]
        rows.append((u, draw(st.sampled_from(free)), label))
    rows = draw(st.permutations(rows))
    features = {"text": draw(hnp.arrays(np.float32, (num_items, 3),
                                        elements=st.floats(-5, 5, width=32))),
                "image": draw(hnp.arrays(np.float32, (num_items, 2),
                                         elements=st.floats(-5, 5, width=32)))}
    applied = draw(st.lists(st.sampled_from(MUTATIONS), max_size=2))
    for mutation in applied:
        rows, features = mutate(draw, mutation, list(rows), dict(features))
    return rows, features, applied


def mutate(draw, mutation, rows, features):
    k = draw(st.integers(0, len(rows) - 1))
    u, i, x = rows[k]
    if mutation == "label 3":
        rows[k] = (u, i, 3)
    elif mutation == "duplicate pair":
        rows.insert(draw(st.integers(0, len(rows))), (u, i, draw(st.integers(0, 2))))
    elif mutation == "cold user":
        rows = [r for r in rows if not (r[0] == u and r[2] == 0)] or rows
    elif mutation == "empty split":
        rows = [r for r in rows if r[2] != x] or rows
    elif mutation == "user gap":
        rows = [(a + 1 if a >= u else a, b, c) for a, b, c in rows]
    elif mutation == "item beyond rows":
        rows[k] = (u, features["text"].shape[0] + draw(st.integers(0, 10**6)), x)
    elif mutation == "few feature rows":
        n = draw(st.integers(0, features["text"].shape[0]))
        features = {m: a[:n] for m, a in features.items()}
    elif mutation == "rows differ":
        features["image"] = features["image"][:-1]
    elif mutation == "wrong dim":
        features["text"] = np.zeros((features["text"].shape[0], 4), np.float32)
    elif mutation in ("nan feature", "inf feature") and features["image"].size:
        image = features["image"].copy()
        image.flat[draw(st.integers(0, image.size - 1))] = (
            np.nan if mutation == "nan feature" else -np.inf)
        features["image"] = image
    elif mutation == "zero columns":
        features["image"] = np.zeros((features["image"].shape[0], 0), np.float32)
    elif mutation == "user with every item":
        taken = {(a, b) for a, b, _ in rows}
        rows += [(u, j, 0) for j in range(features["text"].shape[0]) if (u, j) not in taken]
    return rows, features


def check_dataset_matches(data, rows, features) -> None:
    r"""Every property the reader promises, computed directly from the rows."""
    users = [u for u, _, _ in rows]
    assert data.num_users == max(users) + 1
    assert all(x in (0, 1, 2) for _, _, x in rows)
    for label, split in enumerate(("train", "valid", "test")):
        expected = [(u, i) for u, i, x in rows if x == label]
        assert expected, "an empty split was accepted"
        assert data.split(split).T.tolist() == [list(p) for p in expected]
    assert len({(u, i) for u, i, _ in rows}) == len(rows)
    train_users = {u for u, _, x in rows if x == 0}
    assert train_users == set(range(data.num_users))
    assert data.num_items == features["text"].shape[0] > max(i for _, i, _ in rows)
    for name, array in features.items():
        assert torch.equal(data.features[name], torch.from_numpy(array))
        assert array.shape[1] == 3 if name == "text" else True
    for u in train_users:
        assert sum(1 for v, _, x in rows if v == u and x == 0) < data.num_items


@fuzz(200)
@given(dataset=datasets())
def test_whole_datasets(workdir, dataset):
    rows, features, _ = dataset
    folder = fresh(workdir)
    card = {"name": "toy", "inter": "toy.inter", "source": "tests",
            "modalities": {"text": {"file": "text_feat.npy", "dim": 3},
                           "image": "image_feat.npy"}}
    (folder / "toy.yaml").write_text(yaml.safe_dump(card))
    lines = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t{x}" for u, i, x in rows]
    (folder / "toy.inter").write_text("\n".join(lines) + "\n")
    for name, array in features.items():
        np.save(folder / f"{name}_feat.npy", array)
    data = outcome("load_dataset: whole datasets",
                   lambda: load_dataset(load_card("toy", folder), folder), folder)
    if data is not None:
        check_dataset_matches(data, rows, features)
