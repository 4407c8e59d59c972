"""GRCN: the graph refining layer (routing, edge affinities, confidence-weighted pruning) and
the ID convolution against a naive per-edge computation, the concat fusion, the loss, the
plug-in and the config checks."""
import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import build_model, tiny_data

from brmrs_pyg.config import ConfigError
from brmrs_pyg.losses import bpr_loss
from brmrs_pyg.recommenders import GRCN, Batch
from brmrs_pyg.recommenders.branched import FUSED, PluginParams
from brmrs_pyg.recommenders.grcn import GRCNParams

NUM_USERS, NUM_ITEMS = 5, 6


def directed_edges(m):
    """The model's edges as (sender, receiver) pairs, in its edge order, after checking that
    they are the training pairs in both directions (users, then items)."""
    edges = list(zip(*m.graph.edge_index.tolist()))
    users, items = tiny_data().train.tolist()
    forward = [(u, i + NUM_USERS) for u, i in zip(users, items)]
    assert sorted(edges) == sorted(forward + [(i, u) for u, i in forward])
    return edges


def naive_refine(m, name):
    """Modality ``name``'s representation and edge affinities, one user / edge at a time."""
    with torch.no_grad():
        proj = m.inputs.proj[name]
        content = F.normalize(F.leaky_relu(tiny_data().features[name] @ proj.weight.T
                                           + proj.bias))
        pref = F.normalize(m.inputs.preference[name]).clone()
        users, items = tiny_data().train.tolist()
        for _ in range(m.params.num_routing):
            new = pref.clone()
            for u in range(NUM_USERS):
                mine = [i for v, i in zip(users, items) if v == u]
                scores = [float(pref[u] @ content[i]) for i in mine]
                norm = sum(math.exp(s) for s in scores)
                routed = sum(math.exp(s) / norm * content[i] for s, i in zip(scores, mine))
                new[u] = F.normalize(pref[u] + routed, dim=0)
            pref = new
        x = torch.cat([pref, content])
        edges = directed_edges(m)
        alpha = []
        for j, i in edges:
            norm = sum(math.exp(float(x[i] @ x[k])) for k, r in edges if r == i)
            alpha.append(math.exp(float(x[i] @ x[j])) / norm)
        rep = x.clone()
        for (j, i), a in zip(edges, alpha):
            rep[i] += a * x[j]
        return rep, torch.tensor(alpha)


@pytest.mark.parametrize("pruning", [True, False])
def test_refined_graph_and_representations_match_a_naive_computation(pruning):
    m, _ = build_model(GRCN, latent_dim=3, pruning=pruning)
    with torch.no_grad():  # some negative confidences, so that pruning has work to do
        m.confidence.copy_(torch.randn(m.confidence.shape, generator=torch.Generator()
                                       .manual_seed(1)))
    reps, alphas = {}, []
    for name in ("m0", "m1"):
        reps[name], alpha = naive_refine(m, name)
        got_rep, got_alpha = m.refine(name)
        torch.testing.assert_close(got_rep, reps[name])
        torch.testing.assert_close(got_alpha, alpha)
        alphas.append(alpha)
    edges = directed_edges(m)
    weight = []
    for e, (j, _) in enumerate(edges):
        best = max(alphas[k][e] * m.confidence[j, k] for k in range(2)).item()
        weight.append(max(best, 0.0) if pruning else best)
    weight = torch.tensor(weight)
    got = m.edge_weights(alphas)
    torch.testing.assert_close(got, weight)
    assert (weight == 0).any() == pruning   # ReLU removes the negative edges
    # the ID convolution: e0 + W e0 + W^2 e0 with W the refined adjacency (row = receiver)
    w = torch.zeros(NUM_USERS + NUM_ITEMS, NUM_USERS + NUM_ITEMS)
    for (j, i), value in zip(edges, weight):
        w[i, j] = value
    e0 = F.normalize(m.id_emb.detach())
    id_rep = e0 + w @ e0 + w @ w @ e0
    branches = m.branches()
    torch.testing.assert_close(torch.cat(branches[FUSED]).detach(),
                               torch.cat([id_rep, reps["m0"], reps["m1"]], 1))


