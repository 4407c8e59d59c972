import json

import numpy as np
import pytest
import torch

from brmrs_pyg.cli import main
from brmrs_pyg.recommenders import MODELS


def run_cli(project, *args):
    return main(["--dataset", "tiny", f"cache_dir={project / 'cache'}", *args], root=project)


def test_unknown_key_is_an_error_listing_valid_keys(project, capsys):
    assert run_cli(project, "--model", "lightgcn", "num_layer=2") == 2
    err = capsys.readouterr().err
    assert "unknown key 'num_layer'" in err and "num_layers" in err and "batch_size" in err
    assert "Traceback" not in err


def test_unknown_model_lists_models(project, capsys):
    assert run_cli(project, "--model", "lightgnc") == 2
    err = capsys.readouterr().err
    assert "unknown model 'lightgnc'" in err and "bpr" in err and "lightgcn" in err


def test_not_key_value(project, capsys):
    assert run_cli(project, "lr") == 2
    assert "expected key=value" in capsys.readouterr().err


def test_help_documents_every_key(project, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"], root=project)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for key in ("--dataset", "--data-dir", "knn_k", "save_topk", "num_layers", "reg_weight",
                "eval_batch_size", "modalities", "backbone"):
        assert key in out


def test_missing_real_dataset_message(project, capsys):
    code = main(["--dataset", "sports", "--model", "brmrs", "--data-dir",
                 str(project / "nowhere")], root=project)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for text in ("sports.inter", "image_feat.npy", "text_feat.npy", "18357 x 4096",
                 "enoche/MMRec", "--data-dir", "nowhere/ (no such folder)"):
        assert text in err
    assert not (project / "runs").exists()  # a run that fails on its inputs leaves nothing


@pytest.mark.parametrize("model", ["lightgcn", "bpr"])
def test_end_to_end_tiny_run(project, model, tmp_path):
    out = tmp_path / "out"
    code = run_cli(project, "--model", model, "--epochs", "3", "--out", str(out),
                   "save_topk=true", "batch_size=64", "patience=2")
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["model"] == model and res["config"]["batch_size"] == 64
    assert 1 <= res["best_epoch"] <= 3 and res["epochs_run"] <= 3
    for split in ("valid", "test"):
        assert set(res[split]) == {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map")
                                   for k in (5, 10, 20, 50)}
        assert all(0.0 <= v <= 1.0 for v in res[split].values())
    assert res["dataset"]["num_users"] == 60 and res["dataset"]["num_items"] == 40
    assert res["timings"]["seconds_per_epoch"] > 0 and "version" in res
    assert [h["epoch"] for h in res["history"]] == list(range(1, res["epochs_run"] + 1))
    assert res["history"][res["best_epoch"] - 1]["recall@20"] == res["valid"]["recall@20"]
    ckpt = torch.load(out / "best.pt", weights_only=False)
    assert ckpt["epoch"] == res["best_epoch"] and ckpt["config"] == res["config"]
    train = {}
    for line in (project / "datasets" / "tiny" / "tiny.inter").read_text().splitlines()[1:]:
        u, i, x = map(int, line.split("\t"))
        if x == 0:
            train.setdefault(u, set()).add(i)
    lines = (out / "topk_test.tsv").read_text().splitlines()
    assert len(lines) > 0
    for line in lines:  # 40 items < 50: each list holds every item but the user's training ones
        user, items = line.split("\t")
        listed = [int(i) for i in items.split(",")]
        assert len(listed) == len(set(listed)) == 40 - len(train[int(user)])
        assert not set(listed) & train[int(user)]


