"""A data folder is the user's: a run reads it and never writes into it. MMRec-layout folders
run without a card; a folder of interactions only runs the models that use no features."""
import hashlib
import json

import numpy as np
import pytest

from brmrs_pyg.cli import main
from brmrs_pyg.data import DataError, load_card
from brmrs_pyg.data.folder import dataset_card, infer_card
from brmrs_pyg.pipeline import INFERRED_CARD

FAST = ["--epochs", "1", "batch_size=256", "threads=1", "checkpoint_every=0"]


def snapshot(folder):
    r"""Every file below ``folder`` with the SHA-256 of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_inter(path, users=30, items=20, seed=0):
    r"""A valid ``.inter`` file: every user has 2 train, 1 valid and 1 test item."""
    rng = np.random.default_rng(seed)
    rows = ["userID\titemID\trating\ttimestamp\tx_label"]
    for u in range(users):
        picks = rng.choice(items, size=4, replace=False)
        if u < items:  # every item id occurs, so the ids are contiguous
            picks[0] = u if u not in picks[1:] else picks[0]
        for item, label in zip(picks, (0, 0, 1, 2)):
            rows.append(f"{u}\t{item}\t5\t{1000 + u}\t{label}")
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture
def mmrec_folder(tmp_path):
    r"""A user's MMRec folder, with the files MMRec keeps beside the data."""
    folder = tmp_path / "user data"
    folder.mkdir()
    write_inter(folder / "tunes.inter")
    rng = np.random.default_rng(1)
    np.save(folder / "text_feat.npy", rng.normal(size=(20, 6)).astype(np.float32))
    np.save(folder / "image_feat.npy", rng.normal(size=(20, 9)))
    np.save(folder / "audio.npy", rng.normal(size=(20, 5)).astype(np.float32))
    np.save(folder / "user_emb.npy", rng.normal(size=(30, 4)).astype(np.float32))
    np.save(folder / "user_graph_dict.npy", np.array({0: [1, 2]}, dtype=object),
            allow_pickle=True)
    (folder / "mm_adj_freedomdsp_10_1.pt").write_bytes(b"not ours")
    (folder / "i_id_mapping.csv").write_text("asin\titemID\n")
    return folder


def test_infer_card_reads_the_mmrec_layout(mmrec_folder):
    card = infer_card(mmrec_folder)
    assert card.name == "tunes" and card.inter == "tunes.inter"
    assert [(m.name, m.file, m.dim) for m in card.modalities] == [
        ("audio", "audio.npy", 5), ("image", "image_feat.npy", 9), ("text", "text_feat.npy", 6)]
    assert card.default_modalities == ("audio", "image", "text")
    notes = "\n".join(card.notes)
    for name, why in (("user_graph_dict.npy", "user-user graph"), ("mm_adj_", "PyTorch cache"),
                      ("i_id_mapping.csv", "raw item keys"), ("user_emb.npy", "30 x 4 matrix")):
        assert name in notes and why in notes, (name, notes)


def test_inferred_card_round_trips_through_yaml(mmrec_folder, tmp_path):
    card = infer_card(mmrec_folder)
    (tmp_path / "tunes.yaml").write_text(card.to_yaml())
    again = load_card("tunes", tmp_path)
    assert again.modalities == card.modalities and again.inter == card.inter
    assert again.default_modalities == card.default_modalities


def test_folder_with_several_inter_files(mmrec_folder, tmp_path):
    write_inter(mmrec_folder / "other.inter", seed=3)
    with pytest.raises(DataError, match=r"2 \.inter files .*--dataset NAME"):
        infer_card(mmrec_folder)
    assert infer_card(mmrec_folder, "other").inter == "other.inter"
    assert dataset_card("other", mmrec_folder, tmp_path / "no cards").inter == "other.inter"


def test_folder_without_inter_file_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \*\.inter file"):
        dataset_card(None, tmp_path / "empty", tmp_path)
    with pytest.raises(DataError, match="--data-dir .*nowhere: no such folder"):
        dataset_card(None, tmp_path / "nowhere", tmp_path)


