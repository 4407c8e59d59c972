"""FREEDOM: degree-sensitive pruning, the frozen item graph, the loss and the plug-in."""
import random

import pytest
import torch

from brmrs_pyg.config import ConfigError, resolve
from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.graphs import GraphSpec, build_graph, degree_sensitive_sample
from brmrs_pyg.losses import bpr_loss
from brmrs_pyg.recommenders import FREEDOM, Batch
from brmrs_pyg.recommenders.branched import FUSED, PluginParams
from brmrs_pyg.recommenders.freedom import FREEDOMParams, modality_weights


def dense_sym_norm(a):
    d = a.sum(1)
    inv = torch.where(d > 0, d.pow(-0.5), torch.zeros(()))
    return inv[:, None] * a * inv[None, :]


def dense_knn(x, k):
    """Binary top-k of the full cosine matrix (self included), MMRec-style."""
    xn = torch.nn.functional.normalize(x, dim=1)
    a = torch.zeros(x.size(0), x.size(0))
    a.scatter_(1, (xn @ xn.T).topk(k, dim=1).indices, 1.0)
    return a  # row i: the neighbours item i aggregates from


def tiny(seed=0, num_users=6, num_items=5):
    g = torch.Generator().manual_seed(seed)
    pairs = torch.tensor([[0, 0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 5],
                          [0, 1, 2, 1, 3, 0, 2, 4, 4, 0, 3, 4]])
    feats = {"text": torch.randn(num_items, 4, generator=g),
             "image": torch.randn(num_items, 3, generator=g)}
    data = InteractionData(name="t", num_users=num_users, num_items=num_items, train=pairs,
                           valid=torch.tensor([[0], [3]]), test=torch.tensor([[1], [0]]),
                           features=feats)
    return build_graph(data, GraphSpec(knn_k=2)), pairs, feats


def model(**overrides):
    graph, pairs, feats = tiny()
    params = resolve([("test", overrides)], FREEDOMParams).model
    torch.manual_seed(0)
    return FREEDOM.from_data(params, graph, feats, embedding_dim=4), pairs, feats


def dense_ui(pairs, num_users=6, num_items=5):
    a = torch.zeros(num_users + num_items, num_users + num_items)
    a[pairs[0], pairs[1] + num_users] = 1
    a[pairs[1] + num_users, pairs[0]] = 1
    return dense_sym_norm(a)


def test_pruning_keeps_the_expected_number_of_distinct_edges():
    weight = torch.rand(101) + 0.1
    for ratio in (0.2, 0.5, 0.9):
        torch.manual_seed(1)
        kept = degree_sensitive_sample(weight, ratio)
        assert kept.numel() == int(101 * ratio)
        assert kept.unique().numel() == kept.numel()
        assert 0 <= int(kept.min()) and int(kept.max()) < 101
    assert degree_sensitive_sample(weight, 0.0).numel() == 0


def naive_keep_rates(weight, keep, runs, seed):
    """Keep rate of every edge under successive draws, each picking a not-yet-drawn edge with
    probability proportional to its weight (a plain loop)."""
    rng = random.Random(seed)
    counts = [0] * len(weight)
    for _ in range(runs):
        left = dict(enumerate(weight))
        for _ in range(keep):
            r, acc = rng.random() * sum(left.values()), 0.0
            for edge, w in left.items():
                acc += w
                if acc >= r:
                    break
            counts[edge] += 1
            del left[edge]
    return torch.tensor(counts, dtype=torch.float) / runs


def test_pruning_keeps_low_degree_edges_more_often():
    # a hub user (degree 20) on 20 items and 20 degree-1 user/item pairs: the LightGCN weight
    # 1/sqrt(d_u d_i) of the hub's edges is 1/sqrt(20) of the others', so they are dropped
    # more often
    hub = torch.stack([torch.zeros(20, dtype=torch.long), torch.arange(20)])
    leaves = torch.stack([torch.arange(1, 21), torch.arange(20, 40)])
    users, items = torch.cat([hub, leaves], 1)
    deg_u, deg_i = torch.bincount(users), torch.bincount(items)
    weight = (deg_u[users] * deg_i[items]).float().rsqrt()
    torch.manual_seed(0)
    counts = torch.zeros(40)
    for _ in range(400):
        counts[degree_sensitive_sample(weight, 0.5)] += 1
    rates = counts / 400
    naive = naive_keep_rates(weight.tolist(), 20, 400, seed=0)
    assert rates[20:].mean() > 2 * rates[:20].mean()
    torch.testing.assert_close(rates[:20].mean(), naive[:20].mean(), atol=0.03, rtol=0)
    torch.testing.assert_close(rates[20:].mean(), naive[20:].mean(), atol=0.03, rtol=0)


