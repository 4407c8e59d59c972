r"""The Amazon preparation pipeline (``brmrs_pyg.data.prepare``).

Each test writes small raw files in the real formats inside ``tmp_path`` (gzip JSON lines for
reviews, gzip Python-literal lines for metadata, the binary ``.b`` image features), runs the
pipeline and checks its output against a direct computation: networkx's k-core, a naive loop
for first-appearance ids, MMRec's split rule per user, the image records and the text recipe
computed here by hand.
"""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brmrs_pyg.cli import main
from brmrs_pyg.data import DataError, load_card, load_dataset
from brmrs_pyg.data.prepare import amazon as amazon_module
from brmrs_pyg.data.prepare.amazon import (find_files, prepare_amazon, read_image_features,
                                           read_meta, sentence_2014, sentence_2023)
from brmrs_pyg.data.prepare.interactions import (RawInteractions, SplitSettings,
                                                 first_appearance_ids, kcore_mask,
                                                 prepare_interactions)
from brmrs_pyg.data.prepare.writer import EncoderSettings, Output

CAT = "Toy_Category"
DIM = 4096  # image feature width, as in the real files


def fake_encoder(texts, model="", batch_size=0, device="", progress=True):
    r"""A stand-in for the sentence encoder: a few numbers that identify a text."""
    return np.array([[len(t), sum(map(ord, t)) % 9973, t.count(" "), hash(t) % 1000]
                     for t in texts], dtype=np.float32)


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    r"""Text encoding is replaced by :func:`fake_encoder` (the real one is tested in
    test_features.py), so these tests need neither the model nor its time."""
    monkeypatch.setattr(amazon_module, "encode_texts", fake_encoder)


def asin(n: int) -> str:
    return f"B{n:09d}"


def make_events(seed: int = 0, users: int = 60, items: int = 30, events: int = 700):
    r"""Random review events (user, item, rating, time) with repeated pairs and a long tail of
    low-degree users and items, so 5-core filtering has work to do."""
    rng = np.random.default_rng(seed)
    u = rng.zipf(1.6, events) % users
    i = (rng.zipf(1.4, events) + rng.integers(0, 3, events)) % items
    out = [(f"A{a:04d}X", asin(b), float(rng.integers(1, 6)), int(1_300_000_000 + k * 977))
           for k, (a, b) in enumerate(zip(u, i))]
    out += out[5:9]  # exact repeats
    out.append((out[0][0], out[0][1], 1.0, 1_500_000_000))  # same pair, other time and rating
    return out


def write_reviews(path: Path, events) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for user, item, rating, time in events:
            f.write(json.dumps({"reviewerID": user, "asin": item, "reviewerName": "x, y",
                                "helpful": [0, 1], "reviewText": "it's \"fine\"",
                                "overall": rating, "summary": "ok", "unixReviewTime": time,
                                "reviewTime": "01 2, 2013"}) + "\n")


def meta_record(n: int) -> dict:
    r"""Metadata of item ``asin(n)`` with every irregularity the recipe must handle."""
    record = {"asin": asin(n), "title": f"Item {n} title", "price": 9.99,
              "imUrl": "http://example.org/x.jpg",
              "related": {"also_bought": [asin(n + 1), asin(n + 2)]},
              "salesRank": {"Toys": n}, "brand": f"Brand{n % 4}",
              "categories": [["Top", f"Sub{n % 3}", "Leaf"], ["Other path"]],
              "description": f"Line one of {n}.\nLine 'two'."}
    if n % 5 == 1:
        del record["brand"]
    if n % 7 == 2:
        record["description"] = ""
    if n % 11 == 3:
        del record["title"]
    return record


def write_meta(path: Path, numbers) -> None:
    # repr(dict) is exactly the format of the 2014 files: Python literals, single quotes
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for n in numbers:
            f.write(repr(meta_record(n)) + "\n")


def write_b(path: Path, records) -> None:
    with open(path, "wb") as f:
        for key, vector in records:
            f.write(key.encode("ascii"))
            f.write(np.asarray(vector, dtype="<f4").tobytes())


def expected_sentence(n: int | None) -> str:
    r"""MMRec's 3feat-encoder.ipynb by hand: title + brand + first category path +
    description, missing fields as " ", line breaks as spaces."""
    if n is None:
        return "     "  # no metadata: title " ", " ", brand " ", " ", description " "
    r = meta_record(n)
    title = r.get("title") or " "
    brand = r.get("brand") or " "
    description = r.get("description") or " "
    cats = "".join(c + " " for c in r["categories"][0])
    return (title + " " + brand + " " + cats + description).replace("\n", " ")


