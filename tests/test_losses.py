import math

import pytest
import torch

from brmrs_pyg.losses import (
    CrossModalWeights,
    bootstrap_loss,
    bpr_loss,
    chns_loss,
    cross_modal_objective,
    hard_negative_loss,
    infonce_loss,
    l2_reg,
    orthogonality_loss,
    synergy_loss,
)
from brmrs_pyg.sampling import hardest_in_pool


def test_bpr_hand_computed():
    pos = torch.tensor([2.0, 0.0, -1.0])
    neg = torch.tensor([1.0, 0.0, 1.0])
    expected = -(math.log(1 / (1 + math.exp(-1))) + math.log(0.5)
                 + math.log(1 / (1 + math.exp(2)))) / 3
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_bpr_several_negatives_broadcast():
    pos = torch.tensor([1.0, 2.0])
    neg = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    diffs = [1.0, 0.0, 0.0, -1.0]
    expected = -sum(math.log(1 / (1 + math.exp(-d))) for d in diffs) / 4
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_bpr_is_stable_for_large_margins():
    loss = bpr_loss(torch.tensor([-200.0]), torch.tensor([0.0]))
    assert loss.item() == pytest.approx(200.0)


def test_l2_reg_hand_computed():
    u = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    i = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # (1 + 4 + 0 + 1 + 9 + 0 + 1 + 1) / (2 * 2)
    assert l2_reg(u, i).item() == pytest.approx(17 / 4)


# --- BR-MRS losses on a hand-worked case -------------------------------------------------
# 3 users, 5 items, two modalities, 1-d embeddings so that every score is a product:
#   text   p_t = [1, 2, -1],  q_t = [0.5, -1, 2, 0, 1]
#   visual p_v = [2, -1, 1],  q_v = [1, 0.5, -0.5, 2, 0]
#   fused (mean phi) p_f = [1.5, 0.5, 0], q_f = [0.75, -0.25, 0.75, 1, 0.5]
# positives u0->0, u1->2, u2->3; pools (training items excluded) u0 [1,2,3], u1 [0,3,4],
# u2 [0,1,4]; column 0 of each pool is the uniform negative.
P_T, Q_T = torch.tensor([1.0, 2, -1]), torch.tensor([0.5, -1, 2, 0, 1])
P_V, Q_V = torch.tensor([2.0, -1, 1]), torch.tensor([1.0, 0.5, -0.5, 2, 0])
POS = torch.tensor([0, 2, 3])
POOL = torch.tensor([[1, 2, 3], [0, 3, 4], [0, 1, 4]])


def hand_scores():
    p_f, q_f = (P_T + P_V) / 2, (Q_T + Q_V) / 2
    pos = {b: p * q[POS] for b, (p, q) in
           {"text": (P_T, Q_T), "visual": (P_V, Q_V), "fused": (p_f, q_f)}.items()}
    pool = {b: p[:, None] * q[POOL] for b, (p, q) in
            {"text": (P_T, Q_T), "visual": (P_V, Q_V), "fused": (p_f, q_f)}.items()}
    return pos, pool


def softplus_neg(xs):
    r""":math:`-\log\sigma(x) = \log(1 + e^{-x})`, averaged, in plain Python."""
    return sum(math.log1p(math.exp(-x)) for x in xs) / len(xs)


def test_hand_scores_are_the_ones_worked_out():
    pos, pool = hand_scores()
    assert pos["text"].tolist() == [0.5, 4.0, 0.0]
    assert pos["visual"].tolist() == [2.0, 0.5, 2.0]
    assert pool["text"].tolist() == [[-1.0, 2.0, 0.0], [1.0, 0.0, 2.0], [-0.5, 1.0, -1.0]]
    assert pool["visual"].tolist() == [[1.0, -1.0, 4.0], [-1.0, -2.0, 0.0], [1.0, 0.5, 0.0]]


