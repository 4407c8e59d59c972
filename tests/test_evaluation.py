import math

import pytest
import torch

from brmrs_pyg.evaluation import Evaluator
from brmrs_pyg.interactions import PairIndex


def naive_per_user(scores, train, heldout, ks, candidates=None):
    """Per-user loop straight from the definitions (DESIGN.md section 4): ``{key: {user:
    value}}`` for the users that are evaluated; with ``candidates`` (a set) only those items
    are ranked."""
    out = {f"{m}@{k}": {} for m in ("recall", "ndcg", "precision", "map") for k in ks}
    for u in range(scores.size(0)):
        if not heldout.get(u) or not train.get(u):
            continue
        ranked = [i for i in sorted(range(scores.size(1)), key=lambda i: -scores[u, i].item())
                  if i not in train[u] and (candidates is None or i in candidates)]
        pos = heldout[u]
        for k in ks:
            hits = [1.0 if i in pos else 0.0 for i in ranked[:k]]
            out[f"recall@{k}"][u] = sum(hits) / len(pos)
            out[f"precision@{k}"][u] = sum(hits) / k
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(pos), k)))
            out[f"ndcg@{k}"][u] = dcg / idcg
            ap, found = 0.0, 0
            for r, h in enumerate(hits):
                if h:
                    found += 1
                    ap += found / (r + 1)
            out[f"map@{k}"][u] = ap / min(len(pos), k)
    return out


def naive_metrics(scores, train, heldout, ks):
    """The per-user values of :func:`naive_per_user`, averaged."""
    per_user = naive_per_user(scores, train, heldout, ks)
    return {key: sum(v.values()) / len(v) for key, v in per_user.items()}


def random_case(seed, num_users=9, num_items=30):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(num_users, num_items, generator=gen)
    perm = [torch.randperm(num_items, generator=gen).tolist() for _ in range(num_users)]
    train = {u: set(perm[u][:4]) for u in range(num_users - 1)}
    heldout = {u: set(perm[u][4:4 + 1 + u % 4]) for u in range(num_users) if u % 5 != 3}
    return scores, train, heldout


def to_index(pairs, num_users, num_items):
    users = [u for u, items in pairs.items() for _ in items]
    items = [i for items in pairs.values() for i in items]
    return PairIndex.from_edges(torch.tensor([users, items], dtype=torch.long), num_users,
                                num_items)


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_metrics_match_naive_loop(chunk_size):
    gen = torch.Generator().manual_seed(0)
    num_users, num_items, ks = 9, 30, (1, 3, 5, 10)
    scores = torch.randn(num_users, num_items, generator=gen)
    perm = [torch.randperm(num_items, generator=gen).tolist() for _ in range(num_users)]
    # user 0 has 12 held-out items, more than every K; user 7 has none (skipped);
    # user 8 has no training item (skipped)
    train = {u: set(perm[u][:4]) for u in range(num_users - 1)}
    heldout = {u: set(perm[u][4:4 + (12 if u == 0 else 1 + u % 3)]) for u in range(7)}
    heldout[8] = {perm[8][0]}
    ev = Evaluator(to_index(train, num_users, num_items), to_index(heldout, num_users, num_items),
                   chunk_size=chunk_size, ks=ks)
    result = ev.evaluate(lambda users: scores[users])
    expected = naive_metrics(scores, train, heldout, ks)
    assert result.num_users == 7
    assert set(result.metrics) == set(expected)
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-6), key


def test_hand_computed_case():
    # one user, items 0..4, item 4 is a training item and scores highest (must be masked)
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.3, 5.0]])
    ev = Evaluator(to_index({0: {4}}, 1, 5), to_index({0: {2, 3}}, 1, 5), ks=(1, 2, 3))
    m = ev.evaluate(lambda users: scores[users]).metrics
    # ranking without item 4: 0, 2, 3, 1 -> hits 0, 1, 1
    assert m["recall@1"] == 0.0 and m["recall@2"] == 0.5 and m["recall@3"] == 1.0
    assert m["precision@3"] == pytest.approx(2 / 3)
    idcg2 = 1 + 1 / math.log2(3)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / idcg2)
    assert m["map@3"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_topk_lists_and_tie_rate():
    scores = torch.zeros(2, 60)  # an untrained constant model: every list is a tie
    ev = Evaluator(to_index({0: {0}, 1: {1}}, 2, 60), to_index({0: {5}, 1: {6}}, 2, 60))
    result = ev.evaluate(lambda users: scores[users], return_topk=True)
    assert result.tie_rate == 1.0
    assert result.topk.shape == (2, 50)
    assert 0 not in result.topk[0].tolist() and 1 not in result.topk[1].tolist()


def test_scorer_shape_is_checked():
    ev = Evaluator(to_index({0: {0}}, 1, 4), to_index({0: {1}}, 1, 4), ks=(1,))
    with pytest.raises(ValueError, match="expected"):
        ev.evaluate(lambda users: torch.zeros(len(users), 3))


def test_fewer_items_than_largest_cutoff():
    scores = torch.tensor([[0.3, 0.2, 0.1]])
    ev = Evaluator(to_index({0: {0}}, 1, 3), to_index({0: {2}}, 1, 3), ks=(1, 5))
    m = ev.evaluate(lambda users: scores[users]).metrics
    assert m["recall@5"] == 1.0 and m["precision@5"] == pytest.approx(1 / 5)
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(3))