@pytest.fixture
def raw_2014(tmp_path):
    r"""A raw 2014 folder; returns (folder, events, image records by asin)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    events = make_events()
    write_reviews(raw / f"reviews_{CAT}_5.json.gz", events)
    # metadata for all items but item 4, plus items outside the reviews
    write_meta(raw / f"meta_{CAT}.json.gz", [n for n in range(45) if n != 4])
    rng = np.random.default_rng(1)
    records = [(asin(n), rng.standard_normal(DIM)) for n in range(40) if n not in (2, 7)]
    records.append((asin(3), rng.standard_normal(DIM)))  # a repeated ASIN: the last one wins
    write_b(raw / f"image_features_{CAT}.b", records)
    return raw, events, records


def output(tmp_path, name="toy") -> Output:
    return Output(name=name, folder=tmp_path / "out" / name, cards_dir=tmp_path / "cards")


def read_mapping(path: Path) -> tuple[str, list[str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(r[1]) for r in rows] == list(range(len(rows)))
    return header[0], [r[0] for r in rows]


def read_inter_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def networkx_core(events, k: int) -> set[tuple[str, str]]:
    r"""The (user, item) edges of networkx's k-core of the bipartite graph of ``events``; users
    and items are tagged nodes, so equal ids never collide."""
    graph = nx.Graph()
    graph.add_edges_from((("u", u), ("i", i)) for u, i, *_ in events)
    core = nx.k_core(graph, k)
    return {(a[1], b[1]) if a[0] == "u" else (b[1], a[1]) for a, b in core.edges()}


def mmrec_rule(n: int) -> tuple[int, int, int]:
    r"""MMRec's 1splitting.ipynb: n < 10 -> n-2/1/1, else int(0.2 n) held out, half valid."""
    if n < 10:
        return n - 2, 1, 1
    held = int(n * 0.2)
    return n - held, held // 2, held - held // 2


# ---------------------------------------------------------------------------------------------
# The Amazon 2014 pipeline end to end
# ---------------------------------------------------------------------------------------------
def test_amazon_2014_end_to_end(tmp_path, raw_2014):
    raw, events, records = raw_2014
    out = output(tmp_path)
    data = prepare_amazon(raw, CAT, out, encoders=EncoderSettings(progress=False))
    folder = out.folder
    user_col, user_keys = read_mapping(folder / "u_id_mapping.tsv")
    item_col, item_keys = read_mapping(folder / "i_id_mapping.tsv")
    assert (user_col, item_col) == ("user_id", "asin")
    header, rows = read_inter_rows(folder / "toy.inter")
    assert header == ["userID", "itemID", "rating", "timestamp", "x_label"]
    pairs = [(user_keys[int(r[0])], item_keys[int(r[1])]) for r in rows]

    # 5-core: exactly the edges of networkx's 5-core of the bipartite graph
    core = networkx_core(events, 5)
    assert 0 < len(core) < len({(u, i) for u, i, *_ in events})  # the filter removed something
    assert len(pairs) == len(set(pairs)) and set(pairs) == core

    # each pair keeps its first event (rating and time); ids by first appearance in the file
    first: dict[tuple[str, str], tuple[float, int]] = {}
    order_u: dict[str, int] = {}
    order_i: dict[str, int] = {}
    for u, i, rating, time in events:
        if (u, i) in core and (u, i) not in first:
            first[(u, i)] = (rating, time)
            order_u.setdefault(u, len(order_u))
            order_i.setdefault(i, len(order_i))
    assert user_keys == list(order_u) and item_keys == list(order_i)
    assert pairs == list(first)  # rows keep the file order
    assert [(float(r[2]), int(r[3])) for r in rows] == [first[p] for p in pairs]

    # MMRec's split rule, per user
    per_user: dict[str, list[int]] = {}
    for (u, _), r in zip(pairs, rows):
        per_user.setdefault(u, []).append(int(r[4]))
    for u, labels in per_user.items():
        counts = tuple(labels.count(k) for k in range(3))
        assert counts == mmrec_rule(len(labels)), u
    assert any(len(v) >= 15 for v in per_user.values())  # the large-user rule is exercised

    # image rows: the item's last record; items without one (2, 7) get the mean of all records
    # of the dataset's items, repeated ones included
    image = np.load(folder / "image_feat.npy")
    assert image.dtype == np.float32 and image.shape == (len(item_keys), DIM)
    kept = [v for k, v in records if k in set(item_keys)]
    mean = np.mean(np.array(kept, dtype=np.float64), axis=0)
    last = {k: v for k, v in records}
    for row, key in enumerate(item_keys):
        expected = last.get(key, mean)
        np.testing.assert_allclose(image[row], expected, rtol=1e-6, atol=1e-6)
    assert {asin(2), asin(7)} & set(item_keys)  # the mean fill is exercised
    assert asin(3) in item_keys  # the repeated record is exercised

    # text rows: the encoder of the recipe's sentence of each item (item 4 has no metadata)
    text = np.load(folder / "text_feat.npy")
    numbers = [int(k[1:]) for k in item_keys]
    sentences = [expected_sentence(None if n == 4 else n) for n in numbers]
    np.testing.assert_array_equal(text, fake_encoder(sentences))
    assert 4 in numbers and any(n % 5 == 1 for n in numbers) and any(n % 11 == 3 for n in numbers)

    # the card, and the dataset read back through the validating reader
    card = load_card("toy", out.cards_dir)
    assert card.expected == {"users": len(user_keys), "items": len(item_keys),
                             "interactions": len(rows)}
    assert [(m.name, m.file, m.dim) for m in card.modalities] == [
        ("image", "image_feat.npy", DIM), ("text", "text_feat.npy", 4)]
    assert "prepare amazon --category Toy_Category" in card.source
    assert data.num_users == len(user_keys) and data.num_items == len(item_keys)
    assert data.train.size(1) + data.valid.size(1) + data.test.size(1) == len(rows)


