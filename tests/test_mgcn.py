"""MGCN: purifier gate, item-item and user views, behaviour-aware fuser, contrastive loss,
branches, column-0 loss, plug-in and validation, against dense references."""
import math

import pytest
import torch
import torch.nn.functional as F

from brmrs_pyg.config import ConfigError, resolve
from brmrs_pyg.losses import bpr_loss, l2_reg
from brmrs_pyg.recommenders import MGCN, Batch
from brmrs_pyg.recommenders.branched import FUSED, PluginParams, branch_parts
from brmrs_pyg.recommenders.mgcn import BehaviourAwareFuser, MGCNParams
from tests.test_freedom import dense_ui, tiny
from tests.test_lattice import dense_weighted_knn


def model(**overrides):
    graph, pairs, feats = tiny()
    params = resolve([("test", overrides)], MGCNParams).model
    torch.manual_seed(0)
    return MGCN.from_data(params, graph, feats, embedding_dim=4), pairs, feats


def dense_views(m, pairs, feats, ii_layers=1):
    """ID view and every modality view from dense matrices and explicit formulas."""
    ego = torch.cat([m.user_emb.weight, m.item_emb.weight])
    ui = dense_ui(pairs)
    behaviour = (ego + ui @ ego + ui @ ui @ ego) / 3
    r = ui[:6, 6:]  # 1/sqrt(d_u d_i) block
    views = {}
    for name in ("text", "image"):
        lin1, lin2 = m.proj[name], m.purifier[name]
        gate = torch.sigmoid(feats[name] @ lin1.weight.T @ lin2.weight.T
                             + lin1.bias @ lin2.weight.T + lin2.bias)
        items = m.item_emb.weight * gate
        s = dense_weighted_knn(feats[name], 2)
        for _ in range(ii_layers):
            items = s @ items
        views[name] = torch.cat([r @ items, items])
    return behaviour, views


def naive_fuser(fuser, views, behaviour):
    """A per-node loop over the fuser's formula."""
    names = list(views)
    out = torch.zeros_like(behaviour)
    lin1, lin2 = fuser.attention[0], fuser.attention[2]
    for n in range(behaviour.size(0)):
        scores = [float(lin2.weight[0] @ torch.tanh(lin1.weight @ views[k][n] + lin1.bias))
                  for k in names]
        z = sum(math.exp(s) for s in scores)
        shared = sum(math.exp(s) / z * views[k][n] for s, k in zip(scores, names))
        acc = shared.clone()
        for k in names:
            pref = torch.sigmoid(fuser.preference[k].weight @ behaviour[n]
                                 + fuser.preference[k].bias)
            acc = acc + pref * (views[k][n] - shared)
        out[n] = acc / (len(names) + 1)
    return out


def test_views_match_dense_reference():
    m, pairs, feats = model(ii_layers=2)
    with torch.no_grad():
        behaviour, views = m.views()
        ref_b, ref_v = dense_views(m, pairs, feats, ii_layers=2)
    torch.testing.assert_close(behaviour, ref_b)
    for name in ("text", "image"):
        torch.testing.assert_close(views[name], ref_v[name])
    # the gate really scales the ID embeddings: zero ID embeddings give zero views
    with torch.no_grad():
        m.item_emb.weight.zero_()
        assert m.views()[1]["text"].abs().max() == 0


def test_purifier_gate_is_the_sigmoid_of_projected_features():
    m, _, feats = model()
    with torch.no_grad():
        projected = feats["image"] @ m.proj["image"].weight.T + m.proj["image"].bias
        gate = torch.sigmoid(projected @ m.purifier["image"].weight.T + m.purifier["image"].bias)
        torch.testing.assert_close(m.purified("image"), m.item_emb.weight * gate)


def test_fuser_matches_a_naive_loop_and_attention_sums_to_one():
    torch.manual_seed(3)
    fuser = BehaviourAwareFuser(["a", "b", "c"], 4)
    views = {k: torch.randn(5, 4) for k in "abc"}
    behaviour = torch.randn(5, 4)
    with torch.no_grad():
        alpha = fuser.weights(views)
        torch.testing.assert_close(alpha.sum(1), torch.ones(5))
        assert alpha.std() > 0.01  # not uniform: the weights depend on the views
        torch.testing.assert_close(fuser(views, behaviour), naive_fuser(fuser, views, behaviour))