def test_chns_hand_computed():
    pos, pool = hand_scores()
    # hardest under text: u0 item 2, u1 item 4, u2 item 1; under visual: items 3, 4, 0.
    # text is trained on visual's hardest: s_t = 0, 2, -0.5 -> margins 0.5, 2, 0.5;
    # visual on text's hardest: s_v = -1, 0, 0.5 -> margins 3, 0.5, 1.5.
    expected = softplus_neg([0.5, 2, 0.5]) + softplus_neg([3, 0.5, 1.5])
    got = chns_loss({m: pos[m] for m in ("text", "visual")},
                    {m: pool[m] for m in ("text", "visual")})
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_synergy_hand_computed():
    pos, pool = hand_scores()
    # uniform negatives (pool column 0): u0 item 1, u1 item 0, u2 item 0
    # fused margins D_f = 1.5, 0, 0; text D_t = 1.5, 3, 0.5; visual D_v = 1, 1.5, 1
    # best unimodal 1.5, 3, 1 -> arguments D_f - max - 0.1 = -0.1, -3.1, -1.1
    expected = softplus_neg([-0.1, -3.1, -1.1])
    got = synergy_loss(pos["fused"], pool["fused"][:, 0],
                       {m: pos[m] for m in ("text", "visual")},
                       {m: pool[m][:, 0] for m in ("text", "visual")}, theta=0.1)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_objective_hand_computed_and_weighted():
    pos, pool = hand_scores()
    weights = CrossModalWeights(lambda_bpr=0.5, lambda_h=2.0, lambda_s=3.0, theta=0.1)
    total, terms = cross_modal_objective(pos, pool, weights)
    bpr = softplus_neg([1.5, 0, 0])
    chns = softplus_neg([0.5, 2, 0.5]) + softplus_neg([3, 0.5, 1.5])
    syn = softplus_neg([-0.1, -3.1, -1.1])
    assert terms["bpr"].item() == pytest.approx(bpr, rel=1e-6)
    assert terms["chns"].item() == pytest.approx(chns, rel=1e-6)
    assert terms["syn"].item() == pytest.approx(syn, rel=1e-6)
    assert total.item() == pytest.approx(0.5 * bpr + 2 * chns + 3 * syn, rel=1e-6)
    # zero weights skip their terms
    _, terms = cross_modal_objective(pos, pool, CrossModalWeights(lambda_h=0, lambda_s=0))
    assert set(terms) == {"bpr"}


def test_balanced_objective_scales_each_term_to_the_fused_bpr():
    # balance: CHNS and synergy are scaled by the constants bpr/chns and bpr/syn of the same
    # step, so the value is (0.5 + 2 + 3) * bpr and each term's gradient is its own times
    # that constant; checked against the plain objective's terms with the hand factors
    pos, pool = hand_scores()
    bpr = softplus_neg([1.5, 0, 0])
    chns = softplus_neg([0.5, 2, 0.5]) + softplus_neg([3, 0.5, 1.5])
    syn = softplus_neg([-0.1, -3.1, -1.1])
    leaves = {b: (pos[b].clone().requires_grad_(), pool[b].clone().requires_grad_())
              for b in pos}
    weights = CrossModalWeights(lambda_bpr=0.5, lambda_h=2.0, lambda_s=3.0, theta=0.1,
                                balance=True)
    total, terms = cross_modal_objective({b: p for b, (p, _) in leaves.items()},
                                         {b: q for b, (_, q) in leaves.items()}, weights)
    assert total.item() == pytest.approx(5.5 * bpr, rel=1e-6)
    assert terms["chns"].item() == pytest.approx(chns, rel=1e-6)  # logged unscaled
    grads = torch.autograd.grad(total, [t for pair in leaves.values() for t in pair])
    # the same gradient from the unbalanced objective's terms, weighted by hand
    plain = {b: (pos[b].clone().requires_grad_(), pool[b].clone().requires_grad_())
             for b in pos}
    by_term = {}
    for name, w in (("bpr", (1.0, 0, 0)), ("chns", (0, 1.0, 0)), ("syn", (0, 0, 1.0))):
        value, _ = cross_modal_objective(
            {b: p for b, (p, _) in plain.items()}, {b: q for b, (_, q) in plain.items()},
            CrossModalWeights(*w, theta=0.1))
        by_term[name] = torch.autograd.grad(value, [t for pair in plain.values() for t in pair],
                                            allow_unused=True)
    factors = {"bpr": 0.5, "chns": 2.0 * bpr / chns, "syn": 3.0 * bpr / syn}
    for j, got in enumerate(grads):
        expected = sum(factors[n] * (g[j] if g[j] is not None else 0) for n, g in by_term.items())
        assert torch.allclose(got, torch.as_tensor(expected, dtype=got.dtype), atol=1e-6)
    # without the fused BPR there is nothing to scale to
    with pytest.raises(ValueError, match="lambda_bpr is 0"):
        cross_modal_objective(pos, pool, CrossModalWeights(lambda_bpr=0, balance=True))


