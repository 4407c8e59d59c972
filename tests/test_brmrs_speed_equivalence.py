"""BR-MRS's training step computes what it computed before its speed-ups (issue 19): the loss,
its terms and every gradient over a few Adam steps equal those of the pre-change step, kept
here as a slow reference (every branch propagated, gathered and pool-scored on its own, all
with gradient)."""
import pytest
import torch

from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.graphs import GraphSpec
from brmrs_pyg.interactions import PairIndex
from brmrs_pyg.losses import cross_modal_objective, l2_reg
from brmrs_pyg.recommenders import Batch
from brmrs_pyg.recommenders.brmrs import BRMRS
from brmrs_pyg.sampling import sample_negatives
from tests.tiny_models import build_model


def small_data(num_modalities=2, num_users=24, num_items=20):
    r"""A random interaction set big enough for pools with distinct hard negatives (and
    repeated ones: 20 items, pools of 6)."""
    gen = torch.Generator().manual_seed(3)
    users = torch.arange(num_users).repeat_interleave(4)
    items = torch.stack([torch.randperm(num_items, generator=gen)[:4] for _ in range(num_users)])
    train = torch.stack([users, items.view(-1)])
    features = {f"m{i}": torch.randn(num_items, 5 + i, generator=gen)
                for i in range(num_modalities)}
    return InteractionData(name="s", num_users=num_users, num_items=num_items, train=train,
                           valid=torch.tensor([[0], [1]]), test=torch.tensor([[1], [2]]),
                           features=features)


def channel(channels, m, user0, item0):
    r"""One modality's channel as the pre-change code ran it."""
    users, items = user0, item0
    if m in channels.ui:
        h = channels.ui[m](torch.cat([user0, item0]), channels.graph_ui, channels.weight_ui)
        users, items = h[:user0.size(0)], h[user0.size(0):]
    if m in channels.ii:
        items = items + channels.ii[m](item0, getattr(channels, f"graph_ii_{m}"),
                                       getattr(channels, f"weight_ii_{m}"))
    if m in channels.uu:
        users = users + channels.uu[m](user0, channels.graph_uu, channels.weight_uu)
    return users, items


def reference_loss(model, batch):
    r"""The pre-change BR-MRS loss: every branch separately, every pool with gradient."""
    user0, id0 = model.user_emb.weight, model.without_cold_ids(model.item_emb.weight)
    out = {}
    for m in model.modalities:
        out[m] = channel(model.channels, m, user0,
                         id0 + getattr(model, f"feat_{m}") @ model.proj[m].weight.T)
    out["fused"] = (model.user_fusion([out[m][0] for m in model.modalities]),
                    model.item_fusion([out[m][1] for m in model.modalities]))
    fused_columns = model.num_negatives if model.weights.hard_negatives == "fused" else 1
    pos, pool = {}, {}
    for name, (user, item) in out.items():
        u = user[batch.users]
        pos[name] = (u * item[batch.pos]).sum(-1)
        columns = fused_columns if name == "fused" else model.num_negatives
        pool[name] = (u[:, None] * item[batch.neg[:, :columns]]).sum(-1)
    total, terms = cross_modal_objective(pos, pool, model.weights, "fused")
    reg = l2_reg(model.user_emb.weight[batch.users], model.item_emb.weight[batch.pos],
                 model.item_emb.weight[batch.neg[:, 0]])
    return total + model.reg_weight * reg, {**terms, "reg": reg.detach()}


def assert_same_steps(model, reference, data, steps=3, seed=0, pairs=None):
    r"""``steps`` Adam steps of ``model.loss`` and of :func:`reference_loss` on ``reference``
    (an identical model), over the first ``pairs`` of ``data``'s training pairs (all by
    default): equal totals, terms and gradients at every step."""
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.05) for m in (model, reference)]
    train = PairIndex.from_edges(data.train, data.num_users, data.num_items)
    users, pos = data.train[:, :pairs]
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        neg = sample_negatives(users, train, model.num_negatives, gen)
        batch = Batch(users, pos, neg)
        results = [model.loss(batch), reference_loss(reference, batch)]
        (total, terms), (expected, expected_terms) = results
        assert total.item() == pytest.approx(expected.item(), rel=1e-6), step
        assert set(terms) == set(expected_terms)
        for key, value in terms.items():
            assert value.item() == pytest.approx(expected_terms[key].item(), rel=1e-6,
                                                 abs=1e-7), (step, key)
        for optimizer, loss in zip(optimizers, (total, expected)):
            optimizer.zero_grad()
            loss.backward()
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7,
                                           msg=f"step {step}, gradient of {name}")
        for optimizer in optimizers:
            optimizer.step()


def build_twice(data, spec=None, **overrides):
    r"""Two identical BR-MRS models on ``data`` (the same seed)."""
    return [build_model(BRMRS, data, spec or GraphSpec(knn_k=3),
                        **{"pool_size": 6, **overrides})[0] for _ in range(2)]