def test_split_depends_on_the_seed_only(tmp_path, raw_2014):
    raw, _, _ = raw_2014
    labels = {}
    for run, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = output(tmp_path / run)
        prepare_amazon(raw, CAT, out, split=SplitSettings(seed=seed),
                       encoders=EncoderSettings(progress=False))
        labels[run] = [r[4] for r in read_inter_rows(out.folder / "toy.inter")[1]]
    assert labels["a"] == labels["b"] and labels["a"] != labels["c"]


def test_ratings_csv_gives_the_same_dataset(tmp_path, raw_2014):
    raw, events, _ = raw_2014
    csv_raw = tmp_path / "raw_csv"
    csv_raw.mkdir()
    (csv_raw / f"ratings_{CAT}.csv").write_text(
        "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in events))
    for name in (f"meta_{CAT}.json.gz", f"image_features_{CAT}.b"):
        (csv_raw / name).write_bytes((raw / name).read_bytes())
    a, b = output(tmp_path / "a"), output(tmp_path / "b")
    prepare_amazon(raw, CAT, a, encoders=EncoderSettings(progress=False))
    prepare_amazon(csv_raw, CAT, b, encoders=EncoderSettings(progress=False))
    for name in ("toy.inter", "u_id_mapping.tsv", "i_id_mapping.tsv"):
        assert (a.folder / name).read_text() == (b.folder / name).read_text()


def test_existing_card_is_kept_and_checked(tmp_path, raw_2014):
    raw, _, _ = raw_2014
    out = output(tmp_path)
    out.cards_dir.mkdir(parents=True)
    (out.cards_dir / "toy.yaml").write_text(
        "inter: toy.inter\nmodalities:\n  image: image_feat.npy\n  text: text_feat.npy\n"
        "expected: {users: 3}\nsource: the prepared files\n")
    with pytest.raises(DataError, match=r"does not match its card .* \(users: card expects 3, "
                                        r"files have "):
        prepare_amazon(raw, CAT, out, encoders=EncoderSettings(progress=False))
    assert "source: the prepared files" in (out.cards_dir / "toy.yaml").read_text()


def test_refuses_to_overwrite_without_force(tmp_path, raw_2014):
    raw, _, _ = raw_2014
    out = output(tmp_path)
    prepare_amazon(raw, CAT, out, encoders=EncoderSettings(progress=False))
    with pytest.raises(DataError, match=r"would overwrite .*toy\.inter.*; remove them or pass "
                                        r"--force"):
        prepare_amazon(raw, CAT, out, encoders=EncoderSettings(progress=False))
    forced = Output(out.name, out.folder, out.cards_dir, force=True)
    prepare_amazon(raw, CAT, forced, encoders=EncoderSettings(progress=False))


# ---------------------------------------------------------------------------------------------
# The 2023 layout
# ---------------------------------------------------------------------------------------------
def test_amazon_2023_jsonl(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    events = make_events(seed=4)
    with gzip.open(raw / f"{CAT}.jsonl.gz", "wt") as f:
        for u, i, r, t in events:
            f.write(json.dumps({"rating": r, "title": "t", "text": "x", "images": [],
                                "asin": "VARIANT", "parent_asin": i, "user_id": u,
                                "timestamp": t * 1000, "helpful_vote": 0,
                                "verified_purchase": True}) + "\n")
    with open(raw / f"meta_{CAT}.jsonl", "w") as f:  # uncompressed is accepted too
        for n in range(40):
            f.write(json.dumps({"main_category": "Toys", "title": f"T{n}", "features": ["f"],
                                "description": [f"D{n}a", "D\nb"], "store": f"S{n % 3}",
                                "categories": ["C1", f"C{n % 2}"], "details": {},
                                "parent_asin": asin(n), "bought_together": None}) + "\n")
    out = output(tmp_path, "toy23")
    prepare_amazon(raw, CAT, out, encoders=EncoderSettings(progress=False))
    _, item_keys = read_mapping(out.folder / "i_id_mapping.tsv")
    header, rows = read_inter_rows(out.folder / "toy23.inter")
    assert set((_user(out, r), item_keys[int(r[1])]) for r in rows) == networkx_core(events, 5)
    assert int(rows[0][3]) >= 1_300_000_000_000  # timestamps kept as given (ms)
    text = np.load(out.folder / "text_feat.npy")
    expected = [f"T{n} S{n % 3} C1 C{n % 2} D{n}a D b" for n in (int(k[1:]) for k in item_keys)]
    np.testing.assert_array_equal(text, fake_encoder(expected))
    assert not (out.folder / "image_feat.npy").exists()
    card = load_card("toy23", out.cards_dir)
    assert [m.name for m in card.modalities] == ["text"]
    assert read_mapping(out.folder / "i_id_mapping.tsv")[0] == "parent_asin"


def _user(out: Output, row: list[str]) -> str:
    return read_mapping(out.folder / "u_id_mapping.tsv")[1][int(row[0])]


def test_sentence_recipes():
    record = {"title": "Tent", "brand": "", "categories": [["Sports & Outdoors", "Camping"],
                                                           ["X"]],
              "description": "Big\nand green"}
    assert sentence_2014(record) == "Tent   Sports & Outdoors Camping Big and green"
    assert sentence_2014({"title": "T", "brand": "B", "description": "D"}) == "T B D"
    assert sentence_2014(None) == "     "  # " " title, " ", " " brand, " ", " " description
    assert sentence_2023({"title": "T", "store": None, "categories": [],
                          "description": []}) == "T    "


# ---------------------------------------------------------------------------------------------
# Building blocks against direct computations
# ---------------------------------------------------------------------------------------------
# user and item ids drawn from the same small range: user 3 and item 3 are different nodes
_pairs = st.lists(st.tuples(st.integers(0, 14), st.integers(0, 14)), max_size=150, unique=True)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(pairs=_pairs, k=st.integers(1, 6))
def test_kcore_matches_networkx(pairs, k):
    users = np.array([p[0] for p in pairs], dtype=np.int64)
    items = np.array([p[1] for p in pairs], dtype=np.int64)
    keep = kcore_mask(users, items, k)
    expected = networkx_core(pairs, k) if k > 1 else set(pairs)
    assert {p for p, kept in zip(pairs, keep) if kept} == expected


def test_first_appearance_ids_match_a_loop():
    keys = np.random.default_rng(0).choice(["q", "b", "zz", "a", "m"], size=50)
    ids, uniques = first_appearance_ids(keys)
    seen: dict[str, int] = {}
    for key in keys:
        seen.setdefault(str(key), len(seen))
    assert ids.tolist() == [seen[str(k)] for k in keys]
    assert uniques.tolist() == list(seen)


def test_prepare_interactions_split_by_time_holds_out_the_latest():
    users = np.array(["u"] * 12 + ["v"] * 4)
    items = np.array([f"i{n}" for n in range(12)] + ["i0", "i1", "i2", "i3"])
    times = np.array([5, 3, 9, 1, 12, 7, 2, 8, 11, 4, 6, 10, 1, 4, 3, 2])
    data = prepare_interactions(RawInteractions(users=users, items=items, timestamps=times),
                                SplitSettings(kcore=0, by_time=True))
    u = data.users == 0
    order = np.argsort(times[u])
    assert data.labels[u][order].tolist() == [0] * 10 + [1, 2]  # 12 -> 10/1/1, latest is test
    v_labels = dict(zip(times[~u].tolist(), data.labels[~u].tolist()))
    assert v_labels == {1: 0, 2: 0, 3: 1, 4: 2}


# ---------------------------------------------------------------------------------------------
# Malformed raw files
# ---------------------------------------------------------------------------------------------
def test_missing_raw_files_are_listed(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError) as info:
        find_files(tmp_path / "raw", "Baby")
    msg = str(info.value)
    for name in ("reviews_Baby_5.json.gz", "ratings_Baby.csv", "meta_Baby.json.gz",
                 "image_features_Baby.b", "Baby.jsonl.gz", "meta_Baby.jsonl.gz"):
        assert name in msg


def test_2014_without_image_features_is_an_error(tmp_path, raw_2014):
    raw, _, _ = raw_2014
    (raw / f"image_features_{CAT}.b").unlink()
    with pytest.raises(DataError, match=f"lacks image_features_{CAT}.b"):
        prepare_amazon(raw, CAT, output(tmp_path), encoders=EncoderSettings(progress=False))


def test_bad_review_line_names_the_line(tmp_path, raw_2014):
    raw, events, _ = raw_2014
    path = raw / f"reviews_{CAT}_5.json.gz"
    lines = gzip.open(path, "rt").read().splitlines()
    lines[6] = lines[6][:-1]  # line 7: truncated JSON
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}, line 7: not valid JSON")):
        prepare_amazon(raw, CAT, output(tmp_path), encoders=EncoderSettings(progress=False))


def test_bad_meta_line_names_the_line(tmp_path):
    path = tmp_path / "meta.json.gz"
    with gzip.open(path, "wt") as f:
        f.write(repr(meta_record(0)) + "\n")
        f.write("{'asin': 'B000000001', 'title': __import__('os')}\n")  # not a literal
    assert list(read_meta(path, [asin(0)], "asin", literal=True, progress=False)) == [asin(0)]
    with pytest.raises(DataError, match=re.escape(f"{path}, line 2: not a Python literal")):
        read_meta(path, [asin(1)], "asin", literal=True, progress=False)


def test_truncated_image_features(tmp_path):
    path = tmp_path / "x.b"
    write_b(path, [(asin(0), np.ones(DIM))])
    with open(path, "ab") as f:
        f.write(b"B0000")
    with pytest.raises(DataError, match=re.escape(
            f"{path}: {10 + 4 * DIM + 5} bytes is not a whole number of records of 10 + 4 x "
            f"{DIM} bytes")):
        read_image_features(path, [asin(0)], dim=DIM, progress=False)


def test_image_features_for_no_item(tmp_path):
    path = tmp_path / "x.b"
    write_b(path, [(asin(0), np.ones(DIM))])
    with pytest.raises(DataError, match="none of the 1 items has a record"):
        read_image_features(path, [asin(5)], dim=DIM, progress=False)


# ---------------------------------------------------------------------------------------------
# The command line, then a training run on the prepared set
# ---------------------------------------------------------------------------------------------
def test_cli_prepare_amazon_then_train(project, raw_2014, capsys, tmp_path):
    raw, _, _ = raw_2014
    assert main(["prepare", "amazon", "--category", CAT, "--raw", str(raw)], root=project) == 0
    out = capsys.readouterr().out
    assert "prepared toy_category:" in out and "train: python run.py --dataset toy_category" in out
    assert (project / "datasets" / "toy_category" / "toy_category.inter").is_file()
    assert (project / "datasets" / "toy_category.yaml").is_file()
    data = load_dataset(load_card("toy_category", project / "datasets"),
                        project / "datasets" / "toy_category")
    assert set(data.features) == {"image", "text"}
    code = main(["--dataset", "toy_category", "--epochs", "1", "--out", str(tmp_path / "run"),
                 f"cache_dir={tmp_path / 'cache'}", "batch_size=64"], root=project)
    assert code == 0 and (tmp_path / "run" / "results.json").is_file()


def test_cli_prepare_errors_without_traceback(project, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["prepare", "amazon", "--category", "Baby", "--raw", str(tmp_path / "empty")],
                root=project)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert "reviews_Baby_5.json.gz" in err


# ---------------------------------------------------------------------------------------------
# lfm2k from a clone of its public repository
# ---------------------------------------------------------------------------------------------
ARTIST_OF = {0: 80, 1: 66, 2: 59, 3: 81, 4: 12}  # item id -> original artist id


def fake_lfm2k_clone(root: Path) -> Path:
    r"""The lfm2k files of the public repository, in its layout, with 5 items."""
    mm, het = root / "4_mmrec/data/lfm2k", root / "3_data_processing/hetrec2011-lastfm-2k"
    for folder in (mm, het / "processed_data", het / "original_data"):
        folder.mkdir(parents=True)
    rows = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2), (1, 4, 0), (1, 0, 0), (1, 1, 1),
            (1, 2, 2), (2, 3, 0), (2, 4, 1), (2, 0, 2)]
    (mm / "lfm2k.inter").write_text("userID\titemID\trating\tx_label\n" + "".join(
        f"{u}\t{i}\t1\t{x}\n" for u, i, x in rows))
    (het / "processed_data/lfm2k_og_ids.inter").write_text(
        "userID\titemID\trating\tx_label\n" + "".join(
            f"{u + 2}\t{ARTIST_OF[i]}\t1\t{x}\n" for u, i, x in rows))
    rng = np.random.default_rng(0)
    for name, dim in (("all-MiniLM-L6-v2.npy", 384), ("whisper.npy", 512), ("vggish.npy", 128)):
        np.save(mm / name, rng.standard_normal((5, dim)).astype(np.float32))
    (het / "lfm2k_text.tsv").write_text("artistID\ttext\n" + "".join(
        f"{a}\ttag{a},rock\n" for a in (12, 59, 66, 80, 81, 99)))
    (het / "original_data/artists.dat").write_text(
        "id\tname\turl\tpictureURL\n" + "".join(f"{a}\tBand {a}\thttp://x\thttp://y\n"
                                                for a in (12, 59, 66, 80, 81, 99)))
    return root