def naive_chns(pos, pool, k):
    r"""CHNS with Python loops over samples, modalities and ranks."""
    names = list(pool)
    total = 0.0
    for m in names:
        per_other = []
        for o in names:
            if o == m:
                continue
            losses = []
            for b in range(pool[o].size(0)):
                order = sorted(range(pool[o].size(1)), key=lambda j: -pool[o][b, j].item())
                for j in order[:k]:
                    losses.append(math.log1p(math.exp(-(pos[m][b] - pool[m][b, j]).item())))
            per_other.append(sum(losses) / len(losses))
        total += sum(per_other) / len(per_other)
    return total


@pytest.mark.parametrize("num_modalities,k", [(2, 1), (2, 4), (3, 1), (3, 3)])
def test_chns_matches_naive_loop(num_modalities, k):
    torch.manual_seed(num_modalities * 10 + k)
    names = [f"m{i}" for i in range(num_modalities)]
    pos = {m: torch.randn(7) for m in names}
    # distinct scores, so the top-k set is unique
    pool = {m: torch.randperm(60)[:7 * 6].view(7, 6).float() / 10 for m in names}
    assert chns_loss(pos, pool, k).item() == pytest.approx(naive_chns(pos, pool, k), rel=1e-5)


def test_hard_negative_sources_hand_computed():
    pos, pool = hand_scores()
    modal_pos = {m: pos[m] for m in ("text", "visual")}
    modal_pool = {m: pool[m] for m in ("text", "visual")}
    # fused pool scores whose hardest are positions 2, 1, 0 (items 3, 3, 0): text scores
    # there 0, 0, -0.5 -> margins 0.5, 4, 0.5; visual 4, -2, 1 -> margins -2, 2.5, 1
    fused = torch.tensor([[-0.4, 1.1, 1.5], [0.4, 0.5, 0.2], [0.3, 0.1, 0.2]])
    expected = softplus_neg([0.5, 4, 0.5]) + softplus_neg([-2, 2.5, 1])
    got = hard_negative_loss(modal_pos, modal_pool, "fused", fused_pool=fused)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # "text": both trained on text's hardest (positions 1, 2, 1): text margins -1.5, 2, -1;
    # visual scores there -1, 0, 0.5 -> margins 3, 0.5, 1.5
    expected = softplus_neg([-1.5, 2, -1]) + softplus_neg([3, 0.5, 1.5])
    got = hard_negative_loss(modal_pos, modal_pool, "text")
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # uniform: column 0 for both, whatever k: text margins 1.5, 3, 0.5; visual 1, 1.5, 1
    expected = softplus_neg([1.5, 3, 0.5]) + softplus_neg([1, 1.5, 1])
    for k in (1, 3):
        got = hard_negative_loss(modal_pos, modal_pool, "uniform", k=k)
        assert got.item() == pytest.approx(expected, rel=1e-6)
    # chns is chns_loss
    assert hard_negative_loss(modal_pos, modal_pool, "chns").item() == pytest.approx(
        chns_loss(modal_pos, modal_pool).item())


