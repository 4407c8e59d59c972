"""VBPR: the paper's score with concatenated features, its branches, loss and plug-in."""
import pytest
import torch
import torch.nn.functional as F

from brmrs_pyg.config import ConfigError, resolve
from brmrs_pyg.recommenders import MODELS, Batch
from brmrs_pyg.recommenders.branched import FUSED, PluginParams
from brmrs_pyg.recommenders.vbpr import VBPR
from tests.tiny_models import build_model, tiny_data


def build(data=None, **overrides):
    model = build_model(VBPR, data, **overrides)[0]
    if model.item_bias is not None:
        with torch.no_grad():  # non-zero biases, so that a misplaced bias shows
            model.item_bias.weight.normal_()
            for lin in model.feature_bias.values():
                lin.weight.normal_()
    return model


def batch(neg_columns=1):
    neg = torch.tensor([[3, 5, 4], [0, 2, 1], [5, 0, 3]])[:, :neg_columns]
    return Batch(torch.tensor([0, 2, 4]), torch.tensor([1, 3, 2]), neg)


def paper_scores(model):
    """The paper's score with one E and one beta' over the concatenated features."""
    f = torch.cat([getattr(model, f"feat_{m}") for m in model.modalities], 1)
    E = torch.cat([model.proj[m].weight for m in model.modalities], 1)
    beta_prime = torch.cat([model.feature_bias[m].weight for m in model.modalities], 1)
    gamma_u, theta_u = model.user_gamma.weight, model.user_theta.weight
    return (model.item_bias.weight.T + gamma_u @ model.item_gamma.weight.T
            + theta_u @ (f @ E.T).T + (f @ beta_prime.T).T)


def test_fused_branch_is_the_papers_score_on_concatenated_features():
    model = build()
    user, item = model.branches()[FUSED]
    assert user.shape == (5, 9) and item.shape == (6, 9)
    torch.testing.assert_close(user @ item.T, paper_scores(model))
    model.eval()
    torch.testing.assert_close(model.scorer()(torch.tensor([1, 3])), paper_scores(model)[[1, 3]])


def test_modality_branch_is_that_modalitys_share_of_the_score():
    model = build()
    branches = model.branches()
    theta = model.user_theta.weight
    shares = []
    for m in model.modalities:
        x = getattr(model, f"feat_{m}")
        expected = theta @ (x @ model.proj[m].weight.T).T + (x @ model.feature_bias[m].weight.T).T
        user, item = branches[m]
        torch.testing.assert_close(user @ item.T, expected)
        shares.append(expected)
    # the whole score is collaborative part + item bias + the modalities' shares
    rest = model.user_gamma.weight @ model.item_gamma.weight.T + model.item_bias.weight.T
    torch.testing.assert_close(paper_scores(model), rest + sum(shares))


def test_loss_is_bpr_plus_l2_on_factors_and_item_biases_only():
    model = build(reg_weight=0.3)
    b = batch()
    loss, terms = model.loss(b)
    s = paper_scores(model)
    pos, neg = s[b.users, b.pos], s[b.users, b.neg[:, 0]]
    bpr = -F.logsigmoid(pos - neg).mean()
    reg = sum(t.pow(2).sum() for t in (
        model.user_gamma.weight[b.users], model.user_theta.weight[b.users],
        model.item_gamma.weight[b.pos], model.item_gamma.weight[b.neg[:, 0]],
        model.item_bias.weight[b.pos], model.item_bias.weight[b.neg[:, 0]])) / (2 * 3)
    torch.testing.assert_close(terms["bpr"], bpr.detach())
    torch.testing.assert_close(loss, bpr + 0.3 * reg)
    # E and beta' are not regularised: their gradient does not depend on reg_weight
    loss.backward()
    grad = {m: model.proj[m].weight.grad.clone() for m in model.modalities}
    other = build(reg_weight=0.0)
    other.loss(b)[0].backward()
    for m in model.modalities:
        torch.testing.assert_close(other.proj[m].weight.grad, grad[m])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_content_reg_adds_l2_on_the_batch_items_content_vectors():
    model = build(reg_weight=0.3, content_reg=0.7)
    b = batch()
    loss, terms = model.loss(b)
    plain = build(reg_weight=0.3)
    plain.load_state_dict(model.state_dict())
    base, _ = plain.loss(b)

    def content(items):  # E f_i summed over modalities (the paper's E f on concatenations)
        return sum(model.proj[m](getattr(model, f"feat_{m}")[items]) for m in model.modalities)

    expected = (content(b.pos).pow(2).sum() + content(b.neg[:, 0]).pow(2).sum()) / (2 * 3)
    torch.testing.assert_close(terms["content_reg"], expected.detach())
    torch.testing.assert_close(loss, base + 0.7 * expected)


