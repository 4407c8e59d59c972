"""Concat: independent per-modality LightGCN branches, summed scores, per-branch BPR."""
import json

import pytest
import torch

from brmrs_pyg.config import ConfigError, resolve
from brmrs_pyg.graphs import bipartite_adj_t, knn_edge_type
from brmrs_pyg.losses import bpr_loss, l2_reg
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.recommenders import Batch
from brmrs_pyg.recommenders.branched import PluginParams
from brmrs_pyg.recommenders.concat import Concat
from tests.test_brmrs import dense_adj
from tests.test_cli import run_cli
from tests.tiny_models import build_model, tiny_data


def build(data=None, **overrides):
    return build_model(Concat, data, **overrides)


def batch(neg_columns=1):
    neg = torch.tensor([[2, 3, 4], [0, 4, 5], [5, 1, 0], [4, 3, 1]])[:, :neg_columns]
    return Batch(users=torch.tensor([0, 1, 2, 2]), pos=torch.tensor([1, 2, 3, 4]), neg=neg)


def test_branches_are_own_ids_plus_features_propagated():
    data = tiny_data()
    model, graph = build(data, num_layers=2, ii_layers=1, feature_dim=0)
    ui = bipartite_adj_t(graph).to_dense()
    out = model.branches()
    assert list(out) == ["m0", "m1", "fused"]
    for m in ("m0", "m1"):
        e_u, e_i = model.user_emb[m].weight.detach(), model.item_emb[m].weight.detach()
        item0 = e_i + prepare_features(data.features[m]) @ model.proj[m].weight.detach().T
        h0 = torch.cat([e_u, item0])
        h = (h0 + ui @ h0 + ui @ ui @ h0) / 3
        store = graph[knn_edge_type(m)]
        items = h[5:] + (item0 + dense_adj(store.edge_index, store.edge_weight, 6) @ item0) / 2
        torch.testing.assert_close(out[m][0], h[:5], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[m][1], items, atol=1e-5, rtol=1e-5)
    # independent ID tables: the branches start from different embeddings
    assert not torch.allclose(model.user_emb["m0"].weight, model.user_emb["m1"].weight)


def test_fused_score_is_the_sum_of_branch_scores():
    model, _ = build()
    out = model.branches()
    fused = out["fused"][0] @ out["fused"][1].T
    summed = sum(u @ i.T for b, (u, i) in out.items() if b != "fused")
    torch.testing.assert_close(fused, summed)
    users = torch.tensor([0, 3])
    torch.testing.assert_close(model.scorer()(users), summed[users].detach())
    scorers = model.branch_scorers()
    torch.testing.assert_close(scorers["m1"](users), (out["m1"][0] @ out["m1"][1].T)[users].detach())


def test_loss_is_a_sum_of_independent_branch_bprs():
    model, _ = build(reg_weight=0.1)
    b = batch()
    total, terms = model.loss(b)
    out = model.branches()
    expected = 0.0
    for m in ("m0", "m1"):
        u, i = out[m]
        pos = torch.stack([u[b.users[r]] @ i[b.pos[r]] for r in range(4)])
        neg = torch.stack([u[b.users[r]] @ i[b.neg[r, 0]] for r in range(4)])
        bpr = -torch.nn.functional.logsigmoid(pos - neg).mean()
        assert terms[f"bpr_{m}"].item() == pytest.approx(bpr.item(), rel=1e-5)
        e_u, e_i = model.user_emb[m].weight, model.item_emb[m].weight
        expected = expected + bpr + 0.1 * l2_reg(e_u[b.users], e_i[b.pos], e_i[b.neg[:, 0]])
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(terms) == {"bpr", "bpr_m0", "bpr_m1", "reg"}
    # late fusion: a branch's BPR sends no gradient into the other branch
    u, i = out["m0"]
    bpr_loss((u[b.users] * i[b.pos]).sum(-1), (u[b.users] * i[b.neg[:, 0]]).sum(-1)).backward()
    assert model.user_emb["m0"].weight.grad.abs().sum() > 0
    assert model.item_emb["m1"].weight.grad is None and model.proj["m1"].weight.grad is None


def test_shared_ids_use_one_table():
    model, _ = build(shared_ids=True)
    assert set(model.user_emb) == {"shared"} and set(model.item_emb) == {"shared"}
    out = model.branches()
    assert not torch.allclose(out["m0"][1], out["m1"][1])  # the features still differ
    total, terms = model.loss(batch())
    total.backward()
    assert model.user_emb["shared"].weight.grad.abs().sum() > 0


def test_own_loss_uses_only_the_first_negative_column():
    model, _ = build()
    with_pool, _ = model.loss(batch(neg_columns=3))
    first, _ = model.loss(batch(neg_columns=1))
    torch.testing.assert_close(with_pool, first)


def test_plugin_adds_terms_and_backward_reaches_every_branch():
    model, _ = build()
    model.attach_plugin(PluginParams(lambda_h=1.0, lambda_s=0.5, pool_size=3))
    assert model.num_negatives == 3
    total, terms = model.loss(batch(neg_columns=3))
    assert {"bpr", "chns", "syn", "reg"} <= set(terms)
    total.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_one_modality_trains_and_refuses_chns():
    data = tiny_data(num_modalities=1)
    model, _ = build(data)
    total, _ = model.loss(batch())
    total.backward()
    with pytest.raises(ConfigError, match="two modalities"):
        model.attach_plugin(PluginParams(lambda_h=1.0))
    assert str(model).startswith("Concat(5 users, 6 items, modalities=['m0'], ids=per branch")


def test_negative_keys_are_refused():
    with pytest.raises(ConfigError, match=">= 0"):
        resolve([("test", {"ii_layers": -1})], Concat.Params)


def test_cli_trains_concat_with_the_plugin(project, tmp_path):
    out = tmp_path / "concat"
    assert run_cli(project, "--model", "concat", "--epochs", "1", "--out", str(out),
                   "plugin=brmrs", "lambda_h=1", "lambda_s=1", "ii_layers=1") == 0
    results = json.loads((out / "results.json").read_text())
    assert {"bpr", "bpr_text", "bpr_image", "chns", "syn", "reg"} <= set(
        results["last_epoch_losses"])
    assert set(results["test_branches"]) == {"text", "image", "fused"}
    assert results["test_branches"]["fused"] == results["test"]