@pytest.mark.parametrize("chunk_size", [2, 100])
def test_per_user_metrics_match_naive_loop_and_average_to_the_metrics(chunk_size):
    scores, train, heldout = random_case(1)
    ks = (1, 5, 10, 20)
    ev = Evaluator(to_index(train, 9, 30), to_index(heldout, 9, 30), chunk_size=chunk_size,
                   ks=ks)
    result = ev.evaluate(lambda users: scores[users], return_per_user=True)
    expected = naive_per_user(scores, train, heldout, ks)
    users = result.users.tolist()
    assert users == sorted(expected["recall@1"])  # users 3 and 8 are skipped
    assert set(result.per_user) == set(result.metrics)
    for key, values in result.per_user.items():
        assert values.shape == (len(users),)
        assert values.tolist() == pytest.approx([expected[key][u] for u in users], abs=1e-6)
        assert values.mean().item() == pytest.approx(result.metrics[key], abs=1e-6)
    assert result.topk is None
    assert ev.evaluate(lambda users: scores[users]).per_user is None


@pytest.mark.parametrize("chunk_size", [2, 100])
def test_candidates_match_naive_loop_over_the_candidates(chunk_size):
    # the cold-start protocol: only 8 of 30 items are ranked, every held-out item among them;
    # user 0 has 5 held-out candidates (more than K=3), user 6 has no training item (skipped)
    gen = torch.Generator().manual_seed(4)
    num_users, num_items, ks = 7, 30, (1, 3, 5, 10)
    scores = torch.randn(num_users, num_items, generator=gen)
    candidates = [2, 5, 7, 11, 13, 17, 19, 23]
    warm = [i for i in range(num_items) if i not in candidates]
    train = {u: set(warm[u:u + 3 + u]) for u in range(num_users - 1)}
    heldout = {u: set(candidates[u:u + 1 + u % 3]) for u in range(num_users)}
    heldout[0] = set(candidates[:5])
    ev = Evaluator(to_index(train, num_users, num_items), to_index(heldout, num_users, num_items),
                   chunk_size=chunk_size, ks=ks, candidates=torch.tensor(candidates))
    result = ev.evaluate(lambda users: scores[users], return_topk=True, return_per_user=True)
    expected = naive_per_user(scores, train, heldout, ks, set(candidates))
    assert result.num_users == 6
    for key, values in expected.items():
        assert result.per_user[key].tolist() == pytest.approx(list(values.values()), abs=1e-6)
    # a list holds candidates only, padded with -1 beyond the 8 of them
    assert set(result.topk[:, :8].reshape(-1).tolist()) <= set(candidates)
    assert (result.topk[:, 8:] == -1).all()


def test_candidates_must_hold_every_heldout_item():
    train = to_index({0: {0}}, 1, 5)
    with pytest.raises(ValueError, match="held-out item 4 is not a candidate"):
        Evaluator(train, to_index({0: {3, 4}}, 1, 5), candidates=torch.tensor([1, 2, 3]))


def test_cpu_chunks_keep_their_scores_under_the_mapping_threshold(monkeypatch):
    # a chunk's scores at most MMAP_THRESHOLD bytes, so the allocator reuses them: with a
    # threshold of two users' scores (2 x 30 floats) chunk_size=100 scores 2 users at a time,
    # and the metrics are those of the per-user loop
    from brmrs_pyg import allocator

    monkeypatch.setattr(allocator, "MMAP_THRESHOLD", 2 * 30 * 4 + 3)
    scores, train, heldout = random_case(5)
    ks = (1, 5)
    ev = Evaluator(to_index(train, 9, 30), to_index(heldout, 9, 30), chunk_size=100, ks=ks)
    assert (ev.chunk_size, ev.chunk_rows) == (100, 2)
    seen = []
    result = ev.evaluate(lambda users: seen.append(users.numel()) or scores[users])
    assert seen == [2, 2, 2, 1]  # the 7 evaluated users
    expected = naive_metrics(scores, train, heldout, ks)
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-6), key