def test_topk_file_matches_test_metrics(project, tmp_path):
    out = tmp_path / "out"
    assert run_cli(project, "--epochs", "2", "--out", str(out), "save_topk=true") == 0
    res = json.loads((out / "results.json").read_text())
    inter = (project / "datasets" / "tiny" / "tiny.inter").read_text().splitlines()[1:]
    test = {}
    for line in inter:
        u, i, x = map(int, line.split("\t"))
        if x == 2:
            test.setdefault(u, set()).add(i)
    recalls = []
    for line in (out / "topk_test.tsv").read_text().splitlines():
        user, items = line.split("\t")
        top = [int(i) for i in items.split(",")][:20]
        recalls.append(len(test[int(user)] & set(top)) / len(test[int(user)]))
    assert sum(recalls) / len(recalls) == pytest.approx(res["test"]["recall@20"], abs=1e-6)
    # per_user.npz: every test user's recall@20 is the one of its top list, for both splits
    # the per-user values average to results.json's metrics
    per_user = np.load(out / "per_user.npz")
    by_user = dict(zip(per_user["test_users"].tolist(), per_user["test_recall@20"].tolist()))
    assert sorted(by_user) == sorted(test)
    for line in (out / "topk_test.tsv").read_text().splitlines():
        user, items = line.split("\t")
        top, held = {int(i) for i in items.split(",")[:20]}, test[int(user)]
        assert by_user[int(user)] == pytest.approx(len(held & top) / len(held))
    for split in ("valid", "test"):
        for key in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
            values = per_user[f"{split}_{key}"]
            assert values.shape == per_user[f"{split}_users"].shape
            assert values.mean() == pytest.approx(res[split][key], abs=1e-6)


def test_docs_document_every_key():
    from conftest import REPO

    from brmrs_pyg.config import RunConfig, describe_keys

    doc = (REPO / "docs" / "configuration.md").read_text()
    keys = [k for k, *_ in describe_keys(RunConfig)]
    keys += [k for name in MODELS.names() for k, *_ in describe_keys(MODELS.get(name).Params)]
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert not missing, f"docs/configuration.md lacks config keys {missing}"
    for name in MODELS.names():
        assert f"`{name}`" in doc


def test_unknown_backbone_lists_backbones(project, capsys):
    assert run_cli(project, "--epochs", "1", "backbone=gat2") == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'gat2'; choose one of: gat, gcn, lightgcn, sage" in err and "Traceback" not in err


def test_same_seed_same_metrics(project, tmp_path):
    results = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        out = tmp_path / name
        assert run_cli(project, "--epochs", "3", "--seed", seed, "--out", str(out)) == 0
        results.append(json.loads((out / "results.json").read_text()))
    assert results[0]["test"] == results[1]["test"] and results[0]["valid"] == results[1]["valid"]
    assert results[0]["test"] != results[2]["test"]
    # the whole results.json is reproduced, losses and history bit for bit; only the
    # timings and the output folder differ
    same = [{k: v for k, v in r.items() if k not in ("timings", "config")} for r in results]
    assert same[0] == same[1]
    assert ({k: v for k, v in results[0]["config"].items() if k != "out"}
            == {k: v for k, v in results[1]["config"].items() if k != "out"})


def test_deterministic_switch_gives_the_same_results_on_cpu(project, tmp_path):
    import torch

    results = []
    for name, flag in (("plain", "false"), ("det", "true")):
        out = tmp_path / name
        assert run_cli(project, "--epochs", "2", "--out", str(out), f"deterministic={flag}") == 0
        results.append(json.loads((out / "results.json").read_text()))
    assert results[0]["test"] == results[1]["test"]
    assert results[1]["config"]["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


def test_brmrs_run_reports_branches_and_loss_terms(project, tmp_path):
    out = tmp_path / "brmrs"
    assert run_cli(project, "--model", "brmrs", "--epochs", "2", "--out", str(out),
                   "uu_k=3", "ii_recipe=mixed") == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["test_branches"]) == {"text", "image", "fused"}
    for metrics in results["test_branches"].values():
        assert set(metrics) == set(results["test"])
    assert {"bpr", "chns", "syn", "reg"} <= set(results["last_epoch_losses"])
    assert results["config"]["uu_k"] == 3 and results["config"]["ii_recipe"] == "mixed"


def test_graph_settings_a_model_would_ignore_are_refused(project, capsys):
    assert run_cli(project, "--model", "lightgcn", "--epochs", "1", "uu_k=5") == 2
    err = capsys.readouterr().err
    assert "does not use a user-user graph" in err and "Traceback" not in err
