"""LGMRec: hyperedge dependencies, hypergraph propagation, local and global embeddings,
the hypergraph contrastive loss, branches, column-0 loss, plug-in and validation."""
import math

import pytest
import torch
import torch.nn.functional as F

from brmrs_pyg.config import ConfigError, resolve
from brmrs_pyg.losses import bpr_loss
from brmrs_pyg.recommenders import LGMRec, Batch
from brmrs_pyg.recommenders.branched import FUSED, PluginParams, branch_parts
from brmrs_pyg.recommenders.lgmrec import (LGMRecParams, hyperedge_dependencies,
                                           hypergraph_propagate)
from tests.test_freedom import dense_ui, tiny


def model(**overrides):
    graph, pairs, feats = tiny()
    params = resolve([("test", overrides)], LGMRecParams).model
    torch.manual_seed(0)
    return LGMRec.from_data(params, graph, feats, embedding_dim=4), pairs, feats


def test_dependencies_softmax_in_evaluation_and_gumbel_sample_in_training():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, -1.0]])
    expected = torch.exp(logits / 0.5) / torch.exp(logits / 0.5).sum(1, keepdim=True)
    torch.testing.assert_close(hyperedge_dependencies(logits, 0.5, sample=False), expected)
    torch.manual_seed(4)
    sampled = hyperedge_dependencies(logits, 0.5, sample=True)
    torch.manual_seed(4)
    gumbel = -torch.empty_like(logits).exponential_().log()
    torch.testing.assert_close(sampled, torch.softmax((logits + gumbel) / 0.5, 1))
    assert not torch.allclose(sampled, expected)
    torch.testing.assert_close(sampled.sum(1), torch.ones(2))


def test_hypergraph_propagation_matches_dense_node_by_node_products():
    gen = torch.Generator().manual_seed(0)
    h_i, h_u = torch.rand(5, 3, generator=gen), torch.rand(4, 3, generator=gen)
    e = torch.randn(5, 2, generator=gen)
    users, items = hypergraph_propagate(h_i, h_u, e, 1)
    # one layer: item i gathers from item j with weight sum_a h_ia h_ja
    naive = torch.zeros(5, 2)
    for i in range(5):
        for j in range(5):
            naive[i] += sum(h_i[i, a] * h_i[j, a] for a in range(3)) * e[j]
    torch.testing.assert_close(items, naive)
    torch.testing.assert_close(users, h_u @ h_i.T @ e)
    users, items = hypergraph_propagate(h_i, h_u, e, 2)
    ii = h_i @ h_i.T
    torch.testing.assert_close(items, ii @ ii @ e)
    torch.testing.assert_close(users, h_u @ h_i.T @ ii @ e)
    with pytest.raises(ValueError, match="num_layers"):
        hypergraph_propagate(h_i, h_u, e, 0)


def dense_final(m, pairs, feats):
    """Every embedding of the model in evaluation mode, from dense matrices."""
    ui = dense_ui(pairs)
    r = torch.zeros(6, 5)
    r[pairs[0], pairs[1]] = 1.0
    ego = torch.cat([m.user_emb.weight, m.item_emb.weight])
    collab = (ego + ui @ ego + ui @ ui @ ego) / 3
    branches, local_sum, hyper_sum = {}, 0, 0
    for name in ("text", "image"):
        f_i = feats[name] @ m.proj[name]
        f_u = (r @ f_i) / r.sum(1, keepdim=True)
        local = ui @ ui @ torch.cat([f_u, f_i])
        logits = feats[name] @ m.hyperedges[name]
        h_i, h_u = torch.softmax(logits / 0.2, 1), torch.softmax(r @ logits / 0.2, 1)
        hyper = torch.cat([h_u @ h_i.T @ collab[6:], h_i @ h_i.T @ collab[6:]])
        branches[name] = collab + F.normalize(local) + 0.3 * F.normalize(hyper)
        local_sum, hyper_sum = local_sum + F.normalize(local), hyper_sum + hyper
    branches[FUSED] = collab + local_sum + 0.3 * F.normalize(hyper_sum)
    return branches


