"""BM3: the negative-free bootstrap objective, its stop-gradients, scoring and plug-in refusal."""
import pytest
import torch
import torch.nn.functional as F

from brmrs_pyg.config import ConfigError, resolve
from brmrs_pyg.recommenders import MODELS, Batch
from brmrs_pyg.recommenders.bm3 import BM3
from tests.tiny_models import build_model, tiny_data


def build(data=None, **overrides):
    return build_model(BM3, data, **overrides)[0]


def batch(neg):
    return Batch(torch.tensor([0, 2, 4, 1]), torch.tensor([1, 3, 2, 2]), neg)


def dense_norm_adj(train, num_users, num_items):
    n = num_users + num_items
    a = torch.zeros(n, n)
    a[train[0], train[1] + num_users] = 1
    a[train[1] + num_users, train[0]] = 1
    d = a.sum(1).pow(-0.5)
    return d[:, None] * a * d[None, :]


def reference_loss(model, b, cl_weight, reg_weight):
    """BM3's objective without dropout, written out with explicit stop-gradients."""
    users, items = model.encode()
    h_u, h_i = users[b.users], items[b.pos]
    pred = model.predictor

    def c(online, target):
        return 1 - F.cosine_similarity(online, target.detach(), dim=-1).mean()

    loss = c(pred(h_u), h_i) + c(pred(h_i), h_u)
    for m in model.modalities:
        h_m = model.proj[m](model.features[m][b.pos])
        loss = loss + cl_weight * (c(pred(h_m), h_i) + c(pred(h_m), h_m))
    # the reference code's EmbLoss on the whole online tables: unsquared norms / items
    reg = (users.pow(2).sum().sqrt() + items.pow(2).sum().sqrt()) / items.shape[0]
    return loss + reg_weight * reg


def test_encoder_is_lightgcn_plus_item_id_residual():
    data = tiny_data()
    model = build(data, num_layers=2)
    norm = dense_norm_adj(data.train, 5, 6)
    e0 = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    expected = (e0 + norm @ e0 + norm @ norm @ e0) / 3
    users, items = model.encode()
    torch.testing.assert_close(users, expected[:5])
    torch.testing.assert_close(items, expected[5:] + model.item_emb.weight)


def test_loss_matches_the_formula_and_its_stop_gradients():
    model = build(dropout=0.0, cl_weight=1.5, reg_weight=0.2)
    b = batch(torch.tensor([[3], [0], [5], [4]]))
    loss, terms = model.loss(b)
    expected = reference_loss(model, b, 1.5, 0.2)
    torch.testing.assert_close(loss, expected)
    assert set(terms) == {"rec", "align", "mask", "reg"}
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    ref = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
    for name, g, r in zip([n for n, _ in model.named_parameters()], grads, ref):
        assert (g is None) == (r is None), name
        if g is not None:
            torch.testing.assert_close(g, r, msg=name)
    # without the stop-gradient on the targets the gradient differs
    users, items = model.encode()
    no_sg = 2 - F.cosine_similarity(model.predictor(users[b.users]), items[b.pos]).mean() \
        - F.cosine_similarity(model.predictor(items[b.pos]), users[b.users]).mean()
    rec_sg = reference_loss(model, b, 0.0, 0.0)
    g_sg = torch.autograd.grad(rec_sg, model.user_emb.weight)[0]
    g_no = torch.autograd.grad(no_sg, model.user_emb.weight)[0]
    assert not torch.allclose(g_sg, g_no)


def test_loss_does_not_depend_on_the_negatives():
    model = build()  # dropout 0.5: the same seed gives the same target views
    assert model.num_negatives == 0
    losses = []
    for neg in (torch.tensor([[3], [0], [5], [4]]), torch.tensor([[5], [1], [0], [3]]),
                torch.zeros(4, 0, dtype=torch.long)):
        torch.manual_seed(1)
        losses.append(model.loss(batch(neg))[0])
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(losses[0], losses[2])


def test_dropout_makes_the_target_views_in_training_only():
    model = build(dropout=0.5)
    b = batch(torch.zeros(4, 0, dtype=torch.long))
    torch.manual_seed(1)
    first = model.loss(b)[0]
    second = model.loss(b)[0]
    assert not torch.allclose(first, second)
    model.eval()
    torch.testing.assert_close(model.loss(b)[0], reference_loss(model, b, 2.0, 0.1))


def test_scores_are_inner_products_of_the_online_predictions():
    model = build()
    model.eval()
    users, items = model.encode()
    expected = model.predictor(users) @ model.predictor(items).T
    torch.testing.assert_close(model.scorer()(torch.tensor([0, 3])), expected[[0, 3]].detach())


def test_every_parameter_gets_gradient_and_features_are_fine_tuned():
    model = build()
    model.loss(batch(torch.zeros(4, 0, dtype=torch.long)))[0].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    before = model.features["m0"].detach().clone()
    with torch.no_grad():
        model.features["m0"].add_(1.0)
    model.reset_parameters()
    torch.testing.assert_close(model.features["m0"].detach(), before)


def test_one_modality_and_params_validation():
    model = build(tiny_data(1))
    assert model.modalities == ["m0"]
    assert "BM3(5 users, 6 items, dim=4, modalities=['m0']" in str(model)
    with pytest.raises(ConfigError, match="dropout"):
        resolve([("test", {"dropout": 1.0})], BM3.Params)
    assert MODELS.get("bm3") is BM3


def test_plugin_is_refused_with_the_reason(tmp_path, capsys):
    from brmrs_pyg.cli import main
    from tests.conftest import REPO
    code = main(["--dataset", "synthetic", "--model", "bm3", "--data-dir", str(tmp_path / "d"),
                 "--epochs", "1", "plugin=brmrs", f"out={tmp_path / 'bm3'}"], root=REPO)
    assert code == 2
    err = capsys.readouterr().err
    assert "model bm3 cannot take it" in err and "per-modality ranking scores" in err
    assert "vbpr" in err
