"""The cold-start item protocol (split=cold_items): the split, what training may see of the
cold items, how models represent them, and a run end to end."""
import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brmrs_pyg import pipeline
from brmrs_pyg.cli import main
from brmrs_pyg.config import ConfigError, resolve
from brmrs_pyg.data.coldstart import ColdItems, cold_item_split, draw_cold_items
from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.experiments.coldstart import cold_popularity, feature_knn_scorer
from brmrs_pyg.experiments.coldstart import main as coldstart_main
from brmrs_pyg.graphs import UI, GraphSpec, build_graph, knn_edge_type
from brmrs_pyg.recommenders import MODELS
from brmrs_pyg.recommenders.base import Batch
from brmrs_pyg.sampling import SubsetPairIndex, sample_negatives
from tests.tiny_models import build_model, tiny_data

CPU = torch.device("cpu")
#: the item-item kNN graphs and a user-user graph, so every model can be built
SPEC = GraphSpec(knn_k=2, uu_k=2)


def random_data(num_users=6, num_items=12, seed=0):
    """Every user has 6 items: 4 train, 1 valid, 1 test."""
    gen = torch.Generator().manual_seed(seed)
    users, items = [], []
    for u in range(num_users):
        users += [u] * 6
        items += torch.randperm(num_items, generator=gen)[:6].tolist()
    edges, labels = torch.tensor([users, items]), torch.tensor([0, 0, 0, 0, 1, 2] * num_users)
    features = {"text": torch.randn(num_items, 3, generator=gen),
                "image": torch.randn(num_items, 4, generator=gen)}
    return InteractionData("r", num_users, num_items, *(edges[:, labels == k] for k in range(3)),
                           features)


def cold_tiny_data():
    """The model tests' tiny set plus items 6 (valid) and 7 (test), cold, and user 5, whose
    only interactions are with them (a cold user)."""
    base = tiny_data()
    gen = torch.Generator().manual_seed(1)
    features = {m: torch.cat([x, torch.randn(2, x.size(1), generator=gen)])
                for m, x in base.features.items()}
    return InteractionData("cold", 6, 8, base.train, torch.tensor([[0, 1, 5], [6, 6, 6]]),
                           torch.tensor([[2, 5], [7, 7]]), features,
                           cold=ColdItems(valid=torch.tensor([6]), test=torch.tensor([7])))


def pairs(edges):
    return sorted(map(tuple, edges.T.tolist()))


def test_draw_is_deterministic_disjoint_and_sized():
    a = draw_cold_items(100, 0.2, seed=7)
    assert torch.equal(a.valid, draw_cold_items(100, 0.2, seed=7).valid)
    assert a.valid.numel() == 10 and a.test.numel() == 10
    assert not set(a.valid.tolist()) & set(a.test.tolist())
    assert a.valid.tolist() == sorted(a.valid.tolist())
    assert set(draw_cold_items(100, 0.2, seed=8).test.tolist()) != set(a.test.tolist())
    # NumPy's PCG64 permutation, the same on every platform: pinned
    cold = draw_cold_items(10, 0.4, seed=0)
    assert (cold.valid.tolist(), cold.test.tolist()) == ([4, 6], [2, 7])
    assert cold.mask(10).nonzero().view(-1).tolist() == [2, 4, 6, 7]


def test_split_moves_every_interaction_of_a_cold_item_and_keeps_the_features():
    data = random_data()
    split = cold_item_split(data, 0.34, seed=3)
    cold = split.cold
    assert (cold.valid.tolist(), cold.test.tolist()) == ([7, 11], [2, 10])
    everything = torch.cat([data.train, data.valid, data.test], 1)
    assert pairs(torch.cat([split.train, split.valid, split.test], 1)) == pairs(everything)
    assert not cold.mask(12)[split.train[1]].any()
    for name in ("valid", "test"):
        of_split = torch.isin(everything[1], cold.of(name))
        assert pairs(split.split(name)) == pairs(everything[:, of_split])
    # the warm items' given valid and test interactions are training interactions now
    warm_heldout = torch.cat([data.valid, data.test], 1)
    warm_heldout = warm_heldout[:, ~cold.mask(12)[warm_heldout[1]]]
    assert set(pairs(warm_heldout)) <= set(pairs(split.train))
    assert split.features is data.features and data.cold is None
    assert cold_item_split(data, 0.34, seed=3).fingerprint() == split.fingerprint()
    assert cold_item_split(data, 0.34, seed=4).fingerprint() != split.fingerprint()
    assert data.fingerprint() != split.fingerprint()
    stats = split.stats()
    assert (stats["num_cold_valid_items"], stats["num_cold_test_items"]) == (2, 2)
    assert "num_cold_valid_items" not in data.stats()


def test_cold_users_are_counted_and_not_evaluated():
    data = cold_tiny_data()
    assert data.stats()["num_users_without_train"] == 1
    _, evaluators = pipeline.build_evaluators(data, CPU, chunk_size=4)
    assert evaluators["valid"].users.tolist() == [0, 1]  # user 5 is cold
    assert evaluators["test"].users.tolist() == [2]


