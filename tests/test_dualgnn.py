"""DualGNN: the per-modality GCN and the user-graph aggregation (shared with DRAGON) against
dense references, the weighted-sum fusion, the loss, the plug-in, validation and the pipeline
path that builds the user graph from the card's uu_k."""
import math

import pytest
import torch
import torch.nn.functional as F

from brmrs_pyg.config import ConfigError
from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.graphs import GraphSpec, build_graph
from brmrs_pyg.losses import bpr_loss
from brmrs_pyg.recommenders import MODELS, Batch
from brmrs_pyg.recommenders.branched import FUSED, PluginParams
from brmrs_pyg.recommenders.dualgnn import DualGNN, DualGNNParams, UserGraph
from tests.tiny_models import build_model, tiny_data

UU_SPEC = GraphSpec(knn_k=2, uu_k=2)


def build(data=None, spec=UU_SPEC, **overrides):
    return build_model(DualGNN, data, spec, **overrides)


def dense_norm_adj(train, num_users, num_items):
    n = num_users + num_items
    a = torch.zeros(n, n)
    a[train[0], train[1] + num_users] = 1
    a[train[1] + num_users, train[0]] = 1
    d = a.sum(1)
    inv = torch.where(d > 0, d.pow(-0.5), torch.zeros(()))
    return inv[:, None] * a * inv[None, :]


def dense_modality_gcn(gcn, data, num_layers=2):
    """Each modality's [U_m; I_m] = sum_{l<=L} A^l normalize([P_m; MLP_m(F_m)]), dense."""
    a = dense_norm_adj(data.train, data.num_users, data.num_items)
    out = {}
    for m, feat in data.features.items():
        lin1, _, lin2 = gcn.mlp[m]
        proj = F.leaky_relu(feat @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias
        x = torch.cat([gcn.preference[m], proj])
        x = x / x.norm(dim=1, keepdim=True)
        h, total = x, x
        for _ in range(num_layers):
            h = a @ h
            total = total + h
        out[m] = (total[:data.num_users], total[data.num_users:])
    return out


def dense_user_graph(graph, num_users):
    """W[u, v] = softmax over u's neighbours of the co-interaction counts, by loops."""
    w = torch.zeros(num_users, num_users)
    (src, dst), count = graph.edge_index, graph.edge_attr
    for u in range(num_users):
        mine = (dst == u).nonzero().flatten().tolist()
        denom = sum(math.exp(count[e]) for e in mine)
        for e in mine:
            w[u, src[e]] = math.exp(count[e]) / denom
    return w


def graded_data():
    """Users 0: {0,1,2}, 1: {0,1}, 2: {0}, 3: {3}: counts c01 = 2, c02 = c12 = 1, user 3 alone."""
    train = torch.tensor([[0, 0, 0, 1, 1, 2, 3], [0, 1, 2, 0, 1, 0, 3]])
    gen = torch.Generator().manual_seed(1)
    feats = {"text": torch.randn(4, 3, generator=gen), "image": torch.randn(4, 5, generator=gen)}
    return InteractionData(name="g", num_users=4, num_items=4, train=train,
                           valid=torch.tensor([[0], [3]]), test=torch.tensor([[1], [2]]),
                           features=feats)


def test_user_graph_softmax_weights_by_hand():
    graph = build_graph(graded_data(), GraphSpec(knn_k=2, uu_k=2))
    agg = UserGraph.of(graph, "dualgnn")
    e1, e2 = math.exp(1.0), math.exp(2.0)
    hand = torch.tensor([[0.0, e2 / (e2 + e1), e1 / (e2 + e1), 0.0],   # user 0: 1 (2), 2 (1)
                         [e2 / (e2 + e1), 0.0, e1 / (e2 + e1), 0.0],   # user 1: 0 (2), 2 (1)
                         [0.5, 0.5, 0.0, 0.0],                         # user 2: 0 (1), 1 (1)
                         [0.0, 0.0, 0.0, 0.0]])                        # user 3: no neighbours
    torch.testing.assert_close(agg.adj_t.to_dense(), hand)
    x = torch.randn(4, 3)
    torch.testing.assert_close(agg(x), hand @ x)
    # rows sum to one for users with neighbours, also when fewer than k exist (no padding)
    graph3 = build_graph(graded_data(), GraphSpec(knn_k=2, uu_k=3))
    torch.testing.assert_close(UserGraph.of(graph3, "x").adj_t.to_dense().sum(1),
                               torch.tensor([1.0, 1.0, 1.0, 0.0]))


def test_user_graph_matches_a_loop_on_tiny_data():
    data = tiny_data()
    graph = build_graph(data, GraphSpec(knn_k=2, uu_k=3))
    torch.testing.assert_close(UserGraph.of(graph, "x").adj_t.to_dense(),
                               dense_user_graph(graph[("user", "co_interacts", "user")], 5))


def test_modality_gcn_matches_dense_reference():
    data = tiny_data()
    model, _ = build(data)
    expected = dense_modality_gcn(model.gcn, data)
    got = model.gcn()
    assert list(got) == ["m0", "m1"]
    for m in got:
        torch.testing.assert_close(got[m][0], expected[m][0])
        torch.testing.assert_close(got[m][1], expected[m][1])
    one_layer, _ = build(data, num_layers=1)
    expected = dense_modality_gcn(one_layer.gcn, data, num_layers=1)
    torch.testing.assert_close(one_layer.gcn()["m1"][1], expected["m1"][1])


def test_fusion_and_user_graph_give_the_final_scores():
    data = tiny_data()
    model, graph = build(data)
    reps = dense_modality_gcn(model.gcn, data)
    alpha = model.alpha
    user = alpha[:, :1] * reps["m0"][0] + alpha[:, 1:] * reps["m1"][0]
    w = dense_user_graph(graph[("user", "co_interacts", "user")], 5)
    user = user + w @ user
    item = reps["m0"][1] + reps["m1"][1]
    branches = model.branches()
    assert list(branches) == ["m0", "m1", FUSED]
    torch.testing.assert_close(branches[FUSED][0], user)
    torch.testing.assert_close(branches[FUSED][1], item)
    # modality branches are the single-modal representations
    for m in ("m0", "m1"):
        torch.testing.assert_close(branches[m][0], reps[m][0])
        torch.testing.assert_close(branches[m][1], reps[m][1])
    model.eval()
    torch.testing.assert_close(model()[0], user)
    users = torch.tensor([0, 3])
    torch.testing.assert_close(model.scorer()(users), user[users] @ item.T)
    # the modality weights start as a softmax over modalities
    torch.testing.assert_close(alpha.sum(1), torch.ones(5))


def build_dragon(**overrides):
    from brmrs_pyg.recommenders.dragon import DRAGON
    overrides.setdefault("mm_weights", "m0=0.9")
    return build_model(DRAGON, None, UU_SPEC, **overrides)


#: DualGNN and DRAGON share their objective (bpr_with_preference_penalty); the loss and
#: plug-in tests run on both: (builder, reg_weight, index of the MLP layer checked)
SHARED_LOSS = [pytest.param(build, 0.3, 0, id="dualgnn"),
               pytest.param(build_dragon, 0.2, 2, id="dragon")]


@pytest.mark.parametrize("make, weight, layer", SHARED_LOSS)
def test_loss_is_bpr_plus_preference_penalty_on_column_zero(make, weight, layer):
    model, _ = make(reg_weight=weight)
    users, pos = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 2])
    batch = Batch(users, pos, torch.tensor([[4], [0], [5]]))
    total, terms = model.loss(batch)
    user, item = model()
    u = user[users]
    bpr = bpr_loss((u * item[pos]).sum(-1), (u * item[batch.neg[:, 0]]).sum(-1))
    reg = (model.gcn.preference["m0"][users].pow(2).mean()
           + model.gcn.preference["m1"][users].pow(2).mean() + model.alpha.pow(2).mean())
    torch.testing.assert_close(total, bpr + weight * reg)
    assert set(terms) == {"bpr", "reg"}
    # extra negative columns (a plug-in's pool) change nothing
    wide = Batch(users, pos, torch.tensor([[4, 1, 2], [0, 5, 1], [5, 0, 0]]))
    torch.testing.assert_close(model.loss(wide)[0], total)
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("make, weight, layer", SHARED_LOSS)
def test_plugin_adds_its_terms_and_reaches_every_modality(make, weight, layer):
    model, _ = make()
    model.attach_plugin(PluginParams(pool_size=3))
    assert model.num_negatives == 3
    batch = Batch(torch.tensor([0, 2, 4]), torch.tensor([1, 3, 2]),
                  torch.tensor([[4, 1, 2], [0, 5, 1], [5, 0, 3]]))
    total, terms = model.loss(batch)
    assert {"bpr", "reg", "chns", "syn"} <= set(terms)
    total.backward()
    for m in ("m0", "m1"):
        assert model.gcn.preference[m].grad.abs().sum() > 0
        assert model.gcn.mlp[m][layer].weight.grad.abs().sum() > 0