def test_branches_forward_and_scorer_match_dense_reference():
    m, pairs, feats = model()
    m.eval()
    with torch.no_grad():
        branches = m.branches()
        expected = dense_final(m, pairs, feats)
        assert list(branches) == ["text", "image", FUSED]
        for name, value in expected.items():
            torch.testing.assert_close(torch.cat(branches[name]), value)
        user, item = m()
        torch.testing.assert_close(torch.cat([user, item]), expected[FUSED])
        torch.testing.assert_close(m.scorer()(torch.tensor([0, 3])), user[[0, 3]] @ item.T)
        # evaluation is deterministic (no Gumbel noise, no dropout)
        torch.testing.assert_close(m()[1], item)
    m.train()
    with torch.no_grad():
        assert not torch.allclose(m()[1], item)


def naive_full_infonce_sum(anchors, table, index, tau):
    total = 0.0
    for r in range(anchors.size(0)):
        sims = [F.cosine_similarity(anchors[r], table[c], dim=0).item() / tau
                for c in range(table.size(0))]
        total += math.log(sum(math.exp(s) for s in sims)) - sims[int(index[r])]
    return total


def test_loss_terms_match_formulas_on_column_zero():
    m, _, _ = model(cl_weight=0.01, reg_weight=0.1)
    m.train()
    batch = Batch(torch.tensor([0, 2, 2, 5]), torch.tensor([1, 0, 0, 3]),
                  torch.tensor([[3], [4], [1], [2]]))
    torch.manual_seed(7)
    total, terms = m.loss(batch)
    torch.manual_seed(7)
    with torch.no_grad():
        branches = m.branches()
        parts = branch_parts(branches)
        user, item = branches[FUSED]
        u, p, n = user[batch.users], item[batch.pos], item[batch.neg[:, 0]]
        bpr = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        g_t, g_i = parts["hyper_text"], parts["hyper_image"]
        hcl = (naive_full_infonce_sum(g_t[batch.users], g_i[:6], batch.users, 0.2)
               + naive_full_infonce_sum(g_t[6:][batch.pos], g_i[6:], batch.pos, 0.2))
        reg = (u.norm() + p.norm() + n.norm()).item() / 4
    assert terms["bpr"].item() == pytest.approx(bpr.item(), rel=1e-5)
    assert terms["hcl"].item() == pytest.approx(hcl, rel=1e-5)
    assert terms["reg"].item() == pytest.approx(reg, rel=1e-5)
    assert total.item() == pytest.approx(bpr.item() + 0.01 * hcl + 0.1 * reg, rel=1e-5)
    wide = Batch(batch.users, batch.pos, torch.cat([batch.neg, torch.tensor([[4]] * 4)], 1))
    torch.manual_seed(7)
    assert m.loss(wide)[0].item() == pytest.approx(total.item(), rel=1e-6)


def test_one_modality_has_no_contrastive_term():
    graph, pairs, feats = tiny()
    torch.manual_seed(0)
    m = LGMRec.from_data(LGMRecParams(), graph, {"text": feats["text"]}, embedding_dim=4)
    _, terms = m.loss(Batch(torch.tensor([0]), torch.tensor([1]), torch.tensor([[3]])))
    assert set(terms) == {"bpr", "reg"}


def test_plugin_adds_terms_and_reaches_every_modality():
    m, _, _ = model()
    m.attach_plugin(PluginParams(pool_size=3))
    m.train()
    batch = Batch(torch.tensor([0, 2, 5]), torch.tensor([1, 0, 3]),
                  torch.tensor([[3, 0, 1], [4, 1, 2], [1, 2, 0]]))
    total, terms = m.loss(batch)
    assert set(terms) == {"bpr", "hcl", "reg", "chns", "syn"}
    total.backward()
    for name in ("text", "image"):
        assert m.proj[name].grad.abs().sum() > 0
        assert m.hyperedges[name].grad.abs().sum() > 0


def test_config_checks():
    for bad in ({"keep_rate": 0.0}, {"hyper_layers": 0}, {"num_hyperedges": 0}, {"tau": 0.0},
                {"alpha": -1.0}, {"mm_layers": -1}):
        with pytest.raises(ConfigError):
            LGMRecParams(**bad)
    m, _, _ = model()
    assert "LGMRec(6 users, 5 items" in str(m)
