import pytest
import torch

from brmrs_pyg import sampling
from brmrs_pyg.interactions import PairIndex
from brmrs_pyg.sampling import SubsetPairIndex, nth_free_item, sample_negatives


@pytest.fixture(autouse=True, params=["table", "search"])
def lookup(request, monkeypatch):
    # every test on both ways of finding the r-th free item: the table of small catalogues
    # and the search of large ones
    if request.param == "search":
        monkeypatch.setattr(sampling, "MAX_TABLE_ENTRIES", 0)
    return request.param


def random_index(num_users, num_items, seed):
    gen = torch.Generator().manual_seed(seed)
    users, items = [], []
    for u in range(num_users):
        deg = int(torch.randint(1, num_items, (1,), generator=gen))  # up to all but one item
        chosen = torch.randperm(num_items, generator=gen)[:deg]
        users += [u] * deg
        items += chosen.tolist()
    return PairIndex.from_edges(torch.tensor([users, items]), num_users, num_items)


def test_nth_free_item_is_each_users_free_items_in_order(lookup):
    # against a per-user loop, for every user and every rank; the table holds 16 bits
    index = random_index(12, 40, seed=4)
    free = [[i for i in range(40) if not index.contains(torch.tensor([u]), torch.tensor([i]))]
            for u in range(12)]
    users = torch.tensor([u for u in range(12) for _ in free[u]])
    rank = torch.tensor([r for u in range(12) for r in range(len(free[u]))])
    got = nth_free_item(index, users, rank[:, None])
    assert got.dtype == torch.long and got.shape == (users.numel(), 1)
    assert got.view(-1).tolist() == [i for u in range(12) for i in free[u]]
    assert (sampling._free_table(index) is None) == (lookup == "search")


def test_never_returns_a_training_positive_and_stays_in_range():
    index = random_index(20, 15, seed=0)
    users = torch.arange(20).repeat(50)
    neg = sample_negatives(users, index, num_samples=7)
    assert neg.shape == (1000, 7)
    assert neg.min() >= 0 and neg.max() < 15
    assert not index.contains(users[:, None].expand_as(neg).reshape(-1), neg.reshape(-1)).any()


def test_covers_exactly_the_complement_uniformly():
    # user 0 has items {1, 2, 5}; its negatives are {0, 3, 4, 6} with probability 1/4 each
    index = PairIndex.from_edges(torch.tensor([[0, 0, 0, 1], [5, 1, 2, 0]]), 2, 7)
    torch.manual_seed(0)
    neg = sample_negatives(torch.zeros(40000, dtype=torch.long), index)
    counts = torch.bincount(neg.view(-1), minlength=7).float() / 40000
    assert counts[[1, 2, 5]].sum() == 0
    assert torch.allclose(counts[[0, 3, 4, 6]], torch.full((4,), 0.25), atol=0.01)


def test_subset_index_draws_uniformly_from_its_items_only():
    # items 3 and 6 are outside the subset (cold); user 0 has items {1, 5}: its negatives are
    # {0, 2, 4} with probability 1/3 each, never a cold item or a positive
    edges = torch.tensor([[0, 0, 1], [5, 1, 0]])
    index = SubsetPairIndex.over(edges, 2, 7, torch.tensor([5, 0, 1, 2, 4]))
    assert index.num_items == 5 and index.items.tolist() == [0, 1, 2, 4, 5]
    torch.manual_seed(0)
    neg = sample_negatives(torch.zeros(30000, dtype=torch.long), index)
    counts = torch.bincount(neg.view(-1), minlength=7).float() / 30000
    assert counts[[1, 3, 5, 6]].sum() == 0
    assert torch.allclose(counts[[0, 2, 4]], torch.full((3,), 1 / 3), atol=0.01)
    assert index.to("cpu").items.tolist() == index.items.tolist()


def test_subset_index_refuses_pairs_outside_the_subset():
    with pytest.raises(ValueError, match="item 3 of the pairs is not in the subset"):
        SubsetPairIndex.over(torch.tensor([[0], [3]]), 1, 5, torch.tensor([0, 1, 2]))


def test_user_with_one_free_item():
    index = PairIndex.from_edges(torch.tensor([[0, 0, 0], [0, 1, 3]]), 1, 4)
    assert sample_negatives(torch.zeros(100, dtype=torch.long), index).unique().tolist() == [2]


def test_generator_makes_it_reproducible():
    index = random_index(5, 30, seed=1)
    users = torch.arange(5)
    a = sample_negatives(users, index, 4, generator=torch.Generator().manual_seed(3))
    b = sample_negatives(users, index, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_without_host_copies():
    index = random_index(20, 15, seed=0)
    cuda = index.to("cuda")
    users = torch.arange(20, device="cuda")
    neg = sample_negatives(users, cuda, 3)
    assert neg.device.type == "cuda"
    assert not cuda.contains(users[:, None].expand_as(neg).reshape(-1), neg.reshape(-1)).any()


def test_pair_index_pairs_of():
    index = PairIndex.from_edges(torch.tensor([[2, 0, 2, 1], [4, 1, 0, 3]]), 3, 5)
    rows, items = index.pairs_of(torch.tensor([2, 0]))
    assert sorted(zip(rows.tolist(), items.tolist())) == [(0, 0), (0, 4), (1, 1)]
    assert index.degree().tolist() == [1, 1, 2]


def test_a_catalogue_past_16_bits_keeps_its_item_ids(lookup):
    num_items = 2**15 + 5
    index = PairIndex.from_edges(torch.tensor([[0, 0, 1], [3, num_items - 2, 0]]), 2,
                                 num_items)
    rank = torch.tensor([[0, 3, num_items - 3], [0, 1, num_items - 2]])  # the last free items
    got = nth_free_item(index, torch.tensor([0, 1]), rank)
    assert got.tolist() == [[0, 4, num_items - 1], [1, 2, num_items - 1]]
    if lookup == "table":
        assert sampling._free_table(index).dtype == torch.int32