def naive_hard_negatives(pos, pool, selector, k):
    r"""Every modality trained on the top-k of the ``selector`` scores, in Python loops."""
    total = 0.0
    for m in pool:
        losses = []
        for b in range(selector.size(0)):
            order = sorted(range(selector.size(1)), key=lambda j: -selector[b, j].item())
            for j in order[:k]:
                losses.append(math.log1p(math.exp(-(pos[m][b] - pool[m][b, j]).item())))
        total += sum(losses) / len(losses)
    return total


@pytest.mark.parametrize("source,k", [("fused", 1), ("fused", 3), ("m1", 2), ("uniform", 2)])
def test_hard_negative_sources_match_naive_loop(source, k):
    torch.manual_seed(k)
    names = ["m0", "m1", "m2"]
    pos = {m: torch.randn(7) for m in names}
    pool = {m: torch.randperm(60)[:7 * 6].view(7, 6).float() / 10 for m in names}
    fused = torch.randperm(60)[:7 * 6].view(7, 6).float() / 10
    if source == "uniform":  # column 0 only: the selector ranks it first
        selector, k_used = -torch.arange(6.0).expand(7, 6), 1
    else:
        selector, k_used = (fused if source == "fused" else pool[source]), k
    got = hard_negative_loss(pos, pool, source, k, fused_pool=fused)
    assert got.item() == pytest.approx(naive_hard_negatives(pos, pool, selector, k_used),
                                       rel=1e-5)


def test_hard_negative_sources_reject_bad_inputs():
    pos, pool = {"a": torch.zeros(2)}, {"a": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match="choose one of chns, fused, uniform, a"):
        hard_negative_loss(pos, pool, "b")
    with pytest.raises(ValueError, match="fused scores of the whole pool"):
        hard_negative_loss(pos, pool, "fused", fused_pool=torch.zeros(2, 1))
    # one modality is enough without the cross-modal assignment
    assert hard_negative_loss(pos, pool, "a").item() == pytest.approx(math.log(2))
    weights = CrossModalWeights(hard_negatives="fused")
    scores = {"a": torch.zeros(2), "b": torch.zeros(2), "fused": torch.zeros(2)}
    pools = {"a": torch.zeros(2, 3), "b": torch.zeros(2, 3), "fused": torch.zeros(2, 1)}
    with pytest.raises(ValueError, match="fused scores of the whole pool"):
        cross_modal_objective(scores, pools, weights)


def test_top_k_selection_equals_brute_force():
    torch.manual_seed(0)
    scores = torch.randn(50, 12)
    got = hardest_in_pool(scores, k=4)
    for row, picked in zip(scores.tolist(), got.tolist()):
        brute = sorted(range(12), key=lambda j: -row[j])[:4]
        assert sorted(picked) == sorted(brute)


def test_hard_selection_carries_no_gradient_but_the_loss_does():
    pool = torch.randn(5, 4, requires_grad=True)
    assert not hardest_in_pool(pool, 2).requires_grad
    pos = {"a": torch.randn(5, requires_grad=True), "b": torch.randn(5, requires_grad=True)}
    pools = {"a": pool, "b": torch.randn(5, 4, requires_grad=True)}
    chns_loss(pos, pools, 2).backward()
    assert pool.grad is not None and pool.grad.abs().sum() > 0
    # only the selected candidates of modality a (picked by b) receive gradient
    assert int((pool.grad != 0).sum(1).max()) <= 2