def lfm2k_output(tmp_path) -> Output:
    cards = tmp_path / "cards"
    cards.mkdir(parents=True)
    card = (Path(__file__).resolve().parents[1] / "datasets" / "lfm2k.yaml").read_text()
    (cards / "lfm2k.yaml").write_text(re.sub(r"expected: .*\n", "", card))
    return Output("lfm2k", tmp_path / "datasets" / "lfm2k", cards)


def test_prepare_lfm2k_from_the_repository_layout(tmp_path):
    from brmrs_pyg.data.prepare.lfm2k import COPIED, prepare_lfm2k

    repo = fake_lfm2k_clone(tmp_path / "clone")
    out = lfm2k_output(tmp_path)
    data = prepare_lfm2k(repo, out)
    for target, source in COPIED.items():
        assert (out.folder / target).read_bytes() == (repo / source).read_bytes(), target
    assert (out.folder / "i_id_mapping.tsv").read_text().splitlines() == (
        ["itemID\tartistID\tname"] + [f"{i}\t{a}\tBand {a}" for i, a in ARTIST_OF.items()])
    assert (data.num_users, data.num_items) == (3, 5)
    assert list(data.features) == ["text", "whisper", "vggish"]
    # the lfm2k_text card reads the prepared folder: texts joined through the item map
    from brmrs_pyg.data.cards import TextBuild
    from brmrs_pyg.data.encoders import item_texts

    build = TextBuild(texts="lfm2k_text.tsv", text=("text",), key="artistID",
                      item_map="i_id_mapping.tsv")
    assert item_texts(build, out.folder) == [f"tag{a},rock" for a in ARTIST_OF.values()]


def test_prepare_lfm2k_errors(tmp_path):
    from brmrs_pyg.data.prepare.lfm2k import OG_IDS, prepare_lfm2k

    repo = fake_lfm2k_clone(tmp_path / "clone")
    og = repo / OG_IDS
    lines = og.read_text().splitlines()
    lines[6] = lines[6].replace("\t80\t", "\t81\t")  # line 7: item 0 said to be artist 81
    og.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(
            f"{og}, line 7: item 0 is artist 81 here but 80 on an earlier line")):
        prepare_lfm2k(repo, lfm2k_output(tmp_path))
    og.unlink()
    with pytest.raises(DataError, match=f"missing {re.escape(OG_IDS)}"):
        prepare_lfm2k(repo, lfm2k_output(tmp_path / "again"))
