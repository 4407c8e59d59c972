r"""Interactions grouped by user (CSR), shared by the negative sampler and the evaluator."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PairIndex:
    r"""The (user, item) pairs of one split, sorted by user then item.

    Attributes:
        rowptr (Tensor): :math:`(|\mathcal{U}|+1,)`; user ``u``'s items are
            ``col[rowptr[u]:rowptr[u+1]]``.
        col (Tensor): :math:`(E,)` item ids, ascending within each user.
        keys (Tensor): :math:`(E,)` ``u * num_items + item``, ascending.
        gap_keys (Tensor): :math:`(E,)` ``u * num_items + (col - rank of the item within u)``,
            globally ascending; lets :func:`~brmrs_pyg.sampling.sample_negatives` map the
            :math:`r`-th non-interacted item of a user to its id with one ``searchsorted``.
        num_items (int): Number of items.
    """

    rowptr: Tensor
    col: Tensor
    keys: Tensor
    gap_keys: Tensor
    num_items: int

    @classmethod
    def from_edges(cls, edges: Tensor, num_users: int, num_items: int,
                   device: torch.device | str = "cpu") -> "PairIndex":
        r"""Builds the index from ``edges`` of shape :math:`(2, E)` (user, item)."""
        users, items = edges.to(device)
        order = torch.argsort(users * num_items + items)
        users, col = users[order], items[order]
        counts = torch.bincount(users, minlength=num_users)
        rowptr = torch.zeros(num_users + 1, dtype=torch.long, device=device)
        rowptr[1:] = torch.cumsum(counts, 0)
        rank = torch.arange(col.numel(), device=device) - rowptr[users]
        keys = users * num_items + col
        return cls(rowptr=rowptr, col=col, keys=keys, gap_keys=keys - rank,
                   num_items=num_items)

    def to(self, device: torch.device | str) -> "PairIndex":
        r"""The same index on ``device``."""
        return PairIndex(rowptr=self.rowptr.to(device), col=self.col.to(device),
                         keys=self.keys.to(device), gap_keys=self.gap_keys.to(device),
                         num_items=self.num_items)

    @property
    def num_users(self) -> int:
        return self.rowptr.numel() - 1

    def degree(self) -> Tensor:
        r"""Number of items of every user, shape :math:`(|\mathcal{U}|,)`."""
        return self.rowptr[1:] - self.rowptr[:-1]

    def pairs_of(self, users: Tensor) -> tuple[Tensor, Tensor]:
        r"""All pairs of the given users as ``(position of the user in users, item)``."""
        start = self.rowptr[users]
        counts = self.rowptr[users + 1] - start
        rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
        first = torch.cumsum(counts, 0) - counts
        pos = start[rows] + torch.arange(rows.numel(), device=users.device) - first[rows]
        return rows, self.col[pos]

    def contains(self, users: Tensor, items: Tensor) -> Tensor:
        r"""Boolean mask: whether each pair ``(users[j], items[j])`` is in the index."""
        if self.keys.numel() == 0:
            return torch.zeros_like(users, dtype=torch.bool)
        query = users * self.num_items + items
        pos = torch.searchsorted(self.keys, query).clamp_max(self.keys.numel() - 1)
        return self.keys[pos] == query
