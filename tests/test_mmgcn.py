"""MMGCN: the aggregation and combination layers against dense references, the branches, the
loss, the plug-in and the config checks."""
import pytest
import torch
import torch.nn.functional as F
from tiny_models import build_model, tiny_data

from brmrs_pyg.config import ConfigError
from brmrs_pyg.losses import bpr_loss
from brmrs_pyg.recommenders import MMGCN, Batch
from brmrs_pyg.recommenders.branched import FUSED, PluginParams
from brmrs_pyg.recommenders.mmgcn import MMGCNParams

NUM_USERS, NUM_ITEMS = 5, 6


def dense_adjacency():
    users, items = tiny_data().train
    a = torch.zeros(NUM_USERS + NUM_ITEMS, NUM_USERS + NUM_ITEMS)
    a[users, items + NUM_USERS] = 1
    a[items + NUM_USERS, users] = 1
    return a


def dense_mean(x):
    a = dense_adjacency()
    return (a / a.sum(1, keepdim=True)) @ x


def naive_max(x):
    """Per node, the element-wise max over its neighbours' rows (one node at a time)."""
    a = dense_adjacency()
    return torch.stack([x[a[v] > 0].max(0).values for v in range(a.size(0))])


def dense_modality(m, name, aggregate):
    """Modality ``name``'s network written out with dense matrices."""
    p = m.params
    pref = m.inputs.preference[name]
    proj = m.inputs.proj[name]
    features = tiny_data().features[name]
    x = F.normalize(torch.cat([pref, features @ proj.weight.T + proj.bias]))
    for layer in m.gcns[name]:
        h = F.leaky_relu(aggregate(x @ layer.conv.weight.T))
        x_hat = F.leaky_relu(x @ layer.self_proj.weight.T + layer.self_proj.bias)
        if p.has_id:
            x_hat = x_hat + m.id_emb
        if p.concat:
            x = F.leaky_relu(torch.cat([h, x_hat], 1) @ layer.combine.weight.T
                             + layer.combine.bias)
        else:
            x = F.leaky_relu(h @ layer.combine.weight.T + layer.combine.bias + x_hat)
    return x


@pytest.mark.parametrize("overrides,aggregate", [
    ({}, dense_mean),
    ({"concat": False, "num_layers": 2}, dense_mean),
    ({"aggregation": "max", "has_id": False}, naive_max),
    ({"fusion": "mean", "num_layers": 1}, dense_mean),
])
def test_modality_networks_match_a_dense_reference(overrides, aggregate):
    m, _ = build_model(MMGCN, latent_dim=5, **overrides)
    branches = m.branches()
    expected = {name: dense_modality(m, name, aggregate) for name in ("m0", "m1")}
    for name, x in expected.items():
        torch.testing.assert_close(torch.cat(branches[name]), x)
    fused = expected["m0"] + expected["m1"]
    if m.params.fusion == "mean":
        fused = fused / 2
    torch.testing.assert_close(torch.cat(branches[FUSED]), fused)


def test_layer_widths_and_id_embedding_in_every_layer():
    m, _ = build_model(MMGCN, latent_dim=5)
    layers = m.gcns["m0"]
    assert len(layers) == 3
    assert layers[0].conv.weight.shape == (5, 5)
    assert layers[0].combine.weight.shape == (4, 5 + 4)   # concat [h; x_hat]
    assert layers[1].conv.weight.shape == (4, 4)
    # the ID embedding enters the output: changing it changes every modality's output
    before = m.branches()["m1"][0].detach().clone()
    with torch.no_grad():
        m.id_emb.add_(1.0)
    assert not torch.allclose(m.branches()["m1"][0], before)


def test_branches_and_the_fused_branch_ranks():
    m, _ = build_model(MMGCN, latent_dim=5)
    m.eval()
    branches = m.branches()
    assert list(branches) == ["m0", "m1", FUSED]
    user, item = m()
    torch.testing.assert_close(user, branches[FUSED][0])
    torch.testing.assert_close(item, branches[FUSED][1])
    users = torch.tensor([0, 3])
    torch.testing.assert_close(m.scorer()(users), user[users] @ item.T)
    scorers = m.branch_scorers()
    torch.testing.assert_close(scorers["m1"](users),
                               branches["m1"][0][users] @ branches["m1"][1].T)


def test_loss_is_bpr_plus_mean_square_penalty_on_column_zero():
    m, _ = build_model(MMGCN, latent_dim=5, reg_weight=0.3)
    users, pos = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 2])
    neg = torch.tensor([[4, 0, 1], [5, 1, 2], [0, 2, 3]])
    total, terms = m.loss(Batch(users, pos, neg))
    user, item = m()
    u = user[users]
    bpr = bpr_loss((u * item[pos]).sum(-1), (u * item[neg[:, 0]]).sum(-1))
    e = m.id_emb
    reg = (e[users].pow(2).sum() / (3 * 4)
           + (e[pos + NUM_USERS].pow(2).sum() + e[neg[:, 0] + NUM_USERS].pow(2).sum()) / (6 * 4)
           + sum(m.inputs.preference[k][users].pow(2).sum() / (3 * 5) for k in ("m0", "m1")))
    torch.testing.assert_close(total, bpr + 0.3 * reg)
    assert set(terms) == {"bpr", "reg"}
    # only column 0 counts: other columns change nothing
    again, _ = m.loss(Batch(users, pos, neg[:, :1]))
    torch.testing.assert_close(again, total)
    total.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_plugin_adds_its_terms_and_trains_every_modality():
    m, _ = build_model(MMGCN, latent_dim=5)
    m.attach_plugin(PluginParams(pool_size=3))
    assert m.num_negatives == 3
    batch = Batch(torch.tensor([0, 2, 4]), torch.tensor([1, 3, 2]),
                  torch.tensor([[4, 0, 1], [5, 1, 2], [0, 2, 3]]))
    total, terms = m.loss(batch)
    assert {"bpr", "reg", "chns", "syn"} <= set(terms)
    assert total > terms["bpr"]
    total.backward()
    for name in ("m0", "m1"):
        assert m.inputs.preference[name].grad.abs().sum() > 0
        assert m.gcns[name][0].conv.weight.grad.abs().sum() > 0


def test_config_checks():
    for bad in ({"num_layers": 0}, {"latent_dim": 0}, {"aggregation": "sum"},
                {"fusion": "concat"}, {"reg_weight": -1.0}):
        with pytest.raises(ConfigError):
            MMGCNParams(**bad)
    assert not MMGCN.uses_user_graph and not MMGCN.uses_item_graphs
    m, _ = build_model(MMGCN, latent_dim=5)
    assert str(m).startswith("MMGCN(5 users, 6 items, modalities=['m0', 'm1'], dim=4")