def test_split_errors_name_the_fix():
    data = random_data()
    with pytest.raises(DataError, match="needs at least one valid and one test item: raise "
                                        "cold_ratio"):
        cold_item_split(data, 0.1, seed=0)
    cold = draw_cold_items(12, 0.34, seed=3)
    # nobody interacted with the valid cold items
    lonely = InteractionData("r", 6, 12, *(e[:, ~torch.isin(e[1], cold.valid)] for e in
                                           (data.train, data.valid, data.test)), data.features)
    with pytest.raises(DataError, match="leaves no valid interaction: choose another "
                                        "split_seed or cold_ratio"):
        cold_item_split(lonely, 0.34, seed=3)
    warm = (~cold.mask(12)).nonzero().view(-1)
    greedy = InteractionData("g", 2, 12, torch.stack([torch.zeros_like(warm), warm]),
                             torch.tensor([[1], [cold.valid[0]]]),
                             torch.tensor([[1], [cold.test[0]]]), data.features)
    with pytest.raises(DataError, match="user 0 has interacted with every one of the 8 warm"):
        cold_item_split(greedy, 0.34, seed=3)
    with pytest.raises(ValueError, match="already split"):
        cold_item_split(cold_item_split(data, 0.34, seed=3), 0.34, seed=3)


def test_config_keys_are_checked():
    params = MODELS.get("vbpr").Params
    run = resolve([("test", {"split": "cold_items", "cold_ratio": "0.3"})], params).run
    assert (run.split, run.cold_ratio, run.split_seed) == ("cold_items", 0.3, 0)
    with pytest.raises(ConfigError, match="split must be one of"):
        resolve([("test", {"split": "cold"})], params)
    with pytest.raises(ConfigError, match=r"cold_ratio must lie in \(0, 1\)"):
        resolve([("test", {"split": "cold_items", "cold_ratio": 1.0})], params)
    for key, value in (("cold_ratio", 0.3), ("split_seed", 2)):
        with pytest.raises(ConfigError, match=f"{key}={value} applies to split=cold_items "
                                              "only"):
            resolve([("test", {key: value})], params)


def test_no_cold_item_reaches_training_the_graph_or_the_sampler():
    data = cold_item_split(random_data(), 0.34, seed=3)
    cold = data.cold.mask(12)
    index, evaluators = pipeline.build_evaluators(data, CPU, chunk_size=4)
    assert isinstance(index, SubsetPairIndex)
    neg = sample_negatives(torch.arange(6).repeat(300), index, num_samples=3)
    assert not cold[neg].any()
    trained = set(pairs(data.train))
    free = {i for u in range(6) for i in range(12) if not cold[i] and (u, i) not in trained}
    assert set(neg.unique().tolist()) == free
    graph = build_graph(data, SPEC)
    assert not cold[graph[UI].edge_index[1]].any()
    # the feature kNN graphs do reach the cold items
    assert cold[graph[knn_edge_type("text")].edge_index].any()
    for split in ("valid", "test"):
        assert torch.equal(~evaluators[split].excluded, torch.isin(torch.arange(12),
                                                                   data.cold.of(split)))
    assert evaluators["test_all_items"].excluded is None
    assert evaluators["test_all_items"].heldout is evaluators["test"].heldout


def id_tables(model):
    """The model's item ID embedding tables (an item table, or users then items)."""
    return [p for n, p in model.named_parameters()
            if n.startswith(("item_emb", "item_gamma", "item_bias", "id_emb"))]


def perturb_cold_rows(model, num_items=8, cold=(6, 7)):
    with torch.no_grad():
        for table in id_tables(model):
            table[table.size(0) - num_items + torch.tensor(cold)] += 1.0


COLD_MODELS = [n for n in MODELS.names() if MODELS.get(n).supports_cold_items]


def build_cold(name, data):
    """Model ``name`` on ``data`` (equal modality weights where a model names modalities)."""
    cls = MODELS.get(name)
    named = "mm_weights" in {f.name for f in dataclasses.fields(cls.Params)}
    return build_model(cls, data, SPEC, **({"mm_weights": ""} if named else {}))[0]


def test_which_models_rank_cold_items():
    refusing = {n for n in MODELS.names() if not MODELS.get(n).supports_cold_items}
    assert refusing == {"bm3", "bpr", "lightgcn"}


@pytest.mark.parametrize("name", COLD_MODELS)
def test_cold_items_are_represented_from_features_alone(name):
    data = cold_tiny_data()
    model, control = build_cold(name, data), build_cold(name, data)
    model.set_cold_items(data.cold.mask(8))
    model.eval(), control.eval()
    users = torch.arange(6)
    before, unmarked = model.scorer()(users), control.scorer()(users)
    perturb_cold_rows(model), perturb_cold_rows(control)
    # only DualGNN and DRAGON have no item ID embedding at all
    assert bool(id_tables(model)) != (name in ("dualgnn", "dragon"))
    assert torch.allclose(model.scorer()(users), before)
    if id_tables(model):  # the ID rows would have counted without the marks
        assert not torch.allclose(control.scorer()(users)[:, 6:], unmarked[:, 6:])
    assert not torch.allclose(before[:, 6], before[:, 7])  # the features tell them apart
    assert torch.isfinite(before).all()