def test_branches_forward_and_scorer():
    m, pairs, feats = model()
    m.eval()
    with torch.no_grad():
        branches = m.branches()
        behaviour, views = dense_views(m, pairs, feats)
        fused = naive_fuser(m.fuser, views, behaviour)
        assert list(branches) == ["text", "image", FUSED]
        torch.testing.assert_close(torch.cat(branches[FUSED]), behaviour + fused)
        for name in ("text", "image"):
            torch.testing.assert_close(torch.cat(branches[name]), behaviour + views[name])
        user, item = m()
        torch.testing.assert_close(torch.cat([user, item]), behaviour + fused)
        scores = m.scorer()(torch.tensor([1, 4]))
        torch.testing.assert_close(scores, user[[1, 4]] @ item.T)
        parts = branch_parts(branches)
        torch.testing.assert_close(parts["mul"], fused)
        torch.testing.assert_close(parts["id"], behaviour)


def naive_infonce(anchors, others, tau):
    total = 0.0
    for r in range(anchors.size(0)):
        sims = [F.cosine_similarity(anchors[r], others[c], dim=0).item() / tau
                for c in range(others.size(0))]
        total += math.log(sum(math.exp(s) for s in sims)) - sims[r]
    return total / anchors.size(0)


def test_loss_terms_match_formulas_on_column_zero():
    m, _, _ = model(cl_weight=0.3, reg_weight=0.01)
    m.train()
    batch = Batch(torch.tensor([0, 2, 2, 5]), torch.tensor([1, 0, 0, 3]),
                  torch.tensor([[3], [4], [1], [2]]))
    total, terms = m.loss(batch)
    with torch.no_grad():
        branches = m.branches()
        parts = branch_parts(branches)
        user, item = branches[FUSED]
        u, p, n = user[batch.users], item[batch.pos], item[batch.neg[:, 0]]
        bpr = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        users, items = torch.tensor([0, 2, 5]), torch.tensor([0, 1, 3]) + 6
        cl = (naive_infonce(parts["mul"][users], parts["id"][users], 0.2)
              + naive_infonce(parts["mul"][items], parts["id"][items], 0.2))
        reg = l2_reg(u, p, n)
    assert terms["bpr"].item() == pytest.approx(bpr.item(), rel=1e-5)
    assert terms["cl"].item() == pytest.approx(cl, rel=1e-5)
    assert terms["reg"].item() == pytest.approx(reg.item(), rel=1e-5)
    assert total.item() == pytest.approx(bpr.item() + 0.3 * cl + 0.01 * reg.item(), rel=1e-5)
    # extra negative columns (the plug-in's pool) do not change the model's own loss
    wide = Batch(batch.users, batch.pos, torch.cat([batch.neg, torch.tensor([[4]] * 4)], 1))
    assert m.loss(wide)[0].item() == pytest.approx(total.item(), rel=1e-6)
    assert m.loss(Batch(batch.users, batch.pos, wide.neg[:, 1:]))[0].item() != pytest.approx(
        total.item(), rel=1e-6)


def test_plugin_adds_terms_and_reaches_every_modality():
    m, _, _ = model()
    m.attach_plugin(PluginParams(pool_size=3, lambda_s=0.5))
    m.train()
    batch = Batch(torch.tensor([0, 2, 5]), torch.tensor([1, 0, 3]),
                  torch.tensor([[3, 0, 1], [4, 1, 2], [1, 2, 0]]))
    total, terms = m.loss(batch)
    assert set(terms) == {"bpr", "cl", "reg", "chns", "syn"}
    total.backward()
    for name in ("text", "image"):
        assert m.purifier[name].weight.grad.abs().sum() > 0
        assert m.proj[name].weight.grad.abs().sum() > 0
        assert m.fuser.preference[name].weight.grad.abs().sum() > 0
    assert set(m.branch_scorers()) == {"text", "image", FUSED}


def test_config_checks():
    with pytest.raises(ConfigError, match="tau"):
        MGCNParams(tau=0.0)
    with pytest.raises(ConfigError, match="cl_weight"):
        MGCNParams(cl_weight=-1.0)
    with pytest.raises(ConfigError, match="num_layers"):
        MGCNParams(ii_layers=-1)
    with pytest.raises(TypeError, match="parts"):
        branch_parts({})
    m, _, _ = model()
    assert "MGCN(6 users, 5 items" in str(m)
