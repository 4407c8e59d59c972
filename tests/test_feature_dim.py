"""The opt-in ``feature_dim`` of the Baselines II models (MMGCN, GRCN, DualGNN, MGCN, LGMRec,
DRAGON): 0 (the card default) builds exactly the model of the raw features, as before the key
existed; ``k`` feeds every projection the ``k`` principal components of
:func:`~brmrs_pyg.nn.features.prepare_features` (bases cached), and leaves the models'
feature kNN graphs on the raw features; negative values are refused."""
from pathlib import Path

import pytest
import torch
import yaml

from brmrs_pyg.config import ConfigError, resolve
from brmrs_pyg.graphs import UI, GraphSpec, bipartite_adj_t, bipartite_edges, build_graph
from brmrs_pyg.graphs import interaction_matrix, knn_adjacency, knn_k_of
from brmrs_pyg.nn import features as features_module
from brmrs_pyg.nn.features import basis_cache, prepare_features
from brmrs_pyg.recommenders import Batch
from brmrs_pyg.recommenders.dragon import DRAGON
from brmrs_pyg.recommenders.dualgnn import DualGNN, UserGraph
from brmrs_pyg.recommenders.freedom import frozen_item_graph
from brmrs_pyg.recommenders.grcn import GRCN
from brmrs_pyg.recommenders.lgmrec import LGMRec
from brmrs_pyg.recommenders.mgcn import MGCN
from brmrs_pyg.recommenders.mmgcn import MMGCN
from tests.tiny_models import tiny_data

ROOT = Path(__file__).resolve().parents[1]
SPEC = GraphSpec(knn_k=2, uu_k=2)  # DualGNN and DRAGON need the user-user graph
EXTRA = {DRAGON: {"mm_weights": "m0=0.9"}}
MODELS = [MMGCN, GRCN, DualGNN, MGCN, LGMRec, DRAGON]


def params_of(cls, **overrides):
    return resolve([("test", {**EXTRA.get(cls, {}), **overrides})], cls.Params).model


def from_data(cls, data, graph, **overrides):
    torch.manual_seed(0)
    return cls.from_data(params_of(cls, **overrides), graph, data.features, embedding_dim=4)


def old_way(cls, params, graph, features, raw):
    """The model as ``from_data`` built it before ``feature_dim`` existed (the constructor
    on ``features``; ``raw``: the raw features, for the graphs that DRAGON and MGCN build
    from them), seed 0."""
    torch.manual_seed(0)
    num_users = graph["user"].num_nodes
    if cls in (MMGCN, GRCN):
        return cls(num_users, 4, features, bipartite_edges(graph)[0], params)
    if cls is DualGNN:
        return cls(num_users, 4, features, bipartite_adj_t(graph),
                   UserGraph.of(graph, "dualgnn"), params)
    if cls is DRAGON:
        return cls(num_users, 4, features, bipartite_adj_t(graph), UserGraph.of(graph, "dragon"),
                   frozen_item_graph(graph, raw, params.mm_weights), params)
    if cls is MGCN:
        item_graphs = {m: knn_adjacency(x.float(), knn_k_of(graph, m), weighted=True)
                       for m, x in raw.items()}
        return cls(num_users, 4, features, bipartite_adj_t(graph),
                   interaction_matrix(graph[UI].edge_index, num_users, graph["item"].num_nodes),
                   item_graphs, params)
    return cls(num_users, 4, features, bipartite_adj_t(graph), graph[UI].edge_index, params)


def outputs(model):
    """The training loss of a fixed batch (fixed seed for the models' sampling and dropout)
    and every branch in evaluation mode."""
    model.train()
    torch.manual_seed(3)
    loss, _ = model.loss(Batch(torch.tensor([0, 1, 3]), torch.tensor([0, 1, 5]),
                               torch.tensor([[3], [4], [2]])))
    model.eval()
    with torch.no_grad():
        branches = model.branches()
    return loss.detach(), {name: torch.cat(pair) for name, pair in branches.items()}