def test_chns_and_synergy_reject_bad_inputs():
    with pytest.raises(ValueError, match=">= 2 modalities"):
        chns_loss({"a": torch.zeros(2)}, {"a": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="k must lie"):
        hardest_in_pool(torch.zeros(2, 3), k=4)
    with pytest.raises(ValueError, match="same modalities"):
        synergy_loss(torch.zeros(2), torch.zeros(2), {"a": torch.zeros(2)}, {}, theta=0.1)


@pytest.mark.parametrize("reference_grad", [False, True])
def test_synergy_reference_gradient_option(reference_grad):
    r"""The option decides whether the unimodal branches get gradient from L_syn."""
    torch.manual_seed(0)
    branch = {b: torch.randn(4, 3, requires_grad=True) for b in ("text", "visual", "fused")}
    user = torch.randn(4, 3)

    def scores(b, shift):
        return (user * branch[b].roll(shift, 0)).sum(-1)

    loss = synergy_loss(scores("fused", 0), scores("fused", 1),
                        {m: scores(m, 0) for m in ("text", "visual")},
                        {m: scores(m, 1) for m in ("text", "visual")}, theta=0.2,
                        reference_grad=reference_grad)
    loss.backward()
    assert branch["fused"].grad is not None and branch["fused"].grad.abs().sum() > 0
    unimodal = [branch[m].grad for m in ("text", "visual")]
    if reference_grad:
        # the reference is a max: exactly the winning modality of each triple gets gradient
        assert sum(float(g.abs().sum()) for g in unimodal if g is not None) > 0
    else:
        assert all(g is None for g in unimodal)


def test_bootstrap_loss_by_hand_and_stop_gradient():
    online = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0], [0.0, -3.0]], requires_grad=True)
    # cosines 1/sqrt(2) and -1: loss = 1 - (0.70711 - 1) / 2
    loss = bootstrap_loss(online, target)
    assert loss.item() == pytest.approx(1 + (1 - 0.5 ** 0.5) / 2, rel=1e-6)
    loss.backward()
    assert target.grad is None  # stop-gradient on the target
    # d/d online[0] of -cos/2 at (1, 0) against (1, 1): -(1/2) * (0, 1/sqrt(2))
    assert torch.allclose(online.grad[0], torch.tensor([0.0, -0.5 * 0.5 ** 0.5]))
    # scale invariance, and 0 for identical directions
    assert bootstrap_loss(3 * online, target).item() == pytest.approx(loss.item(), rel=1e-6)
    assert bootstrap_loss(online, 2 * online).item() == pytest.approx(0.0, abs=1e-6)


def test_norm_penalty_is_the_sum_of_table_norms_over_the_last_tables_rows():
    from brmrs_pyg.losses import norm_penalty
    a = torch.tensor([[3.0, 4.0]])            # norm 5
    b = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [2.0, 0.0]])  # norm 3, 4 rows
    torch.testing.assert_close(norm_penalty(a, b), torch.tensor(8.0 / 4))



def test_mean_square_averages_each_tensor_over_its_own_entries():
    from brmrs_pyg.losses import mean_square
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])   # squares 1, 4, 9, 16: mean 7.5
    b = torch.tensor([[2.0, 0.0, 0.0]])           # squares 4, 0, 0: mean 4/3
    torch.testing.assert_close(mean_square(a, b), torch.tensor(7.5 + 4 / 3))
    torch.testing.assert_close(mean_square(b), torch.tensor(4 / 3))

# --- InfoNCE and orthogonality -------------------------------------------------------------

def naive_infonce(a, b, tau):
    """One row at a time: -log of the positive's share of exp(cos / tau) over b's rows."""
    total = 0.0
    for r in range(a.size(0)):
        sims = [torch.nn.functional.cosine_similarity(a[r], b[c], dim=0).item() / tau
                for c in range(b.size(0))]
        total += -(sims[r] - math.log(sum(math.exp(x) for x in sims)))
    return total / a.size(0)


