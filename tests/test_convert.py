r"""The converter of own data (``brmrs_pyg.data.prepare.convert``, ``run.py prepare csv``).

Inputs are written in ``tmp_path``; outputs are checked against the inputs directly: every
interaction with its raw keys, per-user held-out counts and (``--split time``) which
interactions are held out, feature rows by item key with the mean for items lacking one, and
the texts handed to the encoder.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from brmrs_pyg.cli import main
from brmrs_pyg.data import DataError, load_card, load_dataset
from brmrs_pyg.data.prepare import convert as convert_module
from brmrs_pyg.data.prepare.convert import CsvColumns, ItemSources, align_rows, convert_csv
from brmrs_pyg.data.prepare.interactions import SplitSettings
from brmrs_pyg.data.prepare.writer import EncoderSettings, Output

ENCODED: list[list[str]] = []


def fake_encoder(texts, model="", batch_size=0, device="", progress=True):
    r"""Stands in for the sentence encoder: records the texts, returns their lengths."""
    ENCODED.append(list(texts))
    return np.array([[len(t), t.count(" ") + 0.5] for t in texts], dtype=np.float32)


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    ENCODED.clear()
    monkeypatch.setattr(convert_module, "encode_texts", fake_encoder)


#: (user, item, time): user "ann" has 12 interactions, "bob" 5, "cy" 3, "dee" 2; one repeat
EVENTS = ([("ann", f"it{n}", 100 + (7 * n) % 12) for n in range(12)]
          + [("bob", f"it{n}", 50 - n) for n in (1, 3, 5, 7, 9)]
          + [("cy", "it2", 1), ("cy", "it4", 3), ("cy", "it6", 2)]
          + [("dee", "it0", 9), ("dee", "x,y", 8)]
          + [("ann", "it3", 999)])  # a repeat of (ann, it3): the first is kept


def write_inputs(tmp_path):
    inter = tmp_path / "events.csv"
    inter.write_text("who,what,when,extra\n" + "".join(
        f'{u},"{i}",{t},z\n' for u, i, t in EVENTS))
    texts = tmp_path / "texts.tsv"
    texts.write_text("what\ttitle\tbody\n" + "".join(
        f"it{n}\tTitle {n}\tBody \"{n}\"\n" for n in range(12) if n != 5) + "zzz\tnot\tused\n")
    table = tmp_path / "audio.csv"
    table.write_text("what,a,b,c\n" + "".join(
        f"it{n},{n},{n * n},{-n}\n" for n in range(12) if n not in (4, 7)) + '"x,y",1,2,3\n')
    matrix = np.arange(36, dtype=np.float64).reshape(12, 3) / 4
    np.save(tmp_path / "video.npy", matrix)
    (tmp_path / "video_keys.txt").write_text("".join(f"it{n}\n" for n in reversed(range(12))))
    return inter, texts, table, matrix


def output(tmp_path, force=False) -> Output:
    return Output(name="mine", folder=tmp_path / "data" / "mine", cards_dir=tmp_path / "cards",
                  force=force)


def mapping(path) -> list[str]:
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    assert [int(r[1]) for r in rows] == list(range(len(rows)))
    return [r[0] for r in rows]


def test_convert_csv_end_to_end(tmp_path):
    inter, texts, table, matrix = write_inputs(tmp_path)
    out = output(tmp_path)
    sources = ItemSources(texts=texts, features={"audio": table, "video": tmp_path / "video.npy"},
                          feature_keys=tmp_path / "video_keys.txt")
    data = convert_csv(inter, CsvColumns(user="who", item="what", time="when"), sources, out,
                       SplitSettings(kcore=0, by_time=True), EncoderSettings(progress=False),
                       command="python run.py prepare csv events.csv")
    users = mapping(out.folder / "u_id_mapping.tsv")
    items = mapping(out.folder / "i_id_mapping.tsv")
    assert users == ["ann", "bob", "cy", "dee"]
    assert items[:12] == [f"it{n}" for n in range(12)] and items[12] == "x,y"
    lines = (out.folder / "mine.inter").read_text().splitlines()
    assert lines[0] == "userID\titemID\ttimestamp\tx_label"
    rows = [tuple(int(v) for v in line.split("\t")) for line in lines[1:]]
    # every event once (the repeat dropped), keys and times as given
    assert [(users[u], items[i], t) for u, i, t, _ in rows] == EVENTS[:-1]
    # by time: each user's latest interactions are held out (ann 12 -> 10/1/1 ... dee 2 -> 2/0/0)
    for user, size, held in (("ann", 12, 1), ("bob", 5, 1), ("cy", 3, 1), ("dee", 2, 0)):
        mine = sorted((t, x) for u, _, t, x in rows if users[u] == user)
        assert [x for _, x in mine] == [0] * (size - 2 * held) + [1] * held + [2] * held, user

    # features, row i = item i: by key, the mean of the dataset's rows for items lacking one
    audio = np.load(out.folder / "audio_feat.npy")
    present = [n for n in range(12) if n not in (4, 7)]
    rows_by_key = {f"it{n}": [n, n * n, -n] for n in present} | {"x,y": [1, 2, 3]}
    mean = np.mean(list(rows_by_key.values()), axis=0)
    for i, key in enumerate(items):
        np.testing.assert_allclose(audio[i], rows_by_key.get(key, mean), rtol=1e-6)
    video = np.load(out.folder / "video_feat.npy")
    video_mean = matrix.mean(axis=0)  # "x,y" has no row; the 12 others have
    for i, key in enumerate(items):
        expected = matrix[11 - int(key[2:])] if key.startswith("it") else video_mean
        np.testing.assert_allclose(video[i], expected, rtol=1e-6)

    # texts: the non-key columns joined by a space, "" for items without one, in item order
    expected_texts = [f'Title {k[2:]} Body "{k[2:]}"' if k not in ("it5", "x,y") else ""
                      for k in items]
    assert ENCODED == [expected_texts]
    np.testing.assert_array_equal(np.load(out.folder / "text_feat.npy"),
                                  fake_encoder(expected_texts))

    card = load_card("mine", out.cards_dir)
    assert [(m.name, m.file, m.dim) for m in card.modalities] == [
        ("audio", "audio_feat.npy", 3), ("video", "video_feat.npy", 3),
        ("text", "text_feat.npy", 2)]
    assert card.expected == {"users": 4, "items": 13, "interactions": len(EVENTS) - 1}
    assert card.source == "converted by: python run.py prepare csv events.csv"
    assert data.num_items == 13
    assert data.train.size(1) + data.valid.size(1) + data.test.size(1) == len(EVENTS) - 1


def test_random_split_follows_mmrec_counts_and_the_seed(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {f"u{k}": n for k, n in enumerate([3, 9, 10, 15, 19, 25, 31])}
    body = "".join(f"{u}\ti{j}\n" for u, n in sizes.items() for j in rng.permutation(40)[:n])
    (tmp_path / "e.tsv").write_text("user\titem\n" + body)
    (tmp_path / "t.tsv").write_text("item\ttext\n" + "".join(f"i{j}\tt{j}\n" for j in range(40)))
    labels = {}
    for run, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = Output("mine", tmp_path / run, tmp_path / f"cards_{run}")
        convert_csv(tmp_path / "e.tsv", CsvColumns(), ItemSources(texts=tmp_path / "t.tsv"), out,
                    SplitSettings(kcore=0, seed=seed), EncoderSettings(progress=False))
        users = mapping(out.folder / "u_id_mapping.tsv")
        lines = [line.split("\t") for line in
                 (out.folder / "mine.inter").read_text().splitlines()[1:]]
        labels[run] = [int(x) for *_, x in lines]
        for user, n in sizes.items():
            mine = [int(x) for u, _, x in lines if users[int(u)] == user]
            held = int(n * 0.2) if n >= 10 else 2
            valid = held // 2
            assert (mine.count(0), mine.count(1), mine.count(2)) == (n - held, valid,
                                                                     held - valid), n
    assert labels["a"] == labels["b"] and labels["a"] != labels["c"]


def test_kcore_option(tmp_path):
    events = [(u, i) for u in "ab" for i in "xyz"] + [("c", "x"), ("a", "w")]  # 2-core drops c, w
    (tmp_path / "e.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in events))
    (tmp_path / "f.csv").write_text("item,v\nx,1\ny,2\nz,3\n")
    out = output(tmp_path)
    convert_csv(tmp_path / "e.csv", CsvColumns(), ItemSources(features={"f": tmp_path / "f.csv"}),
                out, SplitSettings(kcore=2), EncoderSettings(progress=False))
    assert mapping(out.folder / "u_id_mapping.tsv") == ["a", "b"]
    assert mapping(out.folder / "i_id_mapping.tsv") == ["x", "y", "z"]


def test_align_rows_oracle():
    keys = ["k3", "k1", "k9"]
    matrix = np.array([[3.0, 30.0], [1.0, 10.0], [9.0, 90.0]])
    out = align_rows(keys, matrix, ["k1", "k2", "k9", "k3"], "m")
    assert out.dtype == np.float32
    # k2 has no row: the mean of the rows of k1, k9 and k3
    np.testing.assert_allclose(out, [[1, 10], [13 / 3, 130 / 3], [9, 90], [3, 30]], rtol=1e-6)
    with pytest.raises(DataError, match="m: no row for any item of the dataset"):
        align_rows(keys, matrix, ["other"], "m")


def test_iso_dates_and_ratings(tmp_path):
    (tmp_path / "e.csv").write_text(
        "user,item,date,stars\nu,a,2020-01-02T00:00:00Z,4\nu,b,2020-01-01,5.5\nu,c,1577836800,1\n")
    (tmp_path / "f.csv").write_text("item,v\na,1\nb,2\nc,3\n")
    out = output(tmp_path)
    convert_csv(tmp_path / "e.csv", CsvColumns(time="date", rating="stars"),
                ItemSources(features={"f": tmp_path / "f.csv"}), out, SplitSettings(kcore=0),
                EncoderSettings(progress=False))
    lines = (out.folder / "mine.inter").read_text().splitlines()
    assert lines[0] == "userID\titemID\trating\ttimestamp\tx_label"
    assert [line.split("\t")[2:4] for line in lines[1:]] == [
        ["4.0", "1577923200"], ["5.5", "1577836800"], ["1.0", "1577836800"]]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_needs_a_modality(tmp_path):
    inter, *_ = write_inputs(tmp_path)
    with pytest.raises(DataError, match="needs at least one modality"):
        convert_csv(inter, CsvColumns(user="who", item="what"), ItemSources(), output(tmp_path))


def test_unknown_column_lists_the_header(tmp_path):
    inter, texts, *_ = write_inputs(tmp_path)
    with pytest.raises(DataError, match=re.escape(
            f"{inter}: no column 'user'; the header has 'who', 'what', 'when', 'extra'")):
        convert_csv(inter, CsvColumns(), ItemSources(texts=texts), output(tmp_path))


def test_bad_timestamp_names_line_and_column(tmp_path):
    (tmp_path / "e.csv").write_text("user,item,t\nu,a,1\nu,b,yesterday\n")
    (tmp_path / "f.csv").write_text("item,v\na,1\n")
    with pytest.raises(DataError, match=re.escape(
            f"{tmp_path / 'e.csv'}, line 3, column t: cannot read 'yesterday'")):
        convert_csv(tmp_path / "e.csv", CsvColumns(time="t"),
                    ItemSources(features={"f": tmp_path / "f.csv"}), output(tmp_path))


def test_npy_feature_needs_keys(tmp_path):
    inter, _, _, _ = write_inputs(tmp_path)
    with pytest.raises(DataError, match="needs --feature-keys FILE"):
        convert_csv(inter, CsvColumns(user="who", item="what"),
                    ItemSources(features={"video": tmp_path / "video.npy"}), output(tmp_path))


def test_refuses_to_overwrite_the_card_without_force(tmp_path):
    inter, texts, *_ = write_inputs(tmp_path)
    args = (inter, CsvColumns(user="who", item="what"), ItemSources(texts=texts))
    convert_csv(*args, output(tmp_path), encoders=EncoderSettings(progress=False))
    with pytest.raises(DataError, match="would overwrite .*mine.inter.*mine.yaml"):
        convert_csv(*args, output(tmp_path), encoders=EncoderSettings(progress=False))
    convert_csv(*args, output(tmp_path, force=True), encoders=EncoderSettings(progress=False))


# ---------------------------------------------------------------------------------------------
# The command line, then a training run on the converted set
# ---------------------------------------------------------------------------------------------
def test_cli_prepare_csv_then_train(project, tmp_path, capsys):
    inter, texts, table, _ = write_inputs(tmp_path)
    code = main(["prepare", "csv", str(inter), "--name", "mine", "--user", "who", "--item",
                 "what", "--time", "when", "--split", "time", "--texts", str(texts),
                 "--text-columns", "title", "--feature", f"audio={table}"], root=project)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "prepared mine: 4 users, 13 items, 22 interactions" in out
    card = load_card("mine", project / "datasets")
    assert card.source.startswith("converted by: python run.py prepare csv ")
    assert "--text-columns title" in card.source
    assert ENCODED[0][0] == "Title 0"  # only the chosen text column
    data = load_dataset(card, project / "datasets" / "mine")
    assert set(data.features) == {"audio", "text"}
    code = main(["--dataset", "mine", "--epochs", "1", "--out", str(tmp_path / "run"),
                 f"cache_dir={tmp_path / 'cache'}"], root=project)
    assert code == 0 and (tmp_path / "run" / "results.json").is_file()


def test_cli_bad_feature_argument(project, tmp_path, capsys):
    inter, *_ = write_inputs(tmp_path)
    code = main(["prepare", "csv", str(inter), "--name", "m", "--feature", "audio"],
                root=project)
    err = capsys.readouterr().err
    assert code == 2 and "error: --feature expects NAME=FILE, got 'audio'" in err
    assert "Traceback" not in err