def assert_same(a, b):
    assert torch.equal(a[0], b[0]), (a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert torch.equal(a[1][name], b[1][name]), name


def inputs_of(model):
    """Per modality, the feature matrix the model projects and its projection's input width."""
    if isinstance(model, (MMGCN, GRCN)):
        return {m: (getattr(model.inputs, f"feat_{m}"), model.inputs.proj[m].in_features)
                for m in model.modalities}
    if isinstance(model, (DualGNN, DRAGON)):
        return {m: (getattr(model.gcn, f"feat_{m}"), model.gcn.mlp[m][0].in_features)
                for m in model.modalities}
    if isinstance(model, MGCN):
        return {m: (model.features[m].detach(), model.proj[m].in_features)
                for m in model.modalities}
    assert isinstance(model, LGMRec)
    for m in model.modalities:  # the hyperedges are scored against the same features
        assert model.hyperedges[m].size(0) == model.proj[m].size(0)
    return {m: (getattr(model, f"feat_{m}"), model.proj[m].size(0)) for m in model.modalities}


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_feature_dim_0_builds_exactly_the_raw_feature_model(cls):
    data = tiny_data()
    graph = build_graph(data, SPEC)
    model = from_data(cls, data, graph)
    assert model is not None and params_of(cls).feature_dim == 0
    for m, (x, width) in inputs_of(model).items():
        assert torch.equal(x, data.features[m]) and width == data.features[m].size(1)
    old = old_way(cls, params_of(cls), graph, data.features, data.features)
    assert_same(outputs(model), outputs(old))
    # the comparison sees the difference that centring and rescaling would make
    prepared = {m: prepare_features(x) for m, x in data.features.items()}
    changed = outputs(old_way(cls, params_of(cls), graph, prepared, data.features))
    assert not torch.equal(outputs(model)[0], changed[0])


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("dim", [2, 10])
def test_feature_dim_k_projects_k_principal_components(cls, dim):
    data = tiny_data()  # widths 3 and 4: dim=2 reduces both, dim=10 keeps every column
    graph = build_graph(data, SPEC)
    model = from_data(cls, data, graph, feature_dim=dim)
    for m, (x, width) in inputs_of(model).items():
        expected = prepare_features(data.features[m], dim)
        assert width == x.size(1) == min(dim, data.features[m].size(1))
        torch.testing.assert_close(x, expected, rtol=0, atol=0)
    # the rest of the model is the constructor's on the prepared features
    prepared = {m: prepare_features(x, dim) for m, x in data.features.items()}
    old = old_way(cls, params_of(cls, feature_dim=dim), graph, prepared, data.features)
    assert_same(outputs(model), outputs(old))
    loss, branches = outputs(model)
    assert torch.isfinite(loss) and all(torch.isfinite(b).all() for b in branches.values())


@pytest.mark.parametrize("cls", [MGCN, DRAGON], ids=lambda c: c.__name__)
def test_feature_knn_graphs_stay_on_the_raw_features(cls):
    data = tiny_data()
    graph = build_graph(data, SPEC)
    raw, reduced = from_data(cls, data, graph), from_data(cls, data, graph, feature_dim=1)
    names = ["adj_item"] if cls is DRAGON else [f"adj_item_{m}" for m in raw.modalities]
    for name in names:
        torch.testing.assert_close(getattr(reduced, name).to_dense(),
                                   getattr(raw, name).to_dense(), rtol=0, atol=0)
    # one principal component would give another graph
    one = {m: prepare_features(x, 1) for m, x in data.features.items()}
    other = old_way(cls, params_of(cls, feature_dim=1), graph, one, one)
    assert any(not torch.equal(getattr(other, n).to_dense(), getattr(raw, n).to_dense())
               for n in names)


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_bases_come_from_the_cache_on_a_second_build(cls, tmp_path, monkeypatch):
    data = tiny_data()
    graph = build_graph(data, SPEC)
    with basis_cache(tmp_path):
        first = inputs_of(from_data(cls, data, graph, feature_dim=2))
    assert len(list((tmp_path / "bases").glob("*.pt"))) == len(data.features)

    def no_eigh(*args):
        raise AssertionError("basis computed again instead of read from the cache")

    monkeypatch.setattr(features_module, "principal_basis", no_eigh)
    with basis_cache(tmp_path):
        second = inputs_of(from_data(cls, data, graph, feature_dim=2))
    for m in first:
        assert torch.equal(first[m][0], second[m][0])
    with pytest.raises(AssertionError, match="computed again"):
        from_data(cls, data, graph, feature_dim=2)  # outside the block: no cache


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_negative_feature_dim_is_refused_and_cards_keep_the_raw_features(cls):
    with pytest.raises(ConfigError, match="feature_dim"):
        params_of(cls, feature_dim=-1)
    card = yaml.safe_load((ROOT / "models" / f"{cls.__name__.lower()}.yaml").read_text())
    assert card["defaults"]["feature_dim"] == 0
