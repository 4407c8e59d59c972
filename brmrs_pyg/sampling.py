r"""Negative sampling: plain functions on the model's device, vectorised, no Python loop over
samples and no device-to-host synchronisation."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from brmrs_pyg.interactions import PairIndex


@dataclass(frozen=True)
class SubsetPairIndex(PairIndex):
    r"""Training pairs over a subset of the items, the only ones :func:`sample_negatives`
    draws from: with the cold-start protocol the warm items, so that a cold item is never
    trained on as a negative (which would teach the model that users dislike it, from no
    interaction at all).

    The pairs are renumbered: item ``items[j]`` is item ``j`` of the index (so ``num_items``
    is the subset's size); use it for sampling, not for masking or lookups by item id.

    Attributes:
        items (Tensor): :math:`(|S|,)` the subset's item ids, ascending.
    """

    items: Tensor

    @classmethod
    def over(cls, edges: Tensor, num_users: int, num_items: int, items: Tensor,
             device: torch.device | str = "cpu") -> "SubsetPairIndex":
        r"""The index of ``edges`` (:math:`(2, E)`, user and item ids among ``num_items``)
        over the subset ``items``, which must hold every item of ``edges``.

        >>> idx = SubsetPairIndex.over(torch.tensor([[0], [2]]), 1, 5, torch.tensor([0, 2, 4]))
        >>> negatives = sample_negatives(torch.zeros(100, dtype=torch.long), idx)
        >>> sorted(set(negatives.view(-1).tolist()))
        [0, 4]
        """
        items = items.sort().values
        position = torch.full((num_items,), -1, dtype=torch.long)
        position[items] = torch.arange(items.numel())
        renumbered = position[edges[1].cpu()]
        if bool((renumbered < 0).any()):
            raise ValueError(f"item {int(edges[1][renumbered < 0][0])} of the pairs is not in "
                             "the subset")
        base = PairIndex.from_edges(torch.stack([edges[0].cpu(), renumbered]), num_users,
                                    items.numel(), device)
        return cls(**{f.name: getattr(base, f.name) for f in fields(PairIndex)},
                   items=items.to(device))

    def to(self, device: torch.device | str) -> "SubsetPairIndex":
        r"""The same index on ``device``."""
        base = PairIndex.to(self, device)
        return SubsetPairIndex(**{f.name: getattr(base, f.name) for f in fields(PairIndex)},
                               items=self.items.to(device))


def sample_negatives(users: Tensor, train: PairIndex, num_samples: int = 1,
                     generator: torch.Generator | None = None) -> Tensor:
    r"""Draws items uniformly from :math:`\mathcal{I} \setminus \mathcal{O}_u` for each user.

    Exact, without rejection: draw a rank :math:`r` uniform in
    :math:`[0, |\mathcal{I}| - |\mathcal{O}_u|)` and map it to the :math:`r`-th item the user
    has *not* interacted with. With the user's sorted positives :math:`p_0 < p_1 < \dots`, that
    item is :math:`r + c`, where :math:`c = |\{k : p_k - k \le r\}|` (:math:`p_k - k` counts the
    non-positives below :math:`p_k`), found by :func:`nth_free_item`.
    With a :class:`SubsetPairIndex` the items are its subset: the draw is uniform over
    :math:`S \setminus \mathcal{O}_u` and returns item ids.

    Args:
        users (Tensor): User ids, shape :math:`(B,)`, on the device of ``train``.
        train (PairIndex): The training interactions (positives to exclude), or a
            :class:`SubsetPairIndex`.
        num_samples (int, optional): Negatives per user. (default: :obj:`1`)
        generator (torch.Generator, optional): Random generator on the same device.

    Shapes:
        - **output**: :math:`(B, \text{num\_samples})`, item ids.

    >>> idx = PairIndex.from_edges(torch.tensor([[0, 0], [1, 2]]), num_users=1, num_items=4)
    >>> sorted(set(sample_negatives(torch.zeros(100, dtype=torch.long), idx).view(-1).tolist()))
    [0, 3]
    """
    num_free = (train.num_items - train.degree()[users]).to(torch.float64)
    u = torch.rand(users.numel(), num_samples, generator=generator, device=users.device,
                   dtype=torch.float64)
    rank = torch.minimum((u * num_free[:, None]).long(), num_free[:, None].long() - 1)
    items = nth_free_item(train, users, rank)
    if isinstance(train, SubsetPairIndex):
        return train.items[items]
    return items


#: Most entries (users x items) of the table :func:`nth_free_item` keeps; above, it searches.
MAX_TABLE_ENTRIES = 2**24
_FREE_TABLES = WeakTensorKeyDictionary()


def nth_free_item(train: PairIndex, users: Tensor, rank: Tensor) -> Tensor:
    r"""The ``rank[b, j]``-th item (from 0, ascending) that user ``users[b]`` has not
    interacted with in ``train``: :math:`r + c` with :math:`c = |\{k : p_k - k \le r\}|`,
    one ``searchsorted`` over ``train.gap_keys``. When the catalogue is small
    (:math:`|\mathcal{U}| \cdot |\mathcal{I}| \le` :data:`MAX_TABLE_ENTRIES`), a lookup in a
    table of every user's free items instead, built once per index (16-bit entries while the
    items fit): the same items, and on lfm2k a pool of 10 negatives per positive of a batch
    (20,480 draws) costs 0.1 ms instead of the search's 1.1 ms (CPU, one thread).

    Shapes:
        - **users**: :math:`(B,)`; **rank**: :math:`(B, S)`, below each user's number of free
          items; **output**: :math:`(B, S)`.
    """
    table = _free_table(train)
    flat = users[:, None] * train.num_items + rank
    if table is not None:
        return table.view(-1)[flat].long()
    return rank + torch.searchsorted(train.gap_keys, flat, right=True) - train.rowptr[users, None]


def _free_table(train: PairIndex) -> Tensor | None:
    r"""Row :math:`u`: user :math:`u`'s free items ascending, then its positives (never
    read); ``None`` above :data:`MAX_TABLE_ENTRIES` entries."""
    if train.num_users * train.num_items > MAX_TABLE_ENTRIES:
        return None
    hit = _FREE_TABLES.get(train.gap_keys)
    if hit is None:
        taken = torch.zeros(train.num_users, train.num_items, dtype=torch.uint8,
                            device=train.col.device)
        # each pair's user (no repeat_interleave: it would synchronise a GPU)
        rows = torch.searchsorted(train.rowptr, torch.arange(train.col.numel(),
                                                             device=taken.device), right=True) - 1
        taken[rows, train.col] = 1
        # a stable sort puts each row's free items (0) first, in ascending item order
        hit = torch.argsort(taken, dim=1, stable=True)
        hit = hit.to(torch.int16 if train.num_items <= 2**15 else torch.int32)
        _FREE_TABLES[train.gap_keys] = hit
    return hit


@torch.no_grad()
def hardest_in_pool(pool_scores: Tensor, k: int = 1) -> Tensor:
    r"""Positions of the :math:`k` highest-scoring candidates of each row of a negative pool:
    the hardest negatives under that score. Selection only, without gradient; gather the
    scores you train on with the returned positions.

    Args:
        pool_scores (Tensor): Scores of the candidates, shape :math:`(B, P)`.
        k (int, optional): Hard negatives per row, :math:`1 \le k \le P`. (default: :obj:`1`)

    Shapes:
        - **output**: :math:`(B, k)`, positions in :math:`[0, P)`.

    >>> hardest_in_pool(torch.tensor([[0.1, 0.9, 0.5]]), k=2).tolist()
    [[1, 2]]
    """
    if not 1 <= k <= pool_scores.size(-1):
        raise ValueError(f"k must lie in [1, pool size {pool_scores.size(-1)}], got {k}")
    if k == 1:  # several times faster than topk; ties go to the first position
        return pool_scores.argmax(-1, keepdim=True)
    return pool_scores.topk(k, dim=-1).indices