def test_a_card_of_the_same_name_wins(mmrec_folder, tmp_path):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "tunes.yaml").write_text("inter: tunes.inter\nmodalities: {text: text_feat.npy}\n"
                                      "source: a card\n")
    card = dataset_card(None, mmrec_folder, cards)
    assert card.inferred_from is None and [m.name for m in card.modalities] == ["text"]


def test_bad_feat_file_is_an_error_not_skipped(mmrec_folder, project, capsys):
    np.save(mmrec_folder / "text_feat.npy", np.array([{"a": 1}], dtype=object),
            allow_pickle=True)
    code = main(["--data-dir", str(mmrec_folder), "--model", "brmrs", *FAST,
                 f"cache_dir={project / 'cache'}"], root=project)
    err = capsys.readouterr().err
    assert code == 2 and "text_feat.npy" in err and "Python objects" in err


def test_data_dir_alone_trains_on_the_folder_and_writes_nothing_there(
        mmrec_folder, project, tmp_path, capsys):
    # the reported bug: the default synthetic dataset was generated into the folder
    before = snapshot(mmrec_folder)
    out = tmp_path / "run"
    code = main(["--data-dir", str(mmrec_folder), "--model", "brmrs", "--out", str(out),
                 *FAST, f"cache_dir={project / 'cache'}"], root=project)
    assert code == 0, capsys.readouterr().err
    assert snapshot(mmrec_folder) == before
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["name"] == "tunes" and results["dataset"]["num_users"] == 30
    assert results["dataset"]["modalities"] == {"audio": 5, "image": 9, "text": 6}
    assert results["config"]["dataset"] == "tunes"
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "tunes.yaml").write_text((out / INFERRED_CARD).read_text())
    assert load_card("tunes", tmp_path / "cards").modalities == infer_card(
        mmrec_folder).modalities
    assert not (project / "datasets" / "tunes").exists()
    assert not (project / "datasets" / "synthetic").exists()


def test_resume_of_a_run_on_an_inferred_card(mmrec_folder, project, tmp_path):
    out = tmp_path / "run"
    args = ["--data-dir", str(mmrec_folder), "--model", "lightgcn", "batch_size=256",
            "threads=1", "checkpoint_every=1", "patience=100",
            f"cache_dir={project / 'cache'}"]
    assert main([*args, "--epochs", "2", "--out", str(out)], root=project) == 0
    assert main(["--resume", str(out), "--epochs", "3"], root=project) == 0
    resumed = json.loads((out / "results.json").read_text())
    full = tmp_path / "full"
    assert main([*args, "--epochs", "3", "--out", str(full)], root=project) == 0
    straight = json.loads((full / "results.json").read_text())
    assert resumed["test"] == straight["test"] and resumed["epochs_run"] == 3


def test_generator_never_writes_into_a_foreign_folder(mmrec_folder, project, capsys):
    before = snapshot(mmrec_folder)
    code = main(["--dataset", "tiny", "--data-dir", str(mmrec_folder), *FAST,
                 f"cache_dir={project / 'cache'}"], root=project)
    err = capsys.readouterr().err
    assert code == 2 and "did not write" in err and "Traceback" not in err
    assert snapshot(mmrec_folder) == before


def test_generator_writes_into_an_empty_folder_and_reuses_its_own(project, tmp_path):
    folder = tmp_path / "gen"
    folder.mkdir()
    args = ["--dataset", "tiny", "--data-dir", str(folder), *FAST,
            f"cache_dir={project / 'cache'}"]
    assert main([*args, "--out", str(tmp_path / "a")], root=project) == 0
    written = snapshot(folder)
    assert "generator.json" in written and "tiny.inter" in written
    assert main([*args, "--out", str(tmp_path / "b")], root=project) == 0
    assert snapshot(folder) == written
    # other settings regenerate its own files, and only those
    (folder / "notes.txt").write_text("mine")
    assert main([*args, "generator=seed=4", "--out", str(tmp_path / "c")], root=project) == 0
    assert (folder / "notes.txt").read_text() == "mine"
    assert snapshot(folder)["tiny.inter"] != written["tiny.inter"]


