"""Decoupled: shared/specific parts per modality, InfoNCE alignment, orthogonality."""
import json

import pytest
import torch

from brmrs_pyg.config import ConfigError, resolve
from brmrs_pyg.graphs import bipartite_adj_t
from brmrs_pyg.losses import infonce_loss, l2_reg, orthogonality_loss
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.recommenders import Batch
from brmrs_pyg.recommenders.branched import PluginParams
from brmrs_pyg.recommenders.decoupled import Decoupled
from tests.test_cli import run_cli
from tests.tiny_models import build_model, tiny_data


def build(data=None, **overrides):
    return build_model(Decoupled, data, **overrides)


def batch(neg_columns=1):
    neg = torch.tensor([[2, 3, 4], [0, 4, 5], [5, 1, 0], [4, 3, 1]])[:, :neg_columns]
    # item 1 is a positive twice
    return Batch(users=torch.tensor([0, 1, 2, 0]), pos=torch.tensor([1, 2, 3, 1]), neg=neg)


def test_branches_are_ids_plus_shared_plus_specific_propagated():
    data = tiny_data()
    model, graph = build(data, num_layers=1, feature_dim=0)
    ui = bipartite_adj_t(graph).to_dense()
    out = model.branches()
    e_u, e_i = model.user_emb.weight.detach(), model.item_emb.weight.detach()
    for m in ("m0", "m1"):
        x = prepare_features(data.features[m])
        item0 = (e_i + x @ model.shared[m].weight.detach().T
                 + x @ model.specific[m].weight.detach().T)
        h0 = torch.cat([e_u, item0])
        h = (h0 + ui @ h0) / 2
        torch.testing.assert_close(out[m][0], h[:5], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[m][1], h[5:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["fused"][1], (out["m0"][1] + out["m1"][1]) / 2)
    # the two projections are distinct parameters
    assert not torch.allclose(model.shared["m0"].weight, model.specific["m0"].weight)


def test_loss_assembles_bpr_infonce_orthogonality_and_l2():
    model, _ = build(lambda_nce=0.3, tau=0.5, lambda_orth=2.0, branch_bpr=0.7, reg_weight=0.1)
    b = batch()
    total, terms = model.loss(b)
    out = model.branches()

    def bpr(branch):
        u, i = out[branch]
        pos = torch.stack([u[b.users[r]] @ i[b.pos[r]] for r in range(4)])
        neg = torch.stack([u[b.users[r]] @ i[b.neg[r, 0]] for r in range(4)])
        return -torch.nn.functional.logsigmoid(pos - neg).mean()

    items = torch.tensor([1, 2, 3])  # unique positives
    parts = {m: (getattr(model, f"feat_{m}")[items] @ model.shared[m].weight.T,
                 getattr(model, f"feat_{m}")[items] @ model.specific[m].weight.T) for m in ("m0", "m1")}
    nce = infonce_loss(parts["m0"][0], parts["m1"][0], 0.5)
    orth = (orthogonality_loss(*parts["m0"]) + orthogonality_loss(*parts["m1"])) / 2
    reg = l2_reg(model.user_emb.weight[b.users], model.item_emb.weight[b.pos],
                 model.item_emb.weight[b.neg[:, 0]])
    expected = bpr("fused") + 0.7 * (bpr("m0") + bpr("m1")) / 2 + 0.3 * nce + 2.0 * orth + 0.1 * reg
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["nce"].item() == pytest.approx(nce.item(), rel=1e-5)
    assert terms["orth"].item() == pytest.approx(orth.item(), rel=1e-5)
    assert set(terms) == {"bpr", "bpr_branches", "nce", "orth", "reg"}
    total.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_zero_weights_drop_their_terms_and_only_column_zero_is_used():
    model, _ = build(lambda_nce=0.0, lambda_orth=0.0)
    total, terms = model.loss(batch(neg_columns=3))
    assert set(terms) == {"bpr", "reg"}
    first, _ = model.loss(batch(neg_columns=1))
    torch.testing.assert_close(total, first)
    total.backward()
    # without the auxiliary terms only the sum of the projections matters: equal gradients
    torch.testing.assert_close(model.shared["m0"].weight.grad, model.specific["m0"].weight.grad)


def test_orthogonality_term_pulls_the_parts_apart():
    model, _ = build(lambda_nce=0.0, lambda_orth=1.0)
    with torch.no_grad():  # specific = shared: as far from orthogonal as it gets
        model.specific["m0"].weight.copy_(model.shared["m0"].weight)
    params = [*model.shared.parameters(), *model.specific.parameters()]
    optimizer = torch.optim.Adam(params, lr=0.05)
    history = []
    for _ in range(60):
        optimizer.zero_grad()
        _, terms = model.loss(batch())
        history.append(terms["orth"].item())
        orth = torch.stack([orthogonality_loss(*model.parts(m, torch.tensor([1, 2, 3])))
                            for m in ("m0", "m1")]).mean()
        orth.backward()
        optimizer.step()
    assert history[-1] < 0.25 * history[0]


def test_one_modality_needs_lambda_nce_zero():
    data = tiny_data(num_modalities=1)
    with pytest.raises(ConfigError, match="lambda_nce=0"):
        build(data)
    model, _ = build(data, lambda_nce=0.0, lambda_orth=0.5)
    total, terms = model.loss(batch())
    assert set(terms) == {"bpr", "orth", "reg"}
    total.backward()


def test_invalid_keys_are_refused():
    with pytest.raises(ConfigError, match="tau"):
        resolve([("test", {"tau": 0})], Decoupled.Params)
    with pytest.raises(ConfigError, match="lambda_orth"):
        resolve([("test", {"lambda_orth": -0.1})], Decoupled.Params)


def test_plugin_adds_terms_over_the_branches():
    model, _ = build()
    model.attach_plugin(PluginParams(lambda_h=1.0, lambda_s=1.0, pool_size=3))
    total, terms = model.loss(batch(neg_columns=3))
    assert {"bpr", "nce", "orth", "chns", "syn", "reg"} <= set(terms)
    total.backward()
    assert "Decoupled(5 users, 6 items" in str(model)


def test_cli_trains_decoupled_with_the_plugin(project, tmp_path):
    out = tmp_path / "decoupled"
    assert run_cli(project, "--model", "decoupled", "--epochs", "1", "--out", str(out),
                   "plugin=brmrs", "lambda_h=1", "lambda_s=1") == 0
    results = json.loads((out / "results.json").read_text())
    assert {"bpr", "nce", "orth", "chns", "syn", "reg"} <= set(results["last_epoch_losses"])
    assert set(results["test_branches"]) == {"text", "image", "fused"}
