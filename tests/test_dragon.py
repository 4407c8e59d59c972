"""DRAGON: the frozen weighted item-item graph, the homogeneous-graph refinements and the
attentive concatenation against dense references, the loss, the plug-in and validation (the
pipeline path is tested with DualGNN's, in test_dualgnn.py)."""
import pytest
import torch

from brmrs_pyg.config import ConfigError
from brmrs_pyg.graphs import UU, GraphSpec
from brmrs_pyg.recommenders import MODELS, Batch
from brmrs_pyg.recommenders.branched import FUSED
from brmrs_pyg.recommenders.dragon import DRAGON, DRAGONParams
from tests.test_dualgnn import dense_modality_gcn, dense_user_graph
from tests.tiny_models import build_model, tiny_data

UU_SPEC = GraphSpec(knn_k=2, uu_k=2)


def build(data=None, spec=UU_SPEC, **overrides):
    overrides.setdefault("mm_weights", "m0=0.9")
    return build_model(DRAGON, data, spec, **overrides)


def dense_knn_graph(x, k):
    """D^-1/2 A D^-1/2 of the binary top-k cosine graph, each item among its own candidates."""
    xn = x / x.norm(dim=1, keepdim=True)
    a = torch.zeros(x.size(0), x.size(0))
    a.scatter_(1, (xn @ xn.T).topk(k, dim=1).indices, 1.0)  # row i: whom item i aggregates
    d = a.sum(1).pow(-0.5)
    return d[:, None] * a * d[None, :]


def test_item_graph_is_the_weighted_sum_of_knn_graphs_and_frozen():
    data = tiny_data()
    model, _ = build(data, mm_weights="m0=0.7,m1=0.3")
    expected = (0.7 * dense_knn_graph(data.features["m0"], 2)
                + 0.3 * dense_knn_graph(data.features["m1"], 2))
    torch.testing.assert_close(model.adj_item.to_dense(), expected)
    before = model.adj_item.to_dense().clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model.loss(Batch(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([[3], [4]])))[
        0].backward()
    opt.step()
    torch.testing.assert_close(model.adj_item.to_dense(), before)
    assert not any(p is model.adj_item for p in model.parameters())


def dense_final(model, data, graph, ii_layers=1, weights=(0.9, 0.1)):
    reps = dense_modality_gcn(model.gcn, data)
    s = (weights[0] * dense_knn_graph(data.features["m0"], 2)
         + weights[1] * dense_knn_graph(data.features["m1"], 2))
    w = dense_user_graph(graph[UU], data.num_users)
    users = torch.cat([model.alpha[:, k, None] * reps[m][0] for k, m in enumerate(["m0", "m1"])],
                      1)
    items = torch.cat([reps["m0"][1], reps["m1"][1]], 1)
    return users + w @ users, items + torch.linalg.matrix_power(s, ii_layers) @ items


@pytest.mark.parametrize("ii_layers", [1, 2])
def test_forward_matches_dense_reference(ii_layers):
    data = tiny_data()
    model, graph = build(data, ii_layers=ii_layers)
    user, item = dense_final(model, data, graph, ii_layers)
    model.eval()
    got_user, got_item = model()
    assert got_user.shape == (5, 8) and got_item.shape == (6, 8)  # two modalities of d = 4
    torch.testing.assert_close(got_user, user)
    torch.testing.assert_close(got_item, item)
    users = torch.tensor([1, 4])
    torch.testing.assert_close(model.scorer()(users), user[users] @ item.T)


def test_branches_are_modality_blocks_whose_scores_sum_to_the_fused_score():
    data = tiny_data()
    model, graph = build(data)
    user, item = dense_final(model, data, graph)
    branches = model.branches()
    assert list(branches) == ["m0", "m1", FUSED]
    torch.testing.assert_close(branches["m0"][0], user[:, :4])
    torch.testing.assert_close(branches["m1"][1], item[:, 4:])
    fused = branches[FUSED][0] @ branches[FUSED][1].T
    torch.testing.assert_close(fused, sum(u @ i.T for m, (u, i) in branches.items()
                                          if m != FUSED))


# the objective and the plug-in, shared with DualGNN, are tested on both in test_dualgnn.py


def test_validation_and_missing_user_graph():
    with pytest.raises(ConfigError, match="ii_layers"):
        DRAGONParams(ii_layers=-1)
    with pytest.raises(ConfigError, match="reg_weight"):
        DRAGONParams(reg_weight=-1.0)
    with pytest.raises(ConfigError, match="dragon needs the user-user"):
        build(spec=GraphSpec(knn_k=2))
    with pytest.raises(ConfigError, match="not among the run's modalities"):
        build(mm_weights="text=0.9")
    assert MODELS.get("dragon") is DRAGON and DRAGON.uses_user_graph
    assert "DRAGON(modalities=['m0', 'm1']" in str(build()[0])