def test_training_uses_the_pruned_graph_and_evaluation_the_full_one():
    m, pairs, _ = model(dropout=0.5, num_layers=1, ii_layers=1, lambda_mm=0.0)
    ego = torch.cat([m.user_emb.weight, m.item_emb.weight]).detach()
    h = (m.adj_item.to_dense() @ m.item_emb.weight).detach()

    def expected(ui):
        out = (ego + ui @ ego) / 2
        return out[:6], out[6:] + h

    m.eval()
    with torch.no_grad():
        user, item = m()
    full_u, full_i = expected(dense_ui(pairs))
    torch.testing.assert_close(user, full_u)
    torch.testing.assert_close(item, full_i)
    m.train()
    torch.manual_seed(3)
    m.start_epoch()
    torch.manual_seed(3)
    kept = pairs[:, degree_sensitive_sample(m.ui_weight, 0.5)]
    assert kept.size(1) == 6
    # the pruned graph is renormalised by the degrees it keeps
    torch.testing.assert_close(m.adj_pruned.to_dense(), dense_ui(kept))
    user, item = m()
    pruned_u, pruned_i = expected(dense_ui(kept))
    torch.testing.assert_close(user, pruned_u)
    torch.testing.assert_close(item, pruned_i)
    assert not torch.allclose(user, full_u)
    m.eval()
    torch.testing.assert_close(m()[0], full_u)


def test_frozen_item_graph_is_the_weighted_sum_of_modality_knn_graphs():
    m, _, feats = model(mm_weights="text=0.7,image=0.3")
    expected = (0.7 * dense_sym_norm(dense_knn(feats["text"], 2))
                + 0.3 * dense_sym_norm(dense_knn(feats["image"], 2)))
    torch.testing.assert_close(m.adj_item.to_dense(), expected)
    # binary kNN with k = 2 neighbours each (the item itself among them): 1/k per edge
    assert torch.allclose(dense_sym_norm(dense_knn(feats["text"], 2)).diagonal(),
                          torch.full((5,), 0.5))
    # it is frozen: training the model does not change it
    before = m.adj_item.to_dense().clone()
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    loss, _ = m.loss(Batch(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([[3], [4]])))
    loss.backward()
    opt.step()
    torch.testing.assert_close(m.adj_item.to_dense(), before)


def test_modality_weights():
    assert modality_weights("text=0.9", ["text", "image"]) == pytest.approx(
        {"text": 0.9, "image": 0.1})
    assert modality_weights("text=0.8", ["text", "a", "b"]) == pytest.approx(
        {"text": 0.8, "a": 0.1, "b": 0.1})
    assert modality_weights("", ["a", "b"]) == {"a": 0.5, "b": 0.5}
    assert modality_weights("text=0.9", ["text"]) == {"text": 1.0}
    assert modality_weights("a=2,b=6", ["a", "b"]) == {"a": 0.25, "b": 0.75}
    with pytest.raises(ConfigError, match="not among the run's modalities"):
        modality_weights("text=0.9", ["whisper"])
    with pytest.raises(ConfigError, match="name=weight"):
        modality_weights("text=x", ["text"])


def test_loss_is_bpr_plus_modality_bpr_on_column_zero():
    m, _, feats = model(lambda_mm=0.5, reg_weight=0.1)
    batch = Batch(torch.tensor([0, 2, 5]), torch.tensor([1, 0, 3]),
                  torch.tensor([[3, 0, 1], [4, 1, 2], [1, 2, 0]]))
    total, terms = m.loss(batch)
    user, item = m()
    neg = batch.neg[:, 0]
    u = user[batch.users]

    def bpr(items):
        return bpr_loss((u * items[batch.pos]).sum(-1), (u * items[neg]).sum(-1))

    modal = sum(bpr(feats[name] @ m.proj[name].weight.T + m.proj[name].bias)
                for name in ("text", "image"))
    reg = (m.user_emb.weight[batch.users].pow(2).sum() + m.item_emb.weight[batch.pos].pow(2).sum()
           + m.item_emb.weight[neg].pow(2).sum()) / 6
    torch.testing.assert_close(total, bpr(item) + 0.5 * modal + 0.1 * reg)
    assert set(terms) == {"bpr", "mm_bpr", "reg"}
    total.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_branches_are_users_against_projected_features():
    m, _, feats = model()
    branches = m.branches()
    assert list(branches) == ["text", "image", FUSED]
    for name in ("text", "image"):
        user, item = branches[name]
        torch.testing.assert_close(user, branches[FUSED][0])
        torch.testing.assert_close(item, m.proj[name](feats[name]))


def test_plugin_trains_with_chns_and_synergy_terms():
    m, _, _ = model()
    m.attach_plugin(PluginParams(pool_size=3))
    assert m.num_negatives == 3
    m.train()
    m.start_epoch()
    batch = Batch(torch.tensor([0, 2, 5]), torch.tensor([1, 0, 3]),
                  torch.tensor([[3, 0, 1], [4, 1, 2], [1, 2, 0]]))
    total, terms = m.loss(batch)
    assert {"bpr", "mm_bpr", "chns", "syn"} <= set(terms)
    total.backward()
    assert m.user_emb.weight.grad.abs().sum() > 0


def test_config_checks():
    with pytest.raises(ConfigError, match="dropout"):
        FREEDOMParams(dropout=1.0)
    m, _, _ = model(dropout=0.0)
    m.start_epoch()
    assert m.adj_pruned is None  # no pruning: the full graph in training too
    assert "FREEDOM(6 users, 5 items" in str(m)