def test_validation_and_missing_user_graph():
    with pytest.raises(ConfigError, match="num_layers"):
        DualGNNParams(num_layers=-1)
    with pytest.raises(ConfigError, match="reg_weight"):
        DualGNNParams(reg_weight=-0.1)
    with pytest.raises(ConfigError, match="uu_k > 0"):
        build(spec=GraphSpec(knn_k=2))
    assert MODELS.get("dualgnn") is DualGNN and DualGNN.uses_user_graph
    assert "UserGraph(5 users" in str(build()[0])


def text_image_data():
    data = tiny_data()
    data.features = {"text": data.features["m0"], "image": data.features["m1"]}
    return data


@pytest.mark.parametrize("model", ["dualgnn", "dragon"])
def test_pipeline_builds_the_user_graph_from_the_card(project, tmp_path, model):
    from brmrs_pyg import pipeline

    paths = pipeline.Paths(project)
    cli = {"dataset": "tiny", "model": model, "cache_dir": str(tmp_path)}
    config = pipeline.load_config(paths, [("cli", cli)])
    assert config.run.uu_k == 40  # the card's default, no flag given
    built = pipeline.build_model(config, text_image_data(), torch.device("cpu"))
    expected = build_graph(text_image_data(), GraphSpec(uu_k=40))[("user", "co_interacts",
                                                                    "user")]
    dense = dense_user_graph(expected, 5)
    torch.testing.assert_close(built.user_graph.adj_t.to_dense(), dense)
    config = pipeline.load_config(paths, [("cli", {**cli, "uu_k": 0})])
    with pytest.raises(ConfigError, match="uu_k > 0"):
        pipeline.build_model(config, text_image_data(), torch.device("cpu"))
