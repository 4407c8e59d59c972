"""LATTICE: learned and raw kNN graphs, their mixing, the per-epoch rebuild, loss and plug-in."""
import pytest
import torch
import torch.nn.functional as F

from brmrs_pyg.config import ConfigError, resolve
from brmrs_pyg.losses import bpr_loss
from brmrs_pyg.recommenders import LATTICE, Batch
from brmrs_pyg.recommenders.branched import FUSED, PluginParams
from brmrs_pyg.recommenders.lattice import LATTICEParams
from tests.test_freedom import dense_sym_norm, dense_ui, tiny


def dense_weighted_knn(x, k):
    """LATTICE's reference construction: full cosine matrix, top-k per row (self included)
    keeping the similarities, then D^-1/2 A D^-1/2 with row sums."""
    xn = F.normalize(x, dim=1)
    sim = xn @ xn.T
    val, idx = sim.topk(k, dim=1)
    return dense_sym_norm(torch.zeros_like(sim).scatter_(1, idx, val))


def model(**overrides):
    graph, pairs, feats = tiny()
    params = resolve([("test", overrides)], LATTICEParams).model
    torch.manual_seed(0)
    return LATTICE.from_data(params, graph, feats, embedding_dim=4), pairs, feats


def dense_expected(m, pairs, feats, lam):
    """Final user/item embeddings and per-modality item embeddings from dense matrices."""
    with torch.no_grad():
        ego = torch.cat([m.user_emb.weight, m.item_emb.weight])
        ui = dense_ui(pairs)
        out = (ego + ui @ ego + ui @ ui @ ego) / 3
        users, items = out[:6], out[6:]
        a_m = {}
        for name in ("text", "image"):
            learned = dense_weighted_knn(m.proj[name](feats[name]), 2)
            a_m[name] = (1 - lam) * learned + lam * dense_weighted_knn(feats[name], 2)
        alpha = torch.softmax(m.modal_weight, 0)
        a = alpha[0] * a_m["text"] + alpha[1] * a_m["image"]
        e = m.item_emb.weight
        per = {name: items + F.normalize(g @ e, dim=1) for name, g in a_m.items()}
        return users, items + F.normalize(a @ e, dim=1), per


def test_forward_matches_dense_reference():
    m, pairs, feats = model(lambda_coeff=0.3)
    with torch.no_grad():
        m.modal_weight.copy_(torch.tensor([0.2, -0.4]))  # unequal softmax weights
    m.eval()
    users, items, per = dense_expected(m, pairs, feats, 0.3)
    with torch.no_grad():
        branches = m.branches()
    assert list(branches) == ["text", "image", FUSED]
    torch.testing.assert_close(branches[FUSED][0], users)
    torch.testing.assert_close(branches[FUSED][1], items)
    for name in ("text", "image"):
        torch.testing.assert_close(branches[name][0], users)
        torch.testing.assert_close(branches[name][1], per[name])
    # the mixing direction matters: lambda weights the raw-feature graph
    _, items_swapped, _ = dense_expected(m, pairs, feats, 0.7)
    assert not torch.allclose(items, items_swapped)


def test_graph_learning_gets_gradient_at_the_first_step_of_an_epoch_only():
    m, _, _ = model()
    m.train()
    m.start_epoch()
    batch = Batch(torch.tensor([0, 2, 5]), torch.tensor([1, 0, 3]), torch.tensor([[3], [4], [1]]))
    m.loss(batch)[0].backward()
    learners = [m.proj["text"].weight, m.proj["image"].weight, m.modal_weight]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learners)
    m.zero_grad(set_to_none=True)
    # the epoch's later steps reuse the same graphs, detached, as sparse matrices
    cached = m.branches()[FUSED][1]
    m.eval()
    torch.testing.assert_close(cached, m.branches()[FUSED][1])  # same weights: same graphs
    m.train()
    m.loss(batch)[0].backward()
    assert all(p.grad is None for p in learners)
    assert m.item_emb.weight.grad.abs().sum() > 0
    m.zero_grad(set_to_none=True)
    m.start_epoch()
    m.loss(batch)[0].backward()
    assert all(p.grad is not None for p in learners)


def test_evaluation_rebuilds_from_current_projections():
    m, pairs, feats = model()
    m.train()
    m.start_epoch()
    m.loss(Batch(torch.tensor([0]), torch.tensor([1]), torch.tensor([[3]])))
    with torch.no_grad():
        for name in ("text", "image"):
            m.proj[name].weight.normal_()
        stale = m.branches()[FUSED][1]
        m.eval()
        fresh = m.branches()[FUSED][1]
    _, expected, _ = dense_expected(m, pairs, feats, 0.9)
    torch.testing.assert_close(fresh, expected)
    assert not torch.allclose(stale, fresh)


def test_loss_is_bpr_plus_l2_of_final_embeddings_on_column_zero():
    m, _, _ = model(reg_weight=0.1)
    batch = Batch(torch.tensor([0, 2, 5]), torch.tensor([1, 0, 3]),
                  torch.tensor([[3, 0], [4, 1], [1, 2]]))
    total, terms = m.loss(batch)
    user, item = m.branches()[FUSED]
    u, p, n = user[batch.users], item[batch.pos], item[batch.neg[:, 0]]
    reg = (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 6
    torch.testing.assert_close(total, bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + 0.1 * reg)
    assert set(terms) == {"bpr", "reg"}


def test_plugin_trains_with_chns_and_synergy_terms():
    m, _, _ = model()
    m.attach_plugin(PluginParams(pool_size=3, lambda_s=0.5))
    m.train()
    m.start_epoch()
    batch = Batch(torch.tensor([0, 2, 5]), torch.tensor([1, 0, 3]),
                  torch.tensor([[3, 0, 1], [4, 1, 2], [1, 2, 0]]))
    total, terms = m.loss(batch)
    assert set(terms) == {"bpr", "reg", "chns", "syn"}
    total.backward()
    assert m.proj["text"].weight.grad.abs().sum() > 0


def test_config_checks():
    with pytest.raises(ConfigError, match="lambda_coeff"):
        LATTICEParams(lambda_coeff=1.5)
    m, _, _ = model()
    assert "LATTICE(6 users, 5 items" in str(m) and "knn_k=2" in str(m)