@pytest.mark.parametrize("name", COLD_MODELS)
def test_cold_id_rows_get_no_gradient(name):
    data = cold_tiny_data()
    model = build_cold(name, data)
    model.set_cold_items(data.cold.mask(8))
    model.train()
    model.start_epoch()
    index, _ = pipeline.build_evaluators(data, CPU, chunk_size=4)
    users, pos = data.train
    loss, _ = model.loss(Batch(users, pos, sample_negatives(users, index, model.num_negatives)))
    loss.backward()
    for table in id_tables(model):
        rows = table.grad[table.size(0) - 8:]
        assert (rows[6:] == 0).all() and rows[:6].abs().sum() > 0


@pytest.mark.parametrize("name", ["bpr", "lightgcn", "bm3"])
def test_id_only_models_refuse_cold_items(name, tmp_path):
    config = resolve([("test", {"model": name, "split": "cold_items",
                                "cache_dir": str(tmp_path)})], MODELS.get(name).Params)
    with pytest.raises(ConfigError, match=r"split=cold_items: model \w+ cannot rank cold "
                                          r"items, it .*; models that can: brmrs"):
        pipeline.build_model(config, cold_tiny_data(), CPU)
    with pytest.raises(ConfigError, match="cannot rank cold items"):
        build_model(MODELS.get(name), tiny_data())[0].set_cold_items(torch.zeros(6).bool())


def test_run_reports_cold_and_all_items_metrics(project, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="brmrs_pyg.pipeline"):
            assert main(["--dataset", "tiny", f"cache_dir={project / 'cache'}", "--model", "vbpr",
                     "--epochs", "2", "split=cold_items", "cold_ratio=0.3", "split_seed=1",
                     "threads=1", "--out", str(out)], root=project) == 0
    results = json.loads((out / "results.json").read_text())
    cold = draw_cold_items(40, 0.3, seed=1)  # the tiny card's 40 items
    assert results["dataset"]["num_cold_valid_items"] == cold.valid.numel() == 6
    assert results["dataset"]["num_cold_test_items"] == cold.test.numel() == 6
    assert results["config"]["split"] == "cold_items"
    assert set(results["test_all_items"]) == set(results["test"])
    # among 6 candidates every user's top 10 holds them all; among all items it does not
    assert results["test"]["recall@10"] == 1.0 > results["test_all_items"]["recall@10"]
    per_user = np.load(out / "per_user.npz")
    assert per_user["test_all_items_recall@20"].mean() == pytest.approx(
        results["test_all_items"]["recall@20"], abs=1e-6)
    log = (out / "train.log").read_text()
    assert "6 valid and 6 test cold items" in log and "0 users have no training" in log
    # the data fingerprint of last.pt covers the split: the same split resumes
    assert main(["--resume", str(out), "--epochs", "3"], root=project) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["epochs_run"] == 3 and "test_all_items" in resumed


def test_feature_knn_baseline_is_the_mean_cosine_to_the_users_items():
    data = cold_tiny_data()
    scores = feature_knn_scorer(data)(torch.arange(5))
    trained = {}
    for u, i in data.train.T.tolist():
        trained.setdefault(u, []).append(i)
    for u in range(5):
        for i in range(8):
            expected = sum(
                sum(float(F.cosine_similarity(x[i], x[j], dim=0)) for j in trained[u])
                / len(trained[u]) for x in data.features.values()) / len(data.features)
            assert float(scores[u, i]) == pytest.approx(expected, abs=1e-5)


def test_cold_popularity_baseline_reads_the_nearest_warm_items():
    data = cold_tiny_data()
    popularity = [2, 2, 2, 1, 1, 1]  # training interactions of the warm items 0..5
    scores = cold_popularity(data, k=2)
    assert scores[:6].tolist() == popularity
    for i in (6, 7):
        per_modality = []
        for x in data.features.values():
            sims = [float(F.cosine_similarity(x[i], x[j], dim=0)) for j in range(6)]
            nearest = sorted(range(6), key=lambda j: -sims[j])[:2]
            per_modality.append(sum(popularity[j] for j in nearest) / 2)
        assert float(scores[i]) == pytest.approx(sum(per_modality) / len(per_modality))


def test_baselines_command_prints_the_table(project, tmp_path, capsys):
    out = tmp_path / "baselines.json"
    assert coldstart_main(["--dataset", "tiny", f"cache_dir={project / 'cache'}",
                           "cold_ratio=0.3", "--seeds", "1,2", "--out", str(out)],
                          root=project) == 0
    assert "| feature_knn | " in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert len(saved["baselines"]["random"]) == 2 and saved["config"]["split"] == "cold_items"
    assert saved["dataset"]["num_cold_test_items"] == 6