def test_routing_hand_case_user_with_one_item():
    # user 4 has the single item 2: every routing step adds c_2 with weight 1
    m, _ = build_model(GRCN, latent_dim=3, num_routing=2)
    proj = m.inputs.proj["m0"]
    c = F.normalize(F.leaky_relu(tiny_data().features["m0"][2] @ proj.weight.T + proj.bias),
                    dim=0)
    p = F.normalize(m.inputs.preference["m0"][4], dim=0)
    for _ in range(2):
        p = F.normalize(p + c, dim=0)
    rep, alpha = m.refine("m0")
    # user 4's only incoming edge has affinity 1, so its representation is p + c
    torch.testing.assert_close(rep[4], p + c)
    receives = m.graph.row == 4
    torch.testing.assert_close(alpha[receives], torch.ones(1))
    # without routing the preference is only normalised
    m0, _ = build_model(GRCN, latent_dim=3, num_routing=0)
    torch.testing.assert_close(m0.refine("m0")[0][4] - c,
                               F.normalize(m0.inputs.preference["m0"][4], dim=0))


def test_concat_fused_score_is_the_id_score_plus_the_branch_scores():
    m, _ = build_model(GRCN, latent_dim=3)
    m.eval()
    branches = m.branches()
    assert list(branches) == ["m0", "m1", FUSED]
    user, item = m()
    torch.testing.assert_close(user, branches[FUSED][0])
    scores = m.scorer()(torch.arange(NUM_USERS))
    torch.testing.assert_close(scores, user @ item.T)
    id_user, id_item = user[:, :4], item[:, :4]
    parts = sum(branches[k][0] @ branches[k][1].T for k in ("m0", "m1"))
    torch.testing.assert_close(scores, id_user @ id_item.T + parts)
    torch.testing.assert_close(torch.cat([user[:, 4:7], item[:, 4:7]]),
                               torch.cat(branches["m0"]))


def test_loss_is_bpr_plus_mean_square_penalty_on_column_zero():
    m, _ = build_model(GRCN, latent_dim=3, reg_weight=0.2)
    users, pos = torch.tensor([0, 1, 3]), torch.tensor([1, 2, 5])
    neg = torch.tensor([[4, 0, 1], [5, 1, 2], [2, 2, 3]])
    total, terms = m.loss(Batch(users, pos, neg))
    user, item = m()
    u = user[users]
    bpr = bpr_loss((u * item[pos]).sum(-1), (u * item[neg[:, 0]]).sum(-1))
    e = m.id_emb
    reg = (e[users].pow(2).mean()
           + torch.cat([e[pos + NUM_USERS], e[neg[:, 0] + NUM_USERS]]).pow(2).mean()
           + sum(m.inputs.preference[k][users].pow(2).mean() for k in ("m0", "m1")))
    torch.testing.assert_close(total, bpr + 0.2 * reg)
    torch.testing.assert_close(terms["bpr"], bpr.detach())
    again, _ = m.loss(Batch(users, pos, neg[:, :1]))
    torch.testing.assert_close(again, total)
    total.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_plugin_adds_its_terms_and_trains_every_modality():
    m, _ = build_model(GRCN, latent_dim=3)
    m.attach_plugin(PluginParams(pool_size=3))
    batch = Batch(torch.tensor([0, 1, 3]), torch.tensor([1, 2, 5]),
                  torch.tensor([[4, 0, 1], [5, 1, 2], [2, 2, 3]]))
    total, terms = m.loss(batch)
    assert {"bpr", "reg", "chns", "syn"} <= set(terms)
    total.backward()
    for name in ("m0", "m1"):
        assert m.inputs.preference[name].grad.abs().sum() > 0
        assert m.inputs.proj[name].weight.grad.abs().sum() > 0


def test_config_checks():
    for bad in ({"latent_dim": 0}, {"num_routing": -1}, {"id_layers": -1},
                {"reg_weight": -0.1}):
        with pytest.raises(ConfigError):
            GRCNParams(**bad)
    assert not GRCN.uses_user_graph and not GRCN.uses_item_graphs
    m, _ = build_model(GRCN, latent_dim=3)
    assert str(m).startswith("GRCN(5 users, 6 items, modalities=['m0', 'm1'], dim=4")