def test_infonce_matches_a_naive_loop():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    one_way = infonce_loss(a, b, tau=0.3, symmetric=False).item()
    assert one_way == pytest.approx(naive_infonce(a, b, 0.3), rel=1e-5)
    assert one_way != pytest.approx(naive_infonce(b, a, 0.3), rel=1e-3)
    both = (naive_infonce(a, b, 0.3) + naive_infonce(b, a, 0.3)) / 2
    assert infonce_loss(a, b, tau=0.3).item() == pytest.approx(both, rel=1e-5)


def test_infonce_hand_value_and_scale_invariance():
    # cos = identity on two orthogonal rows: -log(e^(1/tau) / (e^(1/tau) + 1)), tau = 0.5
    x = torch.eye(2)
    assert infonce_loss(x, 3 * x, tau=0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))
    with pytest.raises(ValueError, match="tau"):
        infonce_loss(x, x, tau=0.0)
    with pytest.raises(ValueError, match="same shape"):
        infonce_loss(x, x[:1], tau=1.0)


def test_orthogonality_zero_for_orthogonal_inputs():
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen))
    # columns of S span basis[:, :2], columns of P span basis[:, 2:5]: S^T P = 0
    shared = basis[:, :2] @ torch.randn(2, 4, generator=gen)
    specific = basis[:, 2:5] @ torch.randn(3, 3, generator=gen)
    assert orthogonality_loss(shared, specific).item() == pytest.approx(0.0, abs=1e-6)
    assert orthogonality_loss(shared, shared[:, :3]).item() > 0.1


def test_orthogonality_hand_value_bounds_and_scale():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    p = torch.tensor([[1.0], [2.0]])
    # S^T P = [3, 2]: 13 / (||S||^2 ||P||^2) = 13 / (3 * 5)
    assert orthogonality_loss(s, p).item() == pytest.approx(13 / 15)
    assert orthogonality_loss(10 * s, 0.1 * p).item() == pytest.approx(13 / 15, rel=1e-5)
    v = torch.tensor([[1.0], [2.0], [-1.0]])
    assert orthogonality_loss(v @ torch.tensor([[1.0, 2.0]]), -v).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same rows"):
        orthogonality_loss(s, p[:1])


def test_infonce_with_index_matches_a_naive_loop_over_the_whole_table():
    gen = torch.Generator().manual_seed(1)
    anchors, table = torch.randn(4, 3, generator=gen), torch.randn(6, 3, generator=gen)
    index = torch.tensor([2, 0, 2, 5])
    expected = 0.0
    for r in range(4):
        sims = [torch.nn.functional.cosine_similarity(anchors[r], table[c], dim=0).item() / 0.2
                for c in range(6)]
        expected += -(sims[int(index[r])] - math.log(sum(math.exp(x) for x in sims)))
    got = infonce_loss(anchors, table, 0.2, symmetric=False, index=index, reduction="sum")
    assert got.item() == pytest.approx(expected, rel=1e-5)
    mean = infonce_loss(anchors, table, 0.2, symmetric=False, index=index)
    assert mean.item() == pytest.approx(expected / 4, rel=1e-5)
    with pytest.raises(ValueError, match="symmetric=False"):
        infonce_loss(anchors, table, 0.2, index=index)
    with pytest.raises(ValueError, match="reduction"):
        infonce_loss(anchors, anchors, 0.2, reduction="max")


def test_infonce_reduction_none_gives_one_loss_per_anchor():
    gen = torch.Generator().manual_seed(2)
    anchors, table = torch.randn(3, 4, generator=gen), torch.randn(5, 4, generator=gen)
    index = torch.tensor([4, 1, 1])
    each = infonce_loss(anchors, table, 0.5, symmetric=False, index=index, reduction="none")
    assert each.shape == (3,)
    total = infonce_loss(anchors, table, 0.5, symmetric=False, index=index, reduction="sum")
    assert each.sum().item() == pytest.approx(total.item(), rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        infonce_loss(anchors, anchors, 0.5, reduction="none")