@pytest.mark.parametrize("overrides", [
    {},
    {"hard_k": 2, "theta": 0.3, "syn_ref_grad": False},
    {"hard_negatives": "fused"},
    {"hard_negatives": "m1", "hard_k": 3},
    {"hard_negatives": "uniform"},
    {"lambda_h": 0.0},
    {"lambda_s": 0.0, "lambda_bpr": 0.5},
    {"fusion": "concat", "num_layers": 2, "ii_layers": 2},
    {"fusion": "gate", "ii_graphs": "m0"},
    {"fusion": "mlp"},
    {"fusion": "bilinear", "hard_negatives": "fused"},
    {"ui_graph": False},
    {"backbone": "gcn"},
    {"backbone": "sage"},
])
def test_loss_and_gradients_equal_the_pre_change_step(overrides):
    data = small_data()
    assert_same_steps(*build_twice(data, **overrides), data)


@pytest.mark.parametrize("overrides", [{}, {"hard_negatives": "fused"}, {"fusion": "mlp"}])
def test_a_batch_with_fewer_rows_than_items_equals_the_pre_change_step(overrides):
    # 3 pairs: the fused branch's rows are gathered (6, or 15 with hard_negatives=fused),
    # not fused over the whole 20-item table as with all 96 pairs
    data = small_data()
    assert_same_steps(*build_twice(data, **overrides), data, pairs=3)


def test_three_modalities_user_graph_and_cold_items_equal_the_pre_change_step():
    data = small_data(num_modalities=3)
    models = build_twice(data, GraphSpec(knn_k=3, uu_k=3), pool_size=5)
    cold = torch.zeros(data.num_items, dtype=torch.bool)
    cold[[7, 11]] = True  # the pairs are kept: cold rows only zero the ID table here
    for model in models:
        model.set_cold_items(cold)
    assert_same_steps(*models, data)


def test_scaled_spmm_bipartite_blocks_and_sampled_dot_match_dense_products():
    from brmrs_pyg.nn.sparse import bipartite_blocks, sampled_dot, spmm, to_adj_t

    # users 0-1, items 2-4 (node ids), a symmetric user-item graph
    edges = torch.tensor([[0, 0, 1, 2, 3, 4], [2, 3, 4, 0, 0, 1]])
    weight = torch.tensor([0.5, 0.25, 1.0, 0.5, 0.25, 1.0])
    adj = to_adj_t(edges, weight, 5)
    dense = adj.to_dense()
    x = torch.randn(5, 3, requires_grad=True)
    out = spmm(adj, x, 0.3)
    out.sum().backward()
    torch.testing.assert_close(out, 0.3 * dense @ x.detach())
    torch.testing.assert_close(x.grad, 0.3 * dense.T @ torch.ones(5, 3))
    to_users, to_items = bipartite_blocks(adj, 2)
    torch.testing.assert_close(to_users.to_dense(), dense[:2, 2:])
    torch.testing.assert_close(to_items.to_dense(), dense[2:, :2])
    assert bipartite_blocks(to_adj_t(torch.tensor([[0], [1]]), torch.ones(1), 5), 2) is None
    rows, table = torch.randn(2, 3), torch.randn(4, 3)
    for index in (torch.tensor([[3, 0, 3], [1, 1, 2]]), torch.tensor([[1, 0, 1, 1, 3]])):
        torch.testing.assert_close(sampled_dot(rows[:index.size(0)], table[:index.max() + 1],
                                               index),
                                   (rows[:index.size(0), None] * table[index]).sum(-1))


@pytest.mark.parametrize("num_items", [5, 2])  # 2: more candidates per row than items
def test_sampled_block_scores_match_the_gathered_products_and_their_gradients(num_items):
    from brmrs_pyg.nn.sparse import sampled_block_scores

    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 6, generator=gen, requires_grad=True)
    table = torch.randn(num_items, 6, generator=gen, requires_grad=True)
    # repeated and unsorted candidates
    index = torch.tensor([[4, 0, 4], [1, 1, 3], [2, 0, 1]]) % num_items
    weight = torch.randn(3, 3, 2, generator=gen)
    out = sampled_block_scores(rows, table, index, 2)
    (out * weight).sum().backward()
    grads = rows.grad.clone(), table.grad.clone()
    rows.grad = table.grad = None
    blocks = table[index].view(3, 3, 2, 3) * rows.view(3, 1, 2, 3)
    expected = blocks.sum(-1)
    (expected * weight).sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grads[0], rows.grad)
    torch.testing.assert_close(grads[1], table.grad)


@pytest.mark.parametrize("bound", [7, 2**15, 2**15 + 1])
def test_stable_order_is_torchs_stable_argsort(bound):
    from brmrs_pyg.nn.sparse import _stable_order
    keys = torch.randint(0, bound, (5000,), generator=torch.Generator().manual_seed(bound))
    keys[:3] = bound - 1  # the largest key, repeated
    got = _stable_order(keys, bound)
    assert got.dtype == torch.long
    assert torch.equal(got, torch.argsort(keys, stable=True))