def test_interactions_only_folder(tmp_path, project, capsys):
    folder = tmp_path / "plain"
    folder.mkdir()
    write_inter(folder / "clicks.inter")
    base = ["--data-dir", str(folder), *FAST, f"cache_dir={project / 'cache'}"]
    for model in ("lightgcn", "bpr"):
        assert main([*base, "--model", model, "--out", str(tmp_path / model)],
                    root=project) == 0
    assert main([*base, "--model", "vbpr", "--out", str(tmp_path / "vbpr")], root=project) == 2
    err = capsys.readouterr().err
    assert "model vbpr needs item features" in err and "clicks" in err
    assert "bpr, lightgcn" in err and not (tmp_path / "vbpr").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["clicks.inter"]


def test_a_card_with_no_modalities_runs_lightgcn(tmp_path, project):
    folder = tmp_path / "plain"
    folder.mkdir()
    write_inter(folder / "plain.inter")
    (project / "datasets" / "plain.yaml").write_text(
        "inter: plain.inter\nmodalities: {}\nsource: the tests\n")
    assert main(["--dataset", "plain", "--data-dir", str(folder), "--model", "lightgcn",
                 "--out", str(tmp_path / "run"), *FAST, f"cache_dir={project / 'cache'}"],
                root=project) == 0


def test_lightgcn_runs_on_a_carded_folder_without_its_feature_files(tmp_path, project):
    # the Baby card names image and text features; LightGCN needs only baby.inter
    folder = tmp_path / "baby"
    folder.mkdir()
    write_inter(folder / "baby.inter")
    (project / "datasets" / "baby.yaml").write_text(
        (project / "datasets" / "baby.yaml").read_text().split("expected:")[0]
        + "source: the tests\n")
    assert main(["--dataset", "baby", "--data-dir", str(folder), "--model", "lightgcn",
                 "--out", str(tmp_path / "run"), *FAST, f"cache_dir={project / 'cache'}"],
                root=project) == 0


def test_out_never_lands_among_a_users_files(mmrec_folder, project, capsys):
    before = snapshot(mmrec_folder)
    code = main(["--dataset", "tiny", "--out", str(mmrec_folder), *FAST,
                 f"cache_dir={project / 'cache'}"], root=project)
    assert code == 2 and "holds files that are not a run's" in capsys.readouterr().err
    assert snapshot(mmrec_folder) == before


def test_ctrl_c_outside_training_is_one_line(project, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("brmrs_pyg.pipeline.load_or_build_graph", interrupted)
    code = main(["--dataset", "tiny", *FAST, f"cache_dir={project / 'cache'}"], root=project)
    err = capsys.readouterr().err
    assert code == 130 and "interrupted (Ctrl-C) outside training" in err
    assert "Traceback" not in err


def test_own_version_of_a_carded_dataset_runs_under_another_name(tmp_path, project, capsys):
    # a folder named like a card (baby.inter) whose sizes differ from the card's: the card's
    # check explains, and another name reads the folder without the card
    folder = tmp_path / "mybaby"
    folder.mkdir()
    write_inter(folder / "baby.inter")
    np.save(folder / "image_feat.npy", np.ones((20, 4096), dtype=np.float32))
    np.save(folder / "text_feat.npy", np.ones((20, 384), dtype=np.float32))
    base = ["--data-dir", str(folder), "--model", "lightgcn", *FAST,
            f"cache_dir={project / 'cache'}"]
    assert main([*base, "--out", str(tmp_path / "a")], root=project) == 2
    assert "--dataset my_baby --data-dir DIR" in capsys.readouterr().err
    assert main([*base, "--dataset", "my_baby", "--out", str(tmp_path / "b")],
                root=project) == 0