def test_reg_norm_is_mmrecs_penalty_on_user_and_item_vectors():
    model = build(reg_weight=0.3, reg_norm=True)
    b = batch()
    loss, terms = model.loss(b)
    neg = b.neg[:, 0]

    def content(items):
        return sum(model.proj[m](getattr(model, f"feat_{m}")[items]) for m in model.modalities)

    users = torch.cat([model.user_gamma.weight[b.users], model.user_theta.weight[b.users]], 1)
    pos = torch.cat([model.item_gamma.weight[b.pos], content(b.pos)], 1)
    negv = torch.cat([model.item_gamma.weight[neg], content(neg)], 1)
    expected = (users.norm() + pos.norm() + negv.norm()) / 3  # unsquared, over the batch
    torch.testing.assert_close(terms["reg"], expected.detach())
    torch.testing.assert_close(loss, terms["bpr"] + 0.3 * expected)


def test_without_item_bias_the_score_is_mmrecs_and_the_branches_lose_the_bias_column():
    model = build(item_bias=False)
    assert model.item_bias is None and model.feature_bias is None
    assert not any("bias" in name for name, _ in model.named_parameters())
    f = torch.cat([getattr(model, f"feat_{m}") for m in model.modalities], 1)
    E = torch.cat([model.proj[m].weight for m in model.modalities], 1)
    # MMRec's VBPR: [gamma_u; theta_u] . [gamma_i; E f_i]
    expected = (torch.cat([model.user_gamma.weight, model.user_theta.weight], 1)
                @ torch.cat([model.item_gamma.weight, f @ E.T], 1).T)
    branches = model.branches()
    user, item = branches[FUSED]
    assert user.shape == (5, 8) and item.shape == (6, 8)
    torch.testing.assert_close(user @ item.T, expected)
    for m in model.modalities:
        user, item = branches[m]
        assert user.shape == (5, 4)
        torch.testing.assert_close(
            user @ item.T, model.user_theta.weight @ model.proj[m](getattr(model, f"feat_{m}")).T)


def test_without_item_bias_the_loss_regularises_the_factors_only():
    model = build(item_bias=False, reg_weight=0.3)
    b = batch()
    loss, terms = model.loss(b)
    reg = sum(t.pow(2).sum() for t in (
        model.user_gamma.weight[b.users], model.user_theta.weight[b.users],
        model.item_gamma.weight[b.pos], model.item_gamma.weight[b.neg[:, 0]])) / (2 * 3)
    torch.testing.assert_close(terms["reg"], reg.detach())
    torch.testing.assert_close(loss, terms["bpr"] + 0.3 * reg)
    # with reg_norm, the penalty is on the whole user and item vectors of the score
    model = build(item_bias=False, reg_weight=0.3, reg_norm=True)
    user, item = model.branches()[FUSED]
    expected = (user[b.users].norm() + item[b.pos].norm() + item[b.neg[:, 0]].norm()) / 3
    torch.testing.assert_close(model.loss(b)[1]["reg"], expected.detach())


def test_own_loss_uses_only_the_first_negative_column():
    model = build()
    one, _ = model.loss(batch(1))
    three, _ = model.loss(batch(3))
    torch.testing.assert_close(one, three)


def test_plugin_trains_with_chns_and_synergy_terms():
    model = build()
    model.attach_plugin(PluginParams(lambda_h=1.0, lambda_s=0.5, pool_size=3))
    assert model.num_negatives == 3
    loss, terms = model.loss(batch(3))
    assert set(terms) == {"bpr", "reg", "chns", "syn"}
    own, _ = model.branch_loss(batch(3), model.branches())
    assert loss.item() == pytest.approx((own + terms["chns"] + 0.5 * terms["syn"]).item())
    loss.backward()
    assert all(p.grad.abs().sum() > 0 for p in model.proj.parameters())


def test_one_modality_trains_and_refuses_chns():
    model = build(tiny_data(1))
    assert model.modalities == ["m0"]
    model.loss(batch())[0].backward()
    with pytest.raises(ConfigError, match="two modalities"):
        model.attach_plugin(PluginParams(lambda_h=1.0))
    model.attach_plugin(PluginParams(lambda_h=0.0, lambda_s=1.0))
    assert "syn" in model.loss(batch())[1]


def test_registered_repr_and_params_validation():
    assert MODELS.get("vbpr") is VBPR and VBPR.supports_plugin
    assert str(build()) == "VBPR(5 users, 6 items, dim=4, modalities=['m0', 'm1'])"
    with pytest.raises(ConfigError, match="reg_weight"):
        resolve([("test", {"reg_weight": -1.0})], VBPR.Params)
    # principal components: E acts on feature_dim columns per modality
    assert build(feature_dim=2).proj["m1"].weight.shape == (4, 2)
